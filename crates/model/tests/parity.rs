//! The Burn network computes what the PyTorch reference computes: weights and a probe written by
//! `tools/torch_reference.py fixture` (committed in tests/fixtures/torch-small), imported here on
//! every CPU backend, give the probe's logits within `PROBE_TOLERANCE`.

use std::path::Path;

use burn::prelude::*;
use vit_model::artifact::{self, CONFIG_FILE, PROBE_FILE, SAFETENSORS_FILE};
use vit_model::portable::{PROBE_TOLERANCE, Probe, import_safetensors};

fn fixture() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/torch-small"
    ))
}

fn max_diff_on(device: &Device) -> f32 {
    let config = artifact::load_config(&fixture().join(CONFIG_FILE)).unwrap();
    let model = import_safetensors(&fixture().join(SAFETENSORS_FILE), &config, device).unwrap();
    let probe = Probe::load(&fixture().join(PROBE_FILE), device).unwrap();
    probe.max_abs_diff(&model).unwrap()
}

#[test]
fn pytorch_logits_are_reproduced_on_flex() {
    let diff = max_diff_on(&Device::flex());
    assert!(diff <= PROBE_TOLERANCE, "max abs diff {diff:e}");
}

#[test]
fn pytorch_logits_are_reproduced_on_ndarray() {
    #[allow(deprecated)]
    let device = Device::ndarray();
    let diff = max_diff_on(&device);
    assert!(diff <= PROBE_TOLERANCE, "max abs diff {diff:e}");
}
