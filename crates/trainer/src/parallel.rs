//! Data parallelism inside one training step: on the CPU backends that run most operations on
//! one thread, the batch is cut into slices that run forward and backward side by side.
//!
//! Each slice runs on a fork of the model (its own autodiff graph, so that the backward passes
//! do not queue on one graph's lock), with its loss weighted by its share of the batch: the sum
//! of the slices' gradients is the whole batch's, up to the order of float additions. The
//! cutting and the threads are `vit_ops::slices`, which `Vit::predict` uses too.

use std::ops::Range;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use vit_ops::slices;

/// Fewest images in a slice: below this, a slice's own overhead would outweigh the thread.
const MIN_SLICE: usize = 16;

/// How many slices a training batch of `batch` images is cut into on `device`: one per core
/// on flex and ndarray, none (1) on libtorch and GPUs, which parallelise each operation
/// themselves (tch measured slower with slices: 49 against 36 ms a step).
pub fn step_slices(device: &Device, batch: usize) -> usize {
    slices::count(device, batch, MIN_SLICE)
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
    let ranges = slices::ranges(batch, slices);
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
    let jobs = ranges
        .into_iter()
        .map(|range| {
            let model = model.clone().fork(&device);
            let share = range.len() as f32 / batch as f32;
            move || {
                let (loss, rest) = slice_loss(&model, range);
                let loss = loss.mul_scalar(share);
                let gradients = GradientsParams::from_grads(loss.backward(), &model);
                (gradients, loss.detach(), rest)
            }
        })
        .collect();
    let results: Vec<(GradientsParams, Tensor<1>, T)> = slices::side_by_side(jobs);
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
