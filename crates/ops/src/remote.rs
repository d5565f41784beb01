//! The layer operations on a compute server: a trainer's remote device ships each operation of
//! [`FusedOps`], [`HostOps`] and [`BlockOps`] (a whole encoder block) as one Burn custom
//! operation, and the server runs it with its own backend's implementation (the host kernels on
//! flex and ndarray). Without this, a remote device runs the composed forms, ten to forty of
//! Burn's operations per layer, each a message and a pass of its own on the server.
//!
//! Both sides live here, so an operation's id, inputs, outputs and scalars are written once: the
//! client side (`impl FusedOps for Remote`) declares the outputs' shapes; the server side
//! ([`with_layer_ops`]) is a handler per id. The ids carry this crate's version: a server of
//! another build names the operation it does not know instead of running one it misreads.

use burn::backend::ir::{BackendIr, CustomOpIr, HandleContainer, ScalarIr, TensorIr};
use burn::backend::tensor::FloatTensor;
use burn::backend::{DispatchDevice, Remote, TensorMetadata};
use burn::remote::CustomOpClient;
use burn::server::RemoteServer;
use burn::tensor::{Device, Shape};

use crate::adam::in_place::AdamOps;
use crate::adam::{AdamSettings, AdamStep, WeightDecay};
use crate::block::{BlockActivations, BlockOps, BlockParameters, BlockSizes, forward_shapes};
use crate::extension::{FusedOps, HostOps};

/// The id of operation `name` on the wire.
macro_rules! op_id {
    ($name:literal) => {
        concat!("vit-ops ", env!("CARGO_PKG_VERSION"), ": ", $name)
    };
}

const LAYER_NORM: &str = op_id!("layer_norm");
const LAYER_NORM_BACKWARD: &str = op_id!("layer_norm_backward");
const SOFTMAX: &str = op_id!("softmax");
const SOFTMAX_BACKWARD: &str = op_id!("softmax_backward");
const GELU: &str = op_id!("gelu");
const GELU_BACKWARD: &str = op_id!("gelu_backward");
const LINEAR: &str = op_id!("linear");
const LINEAR_UNBIASED: &str = op_id!("linear_unbiased");
const LINEAR_X_GRADIENT: &str = op_id!("linear_x_gradient");
const LINEAR_WEIGHT_GRADIENT: &str = op_id!("linear_weight_gradient");
const LINEAR_BIAS_GRADIENT: &str = op_id!("linear_bias_gradient");
const ATTENTION: &str = op_id!("attention");
const ATTENTION_WITH_WEIGHTS: &str = op_id!("attention_with_weights");
const ATTENTION_BACKWARD: &str = op_id!("attention_backward");
const TRANSPOSE_GROUPS: &str = op_id!("transpose_groups");
const ADAM_UPDATE: &str = op_id!("adam_update");
const ENCODER_BLOCK: &str = op_id!("encoder_block");
const ENCODER_BLOCK_BACKWARD: &str = op_id!("encoder_block_backward");

/// Registers operation `id` of `inputs` (the first one's device and float type are the
/// outputs') with `outputs` of the given shapes, and returns the outputs, which the server fills.
fn on_server<const O: usize>(
    id: &'static str,
    inputs: Vec<FloatTensor<Remote>>,
    outputs: [Shape; O],
    scalars: Vec<ScalarIr>,
) -> [FloatTensor<Remote>; O] {
    on_server_all(id, inputs, outputs.into(), scalars)
        .try_into()
        .unwrap_or_else(|_| panic!("`{id}` declares {O} outputs"))
}

/// [`on_server`] for a number of outputs known when it runs.
fn on_server_all(
    id: &'static str,
    inputs: Vec<FloatTensor<Remote>>,
    outputs: Vec<Shape>,
    scalars: Vec<ScalarIr>,
) -> Vec<FloatTensor<Remote>> {
    let (device, dtype) = (inputs[0].device(), inputs[0].dtype());
    let client = CustomOpClient::new(&device);
    let outputs: Vec<TensorIr> = outputs
        .into_iter()
        .map(|shape| TensorIr::uninit(client.create_empty_handle(), shape, dtype))
        .collect();
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|tensor| tensor.into_ir()).collect();
    client.register(CustomOpIr::with_scalars(id, &inputs, &outputs, scalars))
}

fn sizes(values: &[usize]) -> Vec<ScalarIr> {
    values
        .iter()
        .map(|&value| ScalarIr::UInt(value as u64))
        .collect()
}

/// `shape` with its last dimension replaced by `last`.
fn with_last(mut shape: Shape, last: usize) -> Shape {
    let end = shape.num_dims() - 1;
    shape[end] = last;
    shape
}

fn last(shape: &Shape) -> usize {
    shape[shape.num_dims() - 1]
}

impl FusedOps for Remote {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let shape = x.shape();
        let [y] = on_server(
            LAYER_NORM,
            vec![x, gamma, beta],
            [shape],
            vec![ScalarIr::Float(epsilon)],
        );
        y
    }

    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.shape();
        let [y] = on_server(SOFTMAX, vec![x], [shape], vec![]);
        y
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.shape();
        let [y] = on_server(GELU, vec![x], [shape], vec![]);
        y
    }

    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.shape();
        let [dx] = on_server(GELU_BACKWARD, vec![x, grad], [shape], vec![]);
        dx
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let shape = with_last(x.shape(), weight.shape()[1]);
        let [y] = on_server(LINEAR, vec![x, weight, bias], [shape], vec![]);
        y
    }

    fn fused_linear_unbiased(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = with_last(x.shape(), weight.shape()[1]);
        let [y] = on_server(LINEAR_UNBIASED, vec![x, weight], [shape], vec![]);
        y
    }

    fn linear_x_gradient(weight: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = with_last(grad.shape(), weight.shape()[0]);
        let [dx] = on_server(LINEAR_X_GRADIENT, vec![weight, grad], [shape], vec![]);
        dx
    }

    fn linear_weight_gradient(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = Shape::from([last(&x.shape()), last(&grad.shape())]);
        let [dw] = on_server(LINEAR_WEIGHT_GRADIENT, vec![x, grad], [shape], vec![]);
        dw
    }

    fn linear_bias_gradient(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = Shape::from([last(&grad.shape())]);
        let [db] = on_server(LINEAR_BIAS_GRADIENT, vec![grad], [shape], vec![]);
        db
    }

    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (x_shape, gamma_shape) = (x.shape(), gamma.shape());
        let [dx, dgamma, dbeta] = on_server(
            LAYER_NORM_BACKWARD,
            vec![x, gamma, grad],
            [x_shape, gamma_shape.clone(), gamma_shape],
            vec![ScalarIr::Float(epsilon)],
        );
        (dx, dgamma, dbeta)
    }

    fn softmax_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = output.shape();
        let [dx] = on_server(SOFTMAX_BACKWARD, vec![output, grad], [shape], vec![]);
        dx
    }
}

impl HostOps for Remote {
    fn fused_attention(
        qkv: FloatTensor<Self>,
        images: usize,
        heads: usize,
        kept: usize,
    ) -> FloatTensor<Self> {
        let context = context_shape(&qkv, images, kept);
        let [context] = on_server(
            ATTENTION,
            vec![qkv],
            [context],
            sizes(&[images, heads, kept]),
        );
        context
    }

    fn attention_with_weights(
        qkv: FloatTensor<Self>,
        images: usize,
        heads: usize,
        kept: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let tokens = qkv.shape()[0] / images;
        let shapes = [
            context_shape(&qkv, images, kept),
            Shape::from([images, kept, tokens, heads]),
        ];
        let [context, weights] = on_server(
            ATTENTION_WITH_WEIGHTS,
            vec![qkv],
            shapes,
            sizes(&[images, heads, kept]),
        );
        (context, weights)
    }

    fn attention_backward(
        qkv: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        images: usize,
        heads: usize,
        kept: usize,
    ) -> FloatTensor<Self> {
        let shape = qkv.shape();
        let [dqkv] = on_server(
            ATTENTION_BACKWARD,
            vec![qkv, weights, grad],
            [shape],
            sizes(&[images, heads, kept]),
        );
        dqkv
    }

    fn transpose_groups(
        x: FloatTensor<Self>,
        rows: usize,
        columns: usize,
        width: usize,
    ) -> FloatTensor<Self> {
        let shape = x.shape();
        let [y] = on_server(
            TRANSPOSE_GROUPS,
            vec![x],
            [shape],
            sizes(&[rows, columns, width]),
        );
        y
    }
}

impl AdamOps for Remote {
    fn adam_update(
        parameter: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let shape = parameter.shape();
        let [parameter, moment_1, moment_2] = on_server(
            ADAM_UPDATE,
            vec![parameter, grad, moment_1, moment_2],
            [shape.clone(), shape.clone(), shape],
            adam_scalars(step),
        );
        (parameter, moment_1, moment_2)
    }
}

impl BlockOps for Remote {
    fn encoder_block(
        x: FloatTensor<Self>,
        parameters: BlockParameters<Self>,
        sizes: BlockSizes,
    ) -> FloatTensor<Self> {
        block_on_server(x, parameters, sizes, false).remove(0)
    }

    fn encoder_block_saving(
        x: FloatTensor<Self>,
        parameters: BlockParameters<Self>,
        sizes: BlockSizes,
    ) -> (FloatTensor<Self>, BlockActivations<Self>) {
        let mut outputs = block_on_server(x, parameters, sizes, true);
        let activations = BlockActivations::from_vec(outputs.split_off(1));
        (outputs.remove(0), activations)
    }

    fn encoder_block_backward(
        x: FloatTensor<Self>,
        parameters: BlockParameters<Self>,
        activations: BlockActivations<Self>,
        grad: FloatTensor<Self>,
        sizes: BlockSizes,
    ) -> (FloatTensor<Self>, BlockParameters<Self>) {
        let parameters = parameters.into_vec();
        let shapes = std::iter::once(&x)
            .chain(&parameters)
            .map(|tensor| tensor.shape())
            .collect();
        let inputs = std::iter::once(x)
            .chain(parameters)
            .chain(activations.into_vec())
            .chain([grad])
            .collect();
        let mut outputs =
            on_server_all(ENCODER_BLOCK_BACKWARD, inputs, shapes, block_scalars(sizes));
        let gradients = BlockParameters::from_vec(outputs.split_off(1));
        (outputs.remove(0), gradients)
    }
}

/// [`ENCODER_BLOCK`] of `x` and `parameters`: its output, then with `saving` the activations
/// the backward pass reads.
fn block_on_server(
    x: FloatTensor<Remote>,
    parameters: BlockParameters<Remote>,
    sizes: BlockSizes,
    saving: bool,
) -> Vec<FloatTensor<Remote>> {
    let inner = parameters.inner_bias.shape()[0];
    let shapes = forward_shapes(&x.shape(), inner, sizes, saving);
    let inputs = std::iter::once(x).chain(parameters.into_vec()).collect();
    on_server_all(ENCODER_BLOCK, inputs, shapes, block_scalars(sizes))
}

/// `sizes` as the scalars of [`ENCODER_BLOCK`] and its backward pass; [`block_sizes`] reads
/// them back.
fn block_scalars(sizes: BlockSizes) -> Vec<ScalarIr> {
    let mut scalars = self::sizes(&[sizes.images, sizes.heads, sizes.kept]);
    scalars.push(ScalarIr::Float(sizes.epsilon));
    scalars
}

fn block_sizes(scalars: &[ScalarIr]) -> BlockSizes {
    BlockSizes {
        images: size(scalars, 0),
        heads: size(scalars, 1),
        kept: size(scalars, 2),
        epsilon: float(scalars, 3),
    }
}

/// `step` as the scalars of [`ADAM_UPDATE`]; [`adam_step`] reads them back.
fn adam_scalars(step: AdamStep) -> Vec<ScalarIr> {
    let AdamSettings {
        beta_1,
        beta_2,
        epsilon,
        weight_decay,
    } = step.settings;
    let (decay, rate) = match weight_decay {
        WeightDecay::None => (0, 0.0),
        WeightDecay::L2(rate) => (1, rate),
        WeightDecay::Decoupled(rate) => (2, rate),
    };
    let floats = [beta_1, beta_2, epsilon, rate].map(|value| ScalarIr::Float(value.into()));
    let rest = [
        ScalarIr::UInt(decay),
        ScalarIr::Float(step.lr),
        ScalarIr::UInt(step.time as u64),
    ];
    floats.into_iter().chain(rest).collect()
}

fn adam_step(scalars: &[ScalarIr]) -> AdamStep {
    let single = |index| float(scalars, index) as f32;
    let rate = single(3);
    let weight_decay = match size(scalars, 4) {
        0 => WeightDecay::None,
        1 => WeightDecay::L2(rate),
        _ => WeightDecay::Decoupled(rate),
    };
    AdamStep {
        settings: AdamSettings {
            beta_1: single(0),
            beta_2: single(1),
            epsilon: single(2),
            weight_decay,
        },
        lr: float(scalars, 5),
        time: size(scalars, 6),
    }
}

/// The attention's context `[images * kept, dim]` for the projection `qkv` `[rows, 3 * dim]`.
fn context_shape(qkv: &FloatTensor<Remote>, images: usize, kept: usize) -> Shape {
    Shape::from([images * kept, qkv.shape()[1] / 3])
}

/// Why Burn's server cannot host `device`, if it cannot. In Burn 0.22.1 it refuses a libtorch
/// device ("LibTorch cannot run remote sessions", burn-dispatch's `remote_server.rs`) and a
/// remote one, but only once it is serving.
pub fn unservable(device: &Device) -> Option<&'static str> {
    #[allow(unreachable_patterns)] // every variant is listed when every backend is built in
    match device.as_dispatch().clone().inner() {
        #[cfg(feature = "tch")]
        DispatchDevice::LibTorch(_) => Some(
            "Burn's compute server runs flex, ndarray and wgpu devices, not libtorch ones \
             (`--backend flex|ndarray|wgpu`)",
        ),
        DispatchDevice::Remote(_) => Some("a compute server cannot host another one's device"),
        _ => None,
    }
}

/// `server` with a handler for every operation above, run by the backend of `device` (the
/// device it hosts): the host kernels on flex and ndarray, the extension's defaults (Burn's
/// operations) on wgpu.
pub fn with_layer_ops(server: RemoteServer, device: &Device) -> RemoteServer {
    #[allow(unreachable_patterns)] // every variant is listed when every backend is built in
    match device.as_dispatch().clone().inner() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => handlers::<burn::backend::Flex>(server),
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => handlers::<burn::backend::NdArray>(server),
        #[cfg(feature = "wgpu")]
        DispatchDevice::Cube(_) => handlers::<burn::backend::Cube>(server),
        _ => server,
    }
}

/// A server's handler that reads the `I` inputs as `B`'s tensors, runs `run` on them and the
/// operation's scalars, and registers its `O` outputs under the ids the client chose.
fn handler<B: BackendIr, const I: usize, const O: usize>(
    run: fn([FloatTensor<B>; I], &[ScalarIr]) -> [FloatTensor<B>; O],
) -> impl Fn(&mut HandleContainer<B::Handle>, &CustomOpIr, &B::Device) + Send + Sync + 'static {
    move |handles, op, _device| {
        let Ok(inputs) = float_inputs::<B>(handles, op).try_into() else {
            panic!("`{}` takes {I} inputs", op.id)
        };
        register_outputs::<B>(handles, op, run(inputs, &op.scalars).into());
    }
}

/// The float tensors `op` reads, in order.
fn float_inputs<B: BackendIr>(
    handles: &mut HandleContainer<B::Handle>,
    op: &CustomOpIr,
) -> Vec<FloatTensor<B>> {
    let read = |input| handles.get_float_tensor::<B>(input);
    op.inputs.iter().map(read).collect()
}

/// Registers `tensors` under the ids of `op`'s outputs.
fn register_outputs<B: BackendIr>(
    handles: &mut HandleContainer<B::Handle>,
    op: &CustomOpIr,
    tensors: Vec<FloatTensor<B>>,
) {
    assert_eq!(tensors.len(), op.outputs.len(), "`{}`'s outputs", op.id);
    for (output, tensor) in op.outputs.iter().zip(tensors) {
        handles.register_float_tensor::<B>(&output.id, tensor);
    }
}

fn float(scalars: &[ScalarIr], index: usize) -> f64 {
    scalars[index].elem()
}

fn size(scalars: &[ScalarIr], index: usize) -> usize {
    scalars[index].elem::<u64>() as usize
}

fn handlers<B: BlockOps + AdamOps + BackendIr>(server: RemoteServer) -> RemoteServer {
    server
        .with_custom_op::<B, _>(
            LAYER_NORM,
            handler::<B, 3, 1>(|[x, gamma, beta], s| {
                [B::fused_layer_norm(x, gamma, beta, float(s, 0))]
            }),
        )
        .with_custom_op::<B, _>(
            LAYER_NORM_BACKWARD,
            handler::<B, 3, 3>(|[x, gamma, grad], s| {
                let (dx, dgamma, dbeta) = B::layer_norm_backward(x, gamma, grad, float(s, 0));
                [dx, dgamma, dbeta]
            }),
        )
        .with_custom_op::<B, _>(SOFTMAX, handler::<B, 1, 1>(|[x], _| [B::fused_softmax(x)]))
        .with_custom_op::<B, _>(
            SOFTMAX_BACKWARD,
            handler::<B, 2, 1>(|[output, grad], _| [B::softmax_backward(output, grad)]),
        )
        .with_custom_op::<B, _>(GELU, handler::<B, 1, 1>(|[x], _| [B::fused_gelu(x)]))
        .with_custom_op::<B, _>(
            GELU_BACKWARD,
            handler::<B, 2, 1>(|[x, grad], _| [B::fused_gelu_backward(x, grad)]),
        )
        .with_custom_op::<B, _>(
            LINEAR,
            handler::<B, 3, 1>(|[x, weight, bias], _| [B::fused_linear(x, weight, bias)]),
        )
        .with_custom_op::<B, _>(
            LINEAR_UNBIASED,
            handler::<B, 2, 1>(|[x, weight], _| [B::fused_linear_unbiased(x, weight)]),
        )
        .with_custom_op::<B, _>(
            LINEAR_X_GRADIENT,
            handler::<B, 2, 1>(|[weight, grad], _| [B::linear_x_gradient(weight, grad)]),
        )
        .with_custom_op::<B, _>(
            LINEAR_WEIGHT_GRADIENT,
            handler::<B, 2, 1>(|[x, grad], _| [B::linear_weight_gradient(x, grad)]),
        )
        .with_custom_op::<B, _>(
            LINEAR_BIAS_GRADIENT,
            handler::<B, 1, 1>(|[grad], _| [B::linear_bias_gradient(grad)]),
        )
        .with_custom_op::<B, _>(
            ATTENTION,
            handler::<B, 1, 1>(|[qkv], s| {
                [B::fused_attention(qkv, size(s, 0), size(s, 1), size(s, 2))]
            }),
        )
        .with_custom_op::<B, _>(
            ATTENTION_WITH_WEIGHTS,
            handler::<B, 1, 2>(|[qkv], s| {
                let (context, weights) =
                    B::attention_with_weights(qkv, size(s, 0), size(s, 1), size(s, 2));
                [context, weights]
            }),
        )
        .with_custom_op::<B, _>(
            ATTENTION_BACKWARD,
            handler::<B, 3, 1>(|[qkv, weights, grad], s| {
                [B::attention_backward(
                    qkv,
                    weights,
                    grad,
                    size(s, 0),
                    size(s, 1),
                    size(s, 2),
                )]
            }),
        )
        .with_custom_op::<B, _>(
            ADAM_UPDATE,
            handler::<B, 4, 3>(|[parameter, grad, moment_1, moment_2], s| {
                let (parameter, moment_1, moment_2) =
                    B::adam_update(parameter, grad, moment_1, moment_2, adam_step(s));
                [parameter, moment_1, moment_2]
            }),
        )
        .with_custom_op::<B, _>(ENCODER_BLOCK, |handles, op, _device| {
            let mut inputs = float_inputs::<B>(handles, op);
            let parameters = BlockParameters::from_vec(inputs.split_off(1));
            let x = inputs.remove(0);
            let sizes = block_sizes(&op.scalars);
            let outputs = if op.outputs.len() == 1 {
                vec![B::encoder_block(x, parameters, sizes)]
            } else {
                let (output, activations) = B::encoder_block_saving(x, parameters, sizes);
                std::iter::once(output)
                    .chain(activations.into_vec())
                    .collect()
            };
            register_outputs::<B>(handles, op, outputs);
        })
        .with_custom_op::<B, _>(ENCODER_BLOCK_BACKWARD, |handles, op, _device| {
            let mut inputs = float_inputs::<B>(handles, op);
            let grad = inputs.pop().expect("the gradient comes last");
            let activations =
                BlockActivations::from_vec(inputs.split_off(1 + BlockParameters::<B>::LEN));
            let parameters = BlockParameters::from_vec(inputs.split_off(1));
            let x = inputs.remove(0);
            let sizes = block_sizes(&op.scalars);
            let (grad_x, gradients) =
                B::encoder_block_backward(x, parameters, activations, grad, sizes);
            let outputs = std::iter::once(grad_x)
                .chain(gradients.into_vec())
                .collect();
            register_outputs::<B>(handles, op, outputs);
        })
        .with_custom_op::<B, _>(
            TRANSPOSE_GROUPS,
            handler::<B, 1, 1>(|[x], s| {
                [B::transpose_groups(x, size(s, 0), size(s, 1), size(s, 2))]
            }),
        )
}
