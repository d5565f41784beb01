//! Multi-head self-attention over short sequences as one operation, for the CPU backends.
//!
//! Composed from Burn's operations, the attention of one block is a permute of the projected
//! queries, keys and values, two batched matrix products of `[tokens, head_dim]` matrices, a
//! softmax and a permute back; its backward pass four more batched products and the copies
//! that undo the permutes and the chunking. A batched product is one call of the matrix kernel
//! per image and head (800 per product for a batch of 100 with 8 heads), each on matrices of
//! 17 × 8 values, where the call and its packing cost more than the arithmetic. Here the
//! forward pass is one sweep over the images, reading the queries, keys and values where the
//! projection wrote them and writing the context where the output projection reads it; the
//! backward pass is one more sweep, with the attention weights kept from the forward pass.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::TensorData;
use rayon::prelude::*;

use super::host::host;
use super::simd;

/// Images handed to one task: enough work to outweigh a task's cost.
const IMAGES_PER_TASK: usize = 4;

/// The sizes of one attention call, from the projection `[images * tokens, 3 * dim]` whose
/// columns hold the queries (already scaled by `1/sqrt(head_dim)`), then the keys, then the
/// values, each as `heads` runs of `head_dim` columns.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sizes {
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

    /// Values of one image in the attention weights `[heads, kept, tokens]`.
    fn weights_len(&self) -> usize {
        self.heads * self.kept * self.tokens
    }

    /// The query, key or value (`part` 0, 1, 2) of `token` for `head`, in one image's rows.
    fn part<'a>(&self, rows: &'a [f32], part: usize, token: usize, head: usize) -> &'a [f32] {
        let start = token * 3 * self.dim() + part * self.dim() + head * self.head_dim;
        &rows[start..start + self.head_dim]
    }

    fn part_mut<'a>(
        &self,
        rows: &'a mut [f32],
        part: usize,
        token: usize,
        head: usize,
    ) -> &'a mut [f32] {
        let start = token * 3 * self.dim() + part * self.dim() + head * self.head_dim;
        &mut rows[start..start + self.head_dim]
    }
}

const QUERY: usize = 0;
const KEY: usize = 1;
const VALUE: usize = 2;

/// The context `[images * kept, dim]` (heads side by side in each row, as the output
/// projection reads them) and, when `keep_weights`, the attention weights
/// `[images, heads, kept, tokens]` for the backward pass.
pub(super) fn host_attention<B: Backend>(
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
        context_tasks
            .zip(qkv_tasks)
            .zip(weights.par_chunks_mut(task_weights))
            .for_each(|((context, qkv), weights)| {
                forward_task(qkv, sizes, context, weights);
            });
        let shape = [sizes.images, sizes.heads, sizes.kept, sizes.tokens];
        Some(B::float_from_data(TensorData::new(weights, shape), &device))
    } else {
        context_tasks.zip(qkv_tasks).for_each(|(context, qkv)| {
            let mut weights = vec![0.0; task_weights];
            forward_task(qkv, sizes, context, &mut weights);
        });
        None
    };
    let context = TensorData::new(context, [sizes.images * sizes.kept, sizes.dim()]);
    (B::float_from_data(context, &device), weights)
}

/// The gradient of the projection `[images * tokens, 3 * dim]`, from the projection, the
/// attention weights of the forward pass and the gradient of the context.
pub(super) fn host_attention_backward<B: Backend>(
    qkv: FloatTensor<B>,
    weights: FloatTensor<B>,
    grad: FloatTensor<B>,
    sizes: Sizes,
) -> FloatTensor<B> {
    let device = qkv.device();
    let shape = qkv.shape();
    let (qkv, weights, grad) = (host::<B>(qkv), host::<B>(weights), host::<B>(grad));
    let (qkv, weights, grad) = (qkv.f32s(), weights.f32s(), grad.f32s());
    let mut grad_qkv = vec![0.0f32; qkv.len()];
    grad_qkv
        .par_chunks_mut(IMAGES_PER_TASK * sizes.projection_len())
        .zip(qkv.par_chunks(IMAGES_PER_TASK * sizes.projection_len()))
        .zip(weights.par_chunks(IMAGES_PER_TASK * sizes.weights_len()))
        .zip(grad.par_chunks(IMAGES_PER_TASK * sizes.context_len()))
        .for_each(|(((grad_qkv, qkv), weights), grad)| {
            backward_task(qkv, weights, grad, sizes, grad_qkv);
        });
    B::float_from_data(TensorData::new(grad_qkv, shape), &device)
}

/// Head widths with kernels of their own: the inner loops over a head's values then have a
/// length known to the compiler, which keeps each sum in registers. Other widths take the
/// composed form.
pub(super) const HEAD_DIMS: [usize; 3] = [8, 16, 32];

simd::vectorized! {
    fn forward_8(qkv: &[f32], sizes: Sizes, context: &mut [f32], weights: &mut [f32])
        => forward_images::<8>
}
simd::vectorized! {
    fn forward_16(qkv: &[f32], sizes: Sizes, context: &mut [f32], weights: &mut [f32])
        => forward_images::<16>
}
simd::vectorized! {
    fn forward_32(qkv: &[f32], sizes: Sizes, context: &mut [f32], weights: &mut [f32])
        => forward_images::<32>
}

/// The images of one task, one after the other.
fn forward_task(qkv: &[f32], sizes: Sizes, context: &mut [f32], weights: &mut [f32]) {
    match sizes.head_dim {
        8 => forward_8(qkv, sizes, context, weights),
        16 => forward_16(qkv, sizes, context, weights),
        32 => forward_32(qkv, sizes, context, weights),
        other => unreachable!("no attention kernel for heads of {other} (see HEAD_DIMS)"),
    }
}

#[inline(always)]
fn forward_images<const HEAD_DIM: usize>(
    qkv: &[f32],
    sizes: Sizes,
    context: &mut [f32],
    weights: &mut [f32],
) {
    let mut head = HeadScratch::<HEAD_DIM>::new(sizes);
    let (kept, tokens, dim) = (sizes.kept, sizes.tokens, sizes.dim());
    let images = context
        .chunks_mut(sizes.context_len())
        .zip(weights.chunks_mut(sizes.weights_len()))
        .zip(qkv.chunks(sizes.projection_len()));
    for ((context, weights), qkv) in images {
        for (index, weights) in weights.chunks_exact_mut(kept * tokens).enumerate() {
            head.gather(qkv, sizes, index, VALUE);
            // scores = q · kᵀ, [kept, tokens]
            weights.fill(0.0);
            multiply_add(weights, &head.queries, &head.transposed);
            for row in weights.chunks_exact_mut(tokens) {
                softmax_in_place(row);
            }
            // context = weights · v, [kept, head_dim], into the head's columns
            let rows = context
                .chunks_exact_mut(dim)
                .zip(weights.chunks_exact(tokens));
            for (context, row) in rows {
                let out = &mut context[index * HEAD_DIM..(index + 1) * HEAD_DIM];
                out.copy_from_slice(&weighted_sum(row, &head.rows));
            }
        }
    }
}

/// `Σ_i factors_i · rows_i`, summed in registers.
#[inline(always)]
fn weighted_sum<const N: usize>(
    factors: impl IntoIterator<Item = impl std::borrow::Borrow<f32>>,
    rows: &[[f32; N]],
) -> [f32; N] {
    let mut sum = [0.0f32; N];
    for (factor, row) in factors.into_iter().zip(rows) {
        let factor = *factor.borrow();
        for (sum, value) in sum.iter_mut().zip(row) {
            *sum += factor * value;
        }
    }
    sum
}

/// `out += a · b` for `a` `[rows, N]` and `b` `[N, columns]` (row-major), `out` `[rows,
/// columns]`, with the inner index outermost so that consecutive updates go to different rows
/// of `out` and none waits for the one before.
#[inline(always)]
fn multiply_add<const N: usize>(out: &mut [f32], a: &[[f32; N]], b: &[f32]) {
    let columns = b.len() / N;
    for (k, b) in b.chunks_exact(columns).enumerate() {
        for (a, out) in a.iter().zip(out.chunks_exact_mut(columns)) {
            add_scaled(out, a[k], b);
        }
    }
}

/// One image's queries, keys and values for one head, gathered from the projection's rows in
/// the layouts each pass reads: the forward pass the keys transposed and the values as rows, the
/// backward pass the keys as rows and the values transposed.
struct HeadScratch<const HEAD_DIM: usize> {
    /// `[kept][head_dim]`
    queries: Vec<[f32; HEAD_DIM]>,
    /// `[tokens][head_dim]`: the keys (backward) or the values (forward).
    rows: Vec<[f32; HEAD_DIM]>,
    /// `[head_dim, tokens]`: the keys (forward) or the values (backward), transposed.
    transposed: Vec<f32>,
    /// The gradient of the attention weights, then of the scores, `[kept, tokens]`.
    grad_weights: Vec<f32>,
}

impl<const HEAD_DIM: usize> HeadScratch<HEAD_DIM> {
    fn new(sizes: Sizes) -> Self {
        Self {
            queries: vec![[0.0; HEAD_DIM]; sizes.kept],
            rows: vec![[0.0; HEAD_DIM]; sizes.tokens],
            transposed: vec![0.0; HEAD_DIM * sizes.tokens],
            grad_weights: vec![0.0; sizes.kept * sizes.tokens],
        }
    }

    /// The queries, the `as_rows` part (KEY or VALUE) as rows and the other one transposed.
    #[inline(always)]
    fn gather(&mut self, qkv: &[f32], sizes: Sizes, head: usize, as_rows: usize) {
        let tokens = sizes.tokens;
        let as_transposed = KEY + VALUE - as_rows;
        for token in 0..tokens {
            self.rows[token].copy_from_slice(sizes.part(qkv, as_rows, token, head));
            let source = sizes.part(qkv, as_transposed, token, head);
            for column in 0..HEAD_DIM {
                self.transposed[column * tokens + token] = source[column];
            }
        }
        for (query, row) in self.queries.iter_mut().enumerate() {
            row.copy_from_slice(sizes.part(qkv, QUERY, query, head));
        }
    }
}

simd::vectorized! {
    fn backward_8(qkv: &[f32], weights: &[f32], grad: &[f32], sizes: Sizes, grad_qkv: &mut [f32])
        => backward_images::<8>
}
simd::vectorized! {
    fn backward_16(qkv: &[f32], weights: &[f32], grad: &[f32], sizes: Sizes, grad_qkv: &mut [f32])
        => backward_images::<16>
}
simd::vectorized! {
    fn backward_32(qkv: &[f32], weights: &[f32], grad: &[f32], sizes: Sizes, grad_qkv: &mut [f32])
        => backward_images::<32>
}

/// The images of one task, one after the other.
fn backward_task(qkv: &[f32], weights: &[f32], grad: &[f32], sizes: Sizes, grad_qkv: &mut [f32]) {
    match sizes.head_dim {
        8 => backward_8(qkv, weights, grad, sizes, grad_qkv),
        16 => backward_16(qkv, weights, grad, sizes, grad_qkv),
        32 => backward_32(qkv, weights, grad, sizes, grad_qkv),
        other => unreachable!("no attention kernel for heads of {other} (see HEAD_DIMS)"),
    }
}

/// For each image and head, with weights `P` `[kept, tokens]` and context gradient `G`
/// `[kept, head_dim]`: `dP = G · vᵀ`, `dv = Pᵀ · G`, `dS = P ∘ (dP - rowsum(P ∘ dP))`,
/// `dq = dS · k`, `dk = dSᵀ · q`. Queries past `kept` had no output, so their gradient stays 0.
#[inline(always)]
fn backward_images<const HEAD_DIM: usize>(
    qkv: &[f32],
    weights: &[f32],
    grad: &[f32],
    sizes: Sizes,
    grad_qkv: &mut [f32],
) {
    let (kept, tokens, dim) = (sizes.kept, sizes.tokens, sizes.dim());
    let mut head = HeadScratch::<HEAD_DIM>::new(sizes);
    let mut grad_context = vec![[0.0f32; HEAD_DIM]; kept];
    let images = grad_qkv
        .chunks_mut(sizes.projection_len())
        .zip(qkv.chunks(sizes.projection_len()))
        .zip(weights.chunks(sizes.weights_len()))
        .zip(grad.chunks(sizes.context_len()));
    for (((grad_qkv, qkv), weights), grad) in images {
        for (index, weights) in weights.chunks_exact(kept * tokens).enumerate() {
            head.gather(qkv, sizes, index, KEY);
            for (row, grad) in grad_context.iter_mut().zip(grad.chunks_exact(dim)) {
                row.copy_from_slice(&grad[index * HEAD_DIM..(index + 1) * HEAD_DIM]);
            }
            head.grad_weights.fill(0.0);
            multiply_add(&mut head.grad_weights, &grad_context, &head.transposed);
            for token in 0..tokens {
                let column = weights.iter().skip(token).step_by(tokens);
                let grad_value = weighted_sum(column, &grad_context);
                sizes
                    .part_mut(grad_qkv, VALUE, token, index)
                    .copy_from_slice(&grad_value);
            }
            let rows = head.grad_weights.chunks_exact_mut(tokens);
            for (grad_row, row) in rows.zip(weights.chunks_exact(tokens)) {
                let projection = simd::dot(row, grad_row);
                for (grad, weight) in grad_row.iter_mut().zip(row) {
                    *grad = weight * (*grad - projection);
                }
            }
            for (query, grad_scores) in head.grad_weights.chunks_exact(tokens).enumerate() {
                let grad_query = weighted_sum(grad_scores, &head.rows);
                sizes
                    .part_mut(grad_qkv, QUERY, query, index)
                    .copy_from_slice(&grad_query);
            }
            for token in 0..tokens {
                let column = head.grad_weights.iter().skip(token).step_by(tokens);
                let grad_key = weighted_sum(column, &head.queries);
                sizes
                    .part_mut(grad_qkv, KEY, token, index)
                    .copy_from_slice(&grad_key);
            }
        }
    }
}

/// `out += factor · x`.
#[inline(always)]
fn add_scaled(out: &mut [f32], factor: f32, x: &[f32]) {
    for (out, x) in out.iter_mut().zip(x) {
        *out += factor * x;
    }
}

#[inline(always)]
fn softmax_in_place(row: &mut [f32]) {
    let max = simd::max(row);
    for value in row.iter_mut() {
        *value = simd::exp(*value - max);
    }
    let scale = 1.0 / simd::sum(row);
    for value in row.iter_mut() {
        *value *= scale;
    }
}
