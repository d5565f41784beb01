//! One training step of the tutorial model at the tutorial's batch (100): forward, backward and
//! an Adam update, on flex. The data pipeline bench (`vit-data`, `pipeline`) is measured against it.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Distribution;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vit_model::VitConfig;

const BATCH: usize = 100;

fn train_step(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    device.seed(0);
    let mut model = Some(VitConfig::tutorial().init(&device).unwrap());
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let images = Tensor::<4>::random([BATCH, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let labels = Tensor::<1, Int>::from_data(
        TensorData::new((0..BATCH as i64).map(|i| i % 10).collect(), [BATCH]),
        &device,
    );

    let mut group = c.benchmark_group("training");
    group
        .throughput(Throughput::Elements(BATCH as u64))
        .sample_size(20);
    group.bench_function("tutorial_step_flex", |b| {
        b.iter(|| {
            let current = model.take().unwrap();
            let loss = loss_fn.forward(current.forward(images.clone()), labels.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &current);
            model = Some(optimizer.step(3e-3, current, grads));
        })
    });
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
