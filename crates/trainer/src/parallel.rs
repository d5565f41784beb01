//! Data parallelism inside one training step: on the CPU backends that run most operations on
//! one thread, the batch is cut into slices that run forward and backward side by side.
//!
//! Each slice runs on a fork of the model (its own autodiff graph, so that the backward passes
//! do not queue on one graph's lock), with its loss weighted by its share of the batch: the sum
//! of the slices' gradients is the whole batch's, up to the order of float additions.

use std::ops::Range;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

/// Fewest images in a slice: below this, a slice's own overhead would outweigh the thread.
const MIN_SLICE: usize = 16;

/// How many slices a training batch of `batch` images is cut into on `device`: one per core
/// on flex and ndarray, none (1) on libtorch and GPUs, which parallelise each operation
/// themselves (tch measured slower with slices: 49 against 36 ms a step).
pub fn step_slices(device: &Device, batch: usize) -> usize {
    if !vit_model::fused::runs_on_host(device) {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.min(batch / MIN_SLICE).max(1)
}

/// `0..batch` cut into `slices` ranges whose lengths differ by at most one.
fn ranges(batch: usize, slices: usize) -> Vec<Range<usize>> {
    let slices = slices.clamp(1, batch.max(1));
    (0..slices)
        .map(|slice| slice * batch / slices..(slice + 1) * batch / slices)
        .collect()
}

/// The gradients of the mean loss over a batch of `batch` items, computed in `slices` slices
/// on threads of their own (on the calling thread when `slices` is 1); that mean loss,
/// detached; and, for each slice in order, what `slice_loss` returned besides its loss.
///
/// `slice_loss(model, range)` runs the model on the items in `range` and returns their mean
/// loss and anything else the caller wants back (outputs for the metrics).
pub fn sliced_gradients<M, T, F>(
    model: &M,
    batch: usize,
    slices: usize,
    slice_loss: F,
) -> (GradientsParams, Tensor<1>, Vec<T>)
where
    M: Module,
    T: Send,
    F: Fn(&M, Range<usize>) -> (Tensor<1>, T) + Sync,
{
    let ranges = ranges(batch, slices);
    if ranges.len() == 1 {
        let (loss, rest) = slice_loss(model, 0..batch);
        let gradients = GradientsParams::from_grads(loss.backward(), model);
        return (gradients, loss.detach(), vec![rest]);
    }
    let device = model
        .devices()
        .into_iter()
        .next()
        .expect("a model with parameters has a device");
    let slice_loss = &slice_loss;
    let results: Vec<(GradientsParams, Tensor<1>, T)> = std::thread::scope(|scope| {
        let handles: Vec<_> = ranges
            .into_iter()
            .map(|range| {
                let model = model.clone().fork(&device);
                let share = range.len() as f32 / batch as f32;
                scope.spawn(move || {
                    let (loss, rest) = slice_loss(&model, range);
                    let loss = loss.mul_scalar(share);
                    let gradients = GradientsParams::from_grads(loss.backward(), &model);
                    (gradients, loss.detach(), rest)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut sum = GradientsAccumulator::new();
    let mut losses = Vec::with_capacity(results.len());
    let mut rests = Vec::with_capacity(results.len());
    for (gradients, loss, rest) in results {
        sum.accumulate(model, gradients);
        losses.push(loss);
        rests.push(rest);
    }
    (sum.grads(), Tensor::cat(losses, 0).sum(), rests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_batch_in_near_equal_slices() {
        assert_eq!(ranges(100, 2), vec![0..50, 50..100]);
        assert_eq!(ranges(10, 3), vec![0..3, 3..6, 6..10]);
        assert_eq!(ranges(2, 5), vec![0..1, 1..2]);
        assert_eq!(ranges(7, 1), vec![0..7]);
    }
}
