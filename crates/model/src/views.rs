//! Test-time augmentation: class probabilities averaged over an image and copies of it moved one
//! pixel up, down, left and right. A network trained on shifted digits answers all five nearly
//! alike; where it hesitates between two classes, the extra views can settle it.

use burn::prelude::*;

use crate::Vit;
use crate::input::normalise;

/// Which views of each image a prediction averages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Views {
    /// The image as it is: one forward pass.
    #[default]
    Single,
    /// The image and its four one-pixel shifts: five forward passes.
    Shifted,
}

impl Views {
    /// Each view's offset in pixels, `(down, right)`.
    fn offsets(self) -> &'static [(isize, isize)] {
        match self {
            Views::Single => &[(0, 0)],
            Views::Shifted => &[(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)],
        }
    }

    /// Forward passes per image.
    pub fn count(self) -> usize {
        self.offsets().len()
    }
}

impl Vit {
    /// Class probabilities `[batch, classes]` for normalised images `[batch, channels, h, w]`,
    /// the mean over `views` of each image.
    pub fn predict_views(&self, images: Tensor<4>, views: Views) -> Tensor<2> {
        let offsets = views.offsets();
        let sum = offsets
            .iter()
            .map(|&(down, right)| self.predict(shift(images.clone(), down, right)))
            .reduce(|sum, probabilities| sum + probabilities)
            .expect("every kind of view has at least one offset");
        sum.div_scalar(offsets.len() as f64)
    }
}

/// `images` `[batch, channels, h, w]` moved `down` rows and `right` columns; the rows and
/// columns that come in are background (a 0 byte, normalised).
fn shift(images: Tensor<4>, down: isize, right: isize) -> Tensor<4> {
    shift_axis(shift_axis(images, 2, down), 3, right)
}

fn shift_axis(images: Tensor<4>, axis: usize, by: isize) -> Tensor<4> {
    if by == 0 {
        return images;
    }
    let mut dims = images.dims();
    let size = dims[axis];
    let moved = by.unsigned_abs().min(size);
    dims[axis] = moved;
    let background = Tensor::full(dims, normalise(0), &images.device());
    if moved == size {
        return background;
    }
    if by > 0 {
        let kept = images.narrow(axis, 0, size - moved);
        Tensor::cat(vec![background, kept], axis)
    } else {
        let kept = images.narrow(axis, moved, size - moved);
        Tensor::cat(vec![kept, background], axis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VitConfig;

    /// One 4×5 image, background but for a single ink pixel at `(row, column)`.
    fn dot(row: usize, column: usize, device: &Device) -> Tensor<4> {
        let mut values = vec![normalise(0); 4 * 5];
        values[row * 5 + column] = normalise(255);
        Tensor::from_data(TensorData::new(values, [1, 1, 4, 5]), device)
    }

    fn values(tensor: Tensor<4>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn a_shift_moves_the_ink_and_lets_background_in() {
        let device = Device::flex();
        assert_eq!(
            values(shift(dot(1, 2, &device), 1, -1)),
            values(dot(2, 1, &device))
        );
        assert_eq!(
            values(shift(dot(3, 0, &device), -2, 4)),
            values(dot(1, 4, &device))
        );
        let gone = values(shift(dot(3, 4, &device), 1, 0));
        assert!(gone.iter().all(|&v| v == normalise(0)), "{gone:?}");
        let far = values(shift(dot(0, 0, &device), 0, 9));
        assert!(far.iter().all(|&v| v == normalise(0)), "{far:?}");
    }

    #[test]
    fn shifted_views_average_five_predictions() {
        let device = Device::flex();
        let config = VitConfig {
            depth: 1,
            ..VitConfig::tutorial()
        };
        let vit = config.init(&device).unwrap();
        let images = Tensor::<4>::random(
            [3, 1, 28, 28],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let single = vit.predict_views(images.clone(), Views::Single);
        assert_eq!(
            single.clone().into_data().try_to_vec::<f32>().unwrap(),
            vit.predict(images.clone())
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        );
        let expected = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
            .into_iter()
            .map(|(down, right)| vit.predict(shift(images.clone(), down, right)))
            .reduce(|a, b| a + b)
            .unwrap()
            .div_scalar(5.0);
        let shifted = vit.predict_views(images, Views::Shifted);
        let difference = (shifted.clone() - expected)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(difference < 1e-6, "{difference}");
        let moved = (shifted - single).abs().max().into_scalar::<f32>();
        assert!(moved > 1e-4, "the shifted views changed nothing: {moved}");
        assert_eq!(Views::Shifted.count(), 5);
    }
}
