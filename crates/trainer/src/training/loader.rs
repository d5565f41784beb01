//! The training loader: each pass over it is the next epoch of [`EpochClock`], in the order
//! and with the random draws that (seed, epoch) fix. On several devices each batch is split
//! between them: device `i` of `n` trains the `i`-th part of every batch a one-device run
//! trains, and its loss counts by its share of that batch, so a step's summed gradients are
//! the one-device step's, up to the order of float additions.

use std::ops::Range;
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder, DataLoaderIterator, Progress};
use burn::data::dataset::{Dataset, DatasetError};
use burn::prelude::*;
use vit_data::epochs::{EpochClock, EpochShuffled, epoch_seed};
use vit_data::{MnistBatch, MnistBatcher, MnistItem};

use crate::config::TrainingConfig;

/// The part of a step's batch one device trains, and the fraction of that batch it is.
#[derive(Clone, Debug)]
pub struct StepBatch {
    pub batch: MnistBatch,
    pub share: f32,
}

/// The loader of a run on `devices` devices (1: the whole batches).
pub fn epoch_loader(
    dataset: impl Dataset<MnistItem> + 'static,
    config: &TrainingConfig,
    clock: EpochClock,
    device: &Device,
    devices: usize,
) -> Arc<dyn DataLoader<StepBatch>> {
    let shuffled = Arc::new(EpochShuffled::new(dataset, config.seed, clock.clone()));
    let step_sizes = StepSizes {
        items: shuffled.len(),
        batch: config.batch_size,
    };
    let mut parts: Vec<Arc<dyn DataLoader<StepBatch>>> = (0..devices)
        .map(|part| {
            let inner = DataLoaderBuilder::new(MnistBatcher)
                .batch_size(part_range(config.batch_size, part, devices).len().max(1))
                .num_workers(config.num_workers)
                .build(PartOfBatches {
                    inner: shuffled.clone(),
                    batch: config.batch_size,
                    part,
                    parts: devices,
                });
            Arc::new(EpochLoader {
                inner,
                clock: clock.clone(),
                seed: config.seed,
                device: device.clone(),
                part,
                step_sizes,
            }) as Arc<dyn DataLoader<StepBatch>>
        })
        .collect();
    if devices == 1 {
        return parts.remove(0);
    }
    Arc::new(PartsLoader { parts })
}

/// Items `part_range(size, part, parts)` of a batch of `size` items go to device `part` of
/// `parts`: the first `size % parts` devices one item more than the others. A part never
/// grows when the batch shrinks, so the last, shorter batch of an epoch lines up with the rest.
pub fn part_range(size: usize, part: usize, parts: usize) -> Range<usize> {
    let (base, extra) = (size / parts, size % parts);
    let start = part * base + part.min(extra);
    start..start + base + usize::from(part < extra)
}

/// Device `part`'s items of each batch of `batch` items of `inner`, in order.
struct PartOfBatches<D> {
    inner: Arc<D>,
    batch: usize,
    part: usize,
    parts: usize,
}

impl<D: Dataset<MnistItem>> PartOfBatches<D> {
    /// The index in `inner` of this part's `index`-th item.
    fn source(&self, index: usize) -> usize {
        let per_batch = part_range(self.batch, self.part, self.parts).len();
        let full = self.inner.len() / self.batch;
        let step = (index / per_batch.max(1)).min(full);
        let size = self.batch.min(self.inner.len() - step * self.batch);
        step * self.batch + part_range(size, self.part, self.parts).start + index - step * per_batch
    }
}

impl<D: Dataset<MnistItem>> Dataset<MnistItem> for PartOfBatches<D> {
    /// Like slice indexing, an index past the end panics (or reads past the part).
    fn get(&self, index: usize) -> Result<MnistItem, DatasetError> {
        self.inner.get(self.source(index))
    }

    fn len(&self) -> usize {
        let (full, rest) = (self.inner.len() / self.batch, self.inner.len() % self.batch);
        full * part_range(self.batch, self.part, self.parts).len()
            + part_range(rest, self.part, self.parts).len()
    }
}

/// The sizes of an epoch's steps: `batch` items each, the last the rest of `items`.
#[derive(Clone, Copy)]
struct StepSizes {
    items: usize,
    batch: usize,
}

impl StepSizes {
    /// The whole batch of step `step` (0-based) of the epoch.
    fn of(self, step: usize) -> usize {
        self.batch.min(self.items.saturating_sub(step * self.batch))
    }
}

/// Each pass is the clock's next epoch, and the backend's random draws (dropout) in that
/// epoch are seeded from (seed, epoch).
struct EpochLoader {
    inner: Arc<dyn DataLoader<MnistBatch>>,
    clock: EpochClock,
    seed: u64,
    /// The device whose generator the epoch seeds: the first device's plain device, or the
    /// device of a later part.
    device: Device,
    /// Which device's part of each batch this loader gives. One pass over every part is one
    /// epoch: the first part's pass starts it.
    part: usize,
    step_sizes: StepSizes,
}

impl EpochLoader {
    fn around(
        &self,
        inner: Arc<dyn DataLoader<MnistBatch>>,
        device: &Device,
    ) -> Arc<dyn DataLoader<StepBatch>> {
        Arc::new(Self {
            inner,
            clock: self.clock.clone(),
            seed: self.seed,
            device: device.clone(),
            part: self.part,
            step_sizes: self.step_sizes,
        })
    }
}

impl DataLoader<StepBatch> for EpochLoader {
    /// Each device draws from a generator of its own, seeded from (seed, epoch, part).
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<StepBatch> + 'a> {
        let epoch = if self.part == 0 {
            self.clock.advance()
        } else {
            self.clock.current()
        };
        let seed = self.seed.wrapping_add(self.part as u64);
        self.device.seed(epoch_seed(seed, epoch));
        Box::new(Steps {
            inner: self.inner.iter(),
            step: 0,
            sizes: self.step_sizes,
        })
    }

    fn num_items(&self) -> usize {
        self.inner.num_items()
    }

    /// The first part keeps seeding the plain device it was made with, as on one device.
    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<StepBatch>> {
        let seeded = if self.part == 0 { &self.device } else { device };
        self.around(self.inner.to_device(device), seeded)
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<StepBatch>> {
        self.around(self.inner.slice(start, end), &self.device)
    }
}

/// The loader of a run on several devices, which burn-train's multi-device strategy only cuts
/// into one range of items per device (`split_dataloader`): range `i` of `n` is device `i`'s
/// part of every batch, so that the devices train the batches a one-device run trains.
struct PartsLoader {
    parts: Vec<Arc<dyn DataLoader<StepBatch>>>,
}

impl DataLoader<StepBatch> for PartsLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<StepBatch> + 'a> {
        panic!("a loader split between devices is iterated through its parts (`slice`)")
    }

    fn num_items(&self) -> usize {
        self.parts.iter().map(|part| part.num_items()).sum()
    }

    fn to_device(&self, _device: &Device) -> Arc<dyn DataLoader<StepBatch>> {
        panic!("a loader split between devices moves its parts to their devices")
    }

    fn slice(&self, start: usize, _end: usize) -> Arc<dyn DataLoader<StepBatch>> {
        let per_part = (self.num_items() / self.parts.len()).max(1);
        self.parts[(start / per_part).min(self.parts.len() - 1)].clone()
    }
}

/// A pass's batches, each with its share of its step's whole batch.
struct Steps<'a> {
    inner: Box<dyn DataLoaderIterator<MnistBatch> + 'a>,
    step: usize,
    sizes: StepSizes,
}

impl Iterator for Steps<'_> {
    type Item = Result<StepBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.inner.next()?;
        let whole = self.sizes.of(self.step);
        self.step += 1;
        Some(batch.map(|batch| {
            let share = batch.targets.dims()[0] as f32 / whole.max(1) as f32;
            StepBatch { batch, share }
        }))
    }
}

impl DataLoaderIterator<StepBatch> for Steps<'_> {
    fn progress(&self) -> Progress {
        self.inner.progress()
    }
}

#[cfg(test)]
mod tests {
    use burn::data::dataset::InMemDataset;

    use super::*;

    fn items(n: usize) -> Arc<InMemDataset<MnistItem>> {
        Arc::new(InMemDataset::new(
            (0..n)
                .map(|i| {
                    let mut pixels = [0; 784];
                    pixels[..2].copy_from_slice(&(i as u16).to_le_bytes());
                    MnistItem { pixels, label: 0 }
                })
                .collect(),
        ))
    }

    /// Every batch of every split is exactly the one-device batch, whatever the sizes.
    #[test]
    fn the_parts_of_each_batch_are_the_one_device_batch_in_order() {
        for (len, batch, parts) in [(100, 10, 2), (103, 10, 3), (7, 5, 4), (12, 3, 5), (1, 4, 2)] {
            let data = items(len);
            let split: Vec<Vec<usize>> = (0..parts)
                .map(|part| {
                    let part = PartOfBatches {
                        inner: data.clone(),
                        batch,
                        part,
                        parts,
                    };
                    let index = |item: MnistItem| {
                        usize::from(item.pixels[0]) + 256 * usize::from(item.pixels[1])
                    };
                    (0..part.len())
                        .map(|i| index(part.get(i).unwrap()))
                        .collect()
                })
                .collect();
            for step in 0..len.div_ceil(batch) {
                let mut joined: Vec<usize> = Vec::new();
                for (part, indices) in split.iter().enumerate() {
                    let per = part_range(batch, part, parts).len().max(1);
                    let start = (step * per).min(indices.len());
                    let size = StepSizes { items: len, batch }.of(step);
                    let take = part_range(size, part, parts).len();
                    joined.extend(&indices[start..start + take]);
                }
                let whole: Vec<usize> = (step * batch..(step * batch + batch).min(len)).collect();
                assert_eq!(
                    joined, whole,
                    "len {len}, batch {batch}, {parts} parts, step {step}"
                );
            }
            let total: usize = split.iter().map(Vec::len).sum();
            assert_eq!(total, len);
        }
    }

    #[test]
    fn a_part_never_grows_when_the_batch_shrinks() {
        for parts in 1..9 {
            for batch in 1..70 {
                for size in 0..batch {
                    for part in 0..parts {
                        let (small, full) = (
                            part_range(size, part, parts),
                            part_range(batch, part, parts),
                        );
                        assert!(
                            small.len() <= full.len(),
                            "{size} of {batch}, {part}/{parts}"
                        );
                    }
                }
            }
        }
    }
}
