//! The fit stage: burn-train's Learner from the last complete checkpoint to the last epoch,
//! with each epoch's order, augmentation and random draws fixed by (seed, epoch), so the
//! epochs a resumed run trains are the ones an uninterrupted run would have trained.

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::bail;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::Dataset;
use burn::prelude::*;
use burn::train::checkpoint::{
    ComposedCheckpointingStrategy, KeepLastNCheckpoints, MetricCheckpointingStrategy,
};
use burn::train::metric::store::{Aggregate, Direction, Split as MetricSplit};
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric};
use burn::train::{
    ExecutionStrategy, Learner, LearningResult, MetricEarlyStoppingStrategy, MultiDeviceOptim,
    StoppingCondition, SupervisedTraining,
};
use serde::{Deserialize, Serialize};
use vit_data::MnistBatcher;
use vit_data::augment::AugmentedDataset;
use vit_data::epochs::EpochClock;

use super::classifier::Classifier;
use super::loader::epoch_loader;
use super::prepare::Prepared;
use crate::backend::quiet_panics;
use crate::devices::Devices;
use crate::guard::DivergenceGuard;
use crate::history::{self, EpochMetrics};
use crate::renderer::LineRenderer;
use crate::run_dir::{FIT_FILE, RunDir};

/// What the Learner did, written when it has trained the last epoch: a run resumed after
/// that goes straight to exporting.
#[derive(Debug, Serialize, Deserialize)]
pub struct FitRecord {
    /// Epochs trained in all (fewer than the config's when early stopping ended the run).
    pub epochs_run: usize,
    /// Seconds in the Learner, in the launch that trained the last epoch.
    pub learner_seconds: f64,
    /// Training images that launch went through.
    pub trained_images: usize,
}

impl FitRecord {
    pub fn images_per_second(&self) -> f64 {
        self.trained_images as f64 / self.learner_seconds.max(f64::MIN_POSITIVE)
    }
}

/// The trained epochs' figures and how they were trained.
pub struct Fitted {
    pub history: Vec<EpochMetrics>,
    pub record: FitRecord,
}

/// Trains what `run` has not trained yet and reads back every epoch's figures.
pub fn fit(prepared: &Prepared, run: &RunDir, devices: &Devices) -> anyhow::Result<Fitted> {
    let record = match run.read_json::<FitRecord>(FIT_FILE)? {
        Some(record) => {
            println!(
                "{}: all {} epochs were trained before; exporting and reporting",
                run.path().display(),
                record.epochs_run
            );
            record
        }
        None => {
            let record = launch(prepared, run, devices)?;
            run.write_json(FIT_FILE, &record)?;
            record
        }
    };
    let validated = !prepared.valid_set.is_empty();
    let history = history::read(run.path(), record.epochs_run, validated)?;
    Ok(Fitted { history, record })
}

/// One launch of the Learner, from the last complete checkpoint.
fn launch(prepared: &Prepared, run: &RunDir, devices: &Devices) -> anyhow::Result<FitRecord> {
    let config = &prepared.config;
    let device = devices.main();
    let resume_from = run.last_checkpoint();
    run.forget_epochs_after(resume_from)?;
    let train_images = prepared.train_set.len();
    let steps_per_epoch = config.steps_per_epoch(train_images);

    device.seed(config.seed);
    let guard = DivergenceGuard::new();
    let model = Classifier {
        vit: config.model.init(&device.clone().autodiff())?,
        label_smoothing: config.label_smoothing,
        guard: guard.clone(),
        // burn-train's main device is the first.
        gradients_to: (devices.devices.len() > 1).then(|| device.clone()),
    };
    println!(
        "training {} parameters on {}: {train_images} training and {} validation \
         images, epochs {}-{}, run directory {}",
        model.num_params(),
        devices.names.join(" + "),
        prepared.valid_set.len(),
        resume_from + 1,
        config.epochs,
        run.path().display()
    );
    let scheduler = config.scheduler(config.epochs * steps_per_epoch)?;
    let learner = Learner::new(model, config.optimizer(), scheduler);
    let mut training = supervised_training(prepared, run, devices, resume_from);
    guard.arm(
        training.interrupter(),
        steps_per_epoch,
        resume_from + 1,
        devices.devices.len(),
    );
    if resume_from > 0 {
        training = training.checkpoint(resume_from);
    }

    let learner_start = Instant::now();
    // A compute server that goes away fails the next operation on its device with a panic.
    let result = quiet_panics(|| training.launch(learner))
        .map_err(|panic| lost_devices(&panic, devices, run))?;
    let learner_seconds = learner_start.elapsed().as_secs_f64();
    check_outcome(&result, &guard, run, devices)?;

    let epochs_run = run.last_checkpoint();
    if epochs_run < config.epochs && config.early_stopping.is_none() {
        bail!(
            "the Learner stopped after epoch {epochs_run} of {} without an error; nothing was \
             exported. `train --resume {}` continues from there.",
            config.epochs,
            run.path().display()
        );
    }
    Ok(FitRecord {
        epochs_run,
        learner_seconds,
        trained_images: train_images * epochs_run.saturating_sub(resume_from),
    })
}

/// The Learner's recipe: loaders, metrics, checkpoints, early stopping and the dashboard.
fn supervised_training(
    prepared: &Prepared,
    run: &RunDir,
    devices: &Devices,
    resume_from: usize,
) -> SupervisedTraining<Classifier> {
    let config = &prepared.config;
    let (device, count) = (devices.main(), devices.devices.len());
    let clock = EpochClock::starting_at(resume_from + 1);
    let train_loader = match &config.augment {
        Some(augment) => epoch_loader(
            AugmentedDataset::new(
                prepared.train_set.clone(),
                augment.clone(),
                config.seed,
                clock.clone(),
            ),
            config,
            clock,
            device,
            count,
        ),
        None => epoch_loader(prepared.train_set.clone(), config, clock, device, count),
    };
    let valid_loader = DataLoaderBuilder::new(MnistBatcher)
        .batch_size(config.batch_size)
        .num_workers(config.num_workers)
        .build(prepared.valid_set.clone());

    let mut training = SupervisedTraining::new(run.path(), train_loader, valid_loader)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .metric_train_numeric(LearningRateMetric::new())
        .with_default_checkpointers()
        .with_checkpointing_strategy(keep_last_and_best(
            config.average_last.unwrap_or(1),
            !prepared.valid_set.is_empty(),
        ))
        .num_epochs(config.epochs)
        .summary();
    if count > 1 {
        // The model and the optimiser live on the first device, which sums the gradients.
        let strategy =
            ExecutionStrategy::multi(devices.devices.clone(), MultiDeviceOptim::OptimMainDevice);
        training = training.with_training_strategy(strategy.into());
    }
    if let Some(early_stopping) = &config.early_stopping {
        training = training.early_stopping(MetricEarlyStoppingStrategy::new(
            &LossMetric::new(),
            Aggregate::Mean,
            Direction::Lowest,
            MetricSplit::Valid,
            StoppingCondition::NoImprovementSince {
                n_epochs: early_stopping.patience,
            },
        ));
    }
    if !std::io::stdout().is_terminal() {
        training = training.renderer(Box::new(LineRenderer::default()));
    }
    training
}

/// A Learner that stopped on an error, on a diverging loss or on a user's interruption has
/// nothing worth exporting: each is an error that says where the run can continue from.
fn check_outcome(
    result: &LearningResult<Classifier>,
    guard: &DivergenceGuard,
    run: &RunDir,
    devices: &Devices,
) -> anyhow::Result<()> {
    let resume = resume_hint(run);
    if let Some(divergence) = guard.divergence() {
        bail!(
            "training diverged: the loss became {} at epoch {}, step {}. Nothing was exported; \
             {resume}. Lower the learning rate or clip gradients and train again.",
            divergence.loss,
            divergence.epoch,
            divergence.step,
        );
    }
    if let Some(error) = &result.error {
        return Err(lost_devices(&error.to_string(), devices, run));
    }
    if let Some(interruption) = &result.interrupted {
        let reason = interruption
            .reason
            .as_deref()
            .unwrap_or("stopped by the user");
        bail!(
            "training was interrupted ({reason}). Nothing was exported; {resume}; \
             `train --resume {}` continues.",
            run.path().display()
        );
    }
    Ok(())
}

fn resume_hint(run: &RunDir) -> String {
    format!(
        "the last complete checkpoint is epoch {} in {}",
        run.last_checkpoint(),
        run.checkpoint_dir().display()
    )
}

/// The error of a launch that failed with `failure`, naming the compute servers that no longer
/// answer, if any: the likely cause, and what `train --resume` needs back.
fn lost_devices(failure: &str, devices: &Devices, run: &RunDir) -> anyhow::Error {
    let resume = resume_hint(run);
    let gone = devices.unreachable_servers();
    if gone.is_empty() {
        return anyhow::anyhow!("training failed: {failure}. Nothing was exported; {resume}.");
    }
    anyhow::anyhow!(
        "training stopped: the compute server {} no longer answers. Nothing was exported; \
         {resume}; `train --resume {}` with the same --device list continues once it is back. \
         The backend said: {failure}",
        gone.join(" and "),
        run.path().display()
    )
}

/// Keeps the last `last` checkpoints (to resume from, and to average) and, when the run is
/// `validated`, the one with the best validation accuracy (to export).
fn keep_last_and_best(last: usize, validated: bool) -> ComposedCheckpointingStrategy {
    let strategy = ComposedCheckpointingStrategy::builder().add(KeepLastNCheckpoints::new(last));
    if !validated {
        return strategy.build();
    }
    strategy
        .add(MetricCheckpointingStrategy::new(
            &AccuracyMetric::new(),
            Aggregate::Mean,
            Direction::Highest,
            MetricSplit::Valid,
        ))
        .build()
}
