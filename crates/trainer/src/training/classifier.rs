//! The ViT with its training loss, as burn-train's Learner wants it: a training step (cut into
//! slices run side by side on the host backends, its loss weighted by the device's share of the
//! step on several devices) and a validation step. On several devices its parameters and
//! gradients cross between devices in one transfer each way (`transfer`).

use burn::module::{
    Content, Devices, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use vit_data::MnistBatch;
use vit_model::Vit;

use super::loader::StepBatch;
use super::transfer;
use crate::guard::DivergenceGuard;
use crate::parallel;

/// The ViT with its training loss, as burn-train's Learner wants it.
#[derive(Clone, Debug)]
pub struct Classifier {
    pub vit: Vit,
    pub(super) label_smoothing: f32,
    pub(super) guard: DivergenceGuard,
    /// On several devices, the one that sums the gradients (burn-train's main device): the
    /// others send it theirs.
    pub(super) gradients_to: Option<Device>,
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
        let (size, device) = (batch.targets.dims()[0], batch.targets.device());
        let slices = parallel::step_slices(&device, size);
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
        let grads = match &self.gradients_to {
            Some(main) if *main != device => transfer::gradients(grads, self, main),
            _ => grads,
        };
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

/// Written out for its `fork`, which moves the ViT's parameters in one transfer; the rest is
/// what `#[derive(Module)]` writes for one module field and plain fields, so records and
/// parameter paths are the derived ones (`vit.…`).
impl Module for Classifier {
    fn collect_devices(&self, devices: Devices) -> Devices {
        self.vit.collect_devices(devices)
    }

    fn fork(self, device: &Device) -> Self {
        let vit = transfer::fork(self.vit, device);
        Self { vit, ..self }
    }

    fn to_device(self, device: &Device) -> Self {
        let vit = self.vit.to_device(device);
        Self { vit, ..self }
    }

    fn train(self) -> Self {
        let vit = self.vit.train();
        Self { vit, ..self }
    }

    fn valid(&self) -> Self {
        Self {
            vit: self.vit.valid(),
            label_smoothing: self.label_smoothing,
            guard: self.guard.clone(),
            gradients_to: self.gradients_to.clone(),
        }
    }

    fn materialize(self) -> Self {
        let vit = self.vit.materialize();
        Self { vit, ..self }
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        visitor.enter_module("vit", "Struct:Classifier");
        self.vit.visit(visitor);
        visitor.exit_module("vit", "Struct:Classifier");
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        mapper.enter_module("vit", "Struct:Classifier");
        let vit = self.vit.map(mapper);
        mapper.exit_module("vit", "Struct:Classifier");
        Self { vit, ..self }
    }
}

impl ModuleDisplayDefault for Classifier {
    fn content(&self, content: Content) -> Option<Content> {
        content
            .set_top_level_type("Classifier")
            .add("vit", &self.vit)
            .add_debug_attribute("label_smoothing", &self.label_smoothing)
            .optional()
    }

    fn num_params(&self) -> usize {
        Module::num_params(self)
    }
}

impl ModuleDisplay for Classifier {}

impl std::fmt::Display for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", ModuleDisplay::format(self, Default::default()))
    }
}
