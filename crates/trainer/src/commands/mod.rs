//! The command line: one module per command, each with its arguments (`Args`) and its body
//! (`exec`); `main.rs` parses and calls [`run`].

mod args;
mod augment_preview;
pub mod compute_server;
mod eval;
pub(crate) mod explain;
mod export;
mod import;
pub(crate) mod infer;
mod serve;
mod train;

use clap::{Parser, Subcommand};

use std::path::PathBuf;

use crate::devices::{self, DeviceArg};

#[derive(Parser)]
#[command(
    version,
    about = "Train, evaluate and run a Vision Transformer on MNIST"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where to run: a libtorch device of the tch backend (`cpu`, `cuda`, `cuda:N`), a wgpu
    /// adapter (`wgpu`, `wgpu:cpu`, `wgpu:N` for the N-th discrete GPU, `wgpu:integrated:N`,
    /// `wgpu:virtual:N`) or a compute server (`ws://HOST:PORT`); repeated, `train` trains on
    /// all of them at once, the batch split between them [default: this build's backend; for
    /// tch the first CUDA device libtorch sees, else the CPU].
    #[arg(long, global = true, value_name = "DEVICE")]
    device: Vec<DeviceArg>,
    /// A file whose first line is the compute servers' token [default: $VIT_REMOTE_TOKEN];
    /// for `compute-server`, the token it asks of clients [default: none].
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
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
    /// Host this build's device for trainers on other machines (`--device ws://HOST:PORT`),
    /// over Burn's remote server, until Ctrl-C or SIGTERM.
    ComputeServer(compute_server::Args),
}

/// Runs the command `cli` names on the devices it selects.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let devices = devices::select(&cli.device, cli.token_file.as_deref())?;
    match cli.command {
        Command::Train(args) => train::exec(args, &devices),
        Command::Eval(args) => eval::exec(args, devices.single()?),
        Command::Export(args) => export::exec(args, devices.single()?),
        Command::AugmentPreview(args) => augment_preview::exec(args),
        Command::Explain(args) => explain::exec(args, devices.single()?),
        Command::Serve(args) => serve::exec(args, devices.single()?.clone()),
        Command::Import(args) => import::exec(args, devices.single()?),
        Command::Infer(args) => infer::exec(args, devices.single()?),
        Command::ComputeServer(args) => {
            compute_server::exec(args, devices.single()?.clone(), cli.token_file.as_deref())
        }
    }
}
