//! `mistakes.png`: the test images a model got wrong, the most confident mistakes first, each
//! as the model saw it (28×28, white ink on black) under "label → predicted (probability)".

use std::path::Path;

use burn::data::dataset::Dataset;
use plotters::prelude::*;
use vit_data::{IMAGE_SIDE, MnistDataset};

use crate::charts::{FONT, fill_square, plot_error, register_font, save_rgb};
use crate::evaluation::Mistake;

pub const MISTAKES_CHART: &str = "mistakes.png";

/// Mistakes drawn at most.
const SHOWN: usize = 100;
const COLUMNS: u32 = 10;
/// Each image pixel as a square of this side.
const ZOOM: u32 = 3;
const CELL: (u32, u32) = (110, 116);
/// Height of the title line.
const HEADER: u32 = 34;
/// Height of a cell's caption, above its image.
const CAPTION: u32 = 22;

/// The size of the picture of `shown` mistakes.
pub fn size(shown: usize) -> (u32, u32) {
    let rows = (shown.min(SHOWN) as u32).div_ceil(COLUMNS);
    (COLUMNS * CELL.0, HEADER + rows * CELL.1)
}

/// Draws up to [`SHOWN`] of `mistakes` (images of `dataset`), most confident first, to `path`.
pub fn draw(dataset: &MnistDataset, mistakes: &[Mistake], path: &Path) -> anyhow::Result<()> {
    register_font();
    let mut shown = mistakes.to_vec();
    shown.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    shown.truncate(SHOWN);
    let (width, height) = size(shown.len());
    let mut pixels = vec![255u8; (width * height * 3) as usize];
    let corner = |i: usize| {
        let (column, row) = (i as u32 % COLUMNS, i as u32 / COLUMNS);
        (column * CELL.0, HEADER + row * CELL.1)
    };
    for (i, mistake) in shown.iter().enumerate() {
        let image = dataset.get(mistake.index)?.pixels;
        let (left, top) = corner(i);
        let left = left + (CELL.0 - IMAGE_SIDE as u32 * ZOOM) / 2;
        for (p, &value) in image.iter().enumerate() {
            let (x, y) = ((p % IMAGE_SIDE) as u32, (p / IMAGE_SIDE) as u32);
            let corner = (left + x * ZOOM, top + CAPTION + y * ZOOM);
            fill_square(&mut pixels, width, corner, ZOOM, [value; 3]);
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        let title = match (mistakes.len(), shown.len()) {
            (0, _) => "no mistakes".to_string(),
            (all, drawn) if all == drawn => format!("{all} mistakes, most confident first"),
            (all, drawn) => format!("{all} mistakes; the {drawn} most confident"),
        };
        root.draw(&Text::new(title, (10, 8), (FONT, 17)))
            .map_err(plot_error)?;
        for (i, mistake) in shown.iter().enumerate() {
            let (left, top) = corner(i);
            let caption = format!(
                "{} → {} ({:.2})",
                mistake.label, mistake.predicted, mistake.probability
            );
            root.draw(&Text::new(
                caption,
                (left as i32 + 6, top as i32 + 3),
                (FONT, 13),
            ))
            .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    save_rgb(path, (width, height), pixels)
}

#[cfg(test)]
mod tests {
    use vit_data::idx::encode;

    use super::*;

    fn dataset(dir: &Path, count: u32) -> MnistDataset {
        let (images, labels) = (dir.join("images"), dir.join("labels"));
        let pixels: Vec<u8> = (0..count * 784).map(|i| (i % 251) as u8).collect();
        std::fs::write(&images, encode(&[count, 28, 28], &pixels)).unwrap();
        let digits: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        std::fs::write(&labels, encode(&[count], &digits)).unwrap();
        MnistDataset::from_files(&images, &labels).unwrap()
    }

    fn mistake(index: usize, probability: f32) -> Mistake {
        Mistake {
            index,
            label: index % 10,
            predicted: (index + 1) % 10,
            probability,
        }
    }

    #[test]
    fn the_picture_has_one_cell_per_mistake_up_to_a_hundred() {
        let dir = tempfile::tempdir().unwrap();
        let data = dataset(dir.path(), 120);
        for count in [0, 3, 11, 120] {
            let mistakes: Vec<Mistake> = (0..count).map(|i| mistake(i, 0.5)).collect();
            let path = dir.path().join(format!("mistakes-{count}.png"));
            draw(&data, &mistakes, &path).unwrap();
            let picture = image::open(&path).unwrap();
            let rows = count.min(SHOWN).div_ceil(10) as u32;
            assert_eq!(
                (picture.width(), picture.height()),
                (1100, HEADER + rows * CELL.1),
                "{count} mistakes"
            );
            assert_eq!(size(count), (picture.width(), picture.height()));
        }
    }

    #[test]
    fn the_most_confident_mistake_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let data = dataset(dir.path(), 20);
        // Image 7 is drawn first: its top-left pixel lands in the first cell.
        let mistakes = [mistake(3, 0.4), mistake(7, 0.9), mistake(5, 0.6)];
        let path = dir.path().join("mistakes.png");
        draw(&data, &mistakes, &path).unwrap();
        let picture = image::open(&path).unwrap().to_rgb8();
        let first = data.get(7).unwrap().pixels;
        let left = (CELL.0 - 28 * ZOOM) / 2;
        let pixel = picture.get_pixel(left + 5 * ZOOM, HEADER + CAPTION + 5 * ZOOM);
        assert_eq!(pixel.0, [first[5 * 28 + 5]; 3]);
    }
}
