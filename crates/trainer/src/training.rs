//! `train`: burn-train's Learner on the configured recipe, then the best checkpoint exported,
//! evaluated once on the test set, and reported with charts. A run killed part-way continues
//! from its last complete checkpoint with `train --resume`.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::Dataset;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::train::checkpoint::{
    ComposedCheckpointingStrategy, KeepLastNCheckpoints, MetricCheckpointingStrategy,
};
use burn::train::metric::store::{Aggregate, Direction, Split as MetricSplit};
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, MetricEarlyStoppingStrategy, StoppingCondition,
    SupervisedTraining, TrainOutput, TrainStep,
};
use serde::{Deserialize, Serialize};
use vit_data::augment::AugmentedDataset;
use vit_data::{MnistBatch, MnistBatcher, MnistDataset, MnistItem, Split};
use vit_model::{Views, Vit, artifact};
use vit_trainer::{averaging, parallel};

use crate::charts;
use crate::config::TrainingConfig;
use crate::evaluation::{Evaluation, evaluate};
use crate::guard::DivergenceGuard;
use crate::history::{self, EpochMetrics};
use crate::renderer::{LineRenderer, minutes_seconds};
use crate::run_dir::{REPORT_FILE, RunDir};

/// The ViT with its training loss, as burn-train's Learner wants it.
#[derive(Module, Debug)]
pub struct Classifier {
    pub vit: Vit,
    #[module(skip)]
    label_smoothing: f32,
    #[module(skip)]
    guard: DivergenceGuard,
}

impl Classifier {
    fn classify(&self, batch: MnistBatch) -> ClassificationOutput {
        let logits = self.vit.forward(batch.images);
        // Cross-entropy on logits is the tutorial's log-softmax followed by NLL.
        let smoothing = (self.label_smoothing > 0.0).then_some(self.label_smoothing);
        let loss = CrossEntropyLossConfig::new()
            .with_smoothing(smoothing)
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}

impl TrainStep for Classifier {
    type Input = MnistBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: MnistBatch) -> TrainOutput<ClassificationOutput> {
        let size = batch.targets.dims()[0];
        let slices = parallel::step_slices(&batch.targets.device(), size);
        let (grads, loss, outputs) =
            parallel::sliced_gradients(self, size, slices, |model, range| {
                let output = model.classify(MnistBatch {
                    images: batch.images.clone().slice(range.clone()),
                    targets: batch.targets.clone().slice(range),
                });
                (output.loss.clone(), output)
            });
        let output = whole_batch(loss, outputs);
        self.guard.check(&output.loss);
        TrainOutput {
            grads,
            item: output,
        }
    }
}

/// The metrics' view of a batch trained in slices: its mean loss, the slices' logits and
/// targets in order. Detached: the gradients are already taken.
fn whole_batch(loss: Tensor<1>, outputs: Vec<ClassificationOutput>) -> ClassificationOutput {
    let (logits, targets): (Vec<_>, Vec<_>) = outputs
        .into_iter()
        .map(|output| (output.output.detach(), output.targets))
        .unzip();
    ClassificationOutput::new(loss, Tensor::cat(logits, 0), Tensor::cat(targets, 0))
}

impl InferenceStep for Classifier {
    type Input = MnistBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: MnistBatch) -> ClassificationOutput {
        self.classify(batch)
    }
}

/// What a finished run reports in `report.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub backend: String,
    pub parameters: usize,
    /// Epochs the config asked for.
    pub epochs: usize,
    /// Epochs that ran (fewer when early stopping ended the run).
    pub epochs_run: usize,
    /// The epoch with the best validation accuracy, whose weights were exported and tested
    /// unless `average.exported` says the mean of the last epochs was.
    pub exported_epoch: usize,
    /// The mean of the last epochs' weights against the best epoch, when the config asks for
    /// it (`average_last`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average: Option<AverageCheck>,
    /// The exported model's validation accuracy with one view and with five shifted views
    /// per image: whether test-time augmentation (`eval --tta`) is worth using.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_views: Option<ViewsCheck>,
    pub train_images: usize,
    pub valid_images: usize,
    /// Seconds from the start (or the resumption) of training to the saved report.
    pub wall_seconds: f64,
    /// Seconds inside the Learner: training and validation passes.
    pub learner_seconds: f64,
    /// Training images per second of Learner time (validation passes included).
    pub train_images_per_second: f64,
    pub history: Vec<EpochMetrics>,
    /// The exported model on the test set; absent for a run trained with `--no-test`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Evaluation>,
}

/// The mean weights of epochs `first_epoch..=last_epoch` against the best epoch's, both
/// evaluated on the validation split; the better one (the best epoch on a tie) is exported.
#[derive(Debug, Serialize, Deserialize)]
pub struct AverageCheck {
    pub first_epoch: usize,
    pub last_epoch: usize,
    pub valid_accuracy: f64,
    pub best_epoch_valid_accuracy: f64,
    pub exported: bool,
}

/// Validation accuracy (%) of one model with each kind of [`Views`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ViewsCheck {
    pub single: f64,
    pub shifted: f64,
}

/// Whether a finished run evaluates its exported model on the test set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestSet {
    Evaluate,
    /// Validation only: the run is one of several being compared, and the test set must wait
    /// for the chosen one.
    Untouched,
}

fn train_loader(
    dataset: impl Dataset<MnistItem> + 'static,
    config: &TrainingConfig,
) -> Arc<dyn DataLoader<MnistBatch>> {
    DataLoaderBuilder::new(MnistBatcher)
        .batch_size(config.batch_size)
        .shuffle(config.seed)
        .num_workers(config.num_workers)
        .build(dataset)
}

/// Keeps the last `last` checkpoints (to resume from, and to average) and the one with the
/// best validation accuracy (to export).
fn keep_last_and_best(last: usize) -> ComposedCheckpointingStrategy {
    ComposedCheckpointingStrategy::builder()
        .add(KeepLastNCheckpoints::new(last))
        .add(MetricCheckpointingStrategy::new(
            &AccuracyMetric::new(),
            Aggregate::Mean,
            Direction::Highest,
            MetricSplit::Valid,
        ))
        .build()
}

/// Trains `config` on the MNIST files in `data_dir`, writing everything into `run`.
/// `resume_from` is the checkpoint epoch to continue after (0: from the start).
pub fn train(
    config: &TrainingConfig,
    data_dir: &Path,
    run: &RunDir,
    device: &Device,
    resume_from: usize,
    testing: TestSet,
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    if resume_from == 0 {
        run.save_config(config)?;
    }
    let train_set = MnistDataset::load(data_dir, Split::Train, &config.data)?;
    let valid_set = MnistDataset::load(data_dir, Split::Valid, &config.data)?;
    let (train_images, valid_images) = (train_set.len(), valid_set.len());
    let steps_per_epoch = config.steps_per_epoch(train_images);

    device.seed(config.seed);
    let guard = DivergenceGuard::new();
    let model = Classifier {
        vit: config.model.init(&device.clone().autodiff())?,
        label_smoothing: config.label_smoothing,
        guard: guard.clone(),
    };
    let parameters = model.num_params();
    println!(
        "training {parameters} parameters on {device:?}: {train_images} training and \
         {valid_images} validation images, epochs {}-{}, run directory {}",
        resume_from + 1,
        config.epochs,
        run.path().display()
    );

    let train_loader = match &config.augment {
        Some(augment) => train_loader(
            AugmentedDataset::new(train_set, augment.clone(), config.seed),
            config,
        ),
        None => train_loader(train_set, config),
    };
    let valid_loader = DataLoaderBuilder::new(MnistBatcher)
        .batch_size(config.batch_size)
        .num_workers(config.num_workers)
        .build(valid_set.clone());
    let scheduler = config.scheduler(config.epochs * steps_per_epoch)?;
    let learner = Learner::new(model, config.optimizer(), scheduler);

    let mut training = SupervisedTraining::new(run.path(), train_loader, valid_loader)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .metric_train_numeric(LearningRateMetric::new())
        .with_default_checkpointers()
        .with_checkpointing_strategy(keep_last_and_best(config.average_last.unwrap_or(1)))
        .num_epochs(config.epochs)
        .summary();
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
    if resume_from > 0 {
        training = training.checkpoint(resume_from);
    }
    if !std::io::stdout().is_terminal() {
        training = training.renderer(Box::new(LineRenderer::default()));
    }
    guard.arm(training.interrupter(), steps_per_epoch, resume_from + 1);

    let learner_start = Instant::now();
    let result = training.launch(learner);
    let learner_seconds = learner_start.elapsed().as_secs_f64();
    if let Some(divergence) = guard.divergence() {
        bail!(
            "training diverged: the loss became {} at epoch {}, step {}. Nothing was exported; \
             the last complete checkpoint is epoch {} in {}. Lower the learning rate or clip \
             gradients and train again.",
            divergence.loss,
            divergence.epoch,
            divergence.step,
            run.last_checkpoint(),
            run.checkpoint_dir().display()
        );
    }

    let history = history::read(run.path());
    let (best, exported_epoch) = best_epoch(result.model, &history, config, run, device)?;
    let (model, average) = match config.average_last {
        Some(count) => prefer_average(count, best, &history, config, &valid_set, run, device)?,
        None => (best, None),
    };
    artifact::save(&model, &config.model, run.path())?;
    charts::learning_curves(&history, run.path())?;
    let valid_views = compare_views(&model, config, &valid_set, device);

    // The test set is touched once, here, by the exported model.
    let test = match testing {
        TestSet::Evaluate => {
            let test_set = MnistDataset::load(data_dir, Split::Test, &config.data)?;
            let (vit, _) = artifact::load(run.path(), device)?;
            let test = evaluate(
                &vit,
                &test_set,
                config.batch_size.max(500),
                Views::Single,
                device,
            );
            let chart = run.path().join(charts::CONFUSION_CHART);
            charts::confusion_matrix(&test.confusion, &chart)?;
            Some(test)
        }
        TestSet::Untouched => None,
    };
    let epochs_run = history.len();
    let trained_images = train_images * (epochs_run - resume_from.min(epochs_run));
    let report = RunReport {
        backend: format!("{device:?}"),
        parameters,
        epochs: config.epochs,
        epochs_run,
        exported_epoch,
        average,
        valid_views: Some(valid_views),
        train_images,
        valid_images,
        wall_seconds: started.elapsed().as_secs_f64(),
        learner_seconds,
        train_images_per_second: trained_images as f64 / learner_seconds,
        history,
        test,
    };
    run.write_json(REPORT_FILE, &report)
        .context("cannot write the report")?;
    let exported = match &report.average {
        Some(average) if average.exported => format!(
            "the mean weights of epochs {}-{}",
            average.first_epoch, average.last_epoch
        ),
        _ => format!("epoch {exported_epoch} (best validation accuracy of {epochs_run} epochs)"),
    };
    println!("exported {exported}");
    if let Some(average) = &report.average {
        println!(
            "validation accuracy: {:.2} % for the mean weights of epochs {}-{}, {:.2} % for \
             epoch {exported_epoch}",
            average.valid_accuracy,
            average.first_epoch,
            average.last_epoch,
            average.best_epoch_valid_accuracy
        );
    }
    if let Some(views) = &report.valid_views {
        println!(
            "validation accuracy of the exported model: {:.2} % with one view per image, \
             {:.2} % averaged over five one-pixel shifts (eval --tta)",
            views.single, views.shifted
        );
    }
    match &report.test {
        Some(test) => println!("test {test}"),
        None => println!(
            "test set untouched (--no-test); `eval --run-dir {}` evaluates this run",
            run.path().display()
        ),
    }
    println!(
        "wall time {} ({:.0} training images/s); model, report and charts in {}",
        minutes_seconds(report.wall_seconds),
        report.train_images_per_second,
        run.path().display()
    );
    Ok(report)
}

/// The weights of the epoch with the best validation accuracy, or the final weights when that
/// checkpoint is gone, and the epoch they come from.
fn best_epoch(
    last: Classifier,
    history: &[EpochMetrics],
    config: &TrainingConfig,
    run: &RunDir,
    device: &Device,
) -> anyhow::Result<(Vit, usize)> {
    let last_epoch = history.len();
    let best = history::best_valid_epoch(history).unwrap_or(last_epoch);
    let checkpoint = run.checkpoint_dir().join(format!("model-{best}.bpk"));
    if best == last_epoch {
        Ok((last.vit, last_epoch))
    } else if checkpoint.is_file() {
        Ok((load_checkpoint(&checkpoint, config, device)?, best))
    } else {
        println!(
            "the best epoch's checkpoint {} is gone: exporting the last epoch",
            checkpoint.display()
        );
        Ok((last.vit, last_epoch))
    }
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

    let batch_size = config.batch_size.max(500);
    let best_epoch_valid_accuracy =
        evaluate(&best, valid_set, batch_size, Views::Single, device).accuracy;
    let valid_accuracy = evaluate(&mean, valid_set, batch_size, Views::Single, device).accuracy;
    let exported = valid_accuracy > best_epoch_valid_accuracy;
    let check = AverageCheck {
        first_epoch,
        last_epoch,
        valid_accuracy,
        best_epoch_valid_accuracy,
        exported,
    };
    Ok((if exported { mean } else { best }, Some(check)))
}

/// `model` on the validation split with one view and with shifted views per image.
fn compare_views(
    model: &Vit,
    config: &TrainingConfig,
    valid_set: &MnistDataset,
    device: &Device,
) -> ViewsCheck {
    let batch_size = config.batch_size.max(500);
    let accuracy = |views| evaluate(model, valid_set, batch_size, views, device).accuracy;
    ViewsCheck {
        single: accuracy(Views::Single),
        shifted: accuracy(Views::Shifted),
    }
}

/// The ViT of a training checkpoint (a [`Classifier`] record), on the plain `device`.
fn load_checkpoint(path: &Path, config: &TrainingConfig, device: &Device) -> anyhow::Result<Vit> {
    let classifier = Classifier {
        vit: config.model.init(device)?,
        label_smoothing: config.label_smoothing,
        guard: DivergenceGuard::new(),
    };
    let classifier = classifier
        .try_load_file(path)
        .map_err(|error| anyhow::anyhow!("{}: {error:?}", path.display()))?;
    Ok(classifier.vit)
}
