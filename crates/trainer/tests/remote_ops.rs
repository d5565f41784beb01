//! The layer operations on a compute server (`vit_ops::remote`): on a server hosted in this
//! process on loopback, each operation the model and its optimizer use, shipped as one custom
//! operation, gives the result of the server's backend run locally: LayerNorm, the linear
//! layers, GELU, softmax, the fused attention and its reordering, forward and backward, a
//! whole encoder block, and three Adam steps. On a flex server (the host kernels), and on a
//! wgpu one where the build holds wgpu (the extension's defaults; lavapipe in CI).
#![cfg(feature = "remote")]

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::attention::{MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::transformer::{PositionWiseFeedForward, PositionWiseFeedForwardConfig};
use burn::nn::{DropoutConfig, LayerNorm, LayerNormConfig};
use burn::optim::Optimizer;
use burn::tensor::{Device, Distribution, Gradients, Tensor};
use vit_ops::functional::{layer_norm, linear};
use vit_ops::{Adam, AdamSettings, WeightDecay, gelu, softmax};
use vit_trainer::commands::compute_server;

/// A remote device on a compute server for `device` with the layer operations, served from a
/// thread of this process until it exits.
fn served(device: &Device) -> Device {
    compute_server::in_this_process(device).unwrap()
}

/// The backends a server of this build may host, each with the relative tolerance between a
/// result on the server and the same backend's local one: flex, and wgpu where it is built
/// in (its kernels may be autotuned differently between the two runs).
fn server_backends() -> Vec<(&'static str, Device, f32)> {
    #[allow(unused_mut)]
    let mut backends = vec![("flex", Device::flex(), 1e-5)];
    #[cfg(feature = "wgpu")]
    backends.push(("wgpu", Device::wgpu(Default::default()), 1e-4));
    backends
}

/// The inputs of [`block`]: the tokens `[4 * 6, 64]`, a weight `[64, 3 * 64]`, and two
/// vectors of 64 (the LayerNorm's gamma and a bias).
struct Inputs {
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    gamma: Tensor<1>,
}

/// `tensor` on `device`, tracked.
fn on<const D: usize>(tensor: &Tensor<D>, device: &Device) -> Tensor<D> {
    Tensor::from_data(tensor.to_data(), device).require_grad()
}

fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().unwrap()
}

/// An attention block with 8 heads of 8 (a size the fused kernel has) on 4 images of 6 tokens,
/// through every operation the crate ships: the loss, and the gradients of the tokens, the
/// weight, the bias and gamma.
fn block(device: &Device, inputs: &Inputs) -> (Vec<f32>, [Vec<f32>; 4]) {
    let device = device.clone().autodiff();
    let (x, weight) = (on(&inputs.x, &device), on(&inputs.weight, &device));
    let (bias, gamma) = (on(&inputs.bias, &device), on(&inputs.gamma, &device));
    let (images, heads, kept) = (4, 8, 5);
    let no_dropout = DropoutConfig::new(0.0).init();
    let normed = layer_norm(x.clone(), gamma.clone(), bias.clone(), 1e-5);
    let qkv = linear(normed, weight.clone(), None); // [images * 6, 3 * 64]
    let context = vit_ops::attention::attention(qkv, images, heads, kept, &no_dropout);
    let square = weight.clone().transpose().narrow(0, 0, 64);
    let hidden = gelu(linear(context, square, Some(bias.clone()))); // [images * kept, 64]
    let loss = (softmax(hidden) * x.clone().narrow(0, 0, images * kept)).sum();
    let gradients = loss.backward();
    let grads = [
        values(x.grad(&gradients).unwrap()),
        values(weight.grad(&gradients).unwrap()),
        values(bias.grad(&gradients).unwrap()),
        values(gamma.grad(&gradients).unwrap()),
    ];
    (values(loss), grads)
}

fn assert_close(local: &[f32], remote: &[f32], tolerance: f32, what: &str) {
    assert_eq!(local.len(), remote.len(), "{what}: lengths");
    for (index, (a, b)) in local.iter().zip(remote).enumerate() {
        assert!(
            (a - b).abs() <= tolerance * (1.0 + a.abs()),
            "{what}[{index}]: local {a}, on the server {b}"
        );
    }
}

#[test]
fn the_layer_operations_on_a_compute_server_give_the_local_results() {
    for (backend, local, tolerance) in server_backends() {
        let remote = served(&local);
        assert!(
            vit_ops::supports(&remote),
            "a remote device runs the crate's operations"
        );
        let normal = Distribution::Normal(0.0, 1.0);
        let host = Device::flex();
        let inputs = Inputs {
            x: Tensor::random([4 * 6, 64], normal, &host),
            weight: Tensor::random([64, 3 * 64], normal, &host).mul_scalar(0.1),
            bias: Tensor::random([64], normal, &host),
            gamma: Tensor::random([64], normal, &host),
        };
        let (local_loss, local_grads) = block(&local, &inputs);
        let (remote_loss, remote_grads) = block(&remote, &inputs);
        assert_close(
            &local_loss,
            &remote_loss,
            tolerance,
            &format!("{backend}: loss"),
        );
        for (name, (a, b)) in ["x", "weight", "bias", "gamma"]
            .iter()
            .zip(local_grads.iter().zip(&remote_grads))
        {
            assert!(
                a.iter().any(|value| *value != 0.0),
                "{backend}: {name} gets a gradient"
            );
            assert_close(a, b, tolerance, &format!("{backend}: {name}"));
        }
    }
}

/// Three AdamW steps of one parameter: the server's one-pass update against the backend's
/// local one.
#[test]
fn an_adam_step_on_a_compute_server_gives_the_local_one() {
    let adam = Adam::new(AdamSettings {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        weight_decay: WeightDecay::Decoupled(0.05),
    });
    for (backend, local, tolerance) in server_backends() {
        let remote = served(&local);
        let start = Tensor::<2>::random([7, 5], Distribution::Normal(0.0, 1.0), &Device::flex());
        let run = |device: &Device| {
            let mut parameter = Tensor::<2>::from_data(start.to_data(), device);
            let mut state = None;
            for step in 1..=3 {
                let grad = parameter.clone().sin().mul_scalar(step as f32);
                (parameter, state) = adam.step(1e-2, parameter, grad, state);
            }
            values(parameter)
        };
        let (here, there) = (run(&local), run(&remote));
        assert_ne!(here, values(start), "{backend}: the steps move it");
        assert_close(&here, &there, tolerance, &format!("{backend}: parameter"));
    }
}

/// A pre-norm encoder block (the tutorial's sizes: 64 wide, 8 heads, an MLP of 128).
#[derive(Module, Debug)]
struct EncoderBlock {
    attention_norm: LayerNorm,
    attention: MultiHeadAttention,
    mlp_norm: LayerNorm,
    mlp: PositionWiseFeedForward,
}

/// The gradients of every parameter of a module, in `gradients`, in the module's order.
struct ParameterGradients<'a> {
    gradients: &'a Gradients,
    values: Vec<Vec<f32>>,
}

impl ModuleVisitor for ParameterGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let grad = param
            .grad(self.gradients)
            .expect("every parameter takes part");
        self.values.push(values(grad));
    }
}

/// The block's layers one by one, as the model runs them off a compute server: the first
/// `kept` tokens of each of `images` images come out.
fn in_layers(block: &EncoderBlock, x: Tensor<2>, images: usize, kept: usize) -> Tensor<2> {
    let [rows, dim] = x.dims();
    let normed = vit_ops::layer_norm(&block.attention_norm, x.clone(), 1e-5);
    let attended = vit_ops::self_attention(&block.attention, normed, images, kept);
    let first = x.reshape([images, rows / images, dim]).narrow(1, 0, kept);
    let x = first.reshape([images * kept, dim]) + attended;
    let normed = vit_ops::layer_norm(&block.mlp_norm, x.clone(), 1e-5);
    let hidden = gelu(vit_ops::linear(&block.mlp.linear_inner, normed));
    x + vit_ops::linear(&block.mlp.linear_outer, hidden)
}

/// An encoder block on a server is one operation forward and one backward
/// (`vit_ops::block`): its output and the gradients of its input and of all thirteen
/// parameters are those of its layers run one by one on the server's backend locally,
/// keeping every token and only the first (the last block's case).
#[test]
fn an_encoder_block_on_a_compute_server_gives_its_layers_results() {
    for (backend, local, tolerance) in server_backends() {
        let remote = served(&local);
        let host = Device::flex().autodiff();
        let block = EncoderBlock {
            attention_norm: LayerNormConfig::new(64).init(&host),
            // As the model's: no bias on the queries, keys and values.
            attention: MultiHeadAttentionConfig::new(64, 8)
                .with_dropout(0.0)
                .with_query_bias(false)
                .with_key_bias(false)
                .with_value_bias(false)
                .init(&host),
            mlp_norm: LayerNormConfig::new(64).init(&host),
            mlp: PositionWiseFeedForwardConfig::new(64, 128)
                .with_dropout(0.0)
                .init(&host),
        };
        let (images, tokens) = (5, 17);
        let normal = Distribution::Normal(0.0, 1.0);
        let x = Tensor::<2>::random([images * tokens, 64], normal, &Device::flex());
        for kept in [tokens, 1] {
            let factors = Tensor::<2>::random([images * kept, 64], normal, &Device::flex());
            let run = |device: &Device, on_server: bool| {
                let block = block.clone().fork(&device.clone().autodiff());
                let x = on(&x, &device.clone().autodiff());
                let layers = vit_ops::EncoderLayers {
                    attention_norm: &block.attention_norm,
                    attention: &block.attention,
                    mlp_norm: &block.mlp_norm,
                    mlp: &block.mlp,
                };
                let one_operation = vit_ops::encoder_block(&layers, &x, images, kept, 1e-5);
                assert_eq!(
                    one_operation.is_some(),
                    on_server,
                    "{backend}: one operation"
                );
                let output =
                    one_operation.unwrap_or_else(|| in_layers(&block, x.clone(), images, kept));
                let factors = on(&factors, &device.clone().autodiff());
                let gradients = (output.clone() * factors).sum().backward();
                let mut collected = ParameterGradients {
                    gradients: &gradients,
                    values: vec![values(output), values(x.grad(&gradients).unwrap())],
                };
                block.visit(&mut collected);
                collected.values
            };
            let (here, there) = (run(&local, false), run(&remote, true));
            assert_eq!(
                here.len(),
                2 + 13,
                "{backend}: output, input and parameters"
            );
            for (index, (a, b)) in here.iter().zip(&there).enumerate() {
                assert!(
                    a.iter().any(|value| *value != 0.0),
                    "{backend}: value {index}"
                );
                let what = format!("{backend}, kept {kept}: value {index}");
                assert_close(a, b, tolerance, &what);
            }
        }
    }
}
