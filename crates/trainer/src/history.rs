//! Per-epoch metrics of a run, read back from the logs burn-train writes while it trains
//! (`train|valid/epoch-N/<Metric>.log`, one `value,count` line per batch).

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: Option<f64>,
    pub train_accuracy: Option<f64>,
    pub valid_loss: Option<f64>,
    pub valid_accuracy: Option<f64>,
}

/// Every epoch that left logs, in order.
pub fn read(run_dir: &Path) -> Vec<EpochMetrics> {
    (1..)
        .map(|epoch| EpochMetrics {
            epoch,
            train_loss: epoch_mean(&run_dir.join(format!("train/epoch-{epoch}/Loss.log"))),
            train_accuracy: epoch_mean(&run_dir.join(format!("train/epoch-{epoch}/Accuracy.log"))),
            valid_loss: epoch_mean(&run_dir.join(format!("valid/epoch-{epoch}/Loss.log"))),
            valid_accuracy: epoch_mean(&run_dir.join(format!("valid/epoch-{epoch}/Accuracy.log"))),
        })
        .take_while(|m| m.train_loss.is_some())
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

/// The item-weighted mean of a metric log, or `None` if it is missing or empty.
fn epoch_mean(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let (sum, count) = text
        .lines()
        .filter_map(|line| {
            let (value, count) = line.split_once(',')?;
            Some((
                value.trim().parse::<f64>().ok()?,
                count.trim().parse::<f64>().ok()?,
            ))
        })
        .fold((0.0, 0.0), |(sum, total), (value, count)| {
            (sum + value * count, total + count)
        });
    (count > 0.0).then(|| sum / count)
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
        log(dir.path(), "train", 1, "Loss", "2.0,100\n1.0,50\n");
        log(dir.path(), "valid", 1, "Accuracy", "90,100\n");
        log(dir.path(), "train", 2, "Loss", "0.5,100\n");
        log(dir.path(), "valid", 2, "Accuracy", "95,100\n");
        log(dir.path(), "train", 3, "Loss", "0.4,100\n");
        log(dir.path(), "valid", 3, "Accuracy", "94,100\n");

        let history = read(dir.path());

        assert_eq!(history.len(), 3);
        assert!((history[0].train_loss.unwrap() - 5.0 / 3.0).abs() < 1e-12);
        assert_eq!(history[0].valid_loss, None);
        assert_eq!(best_valid_epoch(&history), Some(2));
    }
}
