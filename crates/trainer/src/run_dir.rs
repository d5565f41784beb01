//! The layout of a run directory, `artifacts/<run>/`. The model's own files are named by
//! [`vit_model::artifact`]; this module names what the trainer adds around them. Burn's learner
//! writes `experiment.log`, `train/` and `valid/` (per-epoch metric logs) and `checkpoint/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::prelude::Device;
use serde::Serialize;
use serde::de::DeserializeOwned;
use vit_model::{Vit, VitConfig, artifact};

use crate::config::{TrainingConfig, check_fits_mnist};

/// The full training config, written before training starts.
pub const TRAINING_CONFIG_FILE: &str = "training-config.json";
/// The MNIST directory and the content SHA-256 of its files, written before training starts.
pub const DATA_SOURCE_FILE: &str = "data-source.json";
/// What the Learner did (epochs, time), written when it has trained the last epoch.
pub const FIT_FILE: &str = "fit.json";
/// The final evaluation, written last: a trained run is finished when it has its report.
pub const REPORT_FILE: &str = "report.json";

/// A run directory that exists on disk.
#[derive(Clone, Debug)]
pub struct RunDir {
    path: PathBuf,
}

/// Whether `path` holds a model to use: a trained run with its report (written last), or an
/// imported model (a model and no training config).
fn is_finished(path: &Path) -> bool {
    path.join(REPORT_FILE).is_file()
        || (path.join(artifact::RECORD_FILE).is_file() && !path.join(TRAINING_CONFIG_FILE).exists())
}

impl RunDir {
    /// Creates `artifacts/<name>/`, refusing to reuse a directory that already holds a run.
    pub fn create(artifacts: &Path, name: &str) -> anyhow::Result<Self> {
        let path = artifacts.join(name);
        if is_finished(&path) {
            bail!(
                "{} already holds a finished run; choose another name with --run",
                path.display()
            );
        }
        if path.join(TRAINING_CONFIG_FILE).exists() {
            bail!(
                "{} already holds an unfinished run; continue it with --resume {0}, or choose \
                 another name with --run",
                path.display()
            );
        }
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }

    /// Opens an unfinished run to continue it: one with a saved config and no report yet.
    pub fn resume(path: &Path) -> anyhow::Result<Self> {
        if is_finished(path) {
            bail!(
                "{} is a finished run: there is nothing to resume",
                path.display()
            );
        }
        if !path.join(TRAINING_CONFIG_FILE).is_file() {
            bail!(
                "{} is not a run directory: it has no {TRAINING_CONFIG_FILE}",
                path.display()
            );
        }
        Ok(Self { path: path.into() })
    }

    pub fn training_config_path(&self) -> PathBuf {
        self.path.join(TRAINING_CONFIG_FILE)
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        self.path.join("checkpoint")
    }

    /// The last epoch whose model, optimiser and scheduler checkpoints are all on disk; 0 if
    /// none is. A kill between the three files leaves that epoch incomplete, and it is skipped.
    pub fn last_checkpoint(&self) -> usize {
        let dir = self.checkpoint_dir();
        let complete = |epoch: &usize| {
            ["model", "optim", "scheduler"]
                .iter()
                .all(|kind| dir.join(format!("{kind}-{epoch}.bpk")).is_file())
        };
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.strip_prefix("model-")?
                    .strip_suffix(".bpk")?
                    .parse::<usize>()
                    .ok()
            })
            .filter(complete)
            .max()
            .unwrap_or(0)
    }

    /// Deletes the metric logs of the epochs after `epoch`: a resumed run trains them again,
    /// and a killed epoch's partial logs must not mix with the new ones.
    pub fn forget_epochs_after(&self, epoch: usize) -> anyhow::Result<()> {
        for split in ["train", "valid"] {
            let Ok(entries) = std::fs::read_dir(self.path.join(split)) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let name = entry.file_name();
                let later = name
                    .to_str()
                    .and_then(|name| name.strip_prefix("epoch-")?.parse::<usize>().ok())
                    .is_some_and(|n| n > epoch);
                if later {
                    std::fs::remove_dir_all(entry.path())
                        .with_context(|| format!("cannot remove {}", entry.path().display()))?;
                }
            }
        }
        Ok(())
    }

    /// Opens a finished run: a trained one with its report, or an imported model.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if is_finished(path) {
            return Ok(Self { path: path.into() });
        }
        if path.join(TRAINING_CONFIG_FILE).is_file() {
            bail!(
                "{} is an unfinished run (no {REPORT_FILE}); `train --resume {0}` finishes it",
                path.display()
            );
        }
        bail!(
            "{} is not a finished run: it has no {}",
            path.display(),
            artifact::RECORD_FILE
        )
    }

    /// The most recently finished run under `artifacts`.
    pub fn latest(artifacts: &Path) -> anyhow::Result<Self> {
        let entries = std::fs::read_dir(artifacts)
            .with_context(|| format!("no runs: cannot read {}", artifacts.display()))?;
        let newest = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| is_finished(path))
            .filter_map(|path| {
                let record = path.join(artifact::RECORD_FILE);
                Some((record.metadata().ok()?.modified().ok()?, path))
            })
            .max();
        match newest {
            Some((_, path)) => Self::open(&path),
            None => bail!(
                "no finished run in {}; train one first, or pass --run-dir",
                artifacts.display()
            ),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved model, on `device`, checked to be one for MNIST.
    pub fn load_mnist_model(&self, device: &Device) -> anyhow::Result<(Vit, VitConfig)> {
        let (model, config) = artifact::load(&self.path, device)?;
        check_fits_mnist(&config)
            .with_context(|| format!("{}: not a model for MNIST", self.path.display()))?;
        Ok((model, config))
    }

    pub fn save_config(&self, config: &TrainingConfig) -> anyhow::Result<()> {
        self.write_json(TRAINING_CONFIG_FILE, config)
    }

    pub fn write_json(&self, name: &str, value: &impl Serialize) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(value)?;
        let path = self.path.join(name);
        vit_model::files::write_atomically(&path, |file| file.write_all(json.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The JSON file `name` of this run, or `None` if it is not there.
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> anyhow::Result<Option<T>> {
        let path = self.path.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not what this trainer wrote", path.display()))?;
        Ok(Some(value))
    }
}

/// A run name from the config's file name and the current UTC time, e.g.
/// `vit-mnist-tutorial-20261128-101500`.
pub fn default_run_name(config_path: &Path) -> String {
    let stem = config_path
        .file_stem()
        .map_or("run".into(), |s| s.to_string_lossy());
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let (year, month, day) = civil_date(seconds / 86_400);
    let time = seconds % 86_400;
    format!(
        "{stem}-{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_date_knows_leap_years() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_785), (2026, 11, 28));
    }

    #[test]
    fn a_run_directory_is_never_reused() {
        let artifacts = tempfile::tempdir().unwrap();
        let run = RunDir::create(artifacts.path(), "a").unwrap();
        std::fs::write(run.path().join(TRAINING_CONFIG_FILE), "{}").unwrap();
        let error = RunDir::create(artifacts.path(), "a")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("unfinished run") && error.contains("--resume"),
            "{error}"
        );
        std::fs::write(run.path().join(artifact::RECORD_FILE), "").unwrap();
        let error = RunDir::open(run.path()).unwrap_err().to_string();
        assert!(
            error.contains("unfinished run") && error.contains(REPORT_FILE),
            "a model without its report is not finished: {error}"
        );
        std::fs::write(run.path().join(REPORT_FILE), "{}").unwrap();
        let error = RunDir::create(artifacts.path(), "a")
            .unwrap_err()
            .to_string();
        assert!(error.contains("finished run"), "{error}");
        assert!(
            RunDir::resume(run.path())
                .unwrap_err()
                .to_string()
                .contains("nothing to resume")
        );
    }

    #[test]
    fn the_last_checkpoint_is_the_last_complete_one() {
        let artifacts = tempfile::tempdir().unwrap();
        let run = RunDir::create(artifacts.path(), "a").unwrap();
        assert_eq!(run.last_checkpoint(), 0);
        std::fs::create_dir_all(run.checkpoint_dir()).unwrap();
        for file in [
            "model-2.bpk",
            "optim-2.bpk",
            "scheduler-2.bpk",
            "model-3.bpk",
            "optim-3.bpk",
        ] {
            std::fs::write(run.checkpoint_dir().join(file), "").unwrap();
        }
        assert_eq!(run.last_checkpoint(), 2, "epoch 3 has no scheduler state");
    }

    #[test]
    fn opening_an_unfinished_run_says_what_is_missing() {
        let artifacts = tempfile::tempdir().unwrap();
        let error = RunDir::open(artifacts.path()).unwrap_err().to_string();
        assert!(error.contains(artifact::RECORD_FILE), "{error}");
        let error = RunDir::latest(artifacts.path()).unwrap_err().to_string();
        assert!(error.contains("no finished run"), "{error}");
    }
}
