//! LayerNorm, softmax, GELU, multi-head self-attention and the linear layers as single
//! operations with hand-written backward passes.
//!
//! Burn's autodiff backend differentiates `layer_norm` and `softmax` through their default,
//! composed forms: nine operations for a LayerNorm and five for a softmax, each recorded in the
//! graph with its own backward step, where PyTorch records one. In training that op count, not
//! the arithmetic, is what costs (every operation is a pass over memory and, on libtorch, a
//! parallel region). Here each is one node of the autodiff graph:
//!
//! - forward: the backend's own fused `layer_norm` / `softmax`;
//! - backward: one pass over the rows on the CPU backends (flex, ndarray), libtorch's own
//!   kernels on tch, and a short composed form elsewhere (wgpu).
//!
//! The routing is Burn's backend-extension machinery. It covers the backends this crate is
//! built with (its features `flex`, `ndarray`, `tch`, `wgpu`); on any other device, and for
//! tensors that are not `f32`, [`layer_norm`] and [`softmax`] use Burn's composed operations, so
//! the result never depends on how the crate was built, only the speed.
//!
//! [`attention`] is routed on flex and ndarray only (the module `attention` says
//! why); libtorch and GPUs run their batched matrix products well and take the composed form.
//! [`linear`](linear()) is Burn's `linear` everywhere but on flex, where its products write
//! into buffers of their own with the bias added in the product (the module `linear` says why).
// ndarray and tch are deprecated upstream; this project still supports both.
#![allow(deprecated)]

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, Backend, Dispatch, DispatchDevice, TensorMetadata, backend_extension,
};
use burn::nn::Dropout;
use burn::tensor::{DType, Device, Tensor};

use attention::{Sizes, host_attention, host_attention_backward, host_transpose_groups};
use exact_gelu::{host_gelu, host_gelu_backward};

use backward::{
    all_f32, composed_layer_norm_backward, composed_softmax_backward, host_layer_norm_backward,
    host_softmax_backward,
};

mod attention;
mod backward;
mod exact_gelu;
mod host;
#[cfg(feature = "tch")]
mod libtorch;
#[cfg(feature = "flex")]
mod linear;
mod simd;
mod tasks;
mod vectors;

/// The fused operations, for every backend this crate routes to.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    LibTorch: cfg(feature = "tch"),
    Cube: cfg(feature = "wgpu"),
    Autodiff,
)]
pub trait FusedOps: Backend {
    /// LayerNorm over the last dimension: `(x - mean) / sqrt(var + epsilon) * gamma + beta`.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), epsilon)
    }

    /// Softmax along the last dimension.
    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let last = x.shape().num_dims() - 1;
        Self::softmax(x, last)
    }

    /// GELU, `x · Φ(x)` with the exact normal CDF.
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if all_f32::<Self>(&[&x]) {
            host_gelu::<Self>(x)
        } else {
            Self::gelu(x)
        }
    }

    /// The gradient of [`FusedOps::fused_gelu`] for its input, given the gradient of its output.
    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if all_f32::<Self>(&[&x, &grad]) {
            host_gelu_backward::<Self>(x, grad)
        } else {
            Self::gelu_backward(x, grad)
        }
    }

    /// Multi-head self-attention from the projection `qkv` `[images * tokens, 3 * dim]`
    /// (queries already scaled, then keys, then values, each with its columns in head-lane
    /// order, [`columns_in_lanes`]), for the first `kept` tokens of each image: the context
    /// `[images * kept, dim]`, in the same order.
    fn fused_attention(
        qkv: FloatTensor<Self>,
        images: usize,
        heads: usize,
        kept: usize,
    ) -> FloatTensor<Self> {
        let sizes = Sizes::of::<Self>(&qkv, images, heads, kept);
        host_attention::<Self>(qkv, sizes, false).0
    }

    /// [`FusedOps::fused_attention`]'s context and its attention weights
    /// `[images, kept, tokens, heads]`, which its backward pass reads.
    fn attention_with_weights(
        qkv: FloatTensor<Self>,
        images: usize,
        heads: usize,
        kept: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let sizes = Sizes::of::<Self>(&qkv, images, heads, kept);
        let (context, weights) = host_attention::<Self>(qkv, sizes, true);
        (context, weights.expect("weights were asked for"))
    }

    /// The gradient of [`FusedOps::fused_attention`] for its projection, given the gradient of
    /// its context.
    fn attention_backward(
        qkv: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        images: usize,
        heads: usize,
        kept: usize,
    ) -> FloatTensor<Self> {
        let sizes = Sizes::of::<Self>(&qkv, images, heads, kept);
        host_attention_backward::<Self>(qkv, weights, grad, sizes)
    }

    /// `x` `[n, m]` with, in each group of `rows * columns * width` values of a row, the
    /// `[rows, columns]` grid of runs of `width` values transposed: run `r * columns + c`
    /// moves to `c * rows + r`. Its own inverse with `rows` and `columns` swapped. The host
    /// kernel, for the `f32` tensors of the CPU backends that run the fused attention.
    fn transpose_groups(
        x: FloatTensor<Self>,
        rows: usize,
        columns: usize,
        width: usize,
    ) -> FloatTensor<Self> {
        host_transpose_groups::<Self>(x, rows, columns, width)
    }

    /// `x · weight + bias` for `x` `[rows, inputs]` and `weight` `[inputs, outputs]`: Burn's
    /// `linear`, with a backward step of its own on every backend.
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::linear(x, weight, Some(bias))
    }

    /// [`FusedOps::fused_linear`] without a bias: `x · weight` (backend extensions take no
    /// optional tensors).
    fn fused_linear_unbiased(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear(x, weight, None)
    }

    /// The gradient of [`FusedOps::fused_linear`] for `x`: `grad · weightᵀ`.
    fn linear_x_gradient(weight: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear_x_backward(weight, grad)
    }

    /// The gradient of [`FusedOps::fused_linear`] for its weight: `xᵀ · grad`.
    fn linear_weight_gradient(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear_weight_backward(x, grad)
    }

    /// The gradient of [`FusedOps::fused_linear`] for its bias: the sum of `grad`'s rows.
    fn linear_bias_gradient(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear_bias_backward(grad)
    }

    /// The gradients of [`FusedOps::fused_layer_norm`] for `x`, `gamma` and `beta`, given the
    /// gradient of its output.
    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if all_f32::<Self>(&[&x, &gamma, &grad]) {
            host_layer_norm_backward::<Self>(x, gamma, grad, epsilon)
        } else {
            composed_layer_norm_backward::<Self>(x, gamma, grad, epsilon)
        }
    }

    /// The gradient of [`FusedOps::fused_softmax`] for its input, from its output and the
    /// gradient of its output.
    fn softmax_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if all_f32::<Self>(&[&output, &grad]) {
            host_softmax_backward::<Self>(output, grad)
        } else {
            composed_softmax_backward::<Self>(output, grad)
        }
    }
}

/// LayerNorm over the last dimension: one operation (forward and backward) where the backend
/// supports it, Burn's composed `layer_norm` elsewhere.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    if routed(&x) {
        Tensor::from_dispatch(<Dispatch as FusedOps>::fused_layer_norm(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            epsilon,
        ))
    } else {
        burn::tensor::module::layer_norm(x, gamma, Some(beta), epsilon)
    }
}

/// Softmax along the last dimension: one operation (forward and backward) where the backend
/// supports it, Burn's composed `softmax` elsewhere.
pub fn softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if routed(&x) {
        Tensor::from_dispatch(<Dispatch as FusedOps>::fused_softmax(x.into_dispatch()))
    } else {
        burn::tensor::activation::softmax(x, D - 1)
    }
}

/// GELU with the exact normal CDF: one host sweep with a vectorized `erf` on flex and
/// ndarray (forward and backward), Burn's `gelu` elsewhere.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if routed(&x) && runs_on_host(&x.device()) {
        Tensor::from_dispatch(<Dispatch as FusedOps>::fused_gelu(x.into_dispatch()))
    } else {
        burn::tensor::activation::gelu(x)
    }
}

/// `x · weight + bias` over the last dimension of `x`, as Burn's `linear`: one operation with a
/// backward step of its own where the backend is routed, whose products on flex write into
/// buffers of their own with the bias added in the product (the module `linear`).
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    if D >= 2 && routed(&x) && weight.dtype() == DType::F32 {
        let (x, weight) = (x.into_dispatch(), weight.into_dispatch());
        Tensor::from_dispatch(match bias {
            Some(bias) => <Dispatch as FusedOps>::fused_linear(x, weight, bias.into_dispatch()),
            None => <Dispatch as FusedOps>::fused_linear_unbiased(x, weight),
        })
    } else {
        burn::tensor::module::linear(x, weight, bias)
    }
}

/// Multi-head self-attention of `heads` heads over the tokens of `images` images, from their
/// projection `qkv` `[images * tokens, 3 * dim]`: queries (already scaled by
/// `1/sqrt(head_dim)`), keys and values, each as `heads` runs of `head_dim` columns. Returns
/// the context of the first `kept` tokens of each image, `[images * kept, dim]`, heads side by
/// side in each row, with `dropout` applied to the attention weights.
///
/// One operation on flex and ndarray where [`attention_is_fused`] says so, with the columns
/// put in head-lane order before it and back after; the model orders its weights instead
/// ([`attention_in_lanes`]) wherever they hold fewer values than these two copies would move.
/// Burn's batched products elsewhere.
pub fn attention(
    qkv: Tensor<2>,
    images: usize,
    heads: usize,
    kept: usize,
    dropout: &Dropout,
) -> Tensor<2> {
    let head_dim = qkv.dims()[1] / 3 / heads;
    if !attention_is_fused(&qkv, heads, head_dim, dropout) {
        return composed_attention(qkv, images, heads, kept, dropout);
    }
    let qkv = columns_in_lanes(qkv, heads, head_dim);
    let context = attention_in_lanes(qkv, images, heads, kept);
    columns_in_usual_order(context, heads, head_dim)
}

/// Whether [`attention_in_lanes`] can run for `heads` heads of `head_dim` values with
/// `dropout`, on the device and float type of `x` (the attention's input or its projection):
/// on flex and ndarray in `f32`, without dropout, for the head sizes the kernels are compiled
/// for.
pub fn attention_is_fused<const D: usize>(
    x: &Tensor<D>,
    heads: usize,
    head_dim: usize,
    dropout: &Dropout,
) -> bool {
    dropout.prob == 0.0
        && attention::supported(heads, head_dim)
        && routed(x)
        && runs_on_host(&x.device())
}

/// The columns of `x` `[rows, groups * heads * head_dim]` in the fused attention's head-lane
/// order: within each group of `heads * head_dim` columns (a query, key, value or context),
/// column `d * heads + h` holds the usual column `h * head_dim + d`, head `h`'s value `d`. Each
/// group's `[heads, head_dim]` transposed.
pub fn columns_in_lanes(x: Tensor<2>, heads: usize, head_dim: usize) -> Tensor<2> {
    transpose_groups(x, heads, head_dim, 1)
}

/// The inverse of [`columns_in_lanes`]: the columns of `x` back in the usual order.
pub fn columns_in_usual_order(x: Tensor<2>, heads: usize, head_dim: usize) -> Tensor<2> {
    transpose_groups(x, head_dim, heads, 1)
}

/// The rows of `weight` `[heads * head_dim, columns]`, a weight that reads a context, in
/// head-lane order ([`columns_in_lanes`]), so that it reads a context in that order.
pub fn rows_in_lanes(weight: Tensor<2>, heads: usize, head_dim: usize) -> Tensor<2> {
    let [rows, columns] = weight.dims();
    let flat = weight.reshape([1, rows * columns]);
    transpose_groups(flat, heads, head_dim, columns).reshape([rows, columns])
}

/// [`FusedOps::transpose_groups`] where the fused attention runs (one copy of `x`, on the
/// host), a transpose of Burn's elsewhere.
fn transpose_groups(x: Tensor<2>, rows: usize, columns: usize, width: usize) -> Tensor<2> {
    if routed(&x) && runs_on_host(&x.device()) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::transpose_groups(
            x.into_dispatch(),
            rows,
            columns,
            width,
        ));
    }
    let [n, m] = x.dims();
    x.reshape([n, m / (rows * columns * width), rows, columns, width])
        .swap_dims(2, 3)
        .reshape([n, m])
}

/// [`attention`] as one operation, from a projection whose queries, keys and values each have
/// their columns in head-lane order ([`columns_in_lanes`]), to a context in that order too.
/// Only where [`attention_is_fused`].
pub fn attention_in_lanes(qkv: Tensor<2>, images: usize, heads: usize, kept: usize) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_attention(
        qkv.into_dispatch(),
        images,
        heads,
        kept,
    ))
}

/// [`attention`] from Burn's operations.
pub fn composed_attention(
    qkv: Tensor<2>,
    images: usize,
    heads: usize,
    kept: usize,
    dropout: &Dropout,
) -> Tensor<2> {
    attention_and_weights(qkv, images, heads, kept, dropout).0
}

/// [`composed_attention`] and the attention weights `[images, heads, kept, tokens]` it used.
pub fn attention_and_weights(
    qkv: Tensor<2>,
    images: usize,
    heads: usize,
    kept: usize,
    dropout: &Dropout,
) -> (Tensor<2>, Tensor<4>) {
    let [rows, columns] = qkv.dims();
    let (tokens, dim) = (rows / images, columns / 3);
    let [query, key, value]: [Tensor<4>; 3] = qkv
        .reshape([images, tokens, 3 * heads, dim / heads])
        .swap_dims(1, 2) // [images, 3 * heads, tokens, head_dim]
        .chunk(3, 1)
        .try_into()
        .expect("three chunks of equal size");
    let query = query.narrow(2, 0, kept);
    let scores = query.matmul(key.transpose()); // [images, heads, kept, tokens]
    let weights = dropout.forward(softmax(scores));
    let context = weights
        .clone()
        .matmul(value) // [images, heads, kept, head_dim]
        .swap_dims(1, 2)
        .reshape([images * kept, dim]);
    (context, weights)
}

/// Whether `x` lives on a backend the extension is built for, in `f32`.
fn routed<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && supports(&x.device())
}

/// Whether `device` belongs to a CPU backend whose operations run on the host, mostly on one
/// thread each (flex, ndarray): the backends with host kernels here.
pub fn runs_on_host(device: &Device) -> bool {
    #[allow(unreachable_patterns)]
    match device.as_dispatch().clone().inner() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => true,
        _ => false,
    }
}

/// Whether this build of the crate runs [`layer_norm`] and [`softmax`] as fused operations on
/// `device` (with or without autodiff).
pub fn supports(device: &Device) -> bool {
    #[allow(unreachable_patterns)] // every variant is listed when every backend is built in
    match device.as_dispatch().clone().inner() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => true,
        #[cfg(feature = "tch")]
        DispatchDevice::LibTorch(_) => true,
        #[cfg(feature = "wgpu")]
        DispatchDevice::Cube(_) => true,
        _ => false,
    }
}

/// The backward step of a one-input operation that keeps one tensor of its forward pass (its
/// input for GELU, its output for softmax): the function turns that tensor and the gradient of
/// the output into the gradient of the input.
struct SavedTensorBackward<B: Backend>(fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>);

impl<B: Backend> std::fmt::Debug for SavedTensorBackward<B> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SavedTensorBackward")
    }
}

impl<B: FusedOps> Backward<B, 1> for SavedTensorBackward<B> {
    type State = FloatTensor<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = x_node {
            grads.register::<B>(node.id, (self.0)(ops.state, grad));
        }
    }
}

/// The backward step of [`FusedOps::fused_linear`], whose parents are the input, the weight and,
/// when `N` is 3, the bias.
#[derive(Debug)]
struct LinearBackward;

impl<B: FusedOps, const N: usize> Backward<B, N> for LinearBackward {
    /// The input, kept where the weight's gradient is wanted, and the weight, kept where the
    /// input's is.
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight) = ops.state;
        if let (Some(node), Some(weight)) = (&ops.parents[0], weight) {
            grads.register::<B>(node.id, B::linear_x_gradient(weight, grad.clone()));
        }
        if let (Some(node), Some(x)) = (&ops.parents[1], x) {
            grads.register::<B>(node.id, B::linear_weight_gradient(x, grad.clone()));
        }
        if let Some(Some(node)) = ops.parents.get(2) {
            grads.register::<B>(node.id, B::linear_bias_gradient(grad));
        }
    }
}

/// [`FusedOps::fused_linear`] on autodiff, recorded with the parents `nodes`: the input's and
/// the weight's, then the bias's when there is one.
fn tracked_linear<B: FusedOps, C: CheckpointStrategy, const N: usize>(
    nodes: [NodeGuard; N],
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<Autodiff<B, C>> {
    let (x_tracked, weight_tracked) = (x.is_tracked(), weight.is_tracked());
    let (x, weight) = (x.into_primitive(), weight.into_primitive());
    match LinearBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let kept_x = weight_tracked.then(|| x.clone());
            let kept_weight = x_tracked.then(|| weight.clone());
            prep.finish((kept_x, kept_weight), inner_linear::<B>(x, weight, bias))
        }
        OpsKind::UnTracked(prep) => prep.finish(inner_linear::<B>(x, weight, bias)),
    }
}

/// `B`'s [`FusedOps::fused_linear`], or its unbiased form without a bias.
fn inner_linear<B: FusedOps>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    match bias {
        Some(bias) => B::fused_linear(x, weight, bias),
        None => B::fused_linear_unbiased(x, weight),
    }
}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormBackward;

        impl<B: FusedOps> Backward<B, 3> for LayerNormBackward {
            /// The input, gamma and epsilon.
            type State = (NodeId, NodeId, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [x_node, gamma_node, beta_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, gamma_state, epsilon) = ops.state;
                let x = checkpointer.retrieve_node_output(x_state);
                let gamma = checkpointer.retrieve_node_output(gamma_state);
                let (grad_x, grad_gamma, grad_beta) =
                    B::layer_norm_backward(x, gamma, grad, epsilon);
                let registered = [
                    (x_node, grad_x),
                    (gamma_node, grad_gamma),
                    (beta_node, grad_beta),
                ];
                for (node, grad) in registered {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        match LayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&gamma), epsilon);
                let output = B::fused_layer_norm(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                prep.finish(state, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                epsilon,
            )),
        }
    }

    fn fused_attention(
        qkv: FloatTensor<Self>,
        images: usize,
        heads: usize,
        kept: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: FusedOps> Backward<B, 1> for AttentionBackward {
            /// The projection, the attention weights, and images, heads and kept tokens.
            type State = (FloatTensor<B>, FloatTensor<B>, [usize; 3]);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [qkv_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (qkv, weights, [images, heads, kept]) = ops.state;
                if let Some(node) = qkv_node {
                    let grad = B::attention_backward(qkv, weights, grad, images, heads, kept);
                    grads.register::<B>(node.id, grad);
                }
            }
        }

        match AttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let qkv = qkv.into_primitive();
                let (context, weights) =
                    B::attention_with_weights(qkv.clone(), images, heads, kept);
                prep.finish((qkv, weights, [images, heads, kept]), context)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_attention(
                qkv.into_primitive(),
                images,
                heads,
                kept,
            )),
        }
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node(), bias.node()];
        tracked_linear::<B, C, 3>(nodes, x, weight, Some(bias.into_primitive()))
    }

    fn fused_linear_unbiased(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        tracked_linear::<B, C, 2>([x.node(), weight.node()], x, weight, None)
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let backward = SavedTensorBackward::<B>(B::fused_gelu_backward);
        match backward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                prep.finish(x.clone(), B::fused_gelu(x))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_gelu(x.into_primitive())),
        }
    }

    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let backward = SavedTensorBackward::<B>(B::softmax_backward);
        match backward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::fused_softmax(x.into_primitive());
                prep.finish(output.clone(), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_softmax(x.into_primitive())),
        }
    }

    fn transpose_groups(
        x: FloatTensor<Self>,
        rows: usize,
        columns: usize,
        width: usize,
    ) -> FloatTensor<Self> {
        /// The gradient moves back: the transpose with `rows` and `columns` swapped.
        #[derive(Debug)]
        struct TransposeGroupsBackward;

        impl<B: FusedOps> Backward<B, 1> for TransposeGroupsBackward {
            /// `rows`, `columns` and `width` of the forward pass.
            type State = (usize, usize, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [x_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (rows, columns, width) = ops.state;
                if let Some(node) = x_node {
                    let moved_back = B::transpose_groups(grad, columns, rows, width);
                    grads.register::<B>(node.id, moved_back);
                }
            }
        }

        let prepared = TransposeGroupsBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let output = B::transpose_groups(x.into_primitive(), rows, columns, width);
        match prepared {
            OpsKind::Tracked(prep) => prep.finish((rows, columns, width), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// flex runs the linear layers' products itself (the module `linear`); every other operation
/// takes the trait's host kernels.
#[cfg(feature = "flex")]
impl FusedOps for burn::backend::Flex {
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        linear::linear(x, weight, Some(bias))
    }

    fn fused_linear_unbiased(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        linear::linear(x, weight, None)
    }

    fn linear_x_gradient(weight: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        linear::x_gradient(weight, grad)
    }

    fn linear_weight_gradient(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        linear::weight_gradient(x, grad)
    }

    fn linear_bias_gradient(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        linear::bias_gradient(grad)
    }
}

#[cfg(feature = "ndarray")]
impl FusedOps for burn::backend::NdArray {}

#[cfg(feature = "wgpu")]
impl FusedOps for burn::backend::Cube {
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as burn::backend::ops::ActivationOps<Self>>::gelu(x)
    }

    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as burn::backend::ops::ActivationOps<Self>>::gelu_backward(x, grad)
    }

    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Reading the tensors back to the host would cost more than the operations it saves.
        composed_layer_norm_backward::<Self>(x, gamma, grad, epsilon)
    }

    fn softmax_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_softmax_backward::<Self>(output, grad)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;

    /// `[rows, columns]` holding `0, 1, 2, …` row by row.
    fn counting(rows: usize, columns: usize) -> Tensor<2> {
        counting_on(rows, columns, &Device::flex())
    }

    fn counting_on(rows: usize, columns: usize, device: &Device) -> Tensor<2> {
        let values: Vec<f32> = (0..rows * columns).map(|value| value as f32).collect();
        Tensor::from_data(
            burn::tensor::TensorData::new(values, [rows, columns]),
            device,
        )
    }

    fn values(tensor: Tensor<2>) -> Vec<f32> {
        tensor.into_data().to_vec().unwrap()
    }

    /// Column `d * heads + h` in head-lane order is head `h`'s value `d`, usual column
    /// `h * head_dim + d`, in each group; the usual order undoes it; a weight's rows follow
    /// the same order as the columns.
    #[test]
    fn head_lane_order_transposes_each_group_of_heads() {
        let (heads, head_dim) = (4, 2);
        let x = counting(3, 2 * heads * head_dim); // two groups of 8 columns
        let lanes = values(columns_in_lanes(x.clone(), heads, head_dim));
        // Head h's value d: usual column h * 2 + d, lane column d * 4 + h.
        let first_row = [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15];
        let expected_row: Vec<f32> = first_row.iter().map(|&column| column as f32).collect();
        assert_eq!(&lanes[..16], &expected_row[..]);
        let back = columns_in_usual_order(
            columns_in_lanes(x.clone(), heads, head_dim),
            heads,
            head_dim,
        );
        assert_eq!(values(back), values(x));

        let weight = counting(heads * head_dim, 5);
        let rows = values(rows_in_lanes(weight.clone(), heads, head_dim));
        let by_columns = columns_in_lanes(weight.transpose(), heads, head_dim).transpose();
        assert_eq!(rows, values(by_columns));
    }

    /// The host kernel (f32) against Burn's reshape and transpose (f64 takes that path), and
    /// the gradient: the output's moved back to the input's places.
    #[test]
    fn the_host_transpose_and_its_gradient_agree_with_burns() {
        let (heads, head_dim) = (4, 2);
        let device = Device::flex().autodiff();
        let x = counting_on(3, 16, &device).require_grad();
        let factors = counting_on(3, 16, &device).sin();
        let lanes = columns_in_lanes(x.clone(), heads, head_dim);
        let gradients = (lanes.clone() * factors.clone()).sum().backward();
        let grad = x.grad(&gradients).expect("x takes part");

        let composed = columns_in_lanes(counting(3, 16).cast(DType::F64), heads, head_dim);
        assert_eq!(values(lanes.inner()), values(composed.cast(DType::F32)));
        let moved_back = columns_in_usual_order(factors.inner(), heads, head_dim);
        assert_eq!(values(grad), values(moved_back));
    }
}
