//! `train`: a new run from a config, or an unfinished one resumed from its last checkpoint.

use std::path::PathBuf;

use super::args::DataArgs;
use crate::config::TrainingConfig;
use crate::devices::Devices;
use crate::run_dir::{RunDir, default_run_name};
use crate::training;

#[derive(clap::Args)]
pub struct Args {
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
    /// Continue an unfinished run from its last complete checkpoint, with its own config.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "run", "epochs"])]
    resume: Option<PathBuf>,
    /// Leave the test set untouched: the run reports validation only, for comparing
    /// settings. `eval --run-dir` tests the chosen run later, once.
    #[arg(long)]
    no_test: bool,
}

pub fn exec(args: Args, devices: &Devices) -> anyhow::Result<()> {
    let test = if args.no_test {
        training::TestSet::Untouched
    } else {
        training::TestSet::Evaluate
    };
    if let Some(path) = args.resume {
        let run = RunDir::resume(&path)?;
        let config = TrainingConfig::load(&run.training_config_path())?;
        check_split(&config, devices)?;
        let prepared = training::prepare(&config, &args.data.dir()?, test)?;
        println!(
            "resuming {} after epoch {}",
            run.path().display(),
            run.last_checkpoint()
        );
        return training::resume(prepared, &run, devices).map(drop);
    }
    let mut config = TrainingConfig::load(&args.config)?;
    if let Some(epochs) = args.epochs {
        config.epochs = epochs;
        config.validate()?;
    }
    check_split(&config, devices)?;
    // Everything that can fail on the data fails before the run directory exists.
    let prepared = training::prepare(&config, &args.data.dir()?, test)?;
    let name = args.run.unwrap_or_else(|| default_run_name(&args.config));
    let run = RunDir::create(&args.artifacts, &name)?;
    training::start(prepared, &run, devices).map(drop)
}

/// Each device trains a part of every batch: there must be at least one image per device.
fn check_split(config: &TrainingConfig, devices: &Devices) -> anyhow::Result<()> {
    let count = devices.devices.len();
    if config.batch_size < count {
        anyhow::bail!(
            "batch_size {} cannot be split between {count} devices: each trains a part of \
             every batch",
            config.batch_size
        );
    }
    Ok(())
}
