//! Every compiled-in backend computes the same network: the PyTorch-made fixture weights give
//! the same logits on each (and PyTorch's own, from the fixture's probe), and one Adam step from
//! the same state gives the same loss. The test build holds every backend (`cargo xtask test`);
//! a plain `cargo test` checks flex against ndarray. Both fixtures are checked: the plain
//! network and one with a convolutional stem.

use std::path::Path;

use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use vit_model::Vit;
use vit_model::artifact::{self, CONFIG_FILE, PROBE_FILE, SAFETENSORS_FILE};
use vit_model::portable::{PROBE_TOLERANCE, Probe, import_safetensors};

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
#[allow(deprecated)]
fn backends() -> Vec<(&'static str, Device)> {
    let mut devices = vec![("flex", Device::flex()), ("ndarray", Device::ndarray())];
    #[cfg(feature = "wgpu")]
    devices.push(("wgpu", Device::wgpu(Default::default())));
    #[cfg(feature = "tch")]
    devices.push(("tch", Device::libtorch()));
    devices
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
        for (name, device) in backends().into_iter().skip(1) {
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
