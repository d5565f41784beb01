//! Inference for programs that embed the model: [`load`] a saved run, then
//! [`Predictor::predict`] class probabilities for raw gray images.

use std::path::Path;

use burn::prelude::*;

use crate::artifact::{self, ArtifactError};
use crate::input::normalise;
use crate::{Views, Vit, VitConfig};

/// A loaded network with the config that describes its inputs.
#[derive(Debug)]
pub struct Predictor {
    vit: Vit,
    config: VitConfig,
    device: Device,
    views: Views,
}

/// Why images could not be classified.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(
        "{bytes} bytes of pixels is not a whole number of {side}x{side}x{channels} images \
         ({per_image} bytes each)"
    )]
    Shape {
        bytes: usize,
        side: usize,
        channels: usize,
        per_image: usize,
    },
}

/// Loads the model saved in `run_dir` (a run directory or any directory [`artifact::save`]
/// wrote) onto `device`.
pub fn load(run_dir: &Path, device: &Device) -> Result<Predictor, ArtifactError> {
    let (vit, config) = artifact::load(run_dir, device)?;
    Ok(Predictor::new(vit, config, device.clone()))
}

impl Predictor {
    pub fn new(vit: Vit, config: VitConfig, device: Device) -> Self {
        Self {
            vit,
            config,
            device,
            views: Views::Single,
        }
    }

    /// Averages each prediction over `views` of the image (test-time augmentation).
    pub fn with_views(self, views: Views) -> Self {
        Self { views, ..self }
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    pub fn vit(&self) -> &Vit {
        &self.vit
    }

    /// Bytes in one image: `image_size² × channels`.
    pub fn image_bytes(&self) -> usize {
        self.config.image_size * self.config.image_size * self.config.channels
    }

    /// Class probabilities, one row per image, for `pixels`: images one after another, each
    /// `image_size × image_size` bytes per channel, row-major, 0 = background and 255 = ink
    /// (MNIST's convention: a light digit on a dark ground).
    pub fn predict(&self, pixels: &[u8]) -> Result<Vec<Vec<f32>>, PredictError> {
        let per_image = self.image_bytes();
        if pixels.is_empty() || !pixels.len().is_multiple_of(per_image) {
            return Err(PredictError::Shape {
                bytes: pixels.len(),
                side: self.config.image_size,
                channels: self.config.channels,
                per_image,
            });
        }
        let count = pixels.len() / per_image;
        let side = self.config.image_size;
        let values: Vec<f32> = pixels.iter().copied().map(normalise).collect();
        let images = Tensor::from_data(
            TensorData::new(values, [count, self.config.channels, side, side]),
            &self.device,
        );
        let probabilities = self
            .vit
            .predict_views(images, self.views)
            .into_data()
            .try_to_vec::<f32>()
            .expect("float probabilities");
        Ok(probabilities
            .chunks(self.config.num_classes)
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// The most likely class and its probability.
pub fn best(probabilities: &[f32]) -> (usize, f32) {
    probabilities
        .iter()
        .copied()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |best, (class, p)| if p > best.1 { (class, p) } else { best },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_are_probability_rows_one_per_image() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let config = VitConfig {
            depth: 1,
            ..VitConfig::tutorial()
        };
        artifact::save(&config.init(&device).unwrap(), &config, dir.path()).unwrap();
        let single = load(dir.path(), &device).unwrap();
        let shifted = load(dir.path(), &device)
            .unwrap()
            .with_views(Views::Shifted);

        let pixels: Vec<u8> = (0..3 * 784).map(|i| (i * 37 % 256) as u8).collect();
        let rows = single.predict(&pixels).unwrap();
        let averaged = shifted.predict(&pixels).unwrap();
        assert_eq!((rows.len(), averaged.len()), (3, 3));
        for row in rows.iter().chain(&averaged) {
            assert_eq!(row.len(), 10);
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        }
        assert_ne!(rows, averaged, "the shifted views were not used");
    }

    #[test]
    fn pixels_that_are_not_whole_images_are_an_error() {
        let device = Device::flex();
        let config = VitConfig::tutorial();
        let predictor = Predictor::new(config.init(&device).unwrap(), config, device);
        let error = predictor.predict(&[0; 785]).unwrap_err().to_string();
        assert!(
            error.contains("785 bytes") && error.contains("28x28x1"),
            "{error}"
        );
        assert!(predictor.predict(&[]).is_err());
    }

    #[test]
    fn best_is_the_largest_probability() {
        assert_eq!(best(&[0.1, 0.7, 0.2]), (1, 0.7));
    }
}
