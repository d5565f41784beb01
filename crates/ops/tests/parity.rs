//! The operations of this crate against Burn's own on every compiled-in backend: values and
//! gradients of LayerNorm, softmax, GELU, the linear layer and the attention (tensor level and
//! as Burn's `MultiHeadAttention` layer), and the in-place Adam against Burn's Adam and AdamW.
//! The workspace's test build (`cargo xtask test`) holds every backend; a plain `cargo test -p
//! vit-ops` checks flex and ndarray.

use burn::nn::attention::{MhaInput, MultiHeadAttentionConfig};
use burn::nn::{Linear, LinearConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use vit_ops::{Adam, AdamSettings, WeightDecay};

/// Every backend this test binary was built with, by name.
fn backends() -> Vec<(&'static str, Device)> {
    vit_ops::compiled_devices()
}

fn floats<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Fused and composed results may differ this much relative to the largest value (at least 1):
/// float32, summed in other orders.
const FUSED_TOLERANCE: f32 = 1e-5;

/// Deterministic values in [-2, 2] that vary along every dimension.
fn wavy<const D: usize>(shape: [usize; D], phase: f32, device: &Device) -> Tensor<D> {
    let count = shape.iter().product::<usize>();
    let values: Vec<f32> = (0..count)
        .map(|i| 2.0 * (i as f32 * 0.37 + phase).sin() * (i as f32 * 0.011).cos())
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// The output of `op` and the gradients of `Σ output · weights` for each input, as host values.
fn values_and_gradients<const D: usize, const N: usize>(
    inputs: &[Tensor<D>; N],
    weights: &Tensor<D>,
    op: impl Fn(&[Tensor<D>; N]) -> Tensor<D>,
) -> Vec<Vec<f32>> {
    let inputs = inputs.clone().map(|input| input.require_grad());
    let output = op(&inputs);
    let grads = (output.clone() * weights.clone()).sum().backward();
    let mut results = vec![floats(output)];
    results.extend(
        inputs
            .iter()
            .map(|input| floats(input.grad(&grads).unwrap())),
    );
    results
}

fn assert_close(what: &str, fused: &[Vec<f32>], composed: &[Vec<f32>]) {
    for (index, (fused, composed)) in fused.iter().zip(composed).enumerate() {
        let diff = max_abs_diff(fused, composed);
        let scale = composed
            .iter()
            .fold(1.0f32, |max, value| max.max(value.abs()));
        assert!(
            diff <= FUSED_TOLERANCE * scale,
            "{what}, result {index}: differs by {diff:e} at values up to {scale}"
        );
    }
}

/// The fused LayerNorm, softmax and GELU give Burn's own results and gradients on every
/// backend, over more rows than one task of the host kernels takes.
#[test]
fn fused_operations_match_burns_composed_ones_on_every_backend() {
    let (rows, features) = (150, 24);
    for (name, device) in backends() {
        assert!(
            vit_ops::supports(&device),
            "{name}: the fused path is built in"
        );
        let device = device.autodiff();
        let x = wavy([rows, features], 0.0, &device);
        // gamma and beta as rows broadcast to x's shape, so both sides share one input type.
        let gamma = wavy([1, features], 1.0, &device);
        let beta = wavy([1, features], 2.0, &device);
        let weights = wavy([rows, features], 3.0, &device);
        let inputs = [x.clone(), gamma, beta];
        let fused = values_and_gradients(&inputs, &weights, |[x, gamma, beta]| {
            vit_ops::functional::layer_norm(
                x.clone(),
                gamma.clone().reshape([features]),
                beta.clone().reshape([features]),
                1e-5,
            )
        });
        let composed = values_and_gradients(&inputs, &weights, |[x, gamma, beta]| {
            burn::tensor::module::layer_norm(
                x.clone(),
                gamma.clone().reshape([features]),
                Some(beta.clone().reshape([features])),
                1e-5,
            )
        });
        let what = format!("layer norm on {name} (results: output, then each input's gradient)");
        assert_close(&what, &fused, &composed);

        let scores = wavy([3, 2, 17, 17], 4.0, &device).mul_scalar(3.0);
        let weights = wavy([3, 2, 17, 17], 5.0, &device);
        let fused = values_and_gradients(&[scores.clone()], &weights, |[x]| {
            vit_ops::softmax(x.clone())
        });
        let composed = values_and_gradients(&[scores], &weights, |[x]| {
            burn::tensor::activation::softmax(x.clone(), 3)
        });
        let what = format!("softmax on {name} (results: output, then the input's gradient)");
        assert_close(&what, &fused, &composed);

        // GELU over [-7, 7], where the exact CDF's tails matter. Burn's default
        // `gelu_backward` (ndarray's, wgpu's) differentiates the tanh approximation instead of
        // the exact GELU its forward pass computes, off by up to 2e-3; where the fused GELU
        // runs (flex, ndarray) it is held to flex's exact gradient, elsewhere it is Burn's.
        let gelu_of = |device: &Device, op: &dyn Fn(Tensor<2>) -> Tensor<2>| {
            let x = wavy([rows, features], 8.0, device).mul_scalar(3.5);
            let weights = wavy([rows, features], 9.0, device);
            values_and_gradients(&[x], &weights, |[x]| op(x.clone()))
        };
        let fused = gelu_of(&device, &|x| vit_ops::gelu(x));
        let reference = if vit_ops::runs_on_host(&device) {
            Device::flex().autodiff()
        } else {
            device.clone()
        };
        let composed = gelu_of(&reference, &|x| burn::tensor::activation::gelu(x));
        let what = format!("GELU on {name} (results: output, then the input's gradient)");
        assert_close(&what, &fused, &composed);
        println!("{name}: fused LayerNorm, softmax and GELU agree with Burn's");
    }
}

/// The fused self-attention gives the composed form's context and projection gradient
/// on every backend: all tokens kept (every block but the last) and only the class token (the
/// last block), over more images than one task of the host kernels takes, with 8 heads of 8
/// (the tutorial) and 2 heads of 16.
#[test]
fn fused_attention_matches_burns_composed_one_on_every_backend() {
    let no_dropout = burn::nn::DropoutConfig::new(0.0).init();
    for (name, device) in backends() {
        let device = device.autodiff();
        for (images, tokens, heads, head_dim, kept) in
            [(11, 17, 8, 8, 17), (11, 17, 8, 8, 1), (5, 50, 2, 16, 50)]
        {
            let rows = images * tokens;
            let columns = 3 * heads * head_dim;
            let qkv = wavy([rows, columns], 6.0, &device);
            let weights = wavy([images * kept, heads * head_dim], 7.0, &device);
            let fused = values_and_gradients(&[qkv.clone()], &weights, |[qkv]| {
                vit_ops::attention::attention(qkv.clone(), images, heads, kept, &no_dropout)
            });
            let composed = values_and_gradients(&[qkv], &weights, |[qkv]| {
                vit_ops::attention::composed_attention(
                    qkv.clone(),
                    images,
                    heads,
                    kept,
                    &no_dropout,
                )
                .0
            });
            let what = format!(
                "attention on {name}, {images} images × {tokens} tokens, {heads} heads of \
                 {head_dim}, {kept} kept (results: context, then the projection's gradient)"
            );
            assert_close(&what, &fused, &composed);
        }
        println!("{name}: fused attention agrees with Burn's batched products");
    }
}

/// The model's linear layer (its own backward step, and on flex its own products) gives Burn's
/// `linear` and its gradients for the input, the weight and the bias on every backend: with and
/// without a bias, for a small product and (on the host backends) one large enough to be split
/// across the pool, and for an input read through transposed strides.
#[test]
fn fused_linear_matches_burns_on_every_backend() {
    type Linear = fn(Tensor<2>, Tensor<2>, Option<Tensor<1>>) -> Tensor<2>;
    let (fused, composed): (Linear, Linear) =
        (vit_ops::functional::linear, burn::tensor::module::linear);
    for (name, device) in backends() {
        let device = device.autodiff();
        // The product large enough to be split across the pool only where the split is the
        // model's own (flex); on wgpu each new shape is autotuned, which takes a while.
        let large = (900, 64, 192);
        let host = vit_ops::runs_on_host(&device);
        let sizes = if host {
            vec![(30, 7, 5), large]
        } else {
            vec![(30, 7, 5)]
        };
        for (rows, inputs, outputs) in sizes {
            let x = wavy([rows, inputs], 10.0, &device);
            let x_transposed = wavy([inputs, rows], 11.0, &device);
            let weight = wavy([inputs, outputs], 12.0, &device);
            let bias = wavy([1, outputs], 13.0, &device);
            let weights = wavy([rows, outputs], 14.0, &device);
            let what = |case: &str| {
                format!(
                    "linear {case} on {name}, [{rows}, {inputs}] · [{inputs}, {outputs}] \
                     (results: output, then the gradients of input, weight and bias)"
                )
            };

            let biased = |linear: Linear, x: &Tensor<2>| {
                let inputs = [x.clone(), weight.clone(), bias.clone()];
                values_and_gradients(&inputs, &weights, |[x, weight, bias]| {
                    let x = if x.dims()[0] == rows {
                        x.clone()
                    } else {
                        x.clone().transpose()
                    };
                    linear(x, weight.clone(), Some(bias.clone().reshape([outputs])))
                })
            };
            let with_bias = (biased(fused, &x), biased(composed, &x));
            assert_close(&what("with a bias"), &with_bias.0, &with_bias.1);
            let transposed = (
                biased(fused, &x_transposed),
                biased(composed, &x_transposed),
            );
            assert_close(&what("of a transposed input"), &transposed.0, &transposed.1);

            let unbiased = |linear: Linear| {
                let inputs = [x.clone(), weight.clone()];
                values_and_gradients(&inputs, &weights, |[x, weight]| {
                    linear(x.clone(), weight.clone(), None)
                })
            };
            assert_close(
                &what("without a bias"),
                &unbiased(fused),
                &unbiased(composed),
            );
        }
        println!("{name}: the fused linear layer agrees with Burn's");
    }
}

/// A small module for optimiser checks: its weight and bias are parameters of rank 2 and 1.
fn linear_with_gradients(model: &Linear, device: &Device, phase: f32) -> GradientsParams {
    let input = wavy([5, 7], phase, device);
    let loss = model.forward(input).powf_scalar(2.0).sum();
    GradientsParams::from_grads(loss.backward(), model)
}

fn parameters(model: &Linear) -> Vec<Vec<f32>> {
    let bias = model.bias.as_ref().expect("the linear layer has a bias");
    vec![floats(model.weight.val()), floats(bias.val())]
}

/// The in-place Adam gives Burn's Adam's and AdamW's parameters over three steps on every
/// backend, and picks up Burn's optimiser state from a record, as `train --resume` does with a
/// checkpoint of an older run.
#[test]
#[allow(deprecated)] // Device::libtorch: tch is deprecated upstream; this project still supports it.
fn trainer_adam_matches_burns_on_every_backend() {
    #[cfg(feature = "tch")]
    assert!(
        vit_ops::adam::fused_on(&Device::libtorch()),
        "tch: the fused update is built in"
    );
    #[cfg(feature = "flex")]
    assert!(
        vit_ops::adam::fused_on(&Device::flex()),
        "flex: the fused update is built in"
    );
    let decays = [
        WeightDecay::None,
        WeightDecay::L2(0.1),
        WeightDecay::Decoupled(0.1),
    ];
    for (name, device) in backends() {
        let device = device.autodiff();
        for weight_decay in decays {
            let settings = AdamSettings {
                beta_1: 0.9,
                beta_2: 0.99,
                epsilon: 1e-8,
                weight_decay,
            };
            let mut burns = match weight_decay {
                WeightDecay::Decoupled(rate) => AdamWConfig::new()
                    .with_beta_2(0.99)
                    .with_epsilon(1e-8)
                    .with_weight_decay(rate)
                    .init(),
                WeightDecay::L2(rate) => AdamConfig::new()
                    .with_beta_2(0.99)
                    .with_epsilon(1e-8)
                    .with_weight_decay(Some(WeightDecayConfig::new(rate)))
                    .init(),
                WeightDecay::None => AdamConfig::new()
                    .with_beta_2(0.99)
                    .with_epsilon(1e-8)
                    .init(),
            };
            let step = |optimiser: &mut ModuleOptimizer, model: Linear, phase: f32| {
                let grads = linear_with_gradients(&model, &device, phase);
                optimiser.step(1e-2, model, grads)
            };
            let mut ours = ModuleOptimizer::from(Adam::new(settings));
            let start = LinearConfig::new(7, 3).init(&device);
            let initial = parameters(&start);
            let (mut by_burn, mut by_us) = (start.clone(), start);
            for phase in [0.0, 1.0] {
                by_burn = step(&mut burns, by_burn, phase);
                by_us = step(&mut ours, by_us, phase);
            }
            // A third optimiser takes over Burn's state for the last step.
            let mut resumed =
                ModuleOptimizer::from(Adam::new(settings)).load_record(burns.to_record());
            let by_resumed = step(&mut resumed, by_burn.clone(), 2.0);
            by_burn = step(&mut burns, by_burn, 2.0);
            by_us = step(&mut ours, by_us, 2.0);
            let expected = parameters(&by_burn);
            assert_close(
                &format!("Adam with {weight_decay:?} on {name} (results: weight, bias)"),
                &parameters(&by_us),
                &expected,
            );
            assert_close(
                &format!("Adam with {weight_decay:?} on {name}, resumed from Burn's record"),
                &parameters(&by_resumed),
                &expected,
            );
            // Three steps at lr 1e-2 move the weights far more than the tolerance.
            let moved = max_abs_diff(&parameters(&by_us)[0], &initial[0]);
            assert!(
                moved > 1e-2,
                "Adam with {weight_decay:?} on {name}: moved {moved}"
            );
            // burn-train's Learner holds the model while the optimiser steps a clone of it: the
            // held parameters keep their values, the stepped clone's move.
            let held = parameters(&by_us);
            let stepped = step(&mut ours, by_us.clone(), 3.0);
            assert_eq!(
                parameters(&by_us),
                held,
                "Adam with {weight_decay:?} on {name} wrote into a held parameter"
            );
            assert!(max_abs_diff(&parameters(&stepped)[0], &held[0]) > 0.0);
        }
        println!("{name}: the in-place Adam agrees with Burn's");
    }
}

/// The layer-level attention on Burn's own `MultiHeadAttention` parameters gives that layer's
/// `forward` and its input gradient on every backend (the scale folded into the query weights
/// and the lane orders are this crate's business, not the caller's): every token kept, and the
/// class token only, as the model's last block asks; the with-weights form gives Burn's
/// attention weights too.
#[test]
fn self_attention_matches_burns_multi_head_attention_on_every_backend() {
    let (images, tokens, dim, heads) = (6, 17, 64, 8);
    for (name, device) in backends() {
        let device = device.autodiff();
        let layer = MultiHeadAttentionConfig::new(dim, heads)
            .with_dropout(0.0)
            .with_query_bias(false)
            .with_key_bias(false)
            .with_value_bias(false)
            .init(&device);
        let x = wavy([images * tokens, dim], 15.0, &device);
        for kept in [tokens, 1] {
            let weights = wavy([images * kept, dim], 16.0, &device);
            let ours = values_and_gradients(&[x.clone()], &weights, |[x]| {
                vit_ops::self_attention(&layer, x.clone(), images, kept)
            });
            let burns = values_and_gradients(&[x.clone()], &weights, |[x]| {
                let input = x.clone().reshape([images, tokens, dim]);
                let context = layer.forward(MhaInput::self_attn(input)).context;
                context.narrow(1, 0, kept).reshape([images * kept, dim])
            });
            let what = format!(
                "self-attention on {name}, {kept} of {tokens} tokens kept (results: output, \
                 then the input's gradient)"
            );
            assert_close(&what, &ours, &burns);
        }
        let (context, weights) = vit_ops::self_attention_with_weights(&layer, x.clone(), images);
        let burns = layer.forward(MhaInput::self_attn(x.reshape([images, tokens, dim])));
        let what = format!("self-attention with weights on {name} (results: context, weights)");
        assert_close(
            &what,
            &[floats(context), floats(weights)],
            &[
                floats(burns.context.reshape([images * tokens, dim])),
                floats(burns.weights),
            ],
        );
        println!("{name}: the layer-level self-attention agrees with Burn's MultiHeadAttention");
    }
}
