//! LayerNorm's and softmax's backward passes on the host (flex, ndarray): one sweep over the
//! rows each.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::{DType, TensorData};

use super::buffers::host;
use super::{simd, tasks};

/// Rows handed to one task of the host kernels: enough work to outweigh a task's cost.
const ROWS_PER_TASK: usize = 64;

/// Whether every tensor holds `f32`, the one type the host kernels read.
pub(crate) fn all_f32<B: Backend>(tensors: &[&FloatTensor<B>]) -> bool {
    tensors.iter().all(|tensor| tensor.dtype() == DType::F32)
}

/// LayerNorm's backward pass in one sweep over the rows, on the host, for `f32` tensors.
/// The tensors are taken by value, so that a backend holding the only reference hands over its
/// buffer instead of a copy.
pub(crate) fn host_layer_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    grad: FloatTensor<B>,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    use rayon::prelude::*;

    let device = x.device();
    let shape = x.shape();
    let features = shape[shape.num_dims() - 1];
    let (x, gamma, grad) = (host::<B>(x), host::<B>(gamma), host::<B>(grad));
    let (x, gamma, grad) = (x.f32s(), gamma.f32s(), grad.f32s());
    let epsilon = epsilon as f32;
    let mut grad_x = vec![0.0f32; x.len()];
    let chunk = ROWS_PER_TASK * features;
    // Each task's share of the gamma and beta gradients, `[gamma | beta]`, summed after.
    let mut shares = vec![0.0f32; x.len().div_ceil(chunk) * 2 * features];
    let chunks = grad_x
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(grad.par_chunks(chunk)))
        .zip(shares.par_chunks_mut(2 * features));
    tasks::for_each(chunks, |((grad_x, (x, grad)), share)| {
        let (grad_gamma, grad_beta) = share.split_at_mut(features);
        layer_norm_rows_backward(x, grad, gamma, epsilon, grad_x, grad_gamma, grad_beta);
    });
    let (mut grad_gamma, mut grad_beta) = (vec![0.0f32; features], vec![0.0f32; features]);
    for share in shares.chunks(2 * features) {
        let (gamma, beta) = share.split_at(features);
        add_into(&mut grad_gamma, gamma);
        add_into(&mut grad_beta, beta);
    }
    (
        B::float_from_data(TensorData::new(grad_x, shape), &device),
        B::float_from_data(TensorData::new(grad_gamma, [features]), &device),
        B::float_from_data(TensorData::new(grad_beta, [features]), &device),
    )
}

simd::vectorized! {
    /// LayerNorm's backward pass for whole rows of `gamma.len()` features; adds the rows'
    /// share of the gamma and beta gradients to `grad_gamma` and `grad_beta`.
    fn layer_norm_rows_backward(
        x: &[f32],
        grad: &[f32],
        gamma: &[f32],
        epsilon: f32,
        grad_x: &mut [f32],
        grad_gamma: &mut [f32],
        grad_beta: &mut [f32],
    ) => layer_norm_rows_backward_body
}

/// Per row, with `n` the normalised input: `grad_x = rstd · (g·γ − mean(g·γ) − n ·
/// mean(g·γ·n))`. `grad_x` holds the centred, then the normalised row until the end, so every
/// pass is a straight sweep the compiler vectorizes.
#[inline(always)]
fn layer_norm_rows_backward_body(
    x: &[f32],
    grad: &[f32],
    gamma: &[f32],
    epsilon: f32,
    grad_x: &mut [f32],
    grad_gamma: &mut [f32],
    grad_beta: &mut [f32],
) {
    let features = gamma.len();
    let count = features as f32;
    let rows = x
        .chunks_exact(features)
        .zip(grad.chunks_exact(features))
        .zip(grad_x.chunks_exact_mut(features));
    for ((x, grad), normalized) in rows {
        let mean = simd::sum(x) / count;
        for (centred, x) in normalized.iter_mut().zip(x) {
            *centred = x - mean;
        }
        let rstd = 1.0 / (simd::dot(normalized, normalized) / count + epsilon).sqrt();
        for value in normalized.iter_mut() {
            *value *= rstd;
        }
        let sums = grad_gamma.iter_mut().zip(grad_beta.iter_mut());
        for ((grad_gamma, grad_beta), (grad, normalized)) in sums.zip(grad.iter().zip(&*normalized))
        {
            *grad_gamma += grad * normalized;
            *grad_beta += grad;
        }
        let scaled_mean = simd::dot(grad, gamma) / count;
        let projection = simd::dot3(grad, gamma, normalized) / count;
        for ((value, grad), gamma) in normalized.iter_mut().zip(grad).zip(gamma) {
            *value = rstd * (grad * gamma - scaled_mean - *value * projection);
        }
    }
}

/// Softmax's backward pass along the last dimension in one sweep, on the host, for `f32`
/// tensors.
pub(crate) fn host_softmax_backward<B: Backend>(
    output: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    use rayon::prelude::*;

    let device = output.device();
    let shape = output.shape();
    let features = shape[shape.num_dims() - 1];
    let (output, grad) = (host::<B>(output), host::<B>(grad));
    let (output, grad) = (output.f32s(), grad.f32s());
    let mut grad_x = vec![0.0f32; output.len()];
    let chunk = ROWS_PER_TASK * features;
    let chunks = grad_x
        .par_chunks_mut(chunk)
        .zip(output.par_chunks(chunk).zip(grad.par_chunks(chunk)));
    tasks::for_each(chunks, |(grad_x, (output, grad))| {
        let rows = grad_x
            .chunks_mut(features)
            .zip(output.chunks(features).zip(grad.chunks(features)));
        for (grad_x, (output, grad)) in rows {
            let projection: f32 = output.iter().zip(grad).map(|(y, g)| y * g).sum();
            for ((dx, y), g) in grad_x.iter_mut().zip(output).zip(grad) {
                *dx = y * (g - projection);
            }
        }
    });
    B::float_from_data(TensorData::new(grad_x, shape), &device)
}

fn add_into(sum: &mut [f32], other: &[f32]) {
    for (sum, other) in sum.iter_mut().zip(other) {
        *sum += other;
    }
}
