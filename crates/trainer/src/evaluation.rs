//! Accuracy, loss, per-class accuracy and the confusion matrix of a model on a dataset.

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};
use vit_data::{MnistBatcher, MnistDataset};
use vit_model::{Views, Vit};

const CLASSES: usize = 10;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub images: usize,
    /// Percentage of images whose predicted class is the label.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Accuracy (%) of each digit 0-9.
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[label][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
    /// The images the model got wrong, in dataset order (drawn into `mistakes.png`, not kept
    /// in reports).
    #[serde(skip)]
    pub mistakes: Vec<Mistake>,
}

/// An image the model classified wrongly, and how sure it was.
#[derive(Clone, Debug, PartialEq)]
pub struct Mistake {
    /// Index in the evaluated dataset.
    pub index: usize,
    pub label: usize,
    pub predicted: usize,
    /// The probability the model gave its prediction.
    pub probability: f32,
}

/// Runs `model` over every image of `dataset` in batches of `batch_size`, each prediction
/// averaged over `views` of the image.
pub fn evaluate(
    model: &Vit,
    dataset: &MnistDataset,
    batch_size: usize,
    views: Views,
    device: &Device,
) -> Evaluation {
    let mut confusion = vec![vec![0u64; CLASSES]; CLASSES];
    let mut mistakes = Vec::new();
    let mut loss_sum = 0.0;
    let indices: Vec<usize> = (0..dataset.len()).collect();
    for chunk in indices.chunks(batch_size) {
        let items = chunk
            .iter()
            .map(|&i| dataset.get(i).expect("in-memory dataset"))
            .collect();
        let batch = MnistBatcher.batch(items, device);
        let log_probabilities = match views {
            // Straight from the logits, so the loss is the training loss exactly; in slices
            // side by side on the CPU backends that run most operations on one thread.
            Views::Single => log_softmax(model.forward_in_slices(batch.images), 1),
            Views::Shifted => model
                .predict_views(batch.images, views)
                .clamp_min(f32::MIN_POSITIVE)
                .log(),
        };
        let targets = batch.targets.clone().reshape([chunk.len(), 1]);
        let loss = -log_probabilities.clone().gather(1, targets).sum();
        loss_sum += f64::from(loss.into_scalar::<f32>());
        let confidence = floats(log_probabilities.clone().max_dim(1).exp());
        let predicted = log_probabilities
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .expect("int data");
        let labels = batch
            .targets
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .expect("int data");
        let answers = chunk.iter().zip(labels).zip(predicted).zip(confidence);
        for (((&index, label), guess), probability) in answers {
            let (label, predicted) = (label as usize, guess as usize);
            confusion[label][predicted] += 1;
            if label != predicted {
                mistakes.push(Mistake {
                    index,
                    label,
                    predicted,
                    probability,
                });
            }
        }
    }
    summarise(confusion, loss_sum, mistakes)
}

fn floats(tensor: Tensor<2>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("float data")
}

fn summarise(confusion: Vec<Vec<u64>>, loss_sum: f64, mistakes: Vec<Mistake>) -> Evaluation {
    let images: u64 = confusion.iter().flatten().sum();
    let correct: u64 = (0..CLASSES).map(|c| confusion[c][c]).sum();
    let per_class_accuracy = (0..CLASSES)
        .map(|c| {
            let total: u64 = confusion[c].iter().sum();
            if total == 0 {
                0.0
            } else {
                100.0 * confusion[c][c] as f64 / total as f64
            }
        })
        .collect();
    Evaluation {
        images: images as usize,
        accuracy: 100.0 * correct as f64 / images.max(1) as f64,
        loss: loss_sum / images.max(1) as f64,
        per_class_accuracy,
        confusion,
        mistakes,
    }
}

impl std::fmt::Display for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} images: accuracy {:.2} %, loss {:.4}",
            self.images, self.accuracy, self.loss
        )?;
        writeln!(
            f,
            "per class (%): {}",
            self.per_class_accuracy
                .iter()
                .enumerate()
                .map(|(c, a)| format!("{c}:{a:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        )?;
        writeln!(f, "confusion (rows: label, columns: predicted):")?;
        for (label, row) in self.confusion.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|n| format!("{n:>5}")).collect();
            writeln!(f, "  {label} {}", cells.join(""))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_per_class_and_overall() {
        let mut confusion = vec![vec![0; CLASSES]; CLASSES];
        confusion[0][0] = 3;
        confusion[0][6] = 1;
        confusion[1][1] = 4;
        let evaluation = summarise(confusion, 1.6, Vec::new());
        assert_eq!(evaluation.images, 8);
        assert_eq!(evaluation.accuracy, 87.5);
        assert_eq!(evaluation.per_class_accuracy[0], 75.0);
        assert_eq!(evaluation.per_class_accuracy[1], 100.0);
        assert!((evaluation.loss - 0.2).abs() < 1e-12);
    }
}
