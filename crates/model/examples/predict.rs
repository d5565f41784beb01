//! Classify digit images with a trained run, from your own program:
//!
//! ```text
//! cargo run -p vit-model --example predict -- artifacts/tutorial digit.png [more.png …]
//! ```
//!
//! The images may be any size; each is turned to gray and scaled to the model's input size.
//! The model expects MNIST's look, a light digit on a dark ground, so dark-on-light pictures
//! (ink on paper) are inverted first.

use std::path::PathBuf;
use std::process::ExitCode;

use burn::prelude::*;
use image::imageops::FilterType;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let Some((run_dir, images)) = args.split_first().filter(|(_, images)| !images.is_empty())
    else {
        eprintln!("usage: predict <run dir> <image>…");
        return ExitCode::FAILURE;
    };
    match classify(run_dir, images) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn classify(run_dir: &std::path::Path, images: &[PathBuf]) -> Result<(), String> {
    let device = Device::flex();
    let predictor = vit_model::load(run_dir, &device).map_err(|error| error.to_string())?;
    let side = predictor.config().image_size as u32;

    let mut pixels = Vec::new();
    for path in images {
        let gray = image::open(path)
            .map_err(|error| format!("{}: {error}", path.display()))?
            .to_luma8();
        let mut gray = image::imageops::resize(&gray, side, side, FilterType::Triangle);
        let mean = gray.pixels().map(|p| u32::from(p.0[0])).sum::<u32>() / (side * side);
        if mean > 127 {
            image::imageops::invert(&mut gray);
        }
        pixels.extend_from_slice(gray.as_raw());
    }

    let rows = predictor
        .predict(&pixels)
        .map_err(|error| error.to_string())?;
    for (path, probabilities) in images.iter().zip(rows) {
        let (digit, probability) = vit_model::best(&probabilities);
        println!("{}: {digit} ({:.2} %)", path.display(), 100.0 * probability);
    }
    Ok(())
}
