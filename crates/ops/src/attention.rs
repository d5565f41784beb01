//! Self-attention at layer level: the parameters of Burn's `MultiHeadAttention` (so records and
//! exported names stay `query`, `key`, `value` and `output`), in fewer and larger operations
//! than its `forward`. One matrix product makes the queries, keys and values of all heads, the
//! `1/sqrt(head_dim)` scale is folded into the query weights (a `dim × dim` product) instead of
//! dividing every score, and on the host backends the attention itself is one operation that
//! reads each token's heads in lanes (`host/attention.rs`). The lane orders stay in here.

use burn::backend::Dispatch;
use burn::nn::Dropout;
use burn::nn::attention::MultiHeadAttention;
use burn::tensor::Tensor;

use crate::extension::HostOps;
use crate::functional::{linear, softmax};
use crate::host::attention::supported;
use crate::layers;
use crate::route::Route;

/// Self-attention over the tokens of `images` images, stacked as rows `[images * tokens, dim]`,
/// for the first `kept` tokens of each image: `[images * kept, dim]`, with the layer's dropout
/// on the attention weights.
pub fn self_attention(
    attention: &MultiHeadAttention,
    x: Tensor<2>,
    images: usize,
    kept: usize,
) -> Tensor<2> {
    let (heads, head_dim) = (attention.n_heads, attention.d_k);
    let [rows, dim] = x.dims();
    // The fused attention reads and writes each token's heads in lanes: reorder whichever
    // holds fewer values, the weights' columns and rows (`4 · dim²` values, here) or the
    // activations (`4 · dim` per row, in `attention`: fewer under `dim` rows, as in a
    // prediction of one to three images).
    if rows >= dim && is_fused(&x, heads, head_dim, &attention.dropout) {
        let qkv = projections(attention, x, Some((heads, head_dim)));
        let context = attention_in_lanes(qkv, images, heads, kept);
        let output = &attention.output;
        let weight = rows_in_lanes(output.weight.val(), heads, head_dim);
        return linear(context, weight, output.bias.as_ref().map(|bias| bias.val()));
    }
    let qkv = projections(attention, x, None);
    let context = self::attention(qkv, images, heads, kept, &attention.dropout);
    layers::linear(&attention.output, context)
}

/// [`self_attention`] for every token, with its attention weights `[images, heads, tokens,
/// tokens]`: what pictures of the model's attention are drawn from (Burn's composed
/// operations, which keep the weights).
pub fn self_attention_with_weights(
    attention: &MultiHeadAttention,
    x: Tensor<2>,
    images: usize,
) -> (Tensor<2>, Tensor<4>) {
    let tokens = x.dims()[0] / images;
    let qkv = projections(attention, x, None);
    let (context, weights) =
        composed_attention(qkv, images, attention.n_heads, tokens, &attention.dropout);
    (layers::linear(&attention.output, context), weights)
}

/// Multi-head self-attention of `heads` heads over the tokens of `images` images, from their
/// projection `qkv` `[images * tokens, 3 * dim]`: queries (already scaled by
/// `1/sqrt(head_dim)`), keys and values, each as `heads` runs of `head_dim` columns. Returns
/// the context of the first `kept` tokens of each image, `[images * kept, dim]`, heads side by
/// side in each row, with `dropout` on the attention weights: one operation on the host
/// backends where the kernels cover the head size, Burn's batched products elsewhere.
pub fn attention(
    qkv: Tensor<2>,
    images: usize,
    heads: usize,
    kept: usize,
    dropout: &Dropout,
) -> Tensor<2> {
    let head_dim = qkv.dims()[1] / 3 / heads;
    if !is_fused(&qkv, heads, head_dim, dropout) {
        return composed_attention(qkv, images, heads, kept, dropout).0;
    }
    let qkv = columns_in_lanes(qkv, heads, head_dim);
    let context = attention_in_lanes(qkv, images, heads, kept);
    columns_in_usual_order(context, heads, head_dim)
}

/// [`attention`] from Burn's operations, with the attention weights `[images, heads, kept,
/// tokens]` it used.
pub fn composed_attention(
    qkv: Tensor<2>,
    images: usize,
    heads: usize,
    kept: usize,
    dropout: &Dropout,
) -> (Tensor<2>, Tensor<4>) {
    let [rows, columns] = qkv.dims();
    let (tokens, dim) = (rows / images, columns / 3);
    let [query, key, value]: [Tensor<4>; 3] = qkv
        .reshape([images, tokens, 3 * heads, dim / heads])
        .swap_dims(1, 2) // [images, 3 * heads, tokens, head_dim]
        .chunk(3, 1)
        .try_into()
        .expect("three chunks of equal size");
    let query = query.narrow(2, 0, kept);
    let scores = query.matmul(key.transpose()); // [images, heads, kept, tokens]
    let weights = dropout.forward(softmax(scores));
    let context = weights
        .clone()
        .matmul(value) // [images, heads, kept, head_dim]
        .swap_dims(1, 2)
        .reshape([images * kept, dim]);
    (context, weights)
}

/// Whether the attention runs as one operation for `heads` heads of `head_dim` values with
/// `dropout`, on the device and float type of `x`: on the host backends (here or on a compute
/// server) in `f32`, without dropout, for the head sizes the kernels are compiled for.
fn is_fused(x: &Tensor<2>, heads: usize, head_dim: usize, dropout: &Dropout) -> bool {
    dropout.prob == 0.0 && supported(heads, head_dim) && Route::of_tensor(x).runs_host_kernels()
}

/// The queries (scaled by `1/sqrt(head_dim)`), keys and values of every head for the rows of
/// `x`, in one matrix product: `[rows, 3 * dim]`; within each of the three, the columns in
/// head-lane order ([`columns_in_lanes`]) when `lanes` gives the `(heads, head_dim)`.
fn projections(
    attention: &MultiHeadAttention,
    x: Tensor<2>,
    lanes: Option<(usize, usize)>,
) -> Tensor<2> {
    let dim = x.dims()[1];
    let scale = 1.0 / (attention.d_k as f32).sqrt();
    let projections = [
        (&attention.query, scale),
        (&attention.key, 1.0),
        (&attention.value, 1.0),
    ];
    let weights = projections
        .iter()
        .map(|(linear, factor)| scaled(linear.weight.val(), *factor)); // [dim, dim] each
    let weight = Tensor::cat(weights.collect(), 1); // [dim, 3 * dim]
    let bias = projections
        .iter()
        .any(|(linear, _)| linear.bias.is_some())
        .then(|| {
            let biases = projections
                .iter()
                .map(|(linear, factor)| match &linear.bias {
                    Some(bias) => scaled(bias.val(), *factor),
                    None => Tensor::zeros([dim], &x.device()),
                });
            Tensor::cat(biases.collect(), 0).unsqueeze::<2>() // [1, 3 * dim]
        });
    let (weight, bias) = match lanes {
        Some((heads, head_dim)) => (
            columns_in_lanes(weight, heads, head_dim),
            bias.map(|bias| columns_in_lanes(bias, heads, head_dim)),
        ),
        None => (weight, bias),
    };
    linear(x, weight, bias.map(|bias| bias.reshape([3 * dim]))) // [rows, 3 * dim]
}

/// `tensor · factor`, with no operation (and no backward step) for a factor of 1.
fn scaled<const D: usize>(tensor: Tensor<D>, factor: f32) -> Tensor<D> {
    if factor == 1.0 {
        tensor
    } else {
        tensor.mul_scalar(factor)
    }
}

/// The attention as one operation, from a projection whose queries, keys and values each have
/// their columns in head-lane order ([`columns_in_lanes`]), to a context in that order too.
fn attention_in_lanes(qkv: Tensor<2>, images: usize, heads: usize, kept: usize) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as HostOps>::fused_attention(
        qkv.into_dispatch(),
        images,
        heads,
        kept,
    ))
}

/// The columns of `x` `[rows, groups * heads * head_dim]` in the fused attention's head-lane
/// order: within each group of `heads * head_dim` columns (a query, key, value or context),
/// column `d * heads + h` holds the usual column `h * head_dim + d`, head `h`'s value `d`. Each
/// group's `[heads, head_dim]` transposed.
fn columns_in_lanes(x: Tensor<2>, heads: usize, head_dim: usize) -> Tensor<2> {
    transpose_groups(x, heads, head_dim, 1)
}

/// The inverse of [`columns_in_lanes`]: the columns of `x` back in the usual order.
fn columns_in_usual_order(x: Tensor<2>, heads: usize, head_dim: usize) -> Tensor<2> {
    transpose_groups(x, head_dim, heads, 1)
}

/// The rows of `weight` `[heads * head_dim, columns]`, a weight that reads a context, in
/// head-lane order ([`columns_in_lanes`]), so that it reads a context in that order.
fn rows_in_lanes(weight: Tensor<2>, heads: usize, head_dim: usize) -> Tensor<2> {
    let [rows, columns] = weight.dims();
    let flat = weight.reshape([1, rows * columns]);
    transpose_groups(flat, heads, head_dim, columns).reshape([rows, columns])
}

/// [`HostOps::transpose_groups`] on the host backends (one copy of `x`), a transpose of Burn's
/// elsewhere.
fn transpose_groups(x: Tensor<2>, rows: usize, columns: usize, width: usize) -> Tensor<2> {
    if Route::of_tensor(&x).runs_host_kernels() {
        return Tensor::from_dispatch(<Dispatch as HostOps>::transpose_groups(
            x.into_dispatch(),
            rows,
            columns,
            width,
        ));
    }
    let [n, m] = x.dims();
    x.reshape([n, m / (rows * columns * width), rows, columns, width])
        .swap_dims(2, 3)
        .reshape([n, m])
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::{DType, Device};

    /// `[rows, columns]` holding `0, 1, 2, …` row by row.
    fn counting(rows: usize, columns: usize) -> Tensor<2> {
        counting_on(rows, columns, &Device::flex())
    }

    fn counting_on(rows: usize, columns: usize, device: &Device) -> Tensor<2> {
        let values: Vec<f32> = (0..rows * columns).map(|value| value as f32).collect();
        Tensor::from_data(
            burn::tensor::TensorData::new(values, [rows, columns]),
            device,
        )
    }

    fn values(tensor: Tensor<2>) -> Vec<f32> {
        tensor.into_data().to_vec().unwrap()
    }

    /// Column `d * heads + h` in head-lane order is head `h`'s value `d`, usual column
    /// `h * head_dim + d`, in each group; the usual order undoes it; a weight's rows follow
    /// the same order as the columns.
    #[test]
    fn head_lane_order_transposes_each_group_of_heads() {
        let (heads, head_dim) = (4, 2);
        let x = counting(3, 2 * heads * head_dim); // two groups of 8 columns
        let lanes = values(columns_in_lanes(x.clone(), heads, head_dim));
        // Head h's value d: usual column h * 2 + d, lane column d * 4 + h.
        let first_row = [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15];
        let expected_row: Vec<f32> = first_row.iter().map(|&column| column as f32).collect();
        assert_eq!(&lanes[..16], &expected_row[..]);
        let back = columns_in_usual_order(
            columns_in_lanes(x.clone(), heads, head_dim),
            heads,
            head_dim,
        );
        assert_eq!(values(back), values(x));

        let weight = counting(heads * head_dim, 5);
        let rows = values(rows_in_lanes(weight.clone(), heads, head_dim));
        let by_columns = columns_in_lanes(weight.transpose(), heads, head_dim).transpose();
        assert_eq!(rows, values(by_columns));
    }

    /// The host kernel (f32) against Burn's reshape and transpose (f64 takes that path), and
    /// the gradient: the output's moved back to the input's places.
    #[test]
    fn the_host_transpose_and_its_gradient_agree_with_burns() {
        let (heads, head_dim) = (4, 2);
        let device = Device::flex().autodiff();
        let x = counting_on(3, 16, &device).require_grad();
        let factors = counting_on(3, 16, &device).sin();
        let lanes = columns_in_lanes(x.clone(), heads, head_dim);
        let gradients = (lanes.clone() * factors.clone()).sum().backward();
        let grad = x.grad(&gradients).expect("x takes part");

        let composed = columns_in_lanes(counting(3, 16).cast(DType::F64), heads, head_dim);
        assert_eq!(values(lanes.inner()), values(composed.cast(DType::F32)));
        let moved_back = columns_in_usual_order(factors.inner(), heads, head_dim);
        assert_eq!(values(grad), values(moved_back));
    }
}
