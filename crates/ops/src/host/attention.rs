//! Multi-head self-attention over short sequences as one operation, for the CPU backends.
//!
//! Composed from Burn's operations, the attention of one block is a permute of the projected
//! queries, keys and values, two batched matrix products of `[tokens, head_dim]` matrices, a
//! softmax and a permute back; its backward pass four more batched products and the copies
//! that undo the permutes and the chunking. A batched product is one call of the matrix kernel
//! per image and head (800 per product for a batch of 100 with 8 heads), each on matrices of
//! 17 × 8 values, where the call and its packing cost more than the arithmetic. Here the
//! forward pass is one sweep over the images and the backward pass one more, with the attention
//! weights kept from the forward pass.
//!
//! The heads are the lanes of the CPU's vectors: the kernels read each token's projection with
//! its values in head-lane order, `[query | key | value][head_dim][heads]`, where the usual
//! order is `[heads][head_dim]`, and write the context in the same order. Every step of the
//! attention is then the same arithmetic on all heads at once, a vector of 8 heads in one
//! AVX2 register for the tutorial's model, with no row of 17 tokens to split into vectors and
//! no transposes. The layer-level attention (`crate::attention`) puts the projection's columns
//! (and the output projection's rows) in that order once per step (`columns_in_lanes`,
//! `rows_in_lanes`), instead of moving the activations; for a prediction of one to three images, whose activations hold fewer values
//! than the weights, it moves the activations.

use std::mem::MaybeUninit;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::TensorData;
use rayon::prelude::*;

use super::buffers::{host, new_tensor};
use super::vectors::Vectors;
use super::{simd, tasks};

/// Images handed to one task: enough work to outweigh a task's cost.
const IMAGES_PER_TASK: usize = 4;

/// The sizes of one attention call, from the projection `[images * tokens, 3 * dim]` in
/// head-lane order (module docs); the queries are already scaled by `1/sqrt(head_dim)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    pub images: usize,
    pub tokens: usize,
    /// Tokens whose outputs are wanted: the first `kept` of each image.
    pub kept: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl Sizes {
    pub fn of<B: Backend>(qkv: &FloatTensor<B>, images: usize, heads: usize, kept: usize) -> Self {
        let shape = qkv.shape();
        let (rows, columns) = (shape[0], shape[1]);
        Self {
            images,
            tokens: rows / images,
            kept,
            heads,
            head_dim: columns / 3 / heads,
        }
    }

    fn dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Values of one image in the projection.
    fn projection_len(&self) -> usize {
        self.tokens * 3 * self.dim()
    }

    /// Values of one image in the context `[kept, dim]`.
    fn context_len(&self) -> usize {
        self.kept * self.dim()
    }

    /// Values of one image in the attention weights `[kept, tokens, heads]`.
    fn weights_len(&self) -> usize {
        self.kept * self.tokens * self.heads
    }
}

/// [`crate::HostOps::transpose_groups`] on the host: one pass that copies each run of `width`
/// values to its place.
pub(crate) fn host_transpose_groups<B: Backend>(
    x: FloatTensor<B>,
    rows: usize,
    columns: usize,
    width: usize,
) -> FloatTensor<B> {
    let (device, shape) = (x.device(), x.shape());
    let x = host::<B>(x);
    let group = rows * columns * width;
    assert_eq!(
        shape.num_elements() % group,
        0,
        "whole groups of {rows} x {columns} runs of {width}"
    );
    let fill = |out: &mut [MaybeUninit<f32>]| {
        for (out, x) in out
            .chunks_exact_mut(group)
            .zip(x.f32s().chunks_exact(group))
        {
            // The output in order, each run read from its place in the input.
            for (column, out) in out.chunks_exact_mut(rows * width).enumerate() {
                if width == 1 {
                    let column = x[column..].iter().step_by(columns);
                    for (out, &value) in out.iter_mut().zip(column) {
                        out.write(value);
                    }
                } else {
                    for (row, out) in out.chunks_exact_mut(width).enumerate() {
                        let from = (row * columns + column) * width;
                        for (out, &value) in out.iter_mut().zip(&x[from..from + width]) {
                            out.write(value);
                        }
                    }
                }
            }
        }
    };
    // SAFETY: the values are whole groups (checked above), and within a group the runs move
    // by a permutation of their places, so every value of the output is written.
    unsafe { new_tensor::<B>(shape, &device, fill) }
}

/// The context `[images * kept, dim]` (head-lane order) and, when `keep_weights`, the
/// attention weights `[images, kept, tokens, heads]` for the backward pass.
pub(crate) fn host_attention<B: Backend>(
    qkv: FloatTensor<B>,
    sizes: Sizes,
    keep_weights: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let device = qkv.device();
    let data = host::<B>(qkv);
    let qkv = data.f32s();
    let mut context = vec![0.0f32; sizes.images * sizes.context_len()];
    let context_tasks = context.par_chunks_mut(IMAGES_PER_TASK * sizes.context_len());
    let qkv_tasks = qkv.par_chunks(IMAGES_PER_TASK * sizes.projection_len());
    let task_weights = IMAGES_PER_TASK * sizes.weights_len();
    let weights = if keep_weights {
        let mut weights = vec![0.0f32; sizes.images * sizes.weights_len()];
        let chunks = context_tasks
            .zip(qkv_tasks)
            .zip(weights.par_chunks_mut(task_weights));
        tasks::for_each(chunks, |((context, qkv), weights)| {
            forward_task(qkv, sizes, context, weights);
        });
        let shape = [sizes.images, sizes.kept, sizes.tokens, sizes.heads];
        Some(B::float_from_data(TensorData::new(weights, shape), &device))
    } else {
        tasks::for_each(context_tasks.zip(qkv_tasks), |(context, qkv)| {
            let mut weights = vec![0.0; task_weights];
            forward_task(qkv, sizes, context, &mut weights);
        });
        None
    };
    let context = TensorData::new(context, [sizes.images * sizes.kept, sizes.dim()]);
    (B::float_from_data(context, &device), weights)
}

/// The gradient of the projection `[images * tokens, 3 * dim]`, from the projection, the
/// attention weights of the forward pass and the gradient of the context (head-lane order).
pub(crate) fn host_attention_backward<B: Backend>(
    qkv: FloatTensor<B>,
    weights: FloatTensor<B>,
    grad: FloatTensor<B>,
    sizes: Sizes,
) -> FloatTensor<B> {
    let device = qkv.device();
    let shape = qkv.shape();
    let (qkv, weights, grad) = (host::<B>(qkv), host::<B>(weights), host::<B>(grad));
    let (qkv, weights, grad) = (qkv.f32s(), weights.f32s(), grad.f32s());
    // Zeroed: the keys' and values' gradients are sums over the queries, and queries past
    // `kept` had no output.
    let mut grad_qkv = vec![0.0f32; qkv.len()];
    let chunks = grad_qkv
        .par_chunks_mut(IMAGES_PER_TASK * sizes.projection_len())
        .zip(qkv.par_chunks(IMAGES_PER_TASK * sizes.projection_len()))
        .zip(weights.par_chunks(IMAGES_PER_TASK * sizes.weights_len()))
        .zip(grad.par_chunks(IMAGES_PER_TASK * sizes.context_len()));
    tasks::for_each(chunks, |(((grad_qkv, qkv), weights), grad)| {
        backward_task(qkv, weights, grad, sizes, grad_qkv);
    });
    B::float_from_data(TensorData::new(grad_qkv, shape), &device)
}

/// Defines `supported`, `forward_task` and `backward_task` for the listed numbers of heads
/// (lanes) and head widths: a kernel each, compiled with both sizes known, so that a token's
/// `[head_dim][heads]` values stay in registers. Other sizes take the composed form.
macro_rules! kernels {
    ($(($heads:literal, $head_dim:literal)),* $(,)?) => {
        /// Whether a kernel exists for `heads` heads of `head_dim` values.
        pub(crate) fn supported(heads: usize, head_dim: usize) -> bool {
            matches!((heads, head_dim), $(($heads, $head_dim))|*)
        }

        /// The images of one task, one after the other.
        fn forward_task(qkv: &[f32], sizes: Sizes, context: &mut [f32], weights: &mut [f32]) {
            simd::vectorized_with! {
                fn run(qkv: &[f32], sizes: Sizes, context: &mut [f32], weights: &mut [f32])
                    => forward_images_of
            }
            run(qkv, sizes, context, weights)
        }

        #[inline(always)]
        fn forward_images_of(
            vectors: impl Vectors,
            qkv: &[f32],
            sizes: Sizes,
            context: &mut [f32],
            weights: &mut [f32],
        ) {
            match (sizes.heads, sizes.head_dim) {
                $(($heads, $head_dim) => {
                    forward_images::<$heads, $head_dim>(vectors, qkv, sizes, context, weights)
                })*
                other => unreachable!("no attention kernel for (heads, head_dim) {other:?}"),
            }
        }

        /// The images of one task, one after the other.
        fn backward_task(
            qkv: &[f32],
            weights: &[f32],
            grad: &[f32],
            sizes: Sizes,
            grad_qkv: &mut [f32],
        ) {
            simd::vectorized_with! {
                fn run(
                    qkv: &[f32],
                    weights: &[f32],
                    grad: &[f32],
                    sizes: Sizes,
                    grad_qkv: &mut [f32],
                ) => backward_images_of
            }
            run(qkv, weights, grad, sizes, grad_qkv)
        }

        #[inline(always)]
        fn backward_images_of(
            vectors: impl Vectors,
            qkv: &[f32],
            weights: &[f32],
            grad: &[f32],
            sizes: Sizes,
            grad_qkv: &mut [f32],
        ) {
            match (sizes.heads, sizes.head_dim) {
                $(($heads, $head_dim) => {
                    backward_images::<$heads, $head_dim>(
                        vectors, qkv, weights, grad, sizes, grad_qkv,
                    )
                })*
                other => unreachable!("no attention kernel for (heads, head_dim) {other:?}"),
            }
        }
    };
}

kernels!((8, 8), (8, 16), (8, 32), (4, 16), (4, 32), (16, 8), (2, 16));

/// One value per head: a vector register's worth for 8 heads under AVX2.
type Lanes<const H: usize> = [f32; H];

/// An image's projection as lanes: token `t`'s part `p` (0 query, 1 key, 2 value) at
/// `[(3 t + p) D .. (3 t + p + 1) D]`.
#[inline(always)]
fn part<const H: usize, const D: usize>(
    rows: &[Lanes<H>],
    token: usize,
    part: usize,
) -> &[Lanes<H>; D] {
    let start = (3 * token + part) * D;
    rows[start..start + D]
        .try_into()
        .expect("a part holds head_dim lanes")
}

#[inline(always)]
fn part_mut<const H: usize, const D: usize>(
    rows: &mut [Lanes<H>],
    token: usize,
    part: usize,
) -> &mut [Lanes<H>; D] {
    let start = (3 * token + part) * D;
    (&mut rows[start..start + D])
        .try_into()
        .expect("a part holds head_dim lanes")
}

const QUERY: usize = 0;
const KEY: usize = 1;
const VALUE: usize = 2;

/// Per image and query `i`, on all heads at once: scores `s_j = q_i · k_j`, weights
/// `p = softmax(s)` over the tokens, context `c_i = Σ_j p_j v_j`.
#[inline(always)]
fn forward_images<const H: usize, const D: usize>(
    vectors: impl Vectors,
    qkv: &[f32],
    sizes: Sizes,
    context: &mut [f32],
    weights: &mut [f32],
) {
    let tokens = sizes.tokens;
    let images = context
        .chunks_exact_mut(sizes.context_len())
        .zip(weights.chunks_exact_mut(sizes.weights_len()))
        .zip(qkv.chunks_exact(sizes.projection_len()));
    for ((context, weights), qkv) in images {
        let rows = qkv.as_chunks::<H>().0;
        let queries = context
            .as_chunks_mut::<H>()
            .0
            .chunks_exact_mut(D)
            .zip(weights.as_chunks_mut::<H>().0.chunks_exact_mut(tokens));
        for (query, (context, weights)) in queries.enumerate() {
            let q = part::<H, D>(rows, query, QUERY);
            for (token, score) in weights.iter_mut().enumerate() {
                *score = dot(vectors, q, part::<H, D>(rows, token, KEY));
            }
            softmax_over_tokens(vectors, weights);
            let mut sum = [[0.0f32; H]; D];
            for (token, weight) in weights.iter().enumerate() {
                add_scaled(vectors, &mut sum, weight, part::<H, D>(rows, token, VALUE));
            }
            context.copy_from_slice(&sum);
        }
    }
}

/// Per image and query `i`, with the weights `p` and the context's gradient `g_i`:
/// `dp_j = g_i · v_j`, `dv_j += p_j g_i`, `ds_j = p_j (dp_j - Σ_t p_t dp_t)`,
/// `dq_i = Σ_j ds_j k_j`, `dk_j += ds_j q_i`.
#[inline(always)]
fn backward_images<const H: usize, const D: usize>(
    vectors: impl Vectors,
    qkv: &[f32],
    weights: &[f32],
    grad: &[f32],
    sizes: Sizes,
    grad_qkv: &mut [f32],
) {
    let tokens = sizes.tokens;
    let mut grad_scores = vec![[0.0f32; H]; tokens];
    let images = grad_qkv
        .chunks_exact_mut(sizes.projection_len())
        .zip(qkv.chunks_exact(sizes.projection_len()))
        .zip(weights.chunks_exact(sizes.weights_len()))
        .zip(grad.chunks_exact(sizes.context_len()));
    for (((grad_qkv, qkv), weights), grad) in images {
        let rows = qkv.as_chunks::<H>().0;
        let grad_rows = grad_qkv.as_chunks_mut::<H>().0;
        let queries = grad
            .as_chunks::<H>()
            .0
            .chunks_exact(D)
            .zip(weights.as_chunks::<H>().0.chunks_exact(tokens));
        for (query, (grad, weights)) in queries.enumerate() {
            let grad: &[Lanes<H>; D] = grad.try_into().expect("a context row holds D lanes");
            let mut projection = [0.0f32; H];
            for (token, (weight, grad_score)) in weights.iter().zip(&mut grad_scores).enumerate() {
                *grad_score = dot(vectors, grad, part::<H, D>(rows, token, VALUE));
                vectors.multiply_add(&mut projection, weight, grad_score);
                add_scaled(
                    vectors,
                    part_mut::<H, D>(grad_rows, token, VALUE),
                    weight,
                    grad,
                );
            }
            let q = part::<H, D>(rows, query, QUERY);
            let mut grad_query = [[0.0f32; H]; D];
            for (token, (weight, grad_score)) in weights.iter().zip(&grad_scores).enumerate() {
                let mut scaled = *grad_score;
                vectors.subtract(&mut scaled, &projection);
                vectors.multiply(&mut scaled, weight);
                add_scaled(
                    vectors,
                    &mut grad_query,
                    &scaled,
                    part::<H, D>(rows, token, KEY),
                );
                add_scaled(vectors, part_mut::<H, D>(grad_rows, token, KEY), &scaled, q);
            }
            *part_mut::<H, D>(grad_rows, query, QUERY) = grad_query;
        }
    }
}

/// `Σ_d a_d ∘ b_d`, lane by lane.
#[inline(always)]
fn dot<const H: usize, const D: usize>(
    vectors: impl Vectors,
    a: &[Lanes<H>; D],
    b: &[Lanes<H>; D],
) -> Lanes<H> {
    let mut sum = [0.0f32; H];
    for (a, b) in a.iter().zip(b) {
        vectors.multiply_add(&mut sum, a, b);
    }
    sum
}

/// `sum_d += factor ∘ x_d`, lane by lane.
#[inline(always)]
fn add_scaled<const H: usize, const D: usize>(
    vectors: impl Vectors,
    sum: &mut [Lanes<H>; D],
    factor: &Lanes<H>,
    x: &[Lanes<H>; D],
) {
    for (sum, x) in sum.iter_mut().zip(x) {
        vectors.multiply_add(sum, factor, x);
    }
}

/// Softmax over the tokens, each head (lane) on its own. The exponentials run over the
/// scores as one flat slice, which the compiler vectorizes as it is laid out.
#[inline(always)]
fn softmax_over_tokens<const H: usize>(vectors: impl Vectors, scores: &mut [Lanes<H>]) {
    let mut max = [f32::NEG_INFINITY; H];
    for score in scores.iter() {
        vectors.max(&mut max, score);
    }
    for score in scores.iter_mut() {
        vectors.subtract(score, &max);
    }
    for score in scores.as_flattened_mut() {
        *score = simd::exp(vectors, *score);
    }
    let mut sum = [0.0f32; H];
    for score in scores.iter() {
        vectors.add(&mut sum, score);
    }
    let scale = sum.map(|sum| 1.0 / sum);
    for score in scores.iter_mut() {
        vectors.multiply(score, &scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The context, weights and projection gradient of one forward and backward pass.
    fn forward_and_backward(
        vectors: impl Vectors,
        qkv: &[f32],
        grad: &[f32],
        sizes: Sizes,
    ) -> [Vec<f32>; 3] {
        let mut context = vec![0.0; grad.len()];
        let mut weights = vec![0.0; sizes.images * sizes.weights_len()];
        let mut grad_qkv = vec![0.0; qkv.len()];
        forward_images_of(vectors, qkv, sizes, &mut context, &mut weights);
        backward_images_of(vectors, qkv, &weights, grad, sizes, &mut grad_qkv);
        [context, weights, grad_qkv]
    }

    /// The kernels as compiled for AVX2 against their lane-loop version (the one a CPU
    /// without AVX2 runs), forward and backward, on a model size of each kind of lanes.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_kernels_agree_with_the_lane_loops() {
        use crate::host::vectors::{Avx2, Plain};
        let Some(avx2) = Avx2::detect() else {
            eprintln!("this CPU has no AVX2: only the lane loops run here");
            return;
        };
        for (heads, head_dim) in [(8, 8), (4, 16), (2, 16), (16, 8)] {
            let sizes = Sizes {
                images: 2,
                tokens: 5,
                kept: 3,
                heads,
                head_dim,
            };
            let values = |count: usize, seed: usize| -> Vec<f32> {
                (0..count)
                    .map(|i| ((i * 7919 + seed) % 211) as f32 / 105.0 - 1.0)
                    .collect()
            };
            let qkv = values(sizes.images * sizes.projection_len(), 1);
            let grad = values(sizes.images * sizes.context_len(), 2);
            let with_avx2 = forward_and_backward(avx2, &qkv, &grad, sizes);
            let with_loops = forward_and_backward(Plain, &qkv, &grad, sizes);
            for (name, (got, want)) in ["context", "weights", "grad_qkv"]
                .iter()
                .zip(with_avx2.iter().zip(&with_loops))
            {
                let worst = got
                    .iter()
                    .zip(want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0.0, f32::max);
                assert!(worst < 1e-5, "({heads}, {head_dim}) {name}: off by {worst}");
                assert!(
                    want.iter().any(|&w| w != 0.0),
                    "({heads}, {head_dim}) {name}: all zero"
                );
            }
        }
    }
}
