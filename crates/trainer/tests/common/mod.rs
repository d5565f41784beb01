//! What the trainer's end-to-end tests share: a synthetic MNIST on disk and the trainer's output.
// Each test binary includes this module and uses only part of it.
#![allow(dead_code)]

pub mod netns;

use std::path::Path;
use std::process::{Command, Output};

use vit_data::idx::encode;

/// The synthetic digit `row`: a bright bar on row 2 + 2·row, as raw 28×28 bytes.
pub fn bar(row: u8) -> Vec<u8> {
    let mut pixels = vec![0u8; 784];
    let row = 2 + 2 * usize::from(row);
    pixels[row * 28 + 4..row * 28 + 24].fill(255);
    pixels
}

/// The usual labelling: image i shows the bar of digit i mod 10 and is labelled so.
pub fn bar_label(i: u32) -> u8 {
    (i % 10) as u8
}

/// A four-file MNIST directory: image i shows the bar of digit i mod 10 and is labelled by
/// `label(i)`; `train` training images, `test` test images.
pub fn synthetic_mnist(dir: &Path, train: u32, test: u32, label: fn(u32) -> u8) {
    let write = |name: &str, n: u32| {
        let labels: Vec<u8> = (0..n).map(label).collect();
        let pixels: Vec<u8> = (0..n).flat_map(|i| bar((i % 10) as u8)).collect();
        let images = dir.join(format!("{name}-images-idx3-ubyte"));
        std::fs::write(images, encode(&[n, 28, 28], &pixels)).unwrap();
        let labels_file = dir.join(format!("{name}-labels-idx1-ubyte"));
        std::fs::write(labels_file, encode(&[n], &labels)).unwrap();
    };
    write("train", train);
    write("t10k", test);
}

/// Everything the trainer printed, stdout then stderr.
pub fn text(output: &Output) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    format!("{stdout}{stderr}")
}

/// The trainer binary, on flex: a test build may hold every backend, and Burn would otherwise
/// pick the GPU one first.
pub fn trainer() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vit-trainer"));
    command.env("BURN_DEVICE", "flex");
    command
}

/// Adds `train` with the config, data and artifacts of a work directory laid out as the
/// lifecycle tests lay it out (`config.json`, `data/`, `artifacts/`) and the run name.
pub fn train_in(command: &mut Command, work: &Path, run: &str) {
    command
        .arg("train")
        .arg("--config")
        .arg(work.join("config.json"))
        .arg("--data-dir")
        .arg(work.join("data"))
        .arg("--artifacts")
        .arg(work.join("artifacts"))
        .arg("--run")
        .arg(run);
}

/// The `report.json` of `run_dir`.
pub fn report_of(run_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json")).unwrap()).unwrap()
}

/// Each epoch's figures of two runs' histories agree within float tolerance: several devices
/// add the same gradients in another order, and compute servers may run Burn's composed
/// operations where a local run runs fused ones.
pub fn assert_same_history(a: &[serde_json::Value], b: &[serde_json::Value], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (a, b) in a.iter().zip(b) {
        for key in [
            "train_loss",
            "train_accuracy",
            "valid_loss",
            "valid_accuracy",
        ] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 2e-3 * x.abs().max(1.0),
                "{what}: {key} {x} against {y} in epoch {}",
                a["epoch"]
            );
        }
    }
}
