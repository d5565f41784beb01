//! Any photo or scan of a digit to an MNIST-style image: grayscale, white ink on black, the
//! digit scaled into a 20×20 box and centred by its centre of mass in 28×28, as MNIST was made.
//! `vit-trainer infer` reads images through [`from_file`]; a program that embeds the model and
//! does the same gets the same answers.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, Luma};

/// Side of an MNIST image, in pixels.
pub const IMAGE_SIDE: usize = 28;

/// Why a file gave no MNIST-style image.
#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot read as an image: {source}")]
    Decode {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("{path}: no digit found: the image is blank")]
    Blank { path: PathBuf },
}

/// Side of the box the digit is scaled into, as in MNIST.
const DIGIT_BOX: u32 = 20;

/// Reads a PNG or JPEG file and converts it with [`from_image`]; an image with no ink (one
/// colour throughout) is an error, not a guess.
pub fn from_file(path: &Path) -> Result<[u8; IMAGE_SIDE * IMAGE_SIDE], PictureError> {
    let io = |source| PictureError::Io {
        path: path.into(),
        source,
    };
    let image = image::ImageReader::open(path)
        .map_err(io)?
        .with_guessed_format()
        .map_err(io)?
        .decode()
        .map_err(|source| PictureError::Decode {
            path: path.into(),
            source,
        })?;
    from_image(&image).ok_or_else(|| PictureError::Blank { path: path.into() })
}

/// Converts an image of any size. A 28×28 image that is already white on black is kept as it
/// is; anything else is inverted if its background is light, cropped to the ink, scaled and
/// centred. A blank image (no pixel differs from the background) has no digit: `None`.
pub fn from_image(image: &DynamicImage) -> Option<[u8; IMAGE_SIDE * IMAGE_SIDE]> {
    let gray = flatten_alpha(image);
    let background = border_median(&gray);
    let light_background = background > 127;
    let side = IMAGE_SIDE as u32;
    if gray.dimensions() == (side, side) && !light_background {
        let pixels = to_array(&gray);
        return pixels.iter().any(|&v| v > 0).then_some(pixels);
    }

    // Ink is how far a pixel is from the background, stretched to 0..=255.
    let ink_of = |v: u8| {
        if light_background {
            background.saturating_sub(v)
        } else {
            v.saturating_sub(background)
        }
    };
    let darkest = gray.pixels().map(|p| ink_of(p.0[0])).max().unwrap_or(0);
    if darkest == 0 {
        return None;
    }
    let ink = GrayImage::from_fn(gray.width(), gray.height(), |x, y| {
        Luma([(u32::from(ink_of(gray.get_pixel(x, y).0[0])) * 255 / u32::from(darkest)) as u8])
    });

    let (x0, y0, x1, y1) = ink_bounds(&ink);
    let crop = imageops::crop_imm(&ink, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image();
    let scale = DIGIT_BOX as f32 / crop.width().max(crop.height()) as f32;
    let width = ((crop.width() as f32 * scale).round() as u32).clamp(1, DIGIT_BOX);
    let height = ((crop.height() as f32 * scale).round() as u32).clamp(1, DIGIT_BOX);
    let digit = imageops::resize(&crop, width, height, FilterType::Triangle);

    // Put the digit's centre of mass at the image centre, staying inside the frame.
    let (cx, cy) = centre_of_mass(&digit);
    let centre = side as f32 / 2.0;
    let left = ((centre - cx).round() as i64).clamp(0, i64::from(side - width));
    let top = ((centre - cy).round() as i64).clamp(0, i64::from(side - height));
    let mut canvas = GrayImage::new(side, side);
    imageops::overlay(&mut canvas, &digit, left, top);
    Some(to_array(&canvas))
}

/// Grayscale, with transparent parts shown over white paper.
fn flatten_alpha(image: &DynamicImage) -> GrayImage {
    let with_alpha = image.to_luma_alpha8();
    GrayImage::from_fn(with_alpha.width(), with_alpha.height(), |x, y| {
        let [value, alpha] = with_alpha.get_pixel(x, y).0;
        let (value, alpha) = (u32::from(value), u32::from(alpha));
        Luma([((value * alpha + 255 * (255 - alpha)) / 255) as u8])
    })
}

fn border_median(image: &GrayImage) -> u8 {
    let (w, h) = image.dimensions();
    let mut border: Vec<u8> = image
        .enumerate_pixels()
        .filter(|(x, y, _)| *x == 0 || *y == 0 || *x == w - 1 || *y == h - 1)
        .map(|(_, _, p)| p.0[0])
        .collect();
    border.sort_unstable();
    border[border.len() / 2]
}

/// The smallest rectangle (inclusive corners) holding every pixel with visible ink.
fn ink_bounds(ink: &GrayImage) -> (u32, u32, u32, u32) {
    let visible = ink.enumerate_pixels().filter(|(_, _, p)| p.0[0] > 32);
    visible.fold((u32::MAX, u32::MAX, 0, 0), |(x0, y0, x1, y1), (x, y, _)| {
        (x0.min(x), y0.min(y), x1.max(x), y1.max(y))
    })
}

fn centre_of_mass(image: &GrayImage) -> (f32, f32) {
    let (mut mass, mut sx, mut sy) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y, p) in image.enumerate_pixels() {
        let m = f32::from(p.0[0]);
        mass += m;
        sx += m * (x as f32 + 0.5);
        sy += m * (y as f32 + 0.5);
    }
    if mass == 0.0 {
        return (image.width() as f32 / 2.0, image.height() as f32 / 2.0);
    }
    (sx / mass, sy / mass)
}

fn to_array(image: &GrayImage) -> [u8; IMAGE_SIDE * IMAGE_SIDE] {
    image
        .as_raw()
        .as_slice()
        .try_into()
        .expect("a 28x28 grayscale image has 784 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mnist_style_image_is_kept_as_it_is() {
        let gray = GrayImage::from_fn(28, 28, |x, y| {
            Luma([((x * 7 + y) % 200) as u8 * u8::from(x > 20)])
        });
        let converted = from_image(&DynamicImage::ImageLuma8(gray.clone())).unwrap();
        assert_eq!(converted.as_slice(), gray.as_raw().as_slice());
    }

    #[test]
    fn dark_ink_on_a_large_light_page_is_inverted_scaled_and_centred() {
        // A 300×200 white page with a black 40×100 bar near the top-left corner.
        let page = GrayImage::from_fn(300, 200, |x, y| {
            Luma([if (10..50).contains(&x) && (20..120).contains(&y) {
                0
            } else {
                255
            }])
        });
        let converted = from_image(&DynamicImage::ImageLuma8(page)).unwrap();
        let at = |x: usize, y: usize| converted[y * 28 + x];
        // The bar is 100 tall → 20 pixels; 40 wide → 8 pixels, centred on (14, 14).
        assert_eq!(at(14, 14), 255, "the bar's middle is white ink");
        assert_eq!(at(0, 0), 0, "the background is black");
        let rows_with_ink = (0..28).filter(|&y| (0..28).any(|x| at(x, y) > 128)).count();
        let cols_with_ink = (0..28).filter(|&x| (0..28).any(|y| at(x, y) > 128)).count();
        assert_eq!((rows_with_ink, cols_with_ink), (20, 8));
    }

    #[test]
    fn a_blank_image_has_no_digit() {
        let blanks = [
            GrayImage::from_pixel(50, 40, Luma([200])),
            GrayImage::from_pixel(1, 1, Luma([128])),
            GrayImage::from_pixel(5000, 1, Luma([0])),
            GrayImage::from_pixel(28, 28, Luma([0])),
        ];
        for blank in blanks {
            let size = blank.dimensions();
            assert_eq!(
                from_image(&DynamicImage::ImageLuma8(blank)),
                None,
                "{size:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gray.png");
        GrayImage::from_pixel(1, 1, Luma([128]))
            .save(&path)
            .unwrap();
        let error = from_file(&path).unwrap_err().to_string();
        assert!(
            error.contains("gray.png") && error.contains("no digit found"),
            "{error}"
        );
    }

    #[test]
    fn a_file_that_is_not_an_image_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("digit.png");
        std::fs::write(&path, b"not a png").unwrap();
        let error = from_file(&path).unwrap_err();
        assert!(error.to_string().contains("digit.png"), "{error}");
    }
}
