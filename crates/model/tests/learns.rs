//! A few hundred optimiser steps' worth of evidence that the network can learn: on synthetic
//! images whose class is the row of a bright bar, a short run with Adam cuts the loss sharply.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use vit_model::VitConfig;

/// `count` images `[count, 1, 28, 28]`: image i has a bright bar on row 2 + 2·(i mod 10).
fn bars(count: usize, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let mut pixels = vec![-0.4f32; count * 784];
    let labels: Vec<i64> = (0..count as i64).map(|i| i % 10).collect();
    for (i, label) in labels.iter().enumerate() {
        let row = 2 + 2 * *label as usize;
        for col in 4..24 {
            pixels[i * 784 + row * 28 + col] = 2.8;
        }
    }
    (
        Tensor::from_data(TensorData::new(pixels, [count, 1, 28, 28]), device),
        Tensor::from_data(TensorData::new(labels, [count]), device),
    )
}

#[test]
fn a_short_run_makes_the_loss_fall() {
    let device = Device::flex().autodiff();
    device.seed(3);
    let config = VitConfig {
        dim: 32,
        depth: 2,
        heads: 4,
        mlp_dim: 64,
        ..VitConfig::tutorial()
    };
    let mut model = config.init(&device).unwrap();
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let (images, labels) = bars(300, &device);

    let mut losses = Vec::new();
    for _epoch in 0..6 {
        for start in (0..300).step_by(50) {
            let batch_images = images.clone().narrow(0, start, 50);
            let batch_labels = labels.clone().narrow(0, start, 50);
            let loss = loss_fn.forward(model.forward(batch_images), batch_labels);
            losses.push(loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(3e-3, model, grads);
        }
    }

    let first = losses[0];
    let last = *losses.last().unwrap();
    assert!(
        first > 1.5,
        "an untrained model is near chance (ln 10 ≈ 2.3), got {first}"
    );
    assert!(
        last < 0.5 * first,
        "loss should at least halve: {first} → {last} ({losses:?})"
    );
}
