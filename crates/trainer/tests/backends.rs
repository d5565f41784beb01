//! Every compiled-in backend computes the same network: the PyTorch-made fixture weights give
//! the same logits on each (and PyTorch's own, from the fixture's probe), and one Adam step from
//! the same state gives the same loss. The test build holds every backend (`cargo xtask test`);
//! a plain `cargo test` checks flex against ndarray.

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

fn fixture(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures/torch-small")
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

fn fixture_model(device: &Device) -> Vit {
    let config = artifact::load_config(&fixture(CONFIG_FILE)).unwrap();
    import_safetensors(&fixture(SAFETENSORS_FILE), &config, device).unwrap()
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
    let reference = Probe::load(&fixture(PROBE_FILE), &Device::flex()).unwrap();
    let images = floats(reference.images.clone());
    let shape = reference.images.dims();
    let expected = floats(reference.logits.clone());
    for (name, device) in backends() {
        let model = fixture_model(&device);
        let input = Tensor::from_data(TensorData::new(images.clone(), shape), &device);
        let logits = floats(model.forward(input));
        let diff = max_abs_diff(&logits, &expected);
        println!("{name}: max abs diff from PyTorch's logits {diff:.2e}");
        assert!(diff <= LOGIT_TOLERANCE, "{name}: logits differ by {diff:e}");
    }
}

/// The cross-entropy loss before and after one Adam step (lr 3e-3) on the probe's images,
/// labelled 0, 1, 2, …
fn losses_around_one_step(device: &Device) -> [f32; 2] {
    let device = device.clone().autodiff();
    let model = fixture_model(&device);
    let probe = Probe::load(&fixture(PROBE_FILE), &device).unwrap();
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
    let reference = losses_around_one_step(&Device::flex());
    assert!(
        reference[1] < reference[0],
        "a step lowers the loss: {reference:?}"
    );
    for (name, device) in backends().into_iter().skip(1) {
        let losses = losses_around_one_step(&device);
        println!("{name}: loss {losses:?}, flex {reference:?}");
        let diff = max_abs_diff(&losses, &reference);
        assert!(diff <= LOSS_TOLERANCE, "{name}: losses differ by {diff:e}");
    }
}
