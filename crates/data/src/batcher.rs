//! Items to tensors: images `[batch, 1, 28, 28]` normalised like the tutorial, targets `[batch]`.

use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;

// The normalisation is the trained model's input contract, so the model crate owns it.
pub use vit_model::input::{PIXEL_MEAN, PIXEL_STD, normalise};

use crate::{IMAGE_SIDE, MnistItem};

/// A batch ready for the model.
#[derive(Clone, Debug)]
pub struct MnistBatch {
    /// `[batch, 1, 28, 28]`, float, normalised.
    pub images: Tensor<4>,
    /// `[batch]`, the digits.
    pub targets: Tensor<1, Int>,
}

/// Turns [`MnistItem`]s into an [`MnistBatch`].
#[derive(Clone, Debug, Default)]
pub struct MnistBatcher;

impl Batcher<MnistItem, MnistBatch> for MnistBatcher {
    fn batch(&self, items: Vec<MnistItem>, device: &Device) -> MnistBatch {
        let batch = items.len();
        let mut pixels = Vec::with_capacity(batch * IMAGE_SIDE * IMAGE_SIDE);
        for item in &items {
            pixels.extend(item.pixels.iter().map(|&pixel| normalise(pixel)));
        }
        let targets: Vec<i64> = items.iter().map(|item| i64::from(item.label)).collect();
        MnistBatch {
            images: Tensor::from_data(
                TensorData::new(pixels, [batch, 1, IMAGE_SIDE, IMAGE_SIDE]),
                device,
            ),
            targets: Tensor::from_data(TensorData::new(targets, [batch]), device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_have_the_model_shapes_and_normalised_pixels() {
        let device = Device::flex();
        let mut pixels = [0u8; IMAGE_SIDE * IMAGE_SIDE];
        pixels[IMAGE_SIDE + 2] = 255; // row 1, column 2
        let items = vec![
            MnistItem { pixels, label: 3 },
            MnistItem {
                pixels: [0; 784],
                label: 9,
            },
        ];

        let batch = MnistBatcher.batch(items, &device);

        assert_eq!(batch.images.dims(), [2, 1, 28, 28]);
        assert_eq!(batch.targets.dims(), [2]);
        let images = batch.images.into_data().try_to_vec::<f32>().unwrap();
        let black = (0.0 - PIXEL_MEAN) / PIXEL_STD;
        let white = (1.0 - PIXEL_MEAN) / PIXEL_STD;
        assert!((images[0] - black).abs() < 1e-6);
        assert!((images[IMAGE_SIDE + 2] - white).abs() < 1e-6);
        assert!((images[784 + IMAGE_SIDE + 2] - black).abs() < 1e-6);
        let targets = batch
            .targets
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        assert_eq!(targets, vec![3, 9]);
    }
}
