//! Every compiled-in backend computes the same network: the PyTorch-made fixture weights give
//! the same logits on each (and PyTorch's own, from the fixture's probe), and one Adam step from
//! the same state gives the same loss. The test build holds every backend (`cargo xtask test`);
//! a plain `cargo test` checks flex against ndarray. Both fixtures are checked: the plain
//! network and one with a convolutional stem.

use std::path::Path;

use burn::module::{ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use vit_model::Vit;
use vit_model::artifact::{self, CONFIG_FILE, PROBE_FILE, SAFETENSORS_FILE};
use vit_model::interchange::{PROBE_TOLERANCE, Probe, import_safetensors};
use vit_trainer::parallel;

/// Logits may differ this much between backends (float32, different kernels and summation
/// orders); the same bound as between PyTorch and Burn.
const LOGIT_TOLERANCE: f32 = PROBE_TOLERANCE;
/// Losses before and after one optimiser step may differ this much between backends.
const LOSS_TOLERANCE: f32 = 1e-4;

const FIXTURES: [&str; 2] = ["torch-small", "torch-small-stem"];

fn fixture(name: &str, file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures")
        .join(name)
        .join(file)
}

/// Every backend this test binary was built with, by name.
fn backends() -> Vec<(&'static str, Device)> {
    vit_trainer::backend::compiled_devices()
}

fn fixture_model(name: &str, device: &Device) -> Vit {
    let config = artifact::load_config(&fixture(name, CONFIG_FILE)).unwrap();
    import_safetensors(&fixture(name, SAFETENSORS_FILE), &config, device).unwrap()
}

fn floats<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn every_backend_gives_the_same_logits() {
    for fixture_name in FIXTURES {
        let reference = Probe::load(&fixture(fixture_name, PROBE_FILE), &Device::flex()).unwrap();
        let images = floats(reference.images.clone());
        let shape = reference.images.dims();
        let expected = floats(reference.logits.clone());
        for (name, device) in backends() {
            let model = fixture_model(fixture_name, &device);
            let input = Tensor::from_data(TensorData::new(images.clone(), shape), &device);
            let logits = floats(model.forward(input));
            let diff = max_abs_diff(&logits, &expected);
            println!("{fixture_name} on {name}: max abs diff from PyTorch's logits {diff:.2e}");
            assert!(
                diff <= LOGIT_TOLERANCE,
                "{fixture_name} on {name}: logits differ by {diff:e}"
            );
        }
    }
}

/// The cross-entropy loss before and after one Adam step (lr 3e-3) on the probe's images,
/// labelled 0, 1, 2, …
fn losses_around_one_step(fixture_name: &str, device: &Device) -> [f32; 2] {
    let device = device.clone().autodiff();
    let model = fixture_model(fixture_name, &device);
    let probe = Probe::load(&fixture(fixture_name, PROBE_FILE), &device).unwrap();
    let batch = probe.images.dims()[0];
    let labels: Vec<i64> = (0..batch as i64).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &device);
    let loss_of = |model: &Vit| {
        burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&device)
            .forward(model.forward(probe.images.clone()), targets.clone())
    };

    let loss = loss_of(&model);
    let before = floats(loss.clone())[0];
    let mut optimiser = AdamConfig::new().with_epsilon(1e-8).init();
    let gradients = GradientsParams::from_grads(loss.backward(), &model);
    let model = optimiser.step(3e-3, model, gradients);
    let after = floats(loss_of(&model))[0];
    [before, after]
}

#[test]
fn one_optimiser_step_gives_the_same_loss_everywhere() {
    for fixture_name in FIXTURES {
        let reference = losses_around_one_step(fixture_name, &Device::flex());
        assert!(
            reference[1] < reference[0],
            "{fixture_name}: a step lowers the loss: {reference:?}"
        );
        for (name, device) in backends().into_iter().filter(|(name, _)| *name != "flex") {
            let losses = losses_around_one_step(fixture_name, &device);
            println!("{fixture_name} on {name}: loss {losses:?}, flex {reference:?}");
            let diff = max_abs_diff(&losses, &reference);
            assert!(
                diff <= LOSS_TOLERANCE,
                "{fixture_name} on {name}: losses differ by {diff:e}"
            );
        }
    }
}

/// Gradients of one batch, whole or in slices, may differ this much relative to the largest
/// value (at least 1): float32, summed in other orders.
const GRADIENT_TOLERANCE: f32 = 1e-5;

/// Deterministic values in [-2, 2] that vary along every dimension.
fn wavy<const D: usize>(shape: [usize; D], phase: f32, device: &Device) -> Tensor<D> {
    let count = shape.iter().product::<usize>();
    let values: Vec<f32> = (0..count)
        .map(|i| 2.0 * (i as f32 * 0.37 + phase).sin() * (i as f32 * 0.011).cos())
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn assert_close(what: &str, got: &[Vec<f32>], expected: &[Vec<f32>]) {
    for (index, (got, expected)) in got.iter().zip(expected).enumerate() {
        let diff = max_abs_diff(got, expected);
        let scale = expected
            .iter()
            .fold(1.0f32, |max, value| max.max(value.abs()));
        assert!(
            diff <= GRADIENT_TOLERANCE * scale,
            "{what}, result {index}: differs by {diff:e} at values up to {scale}"
        );
    }
}

/// Every float parameter's gradient in `gradients`, in the module's order.
struct GradientValues<'a> {
    gradients: &'a GradientsParams,
    values: Vec<Vec<f32>>,
}

impl ModuleVisitor for GradientValues<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let gradient = self
            .gradients
            .get::<D>(param.id)
            .expect("every parameter has a gradient");
        self.values.push(floats(gradient));
    }
}

/// The training step's slices on threads give the whole batch's gradients on every backend,
/// with the slices even or not, and the trainer slices its batches where that pays (flex and
/// ndarray, on a machine with more than one core) and nowhere else.
#[test]
#[allow(deprecated)] // Device::libtorch: tch is deprecated upstream; this project still supports it.
fn sliced_training_steps_give_the_whole_batchs_gradients_on_every_backend() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(parallel::step_slices(&Device::flex(), 100), cores.min(6));
    assert_eq!(
        parallel::step_slices(&Device::ndarray().autodiff(), 100),
        cores.min(6)
    );
    assert_eq!(
        parallel::step_slices(&Device::flex(), 8),
        1,
        "too small to slice"
    );
    #[cfg(feature = "tch")]
    assert_eq!(parallel::step_slices(&Device::libtorch(), 100), 1);
    let batch = 7;
    for (name, device) in backends() {
        let device = device.autodiff();
        let model = fixture_model("torch-small-stem", &device);
        let images = wavy([batch, 1, 28, 28], 0.0, &device);
        let labels: Vec<i64> = (0..batch as i64).map(|i| (3 * i) % 10).collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &device);
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let gradients = |slices| {
            let (gradients, _, sizes) =
                parallel::sliced_gradients(&model, batch, slices, |model, range| {
                    let logits = model.forward(images.clone().slice(range.clone()));
                    let loss = loss_fn.forward(logits, targets.clone().slice(range.clone()));
                    (loss, range.len())
                });
            assert_eq!(sizes.len(), slices, "{name}: one result per slice");
            assert_eq!(sizes.iter().sum::<usize>(), batch);
            let mut visitor = GradientValues {
                gradients: &gradients,
                values: Vec::new(),
            };
            model.visit(&mut visitor);
            visitor.values
        };
        let whole = gradients(1);
        for slices in [2, 3] {
            assert_close(
                &format!("{name}, {slices} slices (results: each parameter's gradient)"),
                &gradients(slices),
                &whole,
            );
        }
        println!("{name}: sliced training steps agree with the whole batch");
    }
}
