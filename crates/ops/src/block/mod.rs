//! A pre-norm encoder block as one operation, for compute servers. Layer by layer a block of
//! the ViT is about fifty operations in a training step (its layers, the attention's weights
//! put together and reordered, the residual sums, and the backward pass of each), and on a
//! remote device every one of them is a message the trainer issues and the server unpacks and
//! schedules. Here the forward pass is one operation and the backward pass another; the
//! server runs the same layer operations (`extension.rs`) in the same order, so the results
//! are the layer-by-layer ones.

mod passes;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, backend_extension};
use burn::nn::attention::MultiHeadAttention;
use burn::nn::transformer::PositionWiseFeedForward;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{DType, Tensor};

use crate::extension::{FusedOps, HostOps};
use crate::host::attention::supported;
use crate::route::Route;

#[cfg(feature = "remote")]
pub(crate) use passes::forward_shapes;
pub use passes::{BlockActivations, BlockParameters, BlockSizes};
use passes::{block_backward, block_forward};

/// The layers of a pre-norm encoder block: `x + attention(norm(x))`, then `x + mlp(norm(x))`,
/// the MLP being Linear → GELU → Linear.
pub struct EncoderLayers<'a> {
    pub attention_norm: &'a LayerNorm,
    pub attention: &'a MultiHeadAttention,
    pub mlp_norm: &'a LayerNorm,
    pub mlp: &'a PositionWiseFeedForward,
}

/// The block of `layers` on the tokens `x` `[images * tokens, dim]` of `images` images, as one
/// operation with one backward step, for the first `kept` tokens of each image: `[images *
/// kept, dim]`. Only on a compute server's device, where each operation costs a message; `None`
/// elsewhere, and where the block has what the operation does not cover (dropout, biases on
/// the queries, keys or values, layers without them elsewhere, a head size without an
/// attention kernel, tensors that are not `f32`), for the caller to run the layers one by one.
pub fn encoder_block(
    layers: &EncoderLayers<'_>,
    x: &Tensor<2>,
    images: usize,
    kept: usize,
    epsilon: f64,
) -> Option<Tensor<2>> {
    if Route::of_tensor(x) != Route::Remote {
        return None;
    }
    one_operation(layers, x, images, kept, epsilon)
}

/// What [`encoder_block`] runs on a compute server, on any device whose backend has the host
/// kernels (flex, ndarray) as well: for comparing it with the layers it stands for. Not used
/// there: local flex trains the tutorial at the layers' speed with it (same history, measured
/// in docs/benchmarks.md), an operation costing no message.
pub fn encoder_block_as_one_operation(
    layers: &EncoderLayers<'_>,
    x: &Tensor<2>,
    images: usize,
    kept: usize,
    epsilon: f64,
) -> Option<Tensor<2>> {
    if !Route::of_tensor(x).runs_host_kernels() {
        return None;
    }
    one_operation(layers, x, images, kept, epsilon)
}

/// The block operation on `x`, where it covers `layers`.
fn one_operation(
    layers: &EncoderLayers<'_>,
    x: &Tensor<2>,
    images: usize,
    kept: usize,
    epsilon: f64,
) -> Option<Tensor<2>> {
    let parameters = parameters(layers, x)?;
    let sizes = BlockSizes {
        images,
        heads: layers.attention.n_heads,
        kept,
        epsilon,
    };
    let output =
        <Dispatch as BlockOps>::encoder_block(x.clone().into_dispatch(), parameters, sizes);
    Some(Tensor::from_dispatch(output))
}

/// The parameters of `layers`, or `None` if the operation does not cover these layers on `x`.
fn parameters(layers: &EncoderLayers<'_>, x: &Tensor<2>) -> Option<BlockParameters<Dispatch>> {
    let EncoderLayers {
        attention_norm,
        attention,
        mlp_norm,
        mlp,
    } = layers;
    let [rows, dim] = x.dims();
    // The layer-by-layer attention reorders the activations instead of the weights below
    // `dim` rows (`attention.rs`); the operation covers the usual case only.
    let covered = rows >= dim
        && attention.dropout.prob == 0.0
        && mlp.dropout.prob == 0.0
        && supported(attention.n_heads, attention.d_k);
    if !covered {
        return None;
    }
    let f32 = |dtype| (dtype == DType::F32).then_some(());
    let norm = |layer: &LayerNorm| {
        let (gamma, beta) = (layer.gamma.val(), layer.beta.as_ref()?.val());
        f32(gamma.dtype())?;
        Some((gamma.into_dispatch(), beta.into_dispatch()))
    };
    let unbiased = |layer: &Linear| {
        let weight = layer.weight.val();
        f32(weight.dtype())?;
        layer.bias.is_none().then(|| weight.into_dispatch())
    };
    let linear = |layer: &Linear| {
        let (weight, bias) = (layer.weight.val(), layer.bias.as_ref()?.val());
        f32(weight.dtype())?;
        Some((weight.into_dispatch(), bias.into_dispatch()))
    };
    let (norm_1_gamma, norm_1_beta) = norm(attention_norm)?;
    let query_weight = unbiased(&attention.query)?;
    let key_weight = unbiased(&attention.key)?;
    let value_weight = unbiased(&attention.value)?;
    let (output_weight, output_bias) = linear(&attention.output)?;
    let (norm_2_gamma, norm_2_beta) = norm(mlp_norm)?;
    let (inner_weight, inner_bias) = linear(&mlp.linear_inner)?;
    let (outer_weight, outer_bias) = linear(&mlp.linear_outer)?;
    Some(BlockParameters {
        norm_1_gamma,
        norm_1_beta,
        query_weight,
        key_weight,
        value_weight,
        output_weight,
        output_bias,
        norm_2_gamma,
        norm_2_beta,
        inner_weight,
        inner_bias,
        outer_weight,
        outer_bias,
    })
}

/// A pre-norm encoder block as one operation and its backward pass as another, on the host
/// backends and compute servers: what a remote device ships instead of the block's fifty-odd
/// operations.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(all(feature = "wgpu", feature = "remote")),
    Remote: cfg(feature = "remote"),
    Autodiff,
)]
pub trait BlockOps: FusedOps + HostOps {
    /// The block's output `[images * kept, dim]` for the tokens `x` `[images * tokens, dim]`.
    fn encoder_block(
        x: FloatTensor<Self>,
        #[extension_type] parameters: BlockParameters<Self>,
        sizes: BlockSizes,
    ) -> FloatTensor<Self> {
        block_forward::<Self>(x, parameters, sizes, false).0
    }

    /// [`BlockOps::encoder_block`]'s output and the activations its backward pass reads.
    fn encoder_block_saving(
        x: FloatTensor<Self>,
        #[extension_type] parameters: BlockParameters<Self>,
        sizes: BlockSizes,
    ) -> (FloatTensor<Self>, BlockActivations<Self>) {
        let (output, activations) = block_forward::<Self>(x, parameters, sizes, true);
        (output, activations.expect("asked for"))
    }

    /// The gradients of [`BlockOps::encoder_block`] for `x` and for each parameter, from the
    /// activations it saved and the gradient of its output.
    fn encoder_block_backward(
        x: FloatTensor<Self>,
        #[extension_type] parameters: BlockParameters<Self>,
        #[extension_type] activations: BlockActivations<Self>,
        grad: FloatTensor<Self>,
        sizes: BlockSizes,
    ) -> (FloatTensor<Self>, BlockParameters<Self>) {
        block_backward::<Self>(x, parameters, activations, grad, sizes)
    }
}
