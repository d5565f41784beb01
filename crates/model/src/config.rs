//! The ViT's hyper-parameters, their validation and the tutorial preset.

use serde::{Deserialize, Serialize};

/// Shape of a [`Vit`](crate::Vit). Stored as JSON next to every saved model, so a record is
/// always rebuilt with the network it was trained with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Side of the square input image, in pixels.
    pub image_size: usize,
    /// Input channels (1 for MNIST).
    pub channels: usize,
    /// Side of the square patches the image is cut into; must divide `image_size`.
    pub patch_size: usize,
    /// Width of every token.
    pub dim: usize,
    /// Number of encoder blocks.
    pub depth: usize,
    /// Attention heads per block; must divide `dim`.
    pub heads: usize,
    /// Hidden width of the feed-forward layers and of the classification head.
    pub mlp_dim: usize,
    /// Number of output classes.
    pub num_classes: usize,
    /// Dropout probability on embeddings, attention weights and feed-forward activations.
    #[serde(default)]
    pub dropout: f64,
    /// Output channels of an optional convolutional stem: one 3×3 convolution (stride 1,
    /// padding 1) followed by GELU per entry, run before the image is cut into patches, so
    /// that each token sees its neighbours' pixels. Empty, as in the tutorial, cuts the image
    /// itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stem_channels: Vec<usize>,
}

/// Why a [`VitConfig`] cannot build a network.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("model config: `{field}` must be greater than 0")]
    Zero { field: &'static str },
    #[error("model config: patch_size {patch_size} does not divide image_size {image_size}")]
    PatchDoesNotDivide {
        image_size: usize,
        patch_size: usize,
    },
    #[error("model config: heads {heads} does not divide dim {dim}")]
    HeadsDoNotDivide { dim: usize, heads: usize },
    #[error("model config: dropout {0} is not in [0, 1)")]
    Dropout(f64),
}

impl VitConfig {
    /// The PyTorch tutorial's ViT: 7×7 patches of a 28×28 image (16 tokens + a class token),
    /// dim 64, depth 6, 8 heads, MLP 128, no dropout.
    pub fn tutorial() -> Self {
        Self {
            image_size: 28,
            channels: 1,
            patch_size: 7,
            dim: 64,
            depth: 6,
            heads: 8,
            mlp_dim: 128,
            num_classes: 10,
            dropout: 0.0,
            stem_channels: Vec::new(),
        }
    }

    /// The tutorial network with two blocks: quick to build and save in unit tests.
    #[cfg(test)]
    pub(crate) fn small_for_tests() -> Self {
        Self {
            depth: 2,
            ..Self::tutorial()
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// Number of patches (tokens before the class token).
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Channels of the map that is cut into patches: the stem's last output, or the image's.
    pub fn patch_channels(&self) -> usize {
        self.stem_channels.last().copied().unwrap_or(self.channels)
    }

    /// Values of one patch, flattened: the patch embedding's input width.
    pub fn patch_values(&self) -> usize {
        self.patch_size * self.patch_size * self.patch_channels()
    }

    /// Checks every constraint the network relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sizes = [
            ("image_size", self.image_size),
            ("channels", self.channels),
            ("patch_size", self.patch_size),
            ("dim", self.dim),
            ("depth", self.depth),
            ("heads", self.heads),
            ("mlp_dim", self.mlp_dim),
            ("num_classes", self.num_classes),
        ];
        if let Some((field, _)) = sizes.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Zero { field });
        }
        if self.stem_channels.contains(&0) {
            return Err(ConfigError::Zero {
                field: "stem_channels",
            });
        }
        if self.image_size % self.patch_size != 0 {
            return Err(ConfigError::PatchDoesNotDivide {
                image_size: self.image_size,
                patch_size: self.patch_size,
            });
        }
        if self.dim % self.heads != 0 {
            return Err(ConfigError::HeadsDoNotDivide {
                dim: self.dim,
                heads: self.heads,
            });
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::Dropout(self.dropout));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tutorial_preset_is_valid_and_derives_its_sizes() {
        let config = VitConfig::tutorial();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.head_dim(), 8);
        assert_eq!(config.num_patches(), 16);
        assert_eq!(config.patch_values(), 49);
    }

    #[test]
    fn each_zero_size_is_named() {
        let zeroed: [(&str, fn(&mut VitConfig)); 9] = [
            ("image_size", |c| c.image_size = 0),
            ("channels", |c| c.channels = 0),
            ("patch_size", |c| c.patch_size = 0),
            ("dim", |c| c.dim = 0),
            ("depth", |c| c.depth = 0),
            ("heads", |c| c.heads = 0),
            ("mlp_dim", |c| c.mlp_dim = 0),
            ("num_classes", |c| c.num_classes = 0),
            ("stem_channels", |c| c.stem_channels = vec![16, 0]),
        ];
        for (field, zero) in zeroed {
            let mut config = VitConfig::tutorial();
            zero(&mut config);
            assert_eq!(
                config.validate(),
                Err(ConfigError::Zero { field }),
                "{field}"
            );
        }
    }

    #[test]
    fn patch_must_divide_image() {
        let config = VitConfig {
            patch_size: 5,
            ..VitConfig::tutorial()
        };
        let error = config.validate().unwrap_err();
        assert_eq!(
            error,
            ConfigError::PatchDoesNotDivide {
                image_size: 28,
                patch_size: 5
            }
        );
        assert!(error.to_string().contains("patch_size 5"), "{error}");
    }

    #[test]
    fn heads_must_divide_dim() {
        let config = VitConfig {
            heads: 6,
            ..VitConfig::tutorial()
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::HeadsDoNotDivide { dim: 64, heads: 6 })
        );
    }

    #[test]
    fn dropout_must_be_a_probability() {
        for dropout in [-0.1, 1.0, f64::NAN] {
            let config = VitConfig {
                dropout,
                ..VitConfig::tutorial()
            };
            assert!(
                matches!(config.validate(), Err(ConfigError::Dropout(_))),
                "{dropout}"
            );
        }
    }

    #[test]
    fn a_stem_widens_the_patches_and_is_left_out_of_tutorial_json() {
        let config = VitConfig {
            stem_channels: vec![8, 32],
            ..VitConfig::tutorial()
        };
        assert_eq!(config.patch_values(), 7 * 7 * 32);
        let json = serde_json::to_string(&VitConfig::tutorial()).unwrap();
        assert!(!json.contains("stem_channels"), "{json}");
        let parsed: VitConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, VitConfig::tutorial());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json = r#"{"image_size":28,"channels":1,"patch_size":7,"dim":64,"depth":6,
            "heads":8,"mlp_dim":128,"num_classes":10,"dropuot":0.1}"#;
        let error = serde_json::from_str::<VitConfig>(json).unwrap_err();
        assert!(error.to_string().contains("dropuot"), "{error}");
    }
}
