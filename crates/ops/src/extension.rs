//! Two backend extensions: [`FusedOps`], the layer operations every backend this crate is
//! built for runs as one autodiff node each, and [`HostOps`], the attention that only the host
//! backends run as one operation. (The third, a whole encoder block, is in `block/`.)
//!
//! [`FusedOps`]'s defaults are Burn's own operations (and, for the backward passes Burn has no
//! single operation for, a short composed form); the host backends opt into the host kernels
//! (`backends.rs`), libtorch into its own backward kernels (`libtorch.rs`).

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata, backend_extension};

use crate::composed::{composed_layer_norm_backward, composed_softmax_backward};
use crate::host::attention::{
    Sizes, host_attention, host_attention_backward, host_transpose_groups,
};

/// LayerNorm, softmax, GELU and the linear layer with backward passes of their own.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    LibTorch: cfg(feature = "tch"),
    Cube: cfg(feature = "wgpu"),
    Remote: cfg(feature = "remote"),
    Autodiff,
)]
pub trait FusedOps: Backend {
    /// LayerNorm over the last dimension: `(x - mean) / sqrt(var + epsilon) * gamma + beta`.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), epsilon)
    }

    /// Softmax along the last dimension.
    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let last = x.shape().num_dims() - 1;
        Self::softmax(x, last)
    }

    /// GELU, `x · Φ(x)` with the exact normal CDF.
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu(x)
    }

    /// The gradient of [`FusedOps::fused_gelu`] for its input, given the gradient of its output.
    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu_backward(x, grad)
    }

    /// `x · weight + bias` for `x` `[rows, inputs]` and `weight` `[inputs, outputs]`.
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::linear(x, weight, Some(bias))
    }

    /// [`FusedOps::fused_linear`] without a bias: `x · weight` (backend extensions take no
    /// optional tensors).
    fn fused_linear_unbiased(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear(x, weight, None)
    }

    /// The gradient of [`FusedOps::fused_linear`] for `x`: `grad · weightᵀ`.
    fn linear_x_gradient(weight: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear_x_backward(weight, grad)
    }

    /// The gradient of [`FusedOps::fused_linear`] for its weight: `xᵀ · grad`.
    fn linear_weight_gradient(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear_weight_backward(x, grad)
    }

    /// The gradient of [`FusedOps::fused_linear`] for its bias: the sum of `grad`'s rows.
    fn linear_bias_gradient(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear_bias_backward(grad)
    }

    /// The gradients of [`FusedOps::fused_layer_norm`] for `x`, `gamma` and `beta`, given the
    /// gradient of its output.
    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_layer_norm_backward::<Self>(x, gamma, grad, epsilon)
    }

    /// The gradient of [`FusedOps::fused_softmax`] for its input, from its output and the
    /// gradient of its output.
    fn softmax_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_softmax_backward::<Self>(output, grad)
    }
}

/// Multi-head self-attention as one operation, and the column reordering it reads its input in,
/// on the host backends and compute servers only: libtorch and GPUs run their batched matrix
/// products well and take Burn's composed attention (`attention.rs`). (wgpu implements it only
/// so that a wgpu compute server can answer a trainer that ships it, `remote.rs`.)
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(all(feature = "wgpu", feature = "remote")),
    Remote: cfg(feature = "remote"),
    Autodiff,
)]
pub trait HostOps: Backend {
    /// Multi-head self-attention from the projection `qkv` `[images * tokens, 3 * dim]`
    /// (queries already scaled, then keys, then values, each with its columns in head-lane
    /// order), for the first `kept` tokens of each image: the context `[images * kept, dim]`,
    /// in the same order.
    fn fused_attention(
        qkv: FloatTensor<Self>,
        images: usize,
        heads: usize,
        kept: usize,
    ) -> FloatTensor<Self> {
        let sizes = Sizes::of::<Self>(&qkv, images, heads, kept);
        host_attention::<Self>(qkv, sizes, false).0
    }

    /// [`HostOps::fused_attention`]'s context and its attention weights
    /// `[images, kept, tokens, heads]`, which its backward pass reads.
    fn attention_with_weights(
        qkv: FloatTensor<Self>,
        images: usize,
        heads: usize,
        kept: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let sizes = Sizes::of::<Self>(&qkv, images, heads, kept);
        let (context, weights) = host_attention::<Self>(qkv, sizes, true);
        (context, weights.expect("weights were asked for"))
    }

    /// The gradient of [`HostOps::fused_attention`] for its projection, given the gradient of
    /// its context.
    fn attention_backward(
        qkv: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        images: usize,
        heads: usize,
        kept: usize,
    ) -> FloatTensor<Self> {
        let sizes = Sizes::of::<Self>(&qkv, images, heads, kept);
        host_attention_backward::<Self>(qkv, weights, grad, sizes)
    }

    /// `x` `[n, m]` with, in each group of `rows * columns * width` values of a row, the
    /// `[rows, columns]` grid of runs of `width` values transposed: run `r * columns + c`
    /// moves to `c * rows + r`. Its own inverse with `rows` and `columns` swapped.
    fn transpose_groups(
        x: FloatTensor<Self>,
        rows: usize,
        columns: usize,
        width: usize,
    ) -> FloatTensor<Self> {
        host_transpose_groups::<Self>(x, rows, columns, width)
    }
}
