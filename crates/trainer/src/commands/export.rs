//! `export --format onnx`: a run's model as a file that other runtimes read (crate `vit-onnx`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::tensor::Device;
use vit_model::artifact;

use super::args::RunArgs;

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    /// ONNX, opset 17, for ONNX Runtime (servers, phones, browsers), TensorRT, OpenVINO.
    Onnx,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// The file format to write.
    #[arg(long, value_enum)]
    format: Format,
    /// The file to write [default: model.onnx in the run directory].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the output file when it exists (it is never replaced otherwise).
    #[arg(long)]
    force: bool,
}

pub fn exec(args: Args, device: &Device) -> anyhow::Result<()> {
    let run = args.run.open()?;
    let Format::Onnx = args.format;
    let out = args
        .out
        .unwrap_or_else(|| run.path().join(artifact::ONNX_FILE));
    if out.exists() && !args.force {
        bail!(
            "{} already exists: pass --force to replace it, or --out to write elsewhere",
            out.display()
        );
    }
    let (model, config) = artifact::load(run.path(), device)
        .with_context(|| format!("cannot load the model of {}", run.path().display()))?;
    vit_onnx::write(&model, &config, &out)
        .with_context(|| format!("cannot export the model of {}", run.path().display()))?;
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({} KiB, ONNX opset {}): input `{}` {}",
        out.display(),
        bytes.div_ceil(1024),
        vit_onnx::OPSET,
        vit_onnx::INPUT,
        vit_onnx::input_contract(&config)
    );
    println!(
        "outputs `{}` and `{}` [N, {}]",
        vit_onnx::LOGITS,
        vit_onnx::PROBABILITIES,
        config.num_classes
    );
    Ok(())
}
