//! `explain`: per image, one PNG of what the model saw (the MNIST-style 28×28 input), where its
//! class token drew from (the attention rollout over the patches, in red over the input), and
//! the last block's attention of the class token, head by head, titled with the prediction.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::prelude::*;
use plotters::prelude::*;
use vit_data::IMAGE_SIDE;
use vit_model::Vit;
use vit_model::explain::{Explanation, explain};
use vit_model::mnist_style;

use super::args::RunArgs;
use crate::charts::{FONT, fill_square, plot_error, register_font, save_rgb};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// PNG or JPEG images of digits, any size.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Where the pictures go (`<image name>-explain.png`).
    #[arg(long, default_value = "explain")]
    out: PathBuf,
}

pub fn exec(args: Args, device: &Device) -> anyhow::Result<()> {
    let run = args.run.open()?;
    let (model, _) = run.load_mnist_model(device)?;
    for written in explain_files(&model, &args.files, &args.out, device)? {
        println!("wrote {}", written.display());
    }
    Ok(())
}

/// Input pixels as squares of this side in the two large panels.
const ZOOM: u32 = 8;
/// Side of one head's map.
const HEAD_SIDE: u32 = 96;
const GAP: u32 = 16;
const TITLE: u32 = 36;
const LABEL: u32 = 22;

/// Explains each image file into `out/<file stem>-explain.png`; returns the files written.
pub fn explain_files(
    vit: &Vit,
    files: &[PathBuf],
    out: &Path,
    device: &Device,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut written = Vec::new();
    for path in files {
        let pixels = mnist_style::from_file(path)?;
        let values: Vec<f32> = pixels.iter().map(|&p| vit_data::normalise(p)).collect();
        let side = IMAGE_SIDE;
        let image = Tensor::<4>::from_data(TensorData::new(values, [1, 1, side, side]), device);
        let explanation = explain(vit, image).remove(0);
        let stem = path
            .file_stem()
            .map_or("image".into(), |s| s.to_string_lossy());
        // Two inputs with one name (a/7.png, b/7.png) get a picture each.
        let target = (1..)
            .map(|n| match n {
                1 => out.join(format!("{stem}-explain.png")),
                n => out.join(format!("{stem}-{n}-explain.png")),
            })
            .find(|target| !written.contains(target))
            .expect("an unused name");
        let name = path.display().to_string();
        draw(&name, &pixels, &explanation, &target)?;
        written.push(target);
    }
    Ok(written)
}

/// The size of the picture for a model with `heads` heads.
pub fn size(heads: usize) -> (u32, u32) {
    let panel = IMAGE_SIDE as u32 * ZOOM;
    let width = (2 * panel + 3 * GAP).max(heads as u32 * (HEAD_SIDE + GAP) + GAP);
    let height = TITLE + LABEL + panel + GAP + LABEL + HEAD_SIDE + GAP;
    (width, height)
}

/// Draws one explanation of the 28×28 `pixels` to `path`.
pub fn draw(
    name: &str,
    pixels: &[u8],
    explanation: &Explanation,
    path: &Path,
) -> anyhow::Result<()> {
    register_font();
    let heads = explanation.last_block.len();
    let (width, height) = size(heads);
    let panel = IMAGE_SIDE as u32 * ZOOM;
    let mut canvas = vec![255u8; (width * height * 3) as usize];
    let top = TITLE + LABEL;
    let rollout = explanation.rollout_pixels(IMAGE_SIDE);
    for (i, (&value, &attention)) in pixels.iter().zip(&rollout).enumerate() {
        let (x, y) = ((i % IMAGE_SIDE) as u32, (i / IMAGE_SIDE) as u32);
        let input = (GAP + x * ZOOM, top + y * ZOOM);
        fill_square(&mut canvas, width, input, ZOOM, [value; 3]);
        let overlay = (2 * GAP + panel + x * ZOOM, top + y * ZOOM);
        fill_square(&mut canvas, width, overlay, ZOOM, over(value, attention));
    }
    let heads_top = top + panel + GAP + LABEL;
    let cell_side = HEAD_SIDE / explanation.grid as u32;
    for (head, map) in explanation.last_block.iter().enumerate() {
        let left = GAP + head as u32 * (HEAD_SIDE + GAP);
        for (cell, value) in normalised(map).into_iter().enumerate() {
            let (x, y) = (
                (cell % explanation.grid) as u32,
                (cell / explanation.grid) as u32,
            );
            let corner = (left + x * cell_side, heads_top + y * cell_side);
            fill_square(&mut canvas, width, corner, cell_side, heat(value));
        }
    }
    let (digit, probability) = vit_model::best(&explanation.probabilities);
    let labels = [
        (
            format!("{name}: {digit} ({:.1} %)", 100.0 * probability),
            (GAP, 8),
            17,
        ),
        ("input".to_string(), (GAP, TITLE), 14),
        (
            "attention rollout".to_string(),
            (2 * GAP + panel, TITLE),
            14,
        ),
        (
            "last block, class token, per head".to_string(),
            (GAP, top + panel + GAP),
            14,
        ),
    ];
    {
        let root = BitMapBackend::with_buffer(&mut canvas, (width, height)).into_drawing_area();
        for (text, (x, y), size) in labels {
            root.draw(&Text::new(text, (x as i32, y as i32), (FONT, size)))
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    save_rgb(path, (width, height), canvas)
}

/// `values` scaled so that the largest is 1 (all 0 if none is positive).
fn normalised(values: &[f32]) -> Vec<f32> {
    let largest = values.iter().copied().fold(0.0f32, f32::max);
    values
        .iter()
        .map(|&v| if largest > 0.0 { v / largest } else { 0.0 })
        .collect()
}

/// White for 0 to red for 1.
fn heat(value: f32) -> [u8; 3] {
    let fade = (255.0 * (1.0 - value.clamp(0.0, 1.0))) as u8;
    [255, fade, fade]
}

/// Red of strength `value` over a gray input pixel.
fn over(gray: u8, value: f32) -> [u8; 3] {
    let alpha = 0.65 * value.clamp(0.0, 1.0);
    let base = f32::from(gray) * (1.0 - alpha);
    [(base + 255.0 * alpha) as u8, base as u8, base as u8]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_picture_is_a_png_of_the_stated_size_with_the_input_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..784).map(|i| (i % 256) as u8).collect();
        let explanation = Explanation {
            probabilities: (0..10).map(|d| if d == 3 { 0.91 } else { 0.01 }).collect(),
            grid: 4,
            rollout: (0..16).map(|i| i as f32 / 16.0).collect(),
            last_block: vec![vec![1.0 / 16.0; 16]; 8],
        };
        let path = dir.path().join("seven-explain.png");
        draw("seven.png", &pixels, &explanation, &path).unwrap();
        let picture = image::open(&path).unwrap().to_rgb8();
        assert_eq!(picture.dimensions(), size(8));
        // Input pixel (5, 9) fills its square in the left panel.
        let at = picture.get_pixel(GAP + 5 * ZOOM + 1, TITLE + LABEL + 9 * ZOOM + 1);
        assert_eq!(at.0, [pixels[9 * 28 + 5]; 3]);
        // A uniform head map is one colour: full red, as its own largest value.
        let head = picture.get_pixel(GAP + 10, TITLE + LABEL + 224 + GAP + LABEL + 10);
        assert_eq!(head.0, [255, 0, 0]);
    }
}
