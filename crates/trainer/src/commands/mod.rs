//! The command line: one module per command, each with its arguments (`Args`) and its body
//! (`exec`); `main.rs` parses and calls [`run`].

mod args;
mod augment_preview;
mod eval;
pub(crate) mod explain;
mod export;
mod import;
pub(crate) mod infer;
mod serve;
mod train;

use clap::{Parser, Subcommand};

use crate::backend;

#[derive(Parser)]
#[command(
    version,
    about = "Train, evaluate and run a Vision Transformer on MNIST"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The libtorch device for the tch backend: `cpu`, `cuda` or `cuda:N` [default: the first
    /// CUDA device when libtorch sees one, else the CPU].
    #[arg(long, global = true, value_name = "cpu|cuda[:N]")]
    device: Option<backend::TorchDevice>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model and evaluate it once on the test set (unless `--no-test`).
    Train(train::Args),
    /// Evaluate a finished run on the MNIST test set (or its validation split); writes
    /// confusion.png into the run for the test set.
    Eval(eval::Args),
    /// Write a run's model in another format: `--format onnx` (model.onnx, opset 17), for ONNX
    /// Runtime and the static page of `cargo xtask web`.
    Export(export::Args),
    /// Draw a PNG grid of training images next to augmented versions: what the model sees.
    AugmentPreview(augment_preview::Args),
    /// Draw what the model looks at in each image: the input it saw, the attention rollout of
    /// the class token over it, and the last block's attention per head, with the prediction.
    Explain(explain::Args),
    /// Serve the model over HTTP: a page to draw or upload a digit (`GET /`), and
    /// `POST /api/predict`, `GET /api/model`, `GET /healthz`.
    Serve(serve::Args),
    /// Make a run directory from weights trained elsewhere (PyTorch: tools/torch_reference.py):
    /// a safetensors file in the layout `model.safetensors` documents, and its model config.
    /// A `model-probe.safetensors` beside the weights is checked: same inputs, same logits.
    Import(import::Args),
    /// Predict the digit of PNG/JPEG images (any size) or of the images in an IDX file.
    Infer(infer::Args),
}

/// Runs the command `cli` names on the device it selects.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let device = backend::select(cli.device)?;
    match cli.command {
        Command::Train(args) => train::exec(args, &device),
        Command::Eval(args) => eval::exec(args, &device),
        Command::Export(args) => export::exec(args, &device),
        Command::AugmentPreview(args) => augment_preview::exec(args),
        Command::Explain(args) => explain::exec(args, &device),
        Command::Serve(args) => serve::exec(args, device),
        Command::Import(args) => import::exec(args, &device),
        Command::Infer(args) => infer::exec(args, &device),
    }
}
