//! Everything a run reads before it writes anything: the config, the data and where it came
//! from.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::data::dataset::Dataset;
use serde::{Deserialize, Serialize};
use vit_data::{MnistDataset, Split};

use crate::config::TrainingConfig;

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
    pub(super) fn agrees_with(&self, other: &Self) -> bool {
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
    pub(super) config: TrainingConfig,
    pub(super) data_dir: PathBuf,
    pub(super) testing: TestSet,
    pub(super) source: DataSource,
    pub(super) train_set: MnistDataset,
    pub(super) valid_set: MnistDataset,
    pub(super) started: Instant,
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
