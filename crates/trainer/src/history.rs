//! Per-epoch metrics of a run, read back from the logs burn-train writes while it trains
//! (`train|valid/epoch-N/<Metric>.log`, one `value,count` line per batch). Every epoch the
//! Learner checkpointed must have all four figures: if burn-train ever writes them elsewhere,
//! this fails with the file it looked for instead of choosing an epoch from nothing.

use std::path::Path;

use anyhow::{Context, bail};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: Option<f64>,
    pub train_accuracy: Option<f64>,
    pub valid_loss: Option<f64>,
    pub valid_accuracy: Option<f64>,
}

/// The figures of epochs `1..=epochs`, in order, with validation figures when `validated`;
/// an error naming the first log that is missing, empty or unreadable.
pub fn read(run_dir: &Path, epochs: usize, validated: bool) -> anyhow::Result<Vec<EpochMetrics>> {
    (1..=epochs)
        .map(|epoch| {
            let mean = |split: &str, metric: &str| -> anyhow::Result<Option<f64>> {
                if split == "valid" && !validated {
                    return Ok(None);
                }
                let path = run_dir.join(format!("{split}/epoch-{epoch}/{metric}.log"));
                let value = epoch_mean(&path).with_context(|| {
                    format!(
                        "cannot read epoch {epoch}'s {split} {metric} from burn-train's log {}",
                        path.display()
                    )
                })?;
                Ok(Some(value))
            };
            Ok(EpochMetrics {
                epoch,
                train_loss: mean("train", "Loss")?,
                train_accuracy: mean("train", "Accuracy")?,
                valid_loss: mean("valid", "Loss")?,
                valid_accuracy: mean("valid", "Accuracy")?,
            })
        })
        .collect()
}

/// The epoch with the highest validation accuracy (the earliest, on a tie).
pub fn best_valid_epoch(history: &[EpochMetrics]) -> Option<usize> {
    history
        .iter()
        .filter_map(|m| Some((m.epoch, m.valid_accuracy?)))
        .fold(
            None,
            |best: Option<(usize, f64)>, (epoch, accuracy)| match best {
                Some((_, top)) if top >= accuracy => best,
                _ => Some((epoch, accuracy)),
            },
        )
        .map(|(epoch, _)| epoch)
}

/// The item-weighted mean of a metric log's `value,count` lines (burn-train ends the log with
/// a `value,final` line, the epoch's running figure, which the mean leaves out).
fn epoch_mean(path: &Path) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(path)?;
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let parsed = line.split_once(',').and_then(|(value, weight)| {
            let value = value.trim().parse::<f64>().ok()?;
            match weight.trim() {
                "final" => Some((value, 0.0)),
                weight => Some((value, weight.parse::<f64>().ok()?)),
            }
        });
        let Some((value, weight)) = parsed else {
            bail!("not a `value,count` line: {line:?}");
        };
        sum += value * weight;
        count += weight;
    }
    if count <= 0.0 {
        bail!("no values");
    }
    Ok(sum / count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(dir: &Path, split: &str, epoch: usize, metric: &str, lines: &str) {
        let path = dir.join(format!("{split}/epoch-{epoch}"));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join(format!("{metric}.log")), lines).unwrap();
    }

    #[test]
    fn reads_item_weighted_epoch_means_and_picks_the_best_epoch() {
        let dir = tempfile::tempdir().unwrap();
        for (epoch, accuracy) in [(1, "90,100\n"), (2, "95,100\n"), (3, "94,100\n")] {
            log(
                dir.path(),
                "train",
                epoch,
                "Loss",
                "2.0,100\n1.0,50\n1.7,final\n",
            );
            log(dir.path(), "train", epoch, "Accuracy", "50,150\n");
            log(dir.path(), "valid", epoch, "Loss", "0.5,100\n");
            log(dir.path(), "valid", epoch, "Accuracy", accuracy);
        }

        let history = read(dir.path(), 3, true).unwrap();

        assert_eq!(history.len(), 3);
        assert!((history[0].train_loss.unwrap() - 5.0 / 3.0).abs() < 1e-12);
        assert_eq!(best_valid_epoch(&history), Some(2));
    }

    #[test]
    fn a_missing_or_garbled_log_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        for metric in ["Loss", "Accuracy"] {
            log(dir.path(), "train", 1, metric, "1,10\n");
            log(dir.path(), "valid", 1, metric, "1,10\n");
        }
        let error = format!("{:#}", read(dir.path(), 2, true).unwrap_err());
        assert_eq!(read(dir.path(), 1, false).unwrap()[0].valid_loss, None);
        assert!(
            error.contains("epoch-2") && error.contains("Loss.log"),
            "{error}"
        );

        log(dir.path(), "valid", 1, "Accuracy", "ninety\n");
        let error = format!("{:#}", read(dir.path(), 1, true).unwrap_err());
        assert!(
            error.contains("valid") && error.contains("ninety"),
            "{error}"
        );
    }
}
