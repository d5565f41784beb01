//! `import`: a run directory from weights trained elsewhere (PyTorch), checked against their
//! probe when one lies beside them.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::Device;
use vit_model::{artifact, interchange};

use crate::config::check_fits_mnist;

#[derive(clap::Args)]
pub struct Args {
    /// The weights, safetensors, PyTorch layout.
    #[arg(long)]
    weights: PathBuf,
    /// The model config (`model-config.json`) of the network the weights belong to.
    #[arg(long)]
    model_config: PathBuf,
    /// The run directory to write (model config, burnpack and safetensors weights).
    #[arg(long)]
    out: PathBuf,
}

pub fn exec(args: Args, device: &Device) -> anyhow::Result<()> {
    let Args {
        weights,
        model_config,
        out,
    } = args;
    let config = artifact::load_config(&model_config)?;
    check_fits_mnist(&config)
        .with_context(|| format!("{}: not a model for MNIST", model_config.display()))?;
    let taken = out
        .read_dir()
        .is_ok_and(|mut entries| entries.next().is_some());
    if taken || out.is_file() {
        anyhow::bail!(
            "{} already exists: import writes a new run directory and never \
             overwrites one (choose another --out)",
            out.display()
        );
    }
    let model = interchange::import_safetensors(&weights, &config, device)?;
    let probe_path = weights.with_file_name(artifact::PROBE_FILE);
    if probe_path.is_file() {
        let diff = interchange::check_probe(&model, &probe_path, device)?;
        println!(
            "probe {}: logits agree within {diff:.2e}",
            probe_path.display()
        );
    }
    artifact::save(&model, &config, &out)?;
    println!(
        "imported {} into {} (infer and eval take it as --run-dir)",
        weights.display(),
        out.display()
    );
    Ok(())
}
