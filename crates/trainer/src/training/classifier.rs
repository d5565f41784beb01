//! The ViT with its training loss, as burn-train's Learner wants it: a training step (cut into
//! slices run side by side on the host backends, its loss weighted by the device's share of the
//! step on several devices) and a validation step.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use vit_data::MnistBatch;
use vit_model::Vit;

use super::loader::StepBatch;
use crate::guard::DivergenceGuard;
use crate::parallel;

/// The ViT with its training loss, as burn-train's Learner wants it.
#[derive(Module, Debug)]
pub struct Classifier {
    pub vit: Vit,
    #[module(skip)]
    pub(super) label_smoothing: f32,
    #[module(skip)]
    pub(super) guard: DivergenceGuard,
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
    type Input = StepBatch;
    type Output = ClassificationOutput;

    /// The gradients of this device's part of the step: its mean loss times its `share`, so
    /// that the devices' gradients sum to the whole batch's. The loss reported is the part's
    /// own mean.
    fn step(&self, StepBatch { batch, share }: StepBatch) -> TrainOutput<ClassificationOutput> {
        self.guard.before_step();
        let size = batch.targets.dims()[0];
        let slices = parallel::step_slices(&batch.targets.device(), size);
        let weighted = |loss: Tensor<1>| {
            if share == 1.0 {
                loss
            } else {
                loss.mul_scalar(share)
            }
        };
        let (grads, loss, outputs) =
            parallel::sliced_gradients(self, size, slices, |model, range| {
                let output = model.classify(MnistBatch {
                    images: batch.images.clone().slice(range.clone()),
                    targets: batch.targets.clone().slice(range),
                });
                (weighted(output.loss.clone()), output)
            });
        let loss = if share == 1.0 {
            loss
        } else {
            loss.div_scalar(share)
        };
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
