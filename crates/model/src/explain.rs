//! What the model looks at, per image: the attention rollout of the class token (Abnar &
//! Zuidema, 2020: each block's head-averaged attention plus the identity for the residual path,
//! rows normalised, multiplied over the blocks) and the last block's attention of the class
//! token, per head. Both are maps over the grid of patches.

use burn::prelude::*;

use crate::Vit;

/// One image's prediction and attention maps.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub probabilities: Vec<f32>,
    /// Patches per side of the grid the maps cover.
    pub grid: usize,
    /// How much the class token's final state draws on each patch, row by row `[grid * grid]`
    /// (the rest goes to the class token itself).
    pub rollout: Vec<f32>,
    /// The last block's attention of the class token on each patch, per head.
    pub last_block: Vec<Vec<f32>>,
}

impl Explanation {
    /// The rollout on each pixel of a `side`×`side` input, row by row (every pixel of a patch
    /// takes its patch's value), scaled so that the largest is 1: what is drawn over the input.
    pub fn rollout_pixels(&self, side: usize) -> Vec<f32> {
        let largest = self.rollout.iter().copied().fold(0.0f32, f32::max);
        let patch = side / self.grid;
        (0..side * side)
            .map(|pixel| {
                let (x, y) = (pixel % side, pixel / side);
                let cell = (y / patch) * self.grid + x / patch;
                self.rollout[cell] / largest.max(f32::MIN_POSITIVE)
            })
            .collect()
    }
}

/// The predictions and attention maps of `vit` for `images` `[batch, channels, side, side]`
/// (normalised as in training).
pub fn explain(vit: &Vit, images: Tensor<4>) -> Vec<Explanation> {
    let (logits, blocks) = vit.forward_with_attention(images);
    let [batch, classes] = logits.dims();
    let probabilities = floats(burn::tensor::activation::softmax(logits, 1));
    let [_, heads, tokens, _] = blocks[0].dims();
    let weights: Vec<Vec<f32>> = blocks.into_iter().map(floats).collect();
    let grid = ((tokens - 1) as f64).sqrt().round() as usize;
    let per_image = heads * tokens * tokens;
    (0..batch)
        .map(|image| {
            let range = image * per_image..(image + 1) * per_image;
            let means: Vec<Vec<f32>> = weights
                .iter()
                .map(|block| head_mean(&block[range.clone()], heads))
                .collect();
            let last = &weights.last().expect("a valid config has blocks")[range];
            Explanation {
                probabilities: probabilities[image * classes..(image + 1) * classes].to_vec(),
                grid,
                rollout: rollout(&means, tokens)[1..tokens].to_vec(),
                last_block: (0..heads)
                    .map(|head| {
                        last[head * tokens * tokens + 1..head * tokens * tokens + tokens].to_vec()
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The mean over heads of one image's weights `[heads, tokens, tokens]`.
fn head_mean(weights: &[f32], heads: usize) -> Vec<f32> {
    let size = weights.len() / heads;
    (0..size)
        .map(|i| (0..heads).map(|head| weights[head * size + i]).sum::<f32>() / heads as f32)
        .collect()
}

/// Row 0 (the class token) of `R = Ã_L ⋯ Ã_1`, `Ã = (A + I) / 2`, for the head-averaged
/// attention `A` `[tokens, tokens]` of each block in order.
pub fn rollout(blocks: &[Vec<f32>], tokens: usize) -> Vec<f32> {
    // Row 0 of Ã_L ⋯ Ã_1 is e₀ᵀ Ã_L ⋯ Ã_1: carried from the last block back to the first.
    let mut row = vec![0.0f32; tokens];
    row[0] = 1.0;
    for attention in blocks.iter().rev() {
        let mut next = vec![0.0f32; tokens];
        for (i, &weight) in row.iter().enumerate() {
            for (j, next) in next.iter_mut().enumerate() {
                let residual = if i == j { 1.0 } else { 0.0 };
                *next += weight * (attention[i * tokens + j] + residual) / 2.0;
            }
        }
        row = next;
    }
    row
}

fn floats<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("float data")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VitConfig;

    /// A row-stochastic `[tokens, tokens]` matrix from a seed.
    fn stochastic(tokens: usize, seed: u32) -> Vec<f32> {
        let raw: Vec<f32> = (0..tokens * tokens)
            .map(|i| ((i as u32 * 2_654_435_761 ^ seed) % 1000) as f32 + 1.0)
            .collect();
        raw.chunks(tokens)
            .flat_map(|row| {
                let sum: f32 = row.iter().sum();
                row.iter().map(move |v| v / sum)
            })
            .collect()
    }

    #[test]
    fn the_rollout_of_row_stochastic_blocks_sums_to_one() {
        let blocks: Vec<Vec<f32>> = (0..6).map(|seed| stochastic(17, seed)).collect();
        let row = rollout(&blocks, 17);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        assert!(row.iter().all(|&v| v >= 0.0));
    }

    #[test]
    fn uniform_attention_gives_a_uniform_map() {
        let tokens = 17;
        let uniform = vec![vec![1.0 / tokens as f32; tokens * tokens]; 6];
        let row = rollout(&uniform, tokens);
        let patches = &row[1..];
        assert!(
            patches.iter().all(|&v| (v - patches[0]).abs() < 1e-6),
            "{patches:?}"
        );
        assert!(
            row[0] > patches[0],
            "the residual path keeps the class token's own share"
        );
    }

    #[test]
    fn a_model_explains_each_image_with_maps_over_its_patch_grid() {
        let tutorial = VitConfig::small_for_tests();
        let stem = VitConfig {
            patch_size: 4,
            stem_channels: vec![4],
            ..VitConfig::small_for_tests()
        };
        for (config, grid) in [(tutorial, 4), (stem, 7)] {
            explains_on_a_grid(&config, grid);
        }
    }

    fn explains_on_a_grid(config: &VitConfig, grid: usize) {
        let device = Device::flex();
        let vit = config.init(&device).unwrap();
        let images =
            Tensor::<4>::random([3, 1, 28, 28], burn::tensor::Distribution::Default, &device);
        let logits = floats(vit.forward(images.clone()));
        let explanations = explain(&vit, images);
        assert_eq!(explanations.len(), 3);
        for (image, explanation) in explanations.iter().enumerate() {
            assert_eq!(explanation.grid, grid);
            assert_eq!(explanation.rollout.len(), grid * grid);
            assert_eq!(explanation.last_block.len(), config.heads);
            assert!(
                explanation
                    .last_block
                    .iter()
                    .all(|head| head.len() == grid * grid)
            );
            let total: f32 = explanation.probabilities.iter().sum();
            assert!((total - 1.0).abs() < 1e-5);
            // The same prediction as `forward`, which keeps no weights.
            let best =
                |values: &[f32]| (0..values.len()).max_by(|&a, &b| values[a].total_cmp(&values[b]));
            assert_eq!(
                best(&explanation.probabilities),
                best(&logits[image * 10..(image + 1) * 10])
            );
        }
    }
}
