//! On-the-fly random augmentation of training images: an affine transform (rotation,
//! translation, scale, slant) and optionally an elastic distortion (Simard et al., 2003: a random
//! displacement field, smoothed by a Gaussian and scaled).
//! Each draw is seeded by (run seed, image index, epoch), so a run is reproducible whatever
//! order the loader's worker threads fetch items in and whichever launch trains an epoch.

use burn::data::dataset::{Dataset, DatasetError};
use image::{GrayImage, Luma};
use serde::{Deserialize, Serialize};

use crate::epochs::EpochClock;
use crate::rng::SplitMix64;
use crate::{IMAGE_SIDE, MnistItem};

const PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;
/// Transforms turn about the image centre, between the two middle pixels.
const CENTRE: f32 = (IMAGE_SIDE as f32 - 1.0) / 2.0;

/// The range of each random transform; zero turns that transform off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Rotation, uniform in ± this many degrees.
    #[serde(default)]
    pub rotation_degrees: f32,
    /// Shift along each axis, uniform in ± this many pixels.
    #[serde(default)]
    pub translate_pixels: f32,
    /// Zoom factor, uniform in [1 − scale, 1 + scale].
    #[serde(default)]
    pub scale: f32,
    /// Elastic distortion strength: each pixel's displacement is uniform noise in ±1 px,
    /// smoothed by a Gaussian of `elastic_sigma` pixels, times this. 0 turns it off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub elastic_alpha: f32,
    /// Standard deviation, in pixels, of the Gaussian that smooths the elastic field.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub elastic_sigma: f32,
    /// Slant (a horizontal shear), uniform in ± this many degrees: how far writers lean their
    /// vertical strokes. 0 turns it off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shear_degrees: f32,
}

fn is_zero(value: &f32) -> bool {
    *value == 0.0
}

impl AugmentConfig {
    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("rotation_degrees", self.rotation_degrees, 180.0),
            ("translate_pixels", self.translate_pixels, IMAGE_SIDE as f32),
            ("scale", self.scale, 0.99),
            ("elastic_alpha", self.elastic_alpha, 100.0),
            ("elastic_sigma", self.elastic_sigma, IMAGE_SIDE as f32 / 2.0),
            ("shear_degrees", self.shear_degrees, 45.0),
        ];
        for (name, value, max) in fields {
            if !(0.0..=max).contains(&value) {
                return Err(format!("augment.{name} {value} must be in [0, {max}]"));
            }
        }
        if self.elastic_alpha > 0.0 && self.elastic_sigma < 0.5 {
            return Err(format!(
                "augment.elastic_sigma {} must be at least 0.5 when elastic_alpha is set",
                self.elastic_sigma
            ));
        }
        Ok(())
    }

    /// One random transform. The slant is drawn only when it is on, so configs without it
    /// see the same draws as before it existed.
    pub fn sample(&self, rng: &mut SplitMix64) -> Transform {
        let mut affine = Affine {
            rotation_degrees: rng.symmetric(self.rotation_degrees),
            translate: (
                rng.symmetric(self.translate_pixels),
                rng.symmetric(self.translate_pixels),
            ),
            scale: 1.0 + rng.symmetric(self.scale),
            ..Affine::IDENTITY
        };
        if self.shear_degrees > 0.0 {
            affine.shear_degrees = rng.symmetric(self.shear_degrees);
        }
        let elastic = (self.elastic_alpha > 0.0).then(|| {
            Box::new(ElasticField::sample(
                self.elastic_alpha,
                self.elastic_sigma,
                rng,
            ))
        });
        Transform { affine, elastic }
    }
}

/// An affine transform, then (on the output grid) an optional elastic displacement.
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    pub affine: Affine,
    pub elastic: Option<Box<ElasticField>>,
}

impl Transform {
    pub fn apply(&self, pixels: &[u8; PIXELS]) -> [u8; PIXELS] {
        match &self.elastic {
            Some(field) => self.affine.apply_displaced(pixels, |i| field.0[i]),
            None => self.affine.apply(pixels),
        }
    }
}

/// A displacement (right, down) in pixels for every pixel of the image.
#[derive(Clone, Debug, PartialEq)]
pub struct ElasticField(pub [(f32, f32); PIXELS]);

impl ElasticField {
    /// Uniform noise in ±1 for each axis and pixel, smoothed by a Gaussian of `sigma` pixels
    /// (zero outside the image), times `alpha`.
    pub fn sample(alpha: f32, sigma: f32, rng: &mut SplitMix64) -> Self {
        let kernel = gaussian_kernel(sigma);
        let mut noise = || smooth(&std::array::from_fn(|_| rng.symmetric(1.0)), &kernel);
        let (right, down) = (noise(), noise());
        Self(std::array::from_fn(|i| (alpha * right[i], alpha * down[i])))
    }
}

/// Normalised Gaussian weights for offsets −r..=r, r = ⌈3σ⌉.
fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil() as i32;
    let weights: Vec<f32> = (-radius..=radius)
        .map(|offset| (-(offset * offset) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

/// Separable convolution with `kernel` along rows then columns, zero outside the image.
fn smooth(values: &[f32; PIXELS], kernel: &[f32]) -> [f32; PIXELS] {
    let radius = (kernel.len() / 2) as isize;
    let side = IMAGE_SIDE as isize;
    let pass = |input: &[f32; PIXELS], step: (isize, isize)| -> [f32; PIXELS] {
        std::array::from_fn(|i| {
            let (x, y) = ((i % IMAGE_SIDE) as isize, (i / IMAGE_SIDE) as isize);
            kernel
                .iter()
                .zip(-radius..=radius)
                .filter_map(|(weight, offset)| {
                    let (sx, sy) = (x + offset * step.0, y + offset * step.1);
                    ((0..side).contains(&sx) && (0..side).contains(&sy))
                        .then(|| weight * input[(sy * side + sx) as usize])
                })
                .sum()
        })
    };
    pass(&pass(values, (1, 0)), (0, 1))
}

/// Slant, rotate (counter-clockwise as seen on screen) and scale about the centre, then shift.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub rotation_degrees: f32,
    /// (right, down) in pixels.
    pub translate: (f32, f32),
    pub scale: f32,
    /// Horizontal shear: positive leans the top of the image to the right, like italics.
    pub shear_degrees: f32,
}

impl Affine {
    pub const IDENTITY: Self = Self {
        rotation_degrees: 0.0,
        translate: (0.0, 0.0),
        scale: 1.0,
        shear_degrees: 0.0,
    };

    /// The transformed image: each output pixel samples the input bilinearly at the inverse
    /// transform of its position; outside the input is black.
    pub fn apply(&self, pixels: &[u8; PIXELS]) -> [u8; PIXELS] {
        self.apply_displaced(pixels, |_| (0.0, 0.0))
    }

    /// As `apply`, with output pixel `i` first moved by `displacement(i)` (right, down).
    fn apply_displaced(
        &self,
        pixels: &[u8; PIXELS],
        displacement: impl Fn(usize) -> (f32, f32),
    ) -> [u8; PIXELS] {
        let (sin, cos) = self.rotation_degrees.to_radians().sin_cos();
        let lean = self.shear_degrees.to_radians().tan();
        let mut out = [0u8; PIXELS];
        for y in 0..IMAGE_SIDE {
            for x in 0..IMAGE_SIDE {
                let (right, down) = displacement(y * IMAGE_SIDE + x);
                // Undo the shift, the scale, the rotation (by −θ), then the slant.
                let dx = (x as f32 + right - CENTRE - self.translate.0) / self.scale;
                let dy = (y as f32 + down - CENTRE - self.translate.1) / self.scale;
                let (ux, uy) = (dx * cos - dy * sin, dx * sin + dy * cos);
                let source_x = CENTRE + ux + lean * uy;
                let source_y = CENTRE + uy;
                out[y * IMAGE_SIDE + x] = bilinear(pixels, source_x, source_y);
            }
        }
        out
    }
}

fn bilinear(pixels: &[u8; PIXELS], x: f32, y: f32) -> u8 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |xi: f32, yi: f32| -> f32 {
        let inside =
            (0.0..IMAGE_SIDE as f32).contains(&xi) && (0.0..IMAGE_SIDE as f32).contains(&yi);
        if inside {
            f32::from(pixels[yi as usize * IMAGE_SIDE + xi as usize])
        } else {
            0.0
        }
    };
    let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1.0, y0) * fx;
    let bottom = at(x0, y0 + 1.0) * (1.0 - fx) + at(x0 + 1.0, y0 + 1.0) * fx;
    (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
}

/// A dataset whose every `get` returns a transformed copy of the inner item, drawn for the
/// epoch the [`EpochClock`] shows: each epoch sees a new variant of every image, and the same
/// one whichever launch of the run trains that epoch.
pub struct AugmentedDataset<D> {
    inner: D,
    config: AugmentConfig,
    seed: u64,
    clock: EpochClock,
}

impl<D: Dataset<MnistItem>> AugmentedDataset<D> {
    pub fn new(inner: D, config: AugmentConfig, seed: u64, clock: EpochClock) -> Self {
        Self {
            inner,
            config,
            seed,
            clock,
        }
    }
}

impl<D: Dataset<MnistItem>> Dataset<MnistItem> for AugmentedDataset<D> {
    fn get(&self, index: usize) -> Result<MnistItem, DatasetError> {
        let mut item = self.inner.get(index)?;
        // Epoch e is the image's draw e - 1, as when draws were counted per image.
        let draw = self.clock.current().saturating_sub(1) as u64;
        let mut rng = SplitMix64::for_stream(&[self.seed, index as u64, draw]);
        item.pixels = self.config.sample(&mut rng).apply(&item.pixels);
        Ok(item)
    }

    fn len(&self) -> usize {
        self.inner.len()
    }
}

/// A picture of what the model sees: one row per image, the original first, then `draws`
/// augmented versions, each pixel drawn as a 3×3 block, with grey gaps between cells.
pub fn preview_grid(
    items: &[MnistItem],
    config: &AugmentConfig,
    seed: u64,
    draws: usize,
) -> GrayImage {
    const ZOOM: u32 = 3;
    const GAP: u32 = 4;
    let cell = IMAGE_SIDE as u32 * ZOOM;
    let columns = 1 + draws as u32;
    let width = columns * cell + (columns + 1) * GAP;
    let height = items.len() as u32 * cell + (items.len() as u32 + 1) * GAP;
    let mut grid = GrayImage::from_pixel(width, height, Luma([128]));
    for (row, item) in items.iter().enumerate() {
        let variants = std::iter::once(item.pixels).chain((0..draws).map(|draw| {
            let mut rng = SplitMix64::for_stream(&[seed, row as u64, draw as u64]);
            config.sample(&mut rng).apply(&item.pixels)
        }));
        for (column, pixels) in variants.enumerate() {
            let left = GAP + column as u32 * (cell + GAP);
            let top = GAP + row as u32 * (cell + GAP);
            for (i, &value) in pixels.iter().enumerate() {
                let (x, y) = (
                    (i % IMAGE_SIDE) as u32 * ZOOM,
                    (i / IMAGE_SIDE) as u32 * ZOOM,
                );
                for dy in 0..ZOOM {
                    for dx in 0..ZOOM {
                        grid.put_pixel(left + x + dx, top + y + dy, Luma([value]));
                    }
                }
            }
        }
    }
    grid
}

#[cfg(test)]
mod tests {
    use burn::data::dataset::InMemDataset;

    use super::*;

    fn dot(x: usize, y: usize) -> [u8; PIXELS] {
        let mut pixels = [0u8; PIXELS];
        pixels[y * IMAGE_SIDE + x] = 255;
        pixels
    }

    fn bright(pixels: &[u8; PIXELS]) -> Vec<(usize, usize)> {
        (0..PIXELS)
            .filter(|&i| pixels[i] > 127)
            .map(|i| (i % IMAGE_SIDE, i / IMAGE_SIDE))
            .collect()
    }

    #[test]
    fn identity_keeps_the_image() {
        let pixels: [u8; PIXELS] = std::array::from_fn(|i| (i * 7 % 256) as u8);
        assert_eq!(Affine::IDENTITY.apply(&pixels), pixels);
    }

    #[test]
    fn a_whole_pixel_shift_moves_the_image_exactly() {
        let shift = Affine {
            translate: (2.0, -1.0),
            ..Affine::IDENTITY
        };
        assert_eq!(shift.apply(&dot(5, 9)), dot(7, 8));
        assert_eq!(
            shift.apply(&dot(27, 9)),
            [0; PIXELS],
            "what leaves the frame is gone"
        );
    }

    #[test]
    fn a_quarter_turn_is_counter_clockwise_about_the_centre() {
        // 6.5 px right of the centre (13.5, 13.5) and 0.5 above it → 6.5 above and 0.5 left.
        let turn = Affine {
            rotation_degrees: 90.0,
            ..Affine::IDENTITY
        };
        assert_eq!(bright(&turn.apply(&dot(20, 13))), vec![(13, 7)]);
    }

    #[test]
    fn doubling_the_scale_doubles_a_centred_square() {
        let mut square = [0u8; PIXELS];
        for y in 12..16 {
            for x in 12..16 {
                square[y * IMAGE_SIDE + x] = 255;
            }
        }
        let zoom = Affine {
            scale: 2.0,
            ..Affine::IDENTITY
        };
        let xs: Vec<usize> = bright(&zoom.apply(&square)).iter().map(|p| p.0).collect();
        assert_eq!(
            (xs.iter().min(), xs.iter().max()),
            (Some(&10), Some(&17)),
            "4 px wide → 8 px wide"
        );
    }

    #[test]
    fn a_positive_slant_leans_a_vertical_stroke_to_the_right() {
        let stroke: [u8; PIXELS] =
            std::array::from_fn(|i| if i % IMAGE_SIDE == 13 { 255 } else { 0 });
        let slant = Affine {
            shear_degrees: 20.0,
            ..Affine::IDENTITY
        };
        let leaned = slant.apply(&stroke);
        let lean = 20f32.to_radians().tan();
        for y in [4, 9, 18, 23] {
            let row = &leaned[y * IMAGE_SIDE..(y + 1) * IMAGE_SIDE];
            let ink: f32 = row.iter().map(|&v| f32::from(v)).sum();
            let centre_x: f32 = row
                .iter()
                .enumerate()
                .map(|(x, &v)| x as f32 * f32::from(v))
                .sum::<f32>()
                / ink;
            let expected = 13.0 - lean * (y as f32 - CENTRE);
            assert!(
                (centre_x - expected).abs() < 0.05,
                "row {y}: ink centred at {centre_x}, expected {expected}"
            );
        }
    }

    #[test]
    fn the_slant_is_drawn_last_so_configs_without_it_keep_their_draws() {
        let without = AugmentConfig {
            rotation_degrees: 10.0,
            translate_pixels: 2.0,
            scale: 0.1,
            ..AugmentConfig::default()
        };
        let with = AugmentConfig {
            shear_degrees: 10.0,
            ..without.clone()
        };
        let (mut plain, mut slanted) = (SplitMix64::new(5), SplitMix64::new(5));
        let (a, b) = (
            without.sample(&mut plain).affine,
            with.sample(&mut slanted).affine,
        );
        assert_eq!(
            a,
            Affine {
                shear_degrees: 0.0,
                ..b
            }
        );
        assert_ne!(b.shear_degrees, 0.0);
        let mut four_draws = SplitMix64::new(5);
        (0..4).for_each(|_| {
            four_draws.symmetric(1.0);
        });
        assert_eq!(
            plain.symmetric(1.0),
            four_draws.symmetric(1.0),
            "without a slant, a transform takes four draws, as before"
        );
    }

    #[test]
    fn draws_are_reproducible_and_differ_between_epochs() {
        let items = vec![
            MnistItem {
                pixels: dot(14, 14),
                label: 1
            };
            3
        ];
        let config = AugmentConfig {
            rotation_degrees: 15.0,
            translate_pixels: 3.0,
            scale: 0.1,
            ..AugmentConfig::default()
        };
        let clock = EpochClock::starting_at(1);
        let first = AugmentedDataset::new(
            InMemDataset::new(items.clone()),
            config.clone(),
            9,
            clock.clone(),
        );
        clock.advance();
        let epoch_one = first.get(1).unwrap();
        assert_eq!(epoch_one, first.get(1).unwrap(), "one draw per epoch");
        clock.advance();
        let epoch_two = first.get(1).unwrap();
        assert_ne!(epoch_one, epoch_two, "the next epoch's draw differs");

        let resumed_clock = EpochClock::starting_at(2);
        let resumed =
            AugmentedDataset::new(InMemDataset::new(items), config, 9, resumed_clock.clone());
        resumed_clock.advance();
        assert_eq!(
            resumed.get(1).unwrap(),
            epoch_two,
            "epoch 2 of a resumed run"
        );
    }

    #[test]
    fn ranges_are_validated() {
        let bad = AugmentConfig {
            rotation_degrees: -1.0,
            ..AugmentConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("rotation_degrees"));
        let bad = AugmentConfig {
            scale: 1.5,
            ..AugmentConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("scale"));
        let bad = AugmentConfig {
            shear_degrees: 60.0,
            ..AugmentConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("shear_degrees"));
    }

    #[test]
    fn an_elastic_displacement_moves_pixels_like_a_shift_of_the_opposite_sign() {
        // Output pixels sample 2 px left and 1 px below themselves: the image moves right, up.
        let transform = Transform {
            affine: Affine::IDENTITY,
            elastic: Some(Box::new(ElasticField([(-2.0, 1.0); PIXELS]))),
        };
        assert_eq!(transform.apply(&dot(5, 9)), dot(7, 8));
    }

    #[test]
    fn elastic_fields_are_smooth_and_as_strong_as_alpha_and_sigma_say() {
        let (alpha, sigma) = (34.0, 4.0);
        let kernel = gaussian_kernel(sigma);
        // Far from the border, each axis is alpha × a weighted sum of uniform(±1) noise, with
        // 2-D weights w_i·w_j: its variance is alpha² · (1/3) · (Σ w²)².
        let squares: f32 = kernel.iter().map(|w| w * w).sum();
        let expected_rms = alpha * (1.0f32 / 3.0).sqrt() * squares;
        let (mut sum_squares, mut neighbour_squares, mut count) = (0.0f64, 0.0f64, 0usize);
        for draw in 0..300 {
            let field = ElasticField::sample(alpha, sigma, &mut SplitMix64::new(draw));
            for y in 12..16 {
                for x in 12..16 {
                    let (right, down) = field.0[y * IMAGE_SIDE + x];
                    let (next_right, _) = field.0[y * IMAGE_SIDE + x + 1];
                    sum_squares += f64::from(right * right + down * down) / 2.0;
                    neighbour_squares += f64::from((next_right - right).powi(2));
                    count += 1;
                }
            }
        }
        let rms = (sum_squares / count as f64).sqrt() as f32;
        assert!(
            (rms / expected_rms - 1.0).abs() < 0.1,
            "rms {rms} px, expected {expected_rms} px"
        );
        let step = (neighbour_squares / count as f64).sqrt() as f32;
        assert!(
            step < 0.3 * rms,
            "neighbours differ by {step} px against {rms} px: not smooth"
        );
    }

    #[test]
    fn elastic_distortion_is_off_unless_asked_for_and_needs_a_sigma() {
        let affine_only = AugmentConfig {
            rotation_degrees: 10.0,
            ..AugmentConfig::default()
        };
        assert_eq!(affine_only.sample(&mut SplitMix64::new(1)).elastic, None);
        let elastic = AugmentConfig {
            elastic_alpha: 10.0,
            elastic_sigma: 3.0,
            ..affine_only
        };
        assert!(elastic.validate().is_ok());
        assert!(elastic.sample(&mut SplitMix64::new(1)).elastic.is_some());
        let no_sigma = AugmentConfig {
            elastic_sigma: 0.0,
            ..elastic
        };
        assert!(no_sigma.validate().unwrap_err().contains("elastic_sigma 0"));
    }
}
