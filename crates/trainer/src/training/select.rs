//! The select stage: which weights a run exports. The epoch with the best validation accuracy,
//! or the mean of the last epochs' weights when the config asks for averaging and the mean does
//! better on the validation split. Everything is read from the checkpoints, so a resumed run
//! selects exactly what an uninterrupted one did.

use std::path::Path;

use crate::averaging;
use anyhow::bail;
use burn::data::dataset::Dataset;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use vit_data::MnistDataset;
use vit_model::{Views, Vit};

use super::classifier::Classifier;
use crate::config::TrainingConfig;
use crate::evaluation::evaluate;
use crate::guard::DivergenceGuard;
use crate::history::{self, EpochMetrics};
use crate::run_dir::RunDir;

/// The mean weights of epochs `first_epoch..=last_epoch` against the best epoch's, both
/// evaluated on the validation split; the better one (the best epoch on a tie) is exported.
/// A run without a validation split exports the mean, decided in advance, and has no
/// accuracies to compare.
#[derive(Debug, Serialize, Deserialize)]
pub struct AverageCheck {
    pub first_epoch: usize,
    pub last_epoch: usize,
    pub valid_accuracy: Option<f64>,
    pub best_epoch_valid_accuracy: Option<f64>,
    pub exported: bool,
}

/// Validation accuracy (%) of one model with each kind of [`Views`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ViewsCheck {
    pub single: f64,
    pub shifted: f64,
}

/// The weights to export, the epoch they come from, and the averaging check if there was one.
pub struct Selected {
    pub model: Vit,
    pub epoch: usize,
    pub average: Option<AverageCheck>,
}

pub fn select(
    config: &TrainingConfig,
    history: &[EpochMetrics],
    valid_set: &MnistDataset,
    run: &RunDir,
    device: &Device,
) -> anyhow::Result<Selected> {
    let (best, epoch) = best_epoch(history, config, run, device)?;
    let (model, average) = match config.average_last {
        Some(count) => prefer_average(count, best, history, config, valid_set, run, device)?,
        None => (best, None),
    };
    Ok(Selected {
        model,
        epoch,
        average,
    })
}

/// The weights of the epoch with the best validation accuracy, or of the last epoch when that
/// checkpoint is gone, and the epoch they come from.
fn best_epoch(
    history: &[EpochMetrics],
    config: &TrainingConfig,
    run: &RunDir,
    device: &Device,
) -> anyhow::Result<(Vit, usize)> {
    // Without validation figures (`data.valid_size` 0) the last epoch is the one exported.
    let last_epoch = history.len();
    let best = history::best_valid_epoch(history).unwrap_or(last_epoch);
    let checkpoint = |epoch: usize| run.checkpoint_dir().join(format!("model-{epoch}.bpk"));
    if checkpoint(best).is_file() {
        return Ok((load_checkpoint(&checkpoint(best), config, device)?, best));
    }
    if !checkpoint(last_epoch).is_file() {
        bail!(
            "neither the best epoch's checkpoint {} nor the last one's {} is there: nothing \
             to export",
            checkpoint(best).display(),
            checkpoint(last_epoch).display()
        );
    }
    println!(
        "the best epoch's checkpoint {} is gone: exporting the last epoch",
        checkpoint(best).display()
    );
    Ok((
        load_checkpoint(&checkpoint(last_epoch), config, device)?,
        last_epoch,
    ))
}

/// Averages the weights of the last `count` epochs' checkpoints and returns that mean in place
/// of `best` if it does better on the validation split, with the comparison. `best` and no
/// comparison, with the reason printed, when the run has fewer epochs or their checkpoints are
/// gone.
fn prefer_average(
    count: usize,
    best: Vit,
    history: &[EpochMetrics],
    config: &TrainingConfig,
    valid_set: &MnistDataset,
    run: &RunDir,
    device: &Device,
) -> anyhow::Result<(Vit, Option<AverageCheck>)> {
    let last_epoch = history.len();
    let Some(first_epoch) = (last_epoch + 1)
        .checked_sub(count)
        .filter(|&first| first > 0)
    else {
        println!("no weight averaging: {last_epoch} epochs ran, fewer than average_last {count}");
        return Ok((best, None));
    };
    let mut models = Vec::with_capacity(count);
    for epoch in first_epoch..=last_epoch {
        let path = run.checkpoint_dir().join(format!("model-{epoch}.bpk"));
        if !path.is_file() {
            println!("no weight averaging: {} is missing", path.display());
            return Ok((best, None));
        }
        models.push(load_checkpoint(&path, config, device)?);
    }
    let mean = averaging::average(&models)?;
    if valid_set.is_empty() {
        let check = AverageCheck {
            first_epoch,
            last_epoch,
            valid_accuracy: None,
            best_epoch_valid_accuracy: None,
            exported: true,
        };
        return Ok((mean, Some(check)));
    }

    let batch_size = config.batch_size.max(500);
    let accuracy = |model| evaluate(model, valid_set, batch_size, Views::Single, device).accuracy;
    let (best_epoch_valid_accuracy, valid_accuracy) = (accuracy(&best), accuracy(&mean));
    let exported = valid_accuracy > best_epoch_valid_accuracy;
    let check = AverageCheck {
        first_epoch,
        last_epoch,
        valid_accuracy: Some(valid_accuracy),
        best_epoch_valid_accuracy: Some(best_epoch_valid_accuracy),
        exported,
    };
    Ok((if exported { mean } else { best }, Some(check)))
}

/// `model` on the validation split with one view and with shifted views per image; `None`
/// without a validation split.
pub fn compare_views(
    model: &Vit,
    config: &TrainingConfig,
    valid_set: &MnistDataset,
    device: &Device,
) -> Option<ViewsCheck> {
    if valid_set.is_empty() {
        return None;
    }
    let batch_size = config.batch_size.max(500);
    let accuracy = |views| evaluate(model, valid_set, batch_size, views, device).accuracy;
    Some(ViewsCheck {
        single: accuracy(Views::Single),
        shifted: accuracy(Views::Shifted),
    })
}

/// The ViT of a training checkpoint (a [`Classifier`] record), on the plain `device`.
fn load_checkpoint(path: &Path, config: &TrainingConfig, device: &Device) -> anyhow::Result<Vit> {
    let classifier = Classifier {
        vit: config.model.init(device)?,
        label_smoothing: config.label_smoothing,
        guard: DivergenceGuard::new(),
        gradients_to: None,
    };
    let classifier = classifier
        .try_load_file(path)
        .map_err(|error| anyhow::anyhow!("{}: {error:?}", path.display()))?;
    Ok(classifier.vit)
}
