//! Classify digit images with a trained run, from your own program:
//!
//! ```text
//! cargo run -p vit-model --example predict -- artifacts/tutorial digit.png [more.png …]
//! ```
//!
//! The images may be any size and either polarity: [`vit_model::mnist_style`] crops each to its
//! ink, scales it into MNIST's 20×20 box and centres it, as `vit-trainer infer` does, so the two
//! give the same answers for the same file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::prelude::*;
use vit_model::mnist_style;

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

fn classify(run_dir: &Path, images: &[PathBuf]) -> Result<(), Box<dyn std::error::Error>> {
    let predictor = vit_model::load(run_dir, &Device::flex())?;
    let mut pixels = Vec::new();
    for path in images {
        pixels.extend_from_slice(&mnist_style::from_file(path)?);
    }
    let rows = predictor.predict(&pixels)?;
    for (path, probabilities) in images.iter().zip(rows) {
        let (digit, probability) = vit_model::best(&probabilities);
        println!("{}: {digit} ({:.2} %)", path.display(), 100.0 * probability);
    }
    Ok(())
}
