//! What a finished run reports in `report.json`, the mark of a finished run.

use serde::{Deserialize, Serialize};

use super::select::{AverageCheck, ViewsCheck};
use crate::evaluation::Evaluation;
use crate::history::EpochMetrics;

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
