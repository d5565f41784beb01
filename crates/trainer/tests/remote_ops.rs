//! The layer operations on a compute server (`vit_ops::remote`): on a flex server hosted in
//! this process on loopback, each operation the model and its optimizer use, shipped as one
//! custom operation, gives the local flex result: LayerNorm, the linear layers, GELU, softmax,
//! the fused attention and its reordering, forward and backward, and one Adam step.
#![cfg(feature = "remote")]

use burn::nn::DropoutConfig;
use burn::optim::Optimizer;
use burn::server::{RemoteServer, WebSocketTransport};
use burn::tensor::{Device, Distribution, Tensor};
use vit_ops::functional::{layer_norm, linear};
use vit_ops::{Adam, AdamSettings, WeightDecay, gelu, softmax};

/// A remote device on a flex compute server with the layer operations, served from a thread of
/// this process until it exits.
fn remote_flex() -> Device {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let flex = Device::flex();
    let server = vit_ops::remote::with_layer_ops(RemoteServer::new([flex.clone()]), &flex);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime
            .block_on(server.serve_async(WebSocketTransport::from_listener(listener)))
            .unwrap();
    });
    let host = burn::remote::RemoteHost::websocket(&url);
    Device::remote_options(&host).init().unwrap()
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

fn assert_close(local: &[f32], remote: &[f32], what: &str) {
    assert_eq!(local.len(), remote.len(), "{what}: lengths");
    for (index, (a, b)) in local.iter().zip(remote).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
            "{what}[{index}]: local {a}, on the server {b}"
        );
    }
}

#[test]
fn the_layer_operations_on_a_compute_server_give_the_local_results() {
    let remote = remote_flex();
    assert!(
        vit_ops::supports(&remote),
        "a remote device runs the crate's operations"
    );
    let local = Device::flex();
    let normal = Distribution::Normal(0.0, 1.0);
    let inputs = Inputs {
        x: Tensor::random([4 * 6, 64], normal, &local),
        weight: Tensor::random([64, 3 * 64], normal, &local).mul_scalar(0.1),
        bias: Tensor::random([64], normal, &local),
        gamma: Tensor::random([64], normal, &local),
    };
    let (local_loss, local_grads) = block(&local, &inputs);
    let (remote_loss, remote_grads) = block(&remote, &inputs);
    assert_close(&local_loss, &remote_loss, "loss");
    for (name, (a, b)) in ["x", "weight", "bias", "gamma"]
        .iter()
        .zip(local_grads.iter().zip(&remote_grads))
    {
        assert!(
            a.iter().any(|value| *value != 0.0),
            "{name} gets a gradient"
        );
        assert_close(a, b, name);
    }
}

/// Three AdamW steps of one parameter: the server's one-pass update against flex's in-place one.
#[test]
fn an_adam_step_on_a_compute_server_gives_the_local_one() {
    let remote = remote_flex();
    let adam = Adam::new(AdamSettings {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        weight_decay: WeightDecay::Decoupled(0.05),
    });
    let local = Device::flex();
    let start = Tensor::<2>::random([7, 5], Distribution::Normal(0.0, 1.0), &local);
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
    assert_ne!(here, values(start), "the steps move it");
    assert_close(&here, &there, "parameter");
}
