//! Weights in PyTorch's layout, as safetensors, for other frameworks: export from a [`Vit`],
//! import into one, and a probe (inputs with the logits they gave) that travels with the weights
//! so the receiving side can prove it computes the same function.
//!
//! Tensor names are the network's field paths, the names `tools/torch_reference.py` gives its
//! modules: `patch_embedding.{weight,bias}`, `class_token` `[1, 1, dim]`, `position_embedding`
//! `[1, tokens, dim]`, then per block `i`: `blocks.i.attention_norm.{weight,bias}`,
//! `blocks.i.attention.{query,key,value}.weight`, `blocks.i.attention.output.{weight,bias}`,
//! `blocks.i.mlp_norm.{weight,bias}`, `blocks.i.mlp.{linear_inner,linear_outer}.{weight,bias}`,
//! and `head.{hidden,output}.{weight,bias}`; with a stem, `stem.i.{weight,bias}` (weights
//! `[out, in, 3, 3]`). Linear weights are `[out, in]` as in `torch.nn.Linear`; everything is
//! float32.

use std::collections::HashMap;
use std::path::Path;

use burn::prelude::*;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::files::{ArtifactError, write_bytes};
use crate::{Vit, VitConfig};

/// The probe's tensor of normalised input images `[n, channels, size, size]`.
pub const PROBE_IMAGES: &str = "images";
/// The probe's tensor of logits `[n, classes]` the exporting side computed for them.
pub const PROBE_LOGITS: &str = "logits";
/// How far apart two implementations' logits may be and still count as the same function.
pub const PROBE_TOLERANCE: f32 = 1e-4;

/// Writes `model`'s weights as PyTorch-layout safetensors at `path`, atomically.
pub fn export_safetensors(model: &Vit, path: &Path) -> Result<(), ArtifactError> {
    let bytes = safetensors_bytes(model).map_err(|error| io_error(path, error))?;
    write_bytes(path, &bytes)
}

/// `model`'s weights as the bytes of a PyTorch-layout safetensors file, named as the module
/// doc lists them: what [`export_safetensors`] writes, and what other exporters read.
pub fn safetensors_bytes(model: &Vit) -> Result<Vec<u8>, String> {
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .metadata("layout", "torch.nn.Linear weights [out, in]");
    model
        .save_into(&mut store)
        .map_err(|error| error.to_string())?;
    store.get_bytes().map_err(|error| error.to_string())
}

/// Builds the network of `config` on `device` with the weights of the safetensors file at
/// `path` (PyTorch layout). Every tensor must be there with its shape, and nothing else.
pub fn import_safetensors(
    path: &Path,
    config: &VitConfig,
    device: &Device,
) -> Result<Vit, ArtifactError> {
    let mut model = config
        .init(device)
        .map_err(|source| ArtifactError::InvalidConfig {
            path: path.into(),
            source,
        })?;
    if !path.is_file() {
        let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        return Err(ArtifactError::Io {
            path: path.into(),
            source,
        });
    }
    let mut store = SafetensorsStore::from_file(path).with_from_adapter(PyTorchToBurnAdapter);
    let mismatch = |message: String| ArtifactError::Weights {
        path: path.into(),
        message,
    };
    let result = model
        .load_from(&mut store)
        .map_err(|error| mismatch(error.to_string()))?;
    let mut problems = Vec::new();
    if !result.missing.is_empty() {
        let names: Vec<&str> = result
            .missing
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        problems.push(format!("missing tensors {}", names.join(", ")));
    }
    if !result.unused.is_empty() {
        problems.push(format!("unexpected tensors {}", result.unused.join(", ")));
    }
    problems.extend(result.errors.iter().map(|error| format!("{error:?}")));
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(mismatch(problems.join("; ")))
    }
}

/// Inputs and the logits one implementation computed for them.
pub struct Probe {
    pub images: Tensor<4>,
    pub logits: Tensor<2>,
}

impl Probe {
    /// `model`'s logits for `images`.
    pub fn record(model: &Vit, images: Tensor<4>) -> Self {
        let logits = model.forward(images.clone());
        Self { images, logits }
    }

    pub fn save(&self, path: &Path) -> Result<(), ArtifactError> {
        let images = float_bytes(self.images.clone());
        let logits = float_bytes(self.logits.clone());
        fn view((shape, bytes): &(Vec<usize>, Vec<u8>)) -> TensorView<'_> {
            TensorView::new(Dtype::F32, shape.clone(), bytes).expect("shape matches data")
        }
        let tensors = [(PROBE_IMAGES, view(&images)), (PROBE_LOGITS, view(&logits))];
        let metadata = HashMap::from([("tolerance".to_string(), PROBE_TOLERANCE.to_string())]);
        let bytes = safetensors::serialize(tensors, Some(metadata))
            .map_err(|error| io_error(path, error))?;
        write_bytes(path, &bytes)
    }

    pub fn load(path: &Path, device: &Device) -> Result<Self, ArtifactError> {
        let bytes = std::fs::read(path).map_err(|source| ArtifactError::Io {
            path: path.into(),
            source,
        })?;
        let invalid = |message: String| ArtifactError::Weights {
            path: path.into(),
            message,
        };
        let file = SafeTensors::deserialize(&bytes).map_err(|error| invalid(error.to_string()))?;
        let tensor = |name: &str, rank: usize| {
            let view = file
                .tensor(name)
                .map_err(|_| invalid(format!("no `{name}` tensor")))?;
            if view.dtype() != Dtype::F32 || view.shape().len() != rank {
                return Err(invalid(format!(
                    "`{name}` is {:?} {:?}, expected float32 of rank {rank}",
                    view.dtype(),
                    view.shape()
                )));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok(TensorData::new(values, view.shape().to_vec()))
        };
        Ok(Self {
            images: Tensor::from_data(tensor(PROBE_IMAGES, 4)?, device),
            logits: Tensor::from_data(tensor(PROBE_LOGITS, 2)?, device),
        })
    }

    /// The largest absolute difference between the probe's logits and `model`'s for its images.
    pub fn max_abs_diff(&self, model: &Vit) -> Result<f32, String> {
        let expected = self.logits.dims();
        let [_, channels, height, width] = self.images.dims();
        if [channels, height, width] != model.input_shape() {
            return Err(format!(
                "the probe's images are {channels}×{height}×{width}, the model reads {:?}",
                model.input_shape()
            ));
        }
        let actual = model.forward(self.images.clone());
        if actual.dims() != expected {
            return Err(format!(
                "the model gives logits {:?}, the probe holds {expected:?}",
                actual.dims()
            ));
        }
        let diff = (actual - self.logits.clone())
            .abs()
            .max()
            .into_scalar::<f32>();
        Ok(diff)
    }
}

/// Checks `model` against the probe saved at `path`: the largest logit difference when it is
/// within [`PROBE_TOLERANCE`], else an error naming the file and the difference.
pub fn check_probe(model: &Vit, path: &Path, device: &Device) -> Result<f32, ArtifactError> {
    let mismatch = |message: String| ArtifactError::Weights {
        path: path.into(),
        message,
    };
    let diff = Probe::load(path, device)?
        .max_abs_diff(model)
        .map_err(mismatch)?;
    if diff <= PROBE_TOLERANCE {
        Ok(diff)
    } else {
        Err(mismatch(format!(
            "the model's logits differ from the probe's by up to {diff:e} (tolerance \
             {PROBE_TOLERANCE:e}): the weights do not mean the same network here"
        )))
    }
}

fn float_bytes<const D: usize>(tensor: Tensor<D>) -> (Vec<usize>, Vec<u8>) {
    let shape = tensor.dims().to_vec();
    let values = tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("float tensor");
    (shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn io_error(path: &Path, error: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Io {
        path: path.into(),
        source: std::io::Error::other(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_config() -> VitConfig {
        VitConfig::small_for_tests()
    }

    fn images(device: &Device) -> Tensor<4> {
        Tensor::random([3, 1, 28, 28], burn::tensor::Distribution::Default, device)
    }

    #[test]
    fn export_then_import_gives_the_same_logits() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let config = small_config();
        let model = config.init(&device).unwrap();
        let path = dir.path().join("model.safetensors");
        export_safetensors(&model, &path).unwrap();

        let imported = import_safetensors(&path, &config, &device).unwrap();
        let probe = Probe::record(&model, images(&device));
        assert_eq!(probe.max_abs_diff(&imported), Ok(0.0));
    }

    #[test]
    fn linear_weights_are_stored_out_by_in() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let config = VitConfig {
            mlp_dim: 96,
            ..small_config()
        };
        let path = dir.path().join("model.safetensors");
        export_safetensors(&config.init(&device).unwrap(), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let shape = |name: &str| file.tensor(name).unwrap().shape().to_vec();
        assert_eq!(shape("blocks.1.mlp.linear_inner.weight"), [96, 64]);
        assert_eq!(shape("patch_embedding.weight"), [64, 49]);
        assert_eq!(shape("blocks.0.attention_norm.weight"), [64]);
        assert_eq!(shape("position_embedding"), [1, 17, 64]);
        assert!(file.tensor("blocks.0.attention.query.bias").is_err());
    }

    #[test]
    fn weights_of_another_config_name_the_tensors() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        export_safetensors(&small_config().init(&device).unwrap(), &path).unwrap();
        let deeper = VitConfig {
            depth: 3,
            ..small_config()
        };
        let error = import_safetensors(&path, &deeper, &device)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("model.safetensors") && error.contains("blocks.2"),
            "{error}"
        );
    }

    #[test]
    fn a_probe_survives_the_round_trip_and_catches_other_weights() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let config = small_config();
        let model = config.init(&device).unwrap();
        let path = dir.path().join("probe.safetensors");
        Probe::record(&model, images(&device)).save(&path).unwrap();

        let probe = Probe::load(&path, &device).unwrap();
        assert_eq!(probe.max_abs_diff(&model), Ok(0.0));
        let other = config.init(&device).unwrap();
        assert!(probe.max_abs_diff(&other).unwrap() > PROBE_TOLERANCE);

        // A probe of 35×35 images for a model of 28×28 ones is refused, not run.
        let larger = VitConfig {
            image_size: 35,
            ..config.clone()
        };
        let wide = Probe::record(&larger.init(&device).unwrap(), {
            Tensor::zeros([2, 1, 35, 35], &device)
        });
        let error = wide.max_abs_diff(&model).unwrap_err();
        assert!(error.contains("1×35×35"), "{error}");
    }

    #[test]
    fn a_corrupt_probe_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe.safetensors");
        std::fs::write(&path, b"not safetensors").unwrap();
        let error = Probe::load(&path, &Device::flex())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("probe.safetensors"), "{error}");
    }
}
