//! `vit-trainer`: train, evaluate and run the MNIST ViT on the backend it was compiled with
//! (cargo features `flex`, `ndarray`, `wgpu`, `tch`; with several, Burn picks one and the
//! `BURN_DEVICE` variable can name another).

mod config;
mod evaluation;
mod infer;
mod renderer;
mod run_dir;
mod training;

use std::path::PathBuf;

use anyhow::Context;
use burn::prelude::*;
use clap::{Parser, Subcommand};
use vit_data::{DataConfig, MnistDataset, Split, resolve_data_dir};
use vit_model::artifact;

use crate::config::TrainingConfig;
use crate::run_dir::{RunDir, default_run_name};

#[derive(Parser)]
#[command(version, about = "Train, evaluate and run a Vision Transformer on MNIST")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model and evaluate it once on the test set.
    Train {
        /// Training config (model, optimiser, schedule, data, epochs, seed).
        #[arg(long, default_value = "configs/vit-mnist-tutorial.json")]
        config: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// Where run directories are created.
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// Run directory name [default: <config name>-<UTC date>-<time>].
        #[arg(long)]
        run: Option<String>,
        /// Override the config's number of epochs.
        #[arg(long)]
        epochs: Option<usize>,
    },
    /// Evaluate a finished run on the MNIST test set.
    Eval {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Predict the digit of PNG/JPEG images (any size) or of the images in an IDX file.
    Infer {
        #[command(flatten)]
        run: RunArgs,
        /// Image files, or IDX image files (`*-idx3-ubyte[.gz]`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// At most this many images from each IDX file.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
}

#[derive(clap::Args)]
struct DataArgs {
    /// Directory with the four MNIST files [default: $MNIST_DIR, else ~/.cache/vit-mnist/mnist].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// A run directory [default: the newest finished run under artifacts/].
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

impl RunArgs {
    fn open(&self) -> anyhow::Result<RunDir> {
        match &self.run_dir {
            Some(path) => RunDir::open(path),
            None => RunDir::latest(std::path::Path::new("artifacts")),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let device = Device::default();
    match cli.command {
        Command::Train { config: config_path, data, artifacts, run, epochs } => {
            let mut config = TrainingConfig::load(&config_path)?;
            if let Some(epochs) = epochs {
                config.epochs = epochs;
                config.validate()?;
            }
            let name = run.unwrap_or_else(|| default_run_name(&config_path));
            let run = RunDir::create(&artifacts, &name)?;
            training::train(&config, &resolve_data_dir(data.data_dir.as_deref()), &run, &device)?;
        }
        Command::Eval { run, data } => {
            let run = run.open()?;
            let (model, _) = artifact::load(run.path(), &device)?;
            let data_config = DataConfig::default();
            let test_set = MnistDataset::load(&resolve_data_dir(data.data_dir.as_deref()), Split::Test, &data_config)?;
            let evaluation = evaluation::evaluate(&model, &test_set, 500, &device);
            println!("{} on {device:?}: test {evaluation}", run.path().display());
        }
        Command::Infer { run, files, limit } => {
            let run = run.open()?;
            let (model, _) = artifact::load(run.path(), &device)
                .with_context(|| format!("cannot load the model of {}", run.path().display()))?;
            let inputs = infer::read_inputs(&files, limit)?;
            for (input, probabilities) in inputs.iter().zip(infer::predict(&model, &inputs, &device)) {
                println!("{}", infer::describe(input, &probabilities));
            }
        }
    }
    Ok(())
}
