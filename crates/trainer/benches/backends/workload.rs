//! What the bench trains and runs: the tutorial ViT at batch 100 unless `--config FILE` names a
//! training config (its `model` and `batch_size`) or a model config (batch 100).

use std::path::Path;

use vit_model::VitConfig;

/// The training batch when the config does not name one.
const DEFAULT_BATCH: usize = 100;

#[derive(Clone, Debug)]
pub(crate) struct Workload {
    pub(crate) model: VitConfig,
    pub(crate) batch: usize,
    /// Where it came from, for the report.
    pub(crate) name: String,
}

impl Workload {
    pub(crate) fn tutorial() -> Self {
        Self {
            model: VitConfig::tutorial(),
            batch: DEFAULT_BATCH,
            name: "tutorial ViT".into(),
        }
    }

    /// The workload of a training or model config file, or a message naming what is wrong.
    pub(crate) fn from_file(path: &Path) -> Result<Self, String> {
        let fail = |message: String| format!("{}: {message}", path.display());
        let text = std::fs::read_to_string(path).map_err(|error| fail(error.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|error| fail(error.to_string()))?;
        let (model, batch) = match json.get("model") {
            Some(model) => (model.clone(), json.get("batch_size").cloned()),
            None => (json, None),
        };
        let model: VitConfig = serde_json::from_value(model)
            .map_err(|error| fail(format!("not a model config: {error}")))?;
        model.validate().map_err(|error| fail(error.to_string()))?;
        let batch = match batch {
            None => DEFAULT_BATCH,
            Some(value) => value
                .as_u64()
                .filter(|&batch| batch > 0)
                .ok_or_else(|| fail(format!("batch_size {value} is not a positive number")))?
                as usize,
        };
        Ok(Self {
            model,
            batch,
            name: path.display().to_string(),
        })
    }
}
