//! `train`: burn-train's Learner on the configured recipe, then the best checkpoint exported,
//! evaluated once on the test set, and reported with charts. The stages read top to bottom in
//! [`train`]: prepare (data, before anything is written), fit (the Learner), select (best
//! epoch or averaged weights), export, test, report. Each stage after fitting is computed again
//! by a resumed run, and the report, the mark of a finished run, is written last, so a run
//! stopped at any moment continues with `train --resume` to the same files.

mod fit;
mod select;
mod summary;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::data::dataset::Dataset;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use serde::{Deserialize, Serialize};
use vit_data::{MnistBatch, MnistDataset, Split};
use vit_model::{Views, Vit, artifact};
use vit_trainer::parallel;

use crate::charts;
use crate::config::TrainingConfig;
use crate::evaluation::{Evaluation, evaluate};
use crate::fault;
use crate::guard::DivergenceGuard;
use crate::history::EpochMetrics;
use crate::run_dir::{DATA_SOURCE_FILE, REPORT_FILE, RunDir};

pub use select::{AverageCheck, ViewsCheck};

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
        self.output(self.vit.forward(batch.images), batch.targets)
    }

    /// The loss of `logits` against `targets`: cross-entropy on logits is the tutorial's
    /// log-softmax followed by NLL.
    fn output(&self, logits: Tensor<2>, targets: Tensor<1, Int>) -> ClassificationOutput {
        let smoothing = (self.label_smoothing > 0.0).then_some(self.label_smoothing);
        let loss = CrossEntropyLossConfig::new()
            .with_smoothing(smoothing)
            .init(&logits.device())
            .forward(logits.clone(), targets.clone());
        ClassificationOutput::new(loss, logits, targets)
    }
}

impl TrainStep for Classifier {
    type Input = MnistBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: MnistBatch) -> TrainOutput<ClassificationOutput> {
        self.guard.before_step();
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

    /// Validation, on the model without autodiff: the batch in one slice per core.
    fn step(&self, batch: MnistBatch) -> ClassificationOutput {
        self.output(self.vit.forward_in_slices(batch.images), batch.targets)
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

/// Whether a finished run evaluates its exported model on the test set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestSet {
    Evaluate,
    /// Validation only: the run is one of several being compared, and the test set must wait
    /// for the chosen one.
    Untouched,
}

/// The MNIST files a run reads: where they were and what they held. A resumed run must read
/// the same, or it is not the same run.
#[derive(Debug, Serialize, Deserialize)]
pub struct DataSource {
    pub dir: PathBuf,
    /// (file name, SHA-256 of its decompressed content), for the four standard files.
    pub files: Vec<(String, String)>,
}

impl DataSource {
    /// The files in `dir` a run reads: the training files, and the test files unless the
    /// test set is left untouched.
    fn read(dir: &Path, testing: TestSet) -> anyhow::Result<Self> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot open the MNIST directory {}", dir.display()))?;
        let splits: &[Split] = match testing {
            TestSet::Evaluate => &[Split::Train, Split::Test],
            TestSet::Untouched => &[Split::Train],
        };
        let files = vit_data::content_sha256s(&dir, splits)?;
        Ok(Self { dir, files })
    }

    /// Same directory, and the same content in every file both read (a resume may test a
    /// run that started with `--no-test`, or the other way round).
    fn agrees_with(&self, other: &Self) -> bool {
        self.dir == other.dir
            && self.files.iter().all(|(name, sha256)| {
                other
                    .files
                    .iter()
                    .all(|(other_name, other_sha256)| name != other_name || sha256 == other_sha256)
            })
    }
}

/// Everything a run needs before it writes anything: a start that fails here leaves no run
/// directory behind.
pub struct Prepared {
    config: TrainingConfig,
    data_dir: PathBuf,
    testing: TestSet,
    source: DataSource,
    train_set: MnistDataset,
    valid_set: MnistDataset,
    started: Instant,
}

/// Reads and checks the data of a run of `config`.
pub fn prepare(
    config: &TrainingConfig,
    data_dir: &Path,
    testing: TestSet,
) -> anyhow::Result<Prepared> {
    let started = Instant::now();
    let source = DataSource::read(data_dir, testing)?;
    let (train_set, valid_set) = MnistDataset::load_training(data_dir, &config.data)?;
    config.scheduler(config.epochs * config.steps_per_epoch(train_set.len()))?;
    Ok(Prepared {
        config: config.clone(),
        data_dir: data_dir.into(),
        testing,
        source,
        train_set,
        valid_set,
        started,
    })
}

/// Starts a new run of `prepared` in the fresh directory `run`.
pub fn start(prepared: Prepared, run: &RunDir, device: &Device) -> anyhow::Result<RunReport> {
    run.save_config(&prepared.config)?;
    run.write_json(DATA_SOURCE_FILE, &prepared.source)?;
    train(prepared, run, device)
}

/// Continues the unfinished `run` with the data of `prepared`, which must be what it started
/// with.
pub fn resume(prepared: Prepared, run: &RunDir, device: &Device) -> anyhow::Result<RunReport> {
    if let Some(recorded) = run.read_json::<DataSource>(DATA_SOURCE_FILE)?
        && !recorded.agrees_with(&prepared.source)
    {
        bail!(
            "{run} was trained on the MNIST files in {old} ({old_files}), but this resume \
             reads {new} ({new_files}); resume it with --data-dir {old}",
            run = run.path().display(),
            old = recorded.dir.display(),
            old_files = describe_files(&recorded.files),
            new = prepared.source.dir.display(),
            new_files = describe_files(&prepared.source.files),
        );
    }
    train(prepared, run, device)
}

fn describe_files(files: &[(String, String)]) -> String {
    files
        .iter()
        .map(|(name, sha256)| format!("{name} SHA-256 {}…", &sha256[..sha256.len().min(12)]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The stages of a run, from wherever `run` stands.
fn train(prepared: Prepared, run: &RunDir, device: &Device) -> anyhow::Result<RunReport> {
    let config = &prepared.config;
    let fitted = fit::fit(&prepared, run, device)?;
    fault::after_stage("fitted");

    let selected = select::select(config, &fitted.history, &prepared.valid_set, run, device)?;
    artifact::save(&selected.model, &config.model, run.path())?;
    charts::learning_curves(&fitted.history, run.path())?;
    fault::after_stage("exported");

    let valid_views = select::compare_views(&selected.model, config, &prepared.valid_set, device);
    let test = match prepared.testing {
        TestSet::Evaluate => Some(test_once(&prepared, run, device)?),
        TestSet::Untouched => None,
    };
    fault::after_stage("tested");

    let report = RunReport {
        backend: format!("{device:?}"),
        parameters: selected.model.num_params(),
        epochs: config.epochs,
        epochs_run: fitted.history.len(),
        exported_epoch: selected.epoch,
        average: selected.average,
        valid_views,
        train_images: prepared.train_set.len(),
        valid_images: prepared.valid_set.len(),
        wall_seconds: prepared.started.elapsed().as_secs_f64(),
        learner_seconds: fitted.record.learner_seconds,
        train_images_per_second: fitted.record.images_per_second(),
        history: fitted.history,
        test,
    };
    run.write_json(REPORT_FILE, &report)
        .context("cannot write the report")?;
    summary::print(&report, run);
    Ok(report)
}

/// The exported model, as saved, on the test set: the only time a run touches it.
fn test_once(prepared: &Prepared, run: &RunDir, device: &Device) -> anyhow::Result<Evaluation> {
    let config = &prepared.config;
    let test_set = MnistDataset::load(&prepared.data_dir, Split::Test, &config.data)?;
    let (vit, _) = artifact::load(run.path(), device)?;
    let test = evaluate(
        &vit,
        &test_set,
        config.batch_size.max(500),
        Views::Single,
        device,
    );
    charts::confusion_matrix(&test.confusion, &run.path().join(charts::CONFUSION_CHART))?;
    crate::mistakes::draw(
        &test_set,
        &test.mistakes,
        &run.path().join(crate::mistakes::MISTAKES_CHART),
    )?;
    Ok(test)
}
