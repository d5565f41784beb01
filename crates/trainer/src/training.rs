//! `train`: the tutorial's recipe on burn-train's Learner, then the saved model and its report.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::Dataset;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use serde::{Deserialize, Serialize};
use vit_data::augment::AugmentedDataset;
use vit_data::{MnistBatch, MnistBatcher, MnistDataset, MnistItem, Split};
use vit_model::{Vit, artifact};

use crate::config::TrainingConfig;
use crate::evaluation::{Evaluation, evaluate};
use crate::renderer::{LineRenderer, minutes_seconds};
use crate::run_dir::{REPORT_FILE, RunDir};

/// The ViT with a classification loss, as burn-train's Learner wants it.
#[derive(Module, Debug)]
pub struct Classifier {
    pub vit: Vit,
}

impl Classifier {
    fn classify(&self, batch: MnistBatch) -> ClassificationOutput {
        let logits = self.vit.forward(batch.images);
        // Cross-entropy on logits is the tutorial's log-softmax followed by NLL.
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}

impl TrainStep for Classifier {
    type Input = MnistBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: MnistBatch) -> TrainOutput<ClassificationOutput> {
        let output = self.classify(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
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
    pub epochs: usize,
    pub train_images: usize,
    pub valid_images: usize,
    /// Seconds from the start of training to the saved report.
    pub wall_seconds: f64,
    /// Seconds inside the Learner: training and validation passes of every epoch.
    pub learner_seconds: f64,
    /// Training images per second of Learner time (validation passes included).
    pub train_images_per_second: f64,
    pub test: Evaluation,
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

/// Trains `config` on the MNIST files in `data_dir`, writing everything into `run`.
pub fn train(
    config: &TrainingConfig,
    data_dir: &Path,
    run: &RunDir,
    device: &Device,
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    run.save_config(config)?;
    let train_set = MnistDataset::load(data_dir, Split::Train, &config.data)?;
    let valid_set = MnistDataset::load(data_dir, Split::Valid, &config.data)?;
    let (train_images, valid_images) = (train_set.len(), valid_set.len());

    device.seed(config.seed);
    let model = Classifier {
        vit: config.model.init(&device.clone().autodiff())?,
    };
    let parameters = model.num_params();
    println!(
        "training {parameters} parameters on {device:?}: {train_images} training and {valid_images} validation \
         images, {} epochs, run directory {}",
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
        .build(valid_set);
    let steps = config.epochs * train_images.div_ceil(config.batch_size);
    let learner = Learner::new(model, config.optimizer().init(), config.scheduler(steps)?);

    let mut training = SupervisedTraining::new(run.path(), train_loader, valid_loader)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .metric_train_numeric(LearningRateMetric::new())
        .with_default_checkpointers()
        .num_epochs(config.epochs)
        .summary();
    if !std::io::stdout().is_terminal() {
        training = training.renderer(Box::new(LineRenderer::default()));
    }
    let learner_start = Instant::now();
    let result = training.launch(learner);
    let learner_seconds = learner_start.elapsed().as_secs_f64();

    artifact::save(&result.model.vit, &config.model, run.path())?;
    drop(result);

    // The test set is touched once, here, by the model just saved.
    let test_set = MnistDataset::load(data_dir, Split::Test, &config.data)?;
    let (vit, _) = artifact::load(run.path(), device)?;
    let test = evaluate(&vit, &test_set, config.batch_size.max(500), device);
    let report = RunReport {
        backend: format!("{device:?}"),
        parameters,
        epochs: config.epochs,
        train_images,
        valid_images,
        wall_seconds: started.elapsed().as_secs_f64(),
        learner_seconds,
        train_images_per_second: (train_images * config.epochs) as f64 / learner_seconds,
        test,
    };
    run.write_json(REPORT_FILE, &report)
        .context("cannot write the report")?;
    println!("test {}", report.test);
    println!(
        "wall time {} ({:.0} training images/s); model and report in {}",
        minutes_seconds(report.wall_seconds),
        report.train_images_per_second,
        run.path().display()
    );
    Ok(report)
}
