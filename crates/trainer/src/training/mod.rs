//! `train`: burn-train's Learner on the configured recipe, then the best checkpoint exported,
//! evaluated once on the test set, and reported with charts. The stages read top to bottom in
//! [`train`]: prepare (data, before anything is written), fit (the Learner), select (best
//! epoch or averaged weights), export, test, report. Each stage after fitting is computed again
//! by a resumed run, and the report, the mark of a finished run, is written last, so a run
//! stopped at any moment continues with `train --resume` to the same files.

mod classifier;
mod fit;
mod loader;
mod prepare;
mod report;
mod select;
mod summary;
mod transfer;

use anyhow::{Context, bail};
use burn::data::dataset::Dataset;
use burn::prelude::*;
use vit_data::{MnistDataset, Split};
use vit_model::{Views, artifact};

use crate::charts;
use crate::devices::Devices;
use crate::evaluation::{Evaluation, evaluate};
use crate::run_dir::{DATA_SOURCE_FILE, REPORT_FILE, RunDir};
use crate::test_hooks;

use prepare::DataSource;
pub use prepare::{Prepared, TestSet, prepare};
pub use report::RunReport;

/// Starts a new run of `prepared` in the fresh directory `run`.
pub fn start(prepared: Prepared, run: &RunDir, devices: &Devices) -> anyhow::Result<RunReport> {
    run.save_config(&prepared.config)?;
    run.write_json(DATA_SOURCE_FILE, &prepared.source)?;
    train(prepared, run, devices)
}

/// Continues the unfinished `run` with the data of `prepared`, which must be what it started
/// with.
pub fn resume(prepared: Prepared, run: &RunDir, devices: &Devices) -> anyhow::Result<RunReport> {
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
    train(prepared, run, devices)
}

fn describe_files(files: &[(String, String)]) -> String {
    files
        .iter()
        .map(|(name, sha256)| format!("{name} SHA-256 {}…", &sha256[..sha256.len().min(12)]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The stages of a run, from wherever `run` stands. Fitting trains on every device; the
/// stages after it run on the first.
fn train(prepared: Prepared, run: &RunDir, devices: &Devices) -> anyhow::Result<RunReport> {
    let config = &prepared.config;
    let fitted = fit::fit(&prepared, run, devices)?;
    let device = devices.main();
    test_hooks::after_stage("fitted");

    let selected = select::select(config, &fitted.history, &prepared.valid_set, run, device)?;
    artifact::save(&selected.model, &config.model, run.path())?;
    charts::learning_curves(&fitted.history, run.path())?;
    test_hooks::after_stage("exported");

    let valid_views = select::compare_views(&selected.model, config, &prepared.valid_set, device);
    let test = match prepared.testing {
        TestSet::Evaluate => Some(test_once(&prepared, run, device)?),
        TestSet::Untouched => None,
    };
    test_hooks::after_stage("tested");

    let report = RunReport {
        backend: devices.names.join(" + "),
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
