//! A pre-norm encoder block as one operation, for compute servers. Layer by layer a block of
//! the ViT is about fifty operations in a training step (its layers, the attention's weights
//! put together and reordered, the residual sums, and the backward pass of each), and on a
//! remote device every one of them is a message the trainer issues and the server unpacks and
//! schedules. Here the forward pass is one operation and the backward pass another; the
//! server runs the same layer operations (`extension.rs`) in the same order, so the results
//! are the layer-by-layer ones.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, ExtensionType, TensorMetadata, backend_extension};
use burn::nn::attention::MultiHeadAttention;
use burn::nn::transformer::PositionWiseFeedForward;
use burn::nn::{LayerNorm, Linear};
#[cfg(feature = "remote")]
use burn::tensor::Shape;
use burn::tensor::{DType, Slice, Tensor};

use crate::extension::{FusedOps, HostOps};
use crate::host::attention::supported;
use crate::route::Route;

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
    encoder_block_as_one_operation(layers, x, images, kept, epsilon)
}

/// What [`encoder_block`] runs on a compute server, on any device whose backend has the host
/// kernels (flex, ndarray) as well: for comparing it with the layers it stands for. Not
/// measured to pay on those backends, where an operation costs no message.
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
    let parameters = parameters(layers, x)?;
    let output = <Dispatch as BlockOps>::encoder_block(
        x.clone().into_dispatch(),
        parameters,
        images,
        layers.attention.n_heads,
        kept,
        epsilon,
    );
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
/// operations (`block.rs`).
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(all(feature = "wgpu", feature = "remote")),
    Remote: cfg(feature = "remote"),
    Autodiff,
)]
pub trait BlockOps: FusedOps + HostOps {
    /// The block's output `[images * kept, dim]` for the tokens `x` `[images * tokens, dim]`
    /// of `images` images, for the first `kept` tokens of each.
    fn encoder_block(
        x: FloatTensor<Self>,
        #[extension_type] parameters: BlockParameters<Self>,
        images: usize,
        heads: usize,
        kept: usize,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let sizes = BlockSizes::new(images, heads, kept, epsilon);
        block_forward::<Self>(x, parameters, sizes, false).0
    }

    /// [`BlockOps::encoder_block`]'s output and the activations its backward pass reads.
    fn encoder_block_saving(
        x: FloatTensor<Self>,
        #[extension_type] parameters: BlockParameters<Self>,
        images: usize,
        heads: usize,
        kept: usize,
        epsilon: f64,
    ) -> (FloatTensor<Self>, BlockActivations<Self>) {
        let sizes = BlockSizes::new(images, heads, kept, epsilon);
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
        images: usize,
        heads: usize,
        kept: usize,
        epsilon: f64,
    ) -> (FloatTensor<Self>, BlockParameters<Self>) {
        let sizes = BlockSizes::new(images, heads, kept, epsilon);
        block_backward::<Self>(x, parameters, activations, grad, sizes)
    }
}

/// What the block operation is run with besides its tensors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockSizes {
    pub(crate) images: usize,
    pub(crate) heads: usize,
    pub(crate) kept: usize,
    pub(crate) epsilon: f64,
}

impl BlockSizes {
    pub(crate) fn new(images: usize, heads: usize, kept: usize, epsilon: f64) -> Self {
        Self {
            images,
            heads,
            kept,
            epsilon,
        }
    }
}

/// A struct of float tensors that crosses Burn's dispatch (`ExtensionType`), with its fields
/// in a list in declaration order, the order a compute server's operation carries them in.
macro_rules! tensors {
    ($(#[$doc:meta])* $name:ident { $($(#[$field_doc:meta])* $field:ident,)* }) => {
        $(#[$doc])*
        #[derive(ExtensionType)]
        pub struct $name<B: Backend> {
            $($(#[$field_doc])* pub $field: FloatTensor<B>,)*
        }

        impl<B: Backend> $name<B> {
            /// How many tensors it holds.
            pub(crate) const LEN: usize = [$(stringify!($field)),*].len();

            pub(crate) fn into_vec(self) -> Vec<FloatTensor<B>> {
                vec![$(self.$field),*]
            }

            /// The tensors of [`Self::into_vec`], in its order.
            pub(crate) fn from_vec(tensors: Vec<FloatTensor<B>>) -> Self {
                assert_eq!(tensors.len(), Self::LEN, "{}'s tensors", stringify!($name));
                let mut tensors = tensors.into_iter();
                Self { $($field: tensors.next().expect("counted"),)* }
            }
        }
    };
}

tensors! {
    /// An encoder block's parameters, or their gradients; the queries, keys and values have
    /// no bias, as in the tutorial's network.
    BlockParameters {
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
    }
}

tensors! {
    /// The activations of an encoder block's forward pass that its backward pass reads.
    BlockActivations {
        /// The attention's normalised input `[rows, dim]`.
        normed,
        /// The projections' weight `[dim, 3 * dim]`, the query's scaled, in head-lane order.
        qkv_weight,
        /// The queries, keys and values `[rows, 3 * dim]`.
        qkv,
        /// The attention weights `[images, kept, tokens, heads]`.
        weights,
        /// The attention's context `[images * kept, dim]`, in head-lane order.
        context,
        /// The output projection's weight `[dim, dim]`, its rows in head-lane order.
        output_weight,
        /// The block's state after the attention `[images * kept, dim]`.
        middle,
        /// The MLP's normalised input.
        normed_middle,
        /// The inner layer's output before GELU `[images * kept, inner]`.
        hidden,
        /// GELU of `hidden`.
        activated,
    }
}

/// The shapes of what [`block_forward`] returns for tokens of `x_shape`, with the MLP's inner
/// layer `inner` wide: its output, then with `saving` the activations it saves.
#[cfg(feature = "remote")]
pub(crate) fn forward_shapes(
    x_shape: &Shape,
    inner: usize,
    sizes: BlockSizes,
    saving: bool,
) -> Vec<Shape> {
    let BlockSizes {
        images,
        heads,
        kept,
        ..
    } = sizes;
    let [rows, dim] = x_shape.dims();
    let kept_rows = Shape::from([images * kept, dim]);
    if !saving {
        return vec![kept_rows];
    }
    vec![
        kept_rows.clone(),
        Shape::from([rows, dim]),
        Shape::from([dim, 3 * dim]),
        Shape::from([rows, 3 * dim]),
        Shape::from([images, kept, rows / images, heads]),
        kept_rows.clone(),
        Shape::from([dim, dim]),
        kept_rows.clone(),
        kept_rows,
        Shape::from([images * kept, inner]),
        Shape::from([images * kept, inner]),
    ]
}

/// The block's forward pass from the backend's layer operations, in the order the layers run
/// one by one (`attention.rs`, and the model's block): its output `[images * kept, dim]`, and
/// with `saving` the activations its backward pass reads.
pub(crate) fn block_forward<B: BlockOps>(
    x: FloatTensor<B>,
    parameters: BlockParameters<B>,
    sizes: BlockSizes,
    saving: bool,
) -> (FloatTensor<B>, Option<BlockActivations<B>>) {
    let BlockSizes {
        images,
        heads,
        kept,
        epsilon,
    } = sizes;
    let p = parameters;
    let [_, dim] = x.shape().dims();
    let head_dim = dim / heads;
    let normed = B::fused_layer_norm(x.clone(), p.norm_1_gamma, p.norm_1_beta, epsilon);
    let qkv_weight = projections::<B>([p.query_weight, p.key_weight, p.value_weight], heads);
    let qkv = B::fused_linear_unbiased(normed.clone(), qkv_weight.clone());
    let (context, weights) = if saving {
        let (context, weights) = B::attention_with_weights(qkv.clone(), images, heads, kept);
        (context, Some(weights))
    } else {
        (B::fused_attention(qkv.clone(), images, heads, kept), None)
    };
    let output_weight = rows_in_lanes::<B>(p.output_weight, heads, head_dim);
    let attended = B::fused_linear(context.clone(), output_weight.clone(), p.output_bias);
    let middle = B::float_add(first_tokens::<B>(x, images, kept), attended);

    let normed_middle = B::fused_layer_norm(middle.clone(), p.norm_2_gamma, p.norm_2_beta, epsilon);
    let hidden = B::fused_linear(normed_middle.clone(), p.inner_weight, p.inner_bias);
    let activated = B::fused_gelu(hidden.clone());
    let mlp = B::fused_linear(activated.clone(), p.outer_weight, p.outer_bias);
    let output = B::float_add(middle.clone(), mlp);
    let activations = weights.map(|weights| BlockActivations {
        normed,
        qkv_weight,
        qkv,
        weights,
        context,
        output_weight,
        middle,
        normed_middle,
        hidden,
        activated,
    });
    (output, activations)
}

/// The gradients of [`block_forward`] for `x` and for each parameter, from the activations it
/// saved and the gradient of its output.
pub(crate) fn block_backward<B: BlockOps>(
    x: FloatTensor<B>,
    parameters: BlockParameters<B>,
    activations: BlockActivations<B>,
    grad: FloatTensor<B>,
    sizes: BlockSizes,
) -> (FloatTensor<B>, BlockParameters<B>) {
    let BlockSizes {
        images,
        heads,
        kept,
        epsilon,
    } = sizes;
    let (p, a) = (parameters, activations);
    let [rows, dim] = x.shape().dims();
    let head_dim = dim / heads;

    // The MLP: outer layer, GELU, inner layer, then its LayerNorm.
    let outer_weight = B::linear_weight_gradient(a.activated, grad.clone());
    let outer_bias = B::linear_bias_gradient(grad.clone());
    let d_activated = B::linear_x_gradient(p.outer_weight, grad.clone());
    let d_hidden = B::fused_gelu_backward(a.hidden, d_activated);
    let inner_weight = B::linear_weight_gradient(a.normed_middle, d_hidden.clone());
    let inner_bias = B::linear_bias_gradient(d_hidden.clone());
    let d_normed_middle = B::linear_x_gradient(p.inner_weight, d_hidden);
    let (d_middle_norm, norm_2_gamma, norm_2_beta) =
        B::layer_norm_backward(a.middle, p.norm_2_gamma, d_normed_middle, epsilon);
    let d_middle = B::float_add(grad, d_middle_norm);

    // The attention: output projection, the attention itself, the projections, LayerNorm.
    let output_weight = B::linear_weight_gradient(a.context, d_middle.clone());
    let output_weight = rows_in_usual_order::<B>(output_weight, heads, head_dim);
    let output_bias = B::linear_bias_gradient(d_middle.clone());
    let d_context = B::linear_x_gradient(a.output_weight, d_middle.clone());
    let d_qkv = B::attention_backward(a.qkv, a.weights, d_context, images, heads, kept);
    let d_qkv_weight = B::linear_weight_gradient(a.normed, d_qkv.clone());
    let d_normed = B::linear_x_gradient(a.qkv_weight, d_qkv);
    let [query_weight, key_weight, value_weight] = projection_gradients::<B>(d_qkv_weight, heads);
    let (d_x_norm, norm_1_gamma, norm_1_beta) =
        B::layer_norm_backward(x, p.norm_1_gamma, d_normed, epsilon);
    let d_x = B::float_add(
        d_x_norm,
        into_first_tokens::<B>(d_middle, rows / images, kept),
    );
    let gradients = BlockParameters {
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
    };
    (d_x, gradients)
}

/// The query scale `1/sqrt(head_dim)`, folded into the query's weight and bias.
fn query_scale(dim: usize, heads: usize) -> f32 {
    1.0 / ((dim / heads) as f32).sqrt()
}

/// The projections' weight `[dim, 3 * dim]` from the query's (scaled), the key's and the
/// value's, in head-lane order, as `attention.rs` makes it.
fn projections<B: BlockOps>(
    [query, key, value]: [FloatTensor<B>; 3],
    heads: usize,
) -> FloatTensor<B> {
    let dim = query.shape()[0];
    let query = B::float_mul_scalar(query, query_scale(dim, heads).into());
    let weight = B::float_cat(vec![query, key, value], 1);
    B::transpose_groups(weight, heads, dim / heads, 1)
}

/// The gradients of the query's (for its unscaled values), the key's and the value's weight
/// `[dim, dim]` from that of [`projections`]' output.
fn projection_gradients<B: BlockOps>(
    d_weight: FloatTensor<B>,
    heads: usize,
) -> [FloatTensor<B>; 3] {
    let dim = d_weight.shape()[0];
    let d_weight = B::transpose_groups(d_weight, dim / heads, heads, 1);
    let scale = query_scale(dim, heads);
    [0, 1, 2].map(|part| {
        let columns = Slice::from(part * dim..(part + 1) * dim);
        let weight = B::float_slice(d_weight.clone(), &[Slice::from(0..dim), columns]);
        if part == 0 {
            B::float_mul_scalar(weight, scale.into())
        } else {
            weight
        }
    })
}

/// The rows of `weight` `[dim, columns]` in head-lane order, as `attention.rs`'s
/// `rows_in_lanes`.
fn rows_in_lanes<B: BlockOps>(
    weight: FloatTensor<B>,
    heads: usize,
    head_dim: usize,
) -> FloatTensor<B> {
    let shape = weight.shape();
    let flat = B::float_reshape(weight, [1, shape.num_elements()].into());
    B::float_reshape(B::transpose_groups(flat, heads, head_dim, shape[1]), shape)
}

/// The inverse of [`rows_in_lanes`].
fn rows_in_usual_order<B: BlockOps>(
    weight: FloatTensor<B>,
    heads: usize,
    head_dim: usize,
) -> FloatTensor<B> {
    rows_in_lanes::<B>(weight, head_dim, heads)
}

/// The rows of the first `kept` tokens of each of `images` images in `x` `[images * tokens,
/// dim]`.
fn first_tokens<B: BlockOps>(x: FloatTensor<B>, images: usize, kept: usize) -> FloatTensor<B> {
    let [rows, dim] = x.shape().dims();
    let tokens = rows / images;
    if kept == tokens {
        return x;
    }
    let x = B::float_reshape(x, [images, tokens, dim].into());
    let first = B::float_slice(x, &[Slice::from(0..images), Slice::from(0..kept)]);
    B::float_reshape(first, [images * kept, dim].into())
}

/// The gradient of [`first_tokens`]: `grad` `[images * kept, dim]` in the rows of the first
/// `kept` of `tokens` tokens of each image, zeros in the others.
fn into_first_tokens<B: BlockOps>(
    grad: FloatTensor<B>,
    tokens: usize,
    kept: usize,
) -> FloatTensor<B> {
    if kept == tokens {
        return grad;
    }
    let [kept_rows, dim] = grad.shape().dims();
    let images = kept_rows / kept;
    let (device, dtype) = (grad.device(), grad.dtype());
    let zeros = B::float_zeros([images, tokens, dim].into(), &device, dtype.into());
    let grad = B::float_reshape(grad, [images, kept, dim].into());
    let slices = [Slice::from(0..images), Slice::from(0..kept)];
    let placed = B::float_slice_assign(zeros, &slices, grad);
    B::float_reshape(placed, [images * tokens, dim].into())
}
