//! The Burn network computes what the PyTorch reference computes: weights and a probe written by
//! `tools/torch_reference.py fixture` (committed in tests/fixtures/torch-small), imported here on
//! every CPU backend, give the probe's logits within `PROBE_TOLERANCE`. A second fixture,
//! `torch-small-stem` (`fixture --stem 4,8`), checks the convolutional stem the same way.

use std::path::Path;

use burn::prelude::*;
use vit_model::artifact::{self, CONFIG_FILE, PROBE_FILE, SAFETENSORS_FILE};
use vit_model::interchange::{PROBE_TOLERANCE, Probe, import_safetensors};

const FIXTURES: [&str; 2] = ["torch-small", "torch-small-stem"];

fn max_diff_on(fixture: &str, device: &Device) -> f32 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let config = artifact::load_config(&dir.join(CONFIG_FILE)).unwrap();
    let model = import_safetensors(&dir.join(SAFETENSORS_FILE), &config, device).unwrap();
    let probe = Probe::load(&dir.join(PROBE_FILE), device).unwrap();
    probe.max_abs_diff(&model).unwrap()
}

fn assert_reproduced_on(device: &Device) {
    for fixture in FIXTURES {
        let diff = max_diff_on(fixture, device);
        assert!(diff <= PROBE_TOLERANCE, "{fixture}: max abs diff {diff:e}");
    }
}

#[test]
fn pytorch_logits_are_reproduced_on_flex() {
    assert_reproduced_on(&Device::flex());
}

#[test]
fn pytorch_logits_are_reproduced_on_ndarray() {
    #[allow(deprecated)]
    let device = Device::ndarray();
    assert_reproduced_on(&device);
}
