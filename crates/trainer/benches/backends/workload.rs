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

impl Workload {
    /// Floating-point operations (2 per multiply-add) in the matrix products of one image's
    /// forward pass: the stem's convolutions, the patch embedding, each block's projections,
    /// attention scores and weighted sums and feed-forward layers, and the head. Element-wise
    /// work is left out: this is what a perfect sgemm would have to do.
    pub(crate) fn forward_flop(&self) -> f64 {
        let m = &self.model;
        let pixels = m.image_size * m.image_size;
        let mut flop = 0;
        let mut channels = m.channels;
        for &out in &m.stem_channels {
            flop += 2 * pixels * channels * 9 * out;
            channels = out;
        }
        let patches = pixels / (m.patch_size * m.patch_size);
        let tokens = patches + 1;
        flop += 2 * patches * channels * m.patch_size * m.patch_size * m.dim;
        let projections = 2 * tokens * m.dim * (3 * m.dim + m.dim);
        let attention = 2 * 2 * tokens * tokens * m.dim;
        let feed_forward = 2 * 2 * tokens * m.dim * m.mlp_dim;
        flop += m.depth * (projections + attention + feed_forward);
        flop += 2 * (m.dim * m.mlp_dim + m.mlp_dim * m.num_classes);
        flop as f64
    }

    /// A training step's matrix products per image: the forward pass, and twice as many in
    /// the backward pass (the gradients of each product's two operands).
    pub(crate) fn training_flop(&self) -> f64 {
        3.0 * self.forward_flop()
    }
}
