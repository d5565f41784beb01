//! The block's forward and backward passes from the layer operations (`extension.rs`), in
//! the order the layers run one by one (`attention.rs` and the model's block), and the tensors
//! they take and keep: what [`super::BlockOps`]' defaults run, on a compute server among others.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, ExtensionType, TensorMetadata};
#[cfg(feature = "remote")]
use burn::tensor::Shape;
use burn::tensor::Slice;

use crate::extension::{FusedOps, HostOps};

/// What the block operation is run with besides its tensors: the images the tokens belong to,
/// the attention's heads, the tokens kept of each image, and LayerNorm's epsilon.
#[derive(Clone, Copy, Debug)]
pub struct BlockSizes {
    pub images: usize,
    pub heads: usize,
    pub kept: usize,
    pub epsilon: f64,
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
pub(crate) fn block_forward<B: FusedOps + HostOps>(
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
pub(crate) fn block_backward<B: FusedOps + HostOps>(
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
fn projections<B: FusedOps + HostOps>(
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
fn projection_gradients<B: FusedOps + HostOps>(
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
fn rows_in_lanes<B: FusedOps + HostOps>(
    weight: FloatTensor<B>,
    heads: usize,
    head_dim: usize,
) -> FloatTensor<B> {
    let shape = weight.shape();
    let flat = B::float_reshape(weight, [1, shape.num_elements()].into());
    B::float_reshape(B::transpose_groups(flat, heads, head_dim, shape[1]), shape)
}

/// The inverse of [`rows_in_lanes`].
fn rows_in_usual_order<B: FusedOps + HostOps>(
    weight: FloatTensor<B>,
    heads: usize,
    head_dim: usize,
) -> FloatTensor<B> {
    rows_in_lanes::<B>(weight, head_dim, heads)
}

/// The rows of the first `kept` tokens of each of `images` images in `x` `[images * tokens,
/// dim]`.
fn first_tokens<B: FusedOps + HostOps>(
    x: FloatTensor<B>,
    images: usize,
    kept: usize,
) -> FloatTensor<B> {
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
fn into_first_tokens<B: FusedOps + HostOps>(
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
