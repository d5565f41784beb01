//! The network: patch embedding, class token, learned positions, pre-norm encoder blocks and an
//! MLP head on the class token, as in the PyTorch MNIST tutorial, with an optional stem of 3×3
//! convolutions before the patches are cut.

use burn::module::Param;
use burn::nn::attention::{MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::transformer::{PositionWiseFeedForward, PositionWiseFeedForwardConfig};
use burn::nn::{
    Dropout, DropoutConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
    PaddingConfig2d,
};
use burn::prelude::*;

use vit_ops::slices;

use crate::{ConfigError, VitConfig};

/// The LayerNorms' epsilon: PyTorch's default, as in the tutorial.
const LAYER_NORM_EPSILON: f64 = 1e-5;

/// A Vision Transformer classifier. Build it with [`VitConfig::init`].
#[derive(Module, Debug)]
pub struct Vit {
    /// 3×3 convolutions, each followed by GELU; empty in the tutorial network.
    stem: Vec<Conv2d>,
    patch_embedding: Linear,
    class_token: Param<Tensor<3>>,
    position_embedding: Param<Tensor<3>>,
    embedding_dropout: Dropout,
    blocks: Vec<EncoderBlock>,
    head: MlpHead,
    patch_size: usize,
}

/// `x = x + attention(norm(x)); x = x + mlp(norm(x))`.
#[derive(Module, Debug)]
struct EncoderBlock {
    attention_norm: LayerNorm,
    attention: MultiHeadAttention,
    mlp_norm: LayerNorm,
    mlp: PositionWiseFeedForward,
}

/// The tutorial's head: Linear → GELU → Linear on the class token.
#[derive(Module, Debug)]
struct MlpHead {
    hidden: Linear,
    output: Linear,
}

impl VitConfig {
    /// Validates the config and builds a freshly initialised network on `device`.
    pub fn init(&self, device: &Device) -> Result<Vit, ConfigError> {
        self.validate()?;
        // The tutorial initialises both embeddings with `torch.randn`.
        let standard_normal = Initializer::Normal {
            mean: 0.0,
            std: 1.0,
        };
        let tokens = self.num_patches() + 1;
        let block = || EncoderBlock {
            attention_norm: LayerNormConfig::new(self.dim)
                .with_epsilon(LAYER_NORM_EPSILON)
                .init(device),
            // No bias on q, k, v: the tutorial's `to_qkv` has none; the output projection has one.
            attention: MultiHeadAttentionConfig::new(self.dim, self.heads)
                .with_dropout(self.dropout)
                .with_query_bias(false)
                .with_key_bias(false)
                .with_value_bias(false)
                .init(device),
            mlp_norm: LayerNormConfig::new(self.dim)
                .with_epsilon(LAYER_NORM_EPSILON)
                .init(device),
            mlp: PositionWiseFeedForwardConfig::new(self.dim, self.mlp_dim)
                .with_dropout(self.dropout)
                .init(device),
        };
        let widths = [&[self.channels][..], &self.stem_channels].concat();
        let stem = widths
            .windows(2)
            .map(|pair| {
                Conv2dConfig::new([pair[0], pair[1]], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device)
            })
            .collect();
        Ok(Vit {
            stem,
            patch_embedding: LinearConfig::new(self.patch_values(), self.dim).init(device),
            class_token: standard_normal.init([1, 1, self.dim], device),
            position_embedding: standard_normal.init([1, tokens, self.dim], device),
            embedding_dropout: DropoutConfig::new(self.dropout).init(),
            blocks: (0..self.depth).map(|_| block()).collect(),
            head: MlpHead {
                hidden: LinearConfig::new(self.dim, self.mlp_dim).init(device),
                output: LinearConfig::new(self.mlp_dim, self.num_classes).init(device),
            },
            patch_size: self.patch_size,
        })
    }
}

impl Vit {
    /// Class logits `[batch, classes]` for images `[batch, channels, height, width]` whose
    /// sides are the configured image size (normalised as in training).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let (mut x, batch, sequence) = self.embed(images);
        // Only the class token's output reaches the head, so the last block computes no other.
        let (last, others) = self.blocks.split_last().expect("a valid config has blocks");
        for block in others {
            x = block.forward(x, batch, sequence);
        }
        let class_output = last.forward(x, batch, 1); // [batch, dim]
        self.head.forward(class_output) // [batch, classes]
    }

    /// The logits of [`Vit::forward`] and, for every block, its attention weights `[batch,
    /// heads, tokens, tokens]` (token 0 is the class token, then the patches row by row): what
    /// pictures of the model's attention are drawn from. Slower than `forward`, which keeps no
    /// weights and computes only the class token in the last block.
    pub fn forward_with_attention(&self, images: Tensor<4>) -> (Tensor<2>, Vec<Tensor<4>>) {
        let (mut x, batch, _) = self.embed(images);
        let mut maps = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (next, weights) = block.forward_with_attention(x, batch);
            x = next;
            maps.push(weights);
        }
        let class_output = first_tokens(x, batch, 1);
        (self.head.forward(class_output), maps)
    }

    /// The stem, the patches and their embedding, the class token and the positions: the
    /// tokens `[batch * sequence, dim]` the blocks read, with `batch` and `sequence`.
    fn embed(&self, images: Tensor<4>) -> (Tensor<2>, usize, usize) {
        let [batch, channels, height, width] = images.dims();
        let patch = self.patch_size;
        let (rows, cols) = (height / patch, width / patch);
        // Cut into patches flattened as (row in patch, column in patch, channel), the layout of
        // the tutorial's `rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')`. Tokens travel
        // as the rows of one matrix `[batch * tokens, dim]`: every linear layer is then one
        // large matrix product, where `[batch, tokens, dim]` would be a batch of small ones.
        let patches = if self.stem.is_empty() {
            images
                .reshape([batch, channels, rows, patch, cols, patch])
                .permute([0, 2, 4, 3, 5, 1])
                .reshape([batch * rows * cols, patch * patch * channels]) // [batch * 16, 49]
        } else {
            let map = self.stem_forward(images); // [batch, height, width, channels]
            let channels = map.dims()[3];
            map.reshape([batch, rows, patch, cols, patch, channels])
                .permute([0, 1, 3, 2, 4, 5])
                .reshape([batch * rows * cols, patch * patch * channels]) // [batch * 16, 784]
        };
        let [_, _, dim] = self.position_embedding.dims();
        // [batch, 16, dim]
        let tokens =
            vit_ops::linear(&self.patch_embedding, patches).reshape([batch, rows * cols, dim]);

        let class_token = self.class_token.val().repeat_dim(0, batch); // [batch, 1, dim]
        let x = Tensor::cat(vec![class_token, tokens], 1) + self.position_embedding.val();
        let sequence = rows * cols + 1;
        let x = self
            .embedding_dropout
            .forward(x)
            .reshape([batch * sequence, dim]); // [batch * 17, dim]
        (x, batch, sequence)
    }

    /// The stem on images `[batch, channels, height, width]`, each 3×3 convolution (stride 1,
    /// padding 1) followed by GELU; the map leaves channels-last, `[batch, height, width,
    /// channels]`, the order the patches are cut in.
    ///
    /// In training each convolution is one matrix product, the nine shifted copies of its input
    /// side by side `[batch * height * width, 9 * channels]` times the kernel, through the fused
    /// linear operation: its backward pass is two products, where Burn's `conv2d` backward on
    /// flex costs more (the fast preset trains ~10 % faster this way). Without gradients,
    /// Burn's `conv2d` forward is the faster of the two and is used.
    fn stem_forward(&self, images: Tensor<4>) -> Tensor<4> {
        let training = self.stem.iter().any(|c| c.weight.val().is_require_grad());
        if !training {
            let map = self.stem.iter().fold(images, |map, convolution| {
                vit_ops::gelu(convolution.forward(map))
            });
            return map.permute([0, 2, 3, 1]);
        }
        let [batch, _, height, width] = images.dims();
        let mut map = images.permute([0, 2, 3, 1]);
        for convolution in &self.stem {
            let [outputs, inputs, _, _] = convolution.weight.dims();
            // A zero border, written as zeros with the map assigned inside rather than
            // `pad`: Burn 0.22.1's `pad` fills a tensor with `full`, which autodiff leaves to
            // the backend trait's default, values made on the host and uploaded, so on a
            // compute server every step sent the padded maps over the network (7.8 MB a step
            // with the best preset's stem). `zeros` is one operation on any device.
            let padded = Tensor::zeros([batch, height + 2, width + 2, inputs], &map.device())
                .slice_assign([0..batch, 1..height + 1, 1..width + 1, 0..inputs], map);
            let shifted: Vec<Tensor<4>> = (0..9)
                .map(|k| {
                    padded
                        .clone()
                        .narrow(1, k / 3, height)
                        .narrow(2, k % 3, width)
                })
                .collect();
            // [batch * h * w, 9 * inputs], columns ordered (kernel row, kernel column, channel)
            let columns = Tensor::cat(shifted, 3).reshape([batch * height * width, 9 * inputs]);
            let kernel = convolution
                .weight
                .val()
                .permute([2, 3, 1, 0])
                .reshape([9 * inputs, outputs]);
            let bias = convolution.bias.as_ref().map(Param::val);
            let features = vit_ops::functional::linear(columns, kernel, bias);
            map = vit_ops::gelu(features).reshape([batch, height, width, outputs]);
        }
        map
    }

    /// The `[channels, height, width]` of the images this network reads, from its weights.
    pub fn input_shape(&self) -> [usize; 3] {
        let [_, tokens, _] = self.position_embedding.dims();
        let patches_per_side = ((tokens - 1) as f64).sqrt().round() as usize;
        let side = patches_per_side * self.patch_size;
        let channels = match self.stem.first() {
            Some(convolution) => convolution.weight.dims()[1],
            None => self.patch_embedding.weight.dims()[0] / (self.patch_size * self.patch_size),
        };
        [channels, side, side]
    }

    /// Class probabilities `[batch, classes]`: the softmax of [`Vit::forward_in_slices`].
    pub fn predict(&self, images: Tensor<4>) -> Tensor<2> {
        burn::tensor::activation::softmax(self.forward_in_slices(images), 1)
    }

    /// [`Vit::forward`] for inference: on the CPU backends that run most operations on one
    /// thread (flex, ndarray), a large batch is cut into one slice per core, run side by side
    /// (the trainer does the same with its training steps). Not for a model whose gradients
    /// are wanted: each slice would record into one autodiff graph from its own thread.
    pub fn forward_in_slices(&self, images: Tensor<4>) -> Tensor<2> {
        let batch = images.dims()[0];
        let slices = slices::count(&images.device(), batch, MIN_INFERENCE_SLICE);
        if slices == 1 {
            return self.forward(images);
        }
        let jobs = slices::ranges(batch, slices)
            .into_iter()
            .map(|range| {
                let images = images.clone().narrow(0, range.start, range.len());
                move || self.forward(images)
            })
            .collect();
        Tensor::cat(slices::side_by_side(jobs), 0)
    }
}

/// Fewest images in an inference slice: below this a thread of its own costs more than it saves.
const MIN_INFERENCE_SLICE: usize = 32;

impl EncoderBlock {
    /// One block over the tokens of `batch` images, stacked as rows `[batch * tokens, dim]`.
    /// It returns the outputs of the first `kept` tokens of each image, `[batch * kept, dim]`.
    /// On a compute server's device the block is one operation (`vit_ops::block`), elsewhere
    /// its layers one by one.
    fn forward(&self, x: Tensor<2>, batch: usize, kept: usize) -> Tensor<2> {
        let layers = self.layers();
        vit_ops::encoder_block(&layers, &x, batch, kept, LAYER_NORM_EPSILON)
            .unwrap_or_else(|| self.forward_in_layers(x, batch, kept))
    }

    /// [`EncoderBlock::forward`] layer by layer.
    fn forward_in_layers(&self, x: Tensor<2>, batch: usize, kept: usize) -> Tensor<2> {
        let normed = normalize(&self.attention_norm, x.clone());
        let attended = vit_ops::self_attention(&self.attention, normed, batch, kept);
        let x = first_tokens(x, batch, kept) + attended;
        let normed = normalize(&self.mlp_norm, x.clone());
        x + feed_forward(&self.mlp, normed)
    }

    fn layers(&self) -> vit_ops::EncoderLayers<'_> {
        vit_ops::EncoderLayers {
            attention_norm: &self.attention_norm,
            attention: &self.attention,
            mlp_norm: &self.mlp_norm,
            mlp: &self.mlp,
        }
    }

    /// [`EncoderBlock::forward`] for every token, with the attention weights `[batch, heads,
    /// tokens, tokens]`.
    fn forward_with_attention(&self, x: Tensor<2>, batch: usize) -> (Tensor<2>, Tensor<4>) {
        let normed = normalize(&self.attention_norm, x.clone());
        let (attended, weights) =
            vit_ops::self_attention_with_weights(&self.attention, normed, batch);
        let x = x + attended;
        let normed = normalize(&self.mlp_norm, x.clone());
        (x + feed_forward(&self.mlp, normed), weights)
    }
}

/// Burn's `PositionWiseFeedForward`: Linear → GELU (its default activation, which the config
/// keeps) → dropout → Linear.
fn feed_forward(mlp: &PositionWiseFeedForward, x: Tensor<2>) -> Tensor<2> {
    let hidden = vit_ops::gelu(vit_ops::linear(&mlp.linear_inner, x));
    vit_ops::linear(&mlp.linear_outer, mlp.dropout.forward(hidden))
}

/// `layer` applied to the rows of `x`.
fn normalize(layer: &LayerNorm, x: Tensor<2>) -> Tensor<2> {
    vit_ops::layer_norm(layer, x, LAYER_NORM_EPSILON)
}

/// The rows of the first `kept` tokens of each of `batch` images in `x` `[batch * tokens, dim]`.
fn first_tokens(x: Tensor<2>, batch: usize, kept: usize) -> Tensor<2> {
    let [rows, dim] = x.dims();
    let tokens = rows / batch;
    if kept == tokens {
        return x;
    }
    x.reshape([batch, tokens, dim])
        .narrow(1, 0, kept)
        .reshape([batch * kept, dim])
}

impl MlpHead {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        vit_ops::linear(
            &self.output,
            vit_ops::gelu(vit_ops::linear(&self.hidden, x)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An encoder block as one operation (what a compute server runs) gives its layers'
    /// output and gradients, for the input and every parameter, keeping every token and only
    /// the class token (the last block's case), on both host backends.
    #[test]
    #[allow(deprecated)] // ndarray, still supported here
    fn a_block_as_one_operation_matches_its_layers_with_gradients() {
        for device in [Device::flex(), Device::ndarray()] {
            let device = device.autodiff();
            let model = VitConfig::tutorial().init(&device).unwrap();
            let block = &model.blocks[1];
            let (images, tokens) = (5, 17);
            let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
            let x = Tensor::<2>::random([images * tokens, 64], normal, &device);
            for kept in [tokens, 1] {
                let factors = Tensor::<2>::random([images * kept, 64], normal, &device);
                let run = |one_operation: bool| {
                    let x = x.clone().detach().require_grad();
                    let output = if one_operation {
                        vit_ops::block::encoder_block_as_one_operation(
                            &block.layers(),
                            &x,
                            images,
                            kept,
                            LAYER_NORM_EPSILON,
                        )
                        .expect("the tutorial's block runs as one operation on the host")
                    } else {
                        block.forward_in_layers(x.clone(), images, kept)
                    };
                    let gradients = (output.clone() * factors.clone()).sum().backward();
                    let mut values = vec![floats(output), floats(x.grad(&gradients).unwrap())];
                    values.extend(block_gradients(block, &gradients));
                    values
                };
                let (layers, one) = (run(false), run(true));
                assert_eq!(layers.len(), 2 + 13);
                for (index, (a, b)) in layers.iter().zip(&one).enumerate() {
                    assert!(
                        a.iter().any(|value| *value != 0.0),
                        "value {index} is not zero"
                    );
                    let scale = a.iter().fold(0f32, |max, value| max.max(value.abs()));
                    let worst = a
                        .iter()
                        .zip(b)
                        .fold(0f32, |max, (a, b)| max.max((a - b).abs()));
                    assert!(
                        worst <= 1e-5 * scale,
                        "kept {kept}, value {index}: off by {worst} (largest {scale})"
                    );
                }
            }
        }
    }

    fn floats<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    /// The gradients of `block`'s thirteen parameters, in `gradients`.
    fn block_gradients(block: &EncoderBlock, gradients: &burn::tensor::Gradients) -> Vec<Vec<f32>> {
        let vector = |param: &Param<Tensor<1>>| floats(param.grad(gradients).unwrap());
        let matrix = |param: &Param<Tensor<2>>| floats(param.grad(gradients).unwrap());
        let norm =
            |layer: &LayerNorm| vec![vector(&layer.gamma), vector(layer.beta.as_ref().unwrap())];
        let linear =
            |layer: &Linear| vec![matrix(&layer.weight), vector(layer.bias.as_ref().unwrap())];
        let attention = &block.attention;
        [
            norm(&block.attention_norm),
            vec![matrix(&attention.query.weight)],
            vec![matrix(&attention.key.weight)],
            vec![matrix(&attention.value.weight)],
            linear(&attention.output),
            norm(&block.mlp_norm),
            linear(&block.mlp.linear_inner),
            linear(&block.mlp.linear_outer),
        ]
        .concat()
    }

    #[test]
    fn logits_have_one_row_per_image_and_one_column_per_class() {
        let device = Device::flex();
        let model = VitConfig::tutorial().init(&device).unwrap();
        let logits = model.forward(Tensor::zeros([3, 1, 28, 28], &device));
        assert_eq!(logits.dims(), [3, 10]);
    }

    #[test]
    fn other_shapes_follow_the_config() {
        let device = Device::flex();
        let config = VitConfig {
            image_size: 12,
            channels: 3,
            patch_size: 4,
            dim: 24,
            depth: 2,
            heads: 3,
            mlp_dim: 32,
            num_classes: 5,
            dropout: 0.1,
            stem_channels: Vec::new(),
        };
        let model = config.init(&device).unwrap();
        assert_eq!(model.input_shape(), [3, 12, 12]);
        let logits = model.forward(Tensor::ones([2, 3, 12, 12], &device));
        assert_eq!(logits.dims(), [2, 5]);

        let with_stem = VitConfig {
            stem_channels: vec![4, 6],
            ..config
        };
        let model = with_stem.init(&device).unwrap();
        assert_eq!(model.input_shape(), [3, 12, 12]);
        let logits = model.forward(Tensor::ones([2, 3, 12, 12], &device));
        assert_eq!(logits.dims(), [2, 5]);
        // Two 3×3 convolutions (3→4, 4→6) with biases, and a patch embedding from 4·4·6 values.
        let without_stem = VitConfig {
            stem_channels: Vec::new(),
            ..with_stem.clone()
        };
        let base = without_stem.init(&device).unwrap().num_params();
        let stem = (3 * 4 * 9 + 4) + (4 * 6 * 9 + 6);
        let wider_embedding = (4 * 4 * 6 - 4 * 4 * 3) * 24;
        assert_eq!(model.num_params(), base + stem + wider_embedding);
    }

    /// A batch large enough to be cut into slices gives each image the probabilities it gets
    /// alone in a batch of its own.
    #[test]
    fn predict_in_slices_matches_one_image_at_a_time() {
        let device = Device::flex();
        let model = VitConfig::tutorial().init(&device).unwrap();
        let batch = 3 * MIN_INFERENCE_SLICE + 1;
        let images = Tensor::<4>::random(
            [batch, 1, 28, 28],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let together = model.predict(images.clone()).into_data();
        for index in [0, MIN_INFERENCE_SLICE, batch / 2, batch - 1] {
            let alone = model
                .predict(images.clone().narrow(0, index, 1))
                .into_data();
            let row = together.as_slice::<f32>().unwrap()[index * 10..(index + 1) * 10].to_vec();
            let alone = alone.as_slice::<f32>().unwrap();
            for (a, b) in row.iter().zip(alone) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "image {index}: {row:?} against {alone:?}"
                );
            }
        }
    }

    /// The stem's training form (one matrix product per convolution) computes what Burn's
    /// `conv2d` computes without gradients, and passes gradients back to every stem weight.
    #[test]
    fn the_stem_trains_as_it_infers() {
        let device = Device::flex().autodiff();
        let config = VitConfig {
            stem_channels: vec![4, 8],
            depth: 2,
            ..VitConfig::tutorial()
        };
        let model = config.init(&device).unwrap();
        let images = Tensor::<4>::random(
            [3, 1, 28, 28],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let trained = model.forward(images.clone());
        let inferred = model.valid().forward(images.inner());
        let diff = (trained.clone().inner() - inferred)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(
            diff < 1e-5,
            "training and inference logits differ by {diff}"
        );
        let gradients = trained.sum().backward();
        for convolution in &model.stem {
            let gradient = convolution
                .weight
                .grad(&gradients)
                .expect("a stem gradient");
            assert!(gradient.abs().sum().into_scalar::<f32>() > 0.0);
        }
    }

    /// The tutorial's PyTorch model has 213,642 parameters; ours has the same layers.
    #[test]
    fn tutorial_parameter_count_matches_pytorch() {
        let model = VitConfig::tutorial().init(&Device::flex()).unwrap();
        assert_eq!(model.num_params(), 213_642);
    }

    #[test]
    fn invalid_config_is_an_error_not_a_panic() {
        let config = VitConfig {
            heads: 7,
            ..VitConfig::tutorial()
        };
        assert!(config.init(&Device::flex()).is_err());
    }
}
