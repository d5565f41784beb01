//! The data pipeline alone: fetching items, augmenting them and batching them into tensors on
//! the flex device, per batch of 100 (the tutorial's batch). Compare with the model crate's
//! `train_step` bench: the pipeline must be much faster than a training step.
//!
//! Uses the real training set from `$MNIST_DIR` or `../shared/data/mnist` when present, else
//! synthetic images (the work per image is the same).

use std::path::PathBuf;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, InMemDataset};
use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vit_data::augment::{AugmentConfig, AugmentedDataset};
use vit_data::epochs::EpochClock;
use vit_data::{DataConfig, MnistBatcher, MnistDataset, MnistItem, Split};

const BATCH: usize = 100;

fn training_items() -> Vec<MnistItem> {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    let dir = std::env::var_os("MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or(shared);
    match MnistDataset::load(&dir, Split::Train, &DataConfig::default()) {
        Ok(set) => (0..10_000).map(|i| set.get(i).unwrap()).collect(),
        Err(_) => (0..10_000)
            .map(|i| MnistItem {
                pixels: std::array::from_fn(|p| ((i * 31 + p * 7) % 256) as u8),
                label: (i % 10) as u8,
            })
            .collect(),
    }
}

/// One batch, as a loader worker makes it: `BATCH` items spread over the set, then tensors.
fn batch_from(dataset: &impl Dataset<MnistItem>, step: usize, device: &Device) -> Tensor<4> {
    let items = (0..BATCH)
        .map(|i| {
            dataset
                .get((step * BATCH + i * 97) % dataset.len())
                .unwrap()
        })
        .collect();
    MnistBatcher.batch(items, device).images
}

fn pipeline(c: &mut Criterion) {
    let device = Device::flex();
    let items = training_items();
    let plain = InMemDataset::new(items.clone());
    let augment = AugmentConfig {
        rotation_degrees: 10.0,
        translate_pixels: 2.0,
        scale: 0.1,
        ..AugmentConfig::default()
    };
    let elastic = AugmentConfig {
        elastic_alpha: 34.0,
        elastic_sigma: 4.0,
        ..augment.clone()
    };
    let distorted = AugmentedDataset::new(
        InMemDataset::new(items.clone()),
        elastic,
        1,
        EpochClock::starting_at(1),
    );
    let augmented = AugmentedDataset::new(
        InMemDataset::new(items),
        augment,
        1,
        EpochClock::starting_at(1),
    );

    let mut group = c.benchmark_group("data_pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut step = 0;
    group.bench_function("load_and_batch", |b| {
        b.iter(|| {
            step += 1;
            batch_from(&plain, step, &device)
        })
    });
    group.bench_function("load_augment_and_batch", |b| {
        b.iter(|| {
            step += 1;
            batch_from(&augmented, step, &device)
        })
    });
    group.bench_function("load_augment_elastic_and_batch", |b| {
        b.iter(|| {
            step += 1;
            batch_from(&distorted, step, &device)
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
