//! `eval`: a finished run's accuracy on the test set (with its confusion matrix and mistakes
//! drawn) or on its own validation split.

use burn::tensor::Device;
use vit_data::{DataConfig, MnistDataset, Split};

use super::args::{DataArgs, RunArgs, views};
use crate::config::TrainingConfig;
use crate::run_dir::RunDir;
use crate::{charts, evaluation, mistakes};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    data: DataArgs,
    /// The split to evaluate: `valid` is the run's own validation split, for choices
    /// such as `--tta`; `test` is for the final figure, once.
    #[arg(long, value_enum, default_value_t = EvalSplit::Test)]
    split: EvalSplit,
    /// Test-time augmentation: average each prediction over the image and its four
    /// one-pixel shifts (five forward passes).
    #[arg(long)]
    tta: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EvalSplit {
    Valid,
    Test,
}

pub fn exec(args: Args, device: &Device) -> anyhow::Result<()> {
    let run = args.run.open()?;
    let (model, _) = run.load_mnist_model(device)?;
    let (split, data_config, name) = match args.split {
        EvalSplit::Test => (Split::Test, DataConfig::default(), "test"),
        EvalSplit::Valid => (Split::Valid, run_data_config(&run)?, "validation"),
    };
    let dataset = MnistDataset::load(&args.data.dir()?, split, &data_config)?;
    let evaluation = evaluation::evaluate(&model, &dataset, 500, views(args.tta), device);
    let how = if args.tta {
        ", five shifted views per image"
    } else {
        ""
    };
    println!(
        "{} on {device:?}{how}: {name} {evaluation}",
        run.path().display()
    );
    if split == Split::Test {
        let chart = run.path().join(charts::CONFUSION_CHART);
        charts::confusion_matrix(&evaluation.confusion, &chart)?;
        let gallery = run.path().join(mistakes::MISTAKES_CHART);
        mistakes::draw(&dataset, &evaluation.mistakes, &gallery)?;
        println!(
            "confusion matrix drawn in {}, the mistakes in {}",
            chart.display(),
            gallery.display()
        );
    }
    Ok(())
}

/// The data section of the config `run` was trained with, which fixes its validation split.
fn run_data_config(run: &RunDir) -> anyhow::Result<DataConfig> {
    let path = run.training_config_path();
    if !path.is_file() {
        anyhow::bail!(
            "{} has no training config ({}), so its validation split is unknown; evaluate \
             the test split instead",
            run.path().display(),
            path.display()
        );
    }
    let data = TrainingConfig::load(&path)?.data;
    if data.valid_size == 0 {
        anyhow::bail!(
            "{} was trained on every training image (data.valid_size 0): it has no validation \
             split; evaluate the test split instead",
            run.path().display()
        );
    }
    Ok(data)
}
