//! The files a saved model consists of, spelled once: the trainer saves through [`save`] and
//! inference loads through [`load`], so the two cannot drift apart.
//!
//! A model directory holds [`CONFIG_FILE`] (the [`VitConfig`] as JSON), [`RECORD_FILE`] (the
//! weights, in Burn's burnpack format), [`SAFETENSORS_FILE`] (the same weights in PyTorch's
//! layout, see [`crate::interchange`]) and [`PROBE_FILE`] (inputs with the logits this model gave,
//! for checking another implementation). Each is written to a temporary name and renamed.

use std::fs;
use std::path::Path;

use burn::prelude::*;

pub use crate::files::ArtifactError;
use crate::files::write_bytes;
use crate::interchange::{self, Probe};
use crate::{Vit, VitConfig};

/// The network's configuration, as JSON.
pub const CONFIG_FILE: &str = "model-config.json";
/// The network's weights, as burnpack.
pub const RECORD_FILE: &str = "model.bpk";
/// The network's weights in PyTorch's layout, for other frameworks.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// A few inputs with the logits the saved network computed for them.
pub const PROBE_FILE: &str = "model-probe.safetensors";
/// The network as an ONNX graph, written on request by `vit-trainer export` (crate `vit-onnx`).
pub const ONNX_FILE: &str = "model.onnx";
/// Images in a saved probe.
const PROBE_SIZE: usize = 8;

/// Writes `model` and the `config` that built it into `dir` (created if missing).
pub fn save(model: &Vit, config: &VitConfig, dir: &Path) -> Result<(), ArtifactError> {
    fs::create_dir_all(dir).map_err(|source| ArtifactError::Io {
        path: dir.into(),
        source,
    })?;
    let config_path = dir.join(CONFIG_FILE);
    let json = serde_json::to_string_pretty(config).expect("a VitConfig always serialises");
    write_bytes(&config_path, json.as_bytes())?;

    let record_path = dir.join(RECORD_FILE);
    // Burnpack's writer already writes to a scratch file and renames it into place.
    model
        .clone()
        .save_file(&record_path)
        .map_err(|error| ArtifactError::Io {
            path: record_path.clone(),
            source: std::io::Error::other(format!("{error:?}")),
        })?;

    interchange::export_safetensors(model, &dir.join(SAFETENSORS_FILE))?;
    // Burnpack's writer goes through a temporary file of mode 0600; give the record the
    // permissions of a file written the ordinary way, as the config is.
    let ordinary = fs::metadata(&config_path)
        .map(|metadata| metadata.permissions())
        .map_err(|source| ArtifactError::Io {
            path: config_path.clone(),
            source,
        })?;
    fs::set_permissions(&record_path, ordinary).map_err(|source| ArtifactError::Io {
        path: record_path,
        source,
    })?;
    let side = config.image_size;
    let images = probe_images(
        [PROBE_SIZE, config.channels, side, side],
        &model.devices()[0],
    );
    Probe::record(model, images).save(&dir.join(PROBE_FILE))
}

/// Fixed inputs, about standard normal (sums of four uniforms from a fixed sequence): the same
/// probe whatever the backend's random state, so saving a model twice writes the same files.
fn probe_images(shape: [usize; 4], device: &Device) -> Tensor<4> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| ((0..4).map(|_| uniform()).sum::<f32>() - 2.0) * 3f32.sqrt())
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Rebuilds the network saved in `dir` on `device`, with the config it was saved with.
pub fn load(dir: &Path, device: &Device) -> Result<(Vit, VitConfig), ArtifactError> {
    let config_path = dir.join(CONFIG_FILE);
    let config = load_config(&config_path)?;
    let model = config
        .init(device)
        .map_err(|source| ArtifactError::InvalidConfig {
            path: config_path.clone(),
            source,
        })?;

    let record_path = dir.join(RECORD_FILE);
    if !record_path.is_file() {
        let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        return Err(ArtifactError::Io {
            path: record_path,
            source,
        });
    }
    let model = model
        .try_load_file(&record_path)
        .map_err(|error| ArtifactError::Record {
            path: record_path,
            config: config_path,
            message: record_error_message(error),
        })?;
    Ok((model, config))
}

/// Reads and validates a [`VitConfig`] JSON file.
pub fn load_config(path: &Path) -> Result<VitConfig, ArtifactError> {
    let text = fs::read_to_string(path).map_err(|source| ArtifactError::Io {
        path: path.into(),
        source,
    })?;
    let config: VitConfig =
        serde_json::from_str(&text).map_err(|source| ArtifactError::ConfigJson {
            path: path.into(),
            source,
        })?;
    config
        .validate()
        .map_err(|source| ArtifactError::InvalidConfig {
            path: path.into(),
            source,
        })?;
    Ok(config)
}

fn record_error_message(error: burn::store::RecordError) -> String {
    match error {
        burn::store::RecordError::Io(message) | burn::store::RecordError::Validation(message) => {
            message
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_config() -> VitConfig {
        VitConfig::small_for_tests()
    }

    #[test]
    fn save_then_load_gives_bit_identical_logits() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let config = small_config();
        let model = config.init(&device).unwrap();
        let images = Tensor::random([4, 1, 28, 28], burn::tensor::Distribution::Default, &device);

        save(&model, &config, dir.path()).unwrap();
        let (loaded, loaded_config) = load(dir.path(), &device).unwrap();

        assert_eq!(loaded_config, config);
        let modes: Vec<_> = [CONFIG_FILE, RECORD_FILE, SAFETENSORS_FILE, PROBE_FILE]
            .iter()
            .map(|name| fs::metadata(dir.path().join(name)).unwrap().permissions())
            .collect();
        assert!(
            modes.iter().all(|mode| *mode == modes[0]),
            "every exported file has the config's permissions: {modes:?}"
        );
        let before = model.forward(images.clone()).into_data();
        let after = loaded.forward(images).into_data();
        assert_eq!(
            before.as_slice::<f32>().unwrap(),
            after.as_slice::<f32>().unwrap()
        );
    }

    #[test]
    fn a_record_from_another_config_is_a_clear_error() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let config = small_config();
        save(&config.init(&device).unwrap(), &config, dir.path()).unwrap();
        // Same depth, wider MLP: the record's tensors no longer fit.
        let other = VitConfig {
            mlp_dim: 96,
            ..config
        };
        fs::write(
            dir.path().join(CONFIG_FILE),
            serde_json::to_string(&other).unwrap(),
        )
        .unwrap();

        let error = load(dir.path(), &device).unwrap_err().to_string();
        assert!(
            error.contains(RECORD_FILE) && error.contains("do not fit"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_record_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config();
        fs::write(
            dir.path().join(CONFIG_FILE),
            serde_json::to_string(&config).unwrap(),
        )
        .unwrap();
        let error = load(dir.path(), &Device::flex()).unwrap_err().to_string();
        assert!(error.contains(RECORD_FILE), "{error}");
    }

    #[test]
    fn an_invalid_config_file_names_the_file_and_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let config = VitConfig {
            patch_size: 5,
            ..small_config()
        };
        fs::write(
            dir.path().join(CONFIG_FILE),
            serde_json::to_string(&config).unwrap(),
        )
        .unwrap();
        let error = load(dir.path(), &Device::flex()).unwrap_err().to_string();
        assert!(
            error.contains(CONFIG_FILE) && error.contains("patch_size 5"),
            "{error}"
        );
    }
}
