//! What the network expects as input: MNIST-style gray bytes (0 = background, 255 = ink),
//! scaled to [0, 1] and standardised with MNIST's training statistics, as in the tutorial.

/// Mean of MNIST's training pixels, scaled to [0, 1].
pub const PIXEL_MEAN: f32 = 0.1307;
/// Standard deviation of MNIST's training pixels, scaled to [0, 1].
pub const PIXEL_STD: f32 = 0.3081;

/// The network's input value for a pixel byte.
#[inline]
pub fn normalise(pixel: u8) -> f32 {
    (f32::from(pixel) / 255.0 - PIXEL_MEAN) / PIXEL_STD
}
