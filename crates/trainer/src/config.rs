//! The full description of a training run, read from `configs/*.json` and saved into the run
//! directory before training starts, so every run can be reproduced from its own folder.

use std::path::Path;

use anyhow::{Context, bail};
use burn::grad_clipping::GradientClippingConfig;
use burn::optim::ModuleOptimizer;
use burn::optim::lr_scheduler::LrSchedulerConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use serde::{Deserialize, Serialize};
use vit_data::DataConfig;
use vit_data::augment::AugmentConfig;
use vit_model::VitConfig;
use vit_ops::{Adam, AdamSettings, WeightDecay};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    pub model: VitConfig,
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    #[serde(default)]
    pub data: DataConfig,
    /// Random affine transforms of training images; absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<AugmentConfig>,
    /// Probability mass moved from the true class to all classes evenly; 0 is plain
    /// cross-entropy.
    #[serde(default)]
    pub label_smoothing: f32,
    /// Stop when the validation loss has not improved for `patience` epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Also average the weights of the last this many epochs; the run exports that mean
    /// instead of its best epoch if it does better on the validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_last: Option<usize>,
    pub batch_size: usize,
    pub epochs: usize,
    pub seed: u64,
    /// Threads that load and batch data while the model trains. One is plenty (the pipeline
    /// is far faster than a training step), and with more the order in which batches arrive
    /// depends on thread timing, so the same seed no longer gives the same run.
    #[serde(default = "default_workers")]
    pub num_workers: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    pub patience: usize,
}

/// Adam as in the tutorial, or AdamW.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    #[serde(default)]
    pub kind: OptimizerKind,
    pub learning_rate: f64,
    /// Adam: an L2 penalty added to the gradients; AdamW: decoupled decay. 0 turns it off.
    #[serde(default)]
    pub weight_decay: f32,
    /// Clip the gradient of each parameter tensor to at most this norm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip_norm: Option<f32>,
    #[serde(default = "default_beta_1")]
    pub beta_1: f32,
    #[serde(default = "default_beta_2")]
    pub beta_2: f32,
    /// PyTorch's Adam default, which the tutorial uses.
    #[serde(default = "default_epsilon")]
    pub epsilon: f32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Adam,
    AdamW,
}

/// How the learning rate moves over the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The tutorial's recipe: the same rate for every step.
    Constant,
    /// A linear warm-up from 1 % of the optimiser's rate over `warmup_steps`, then cosine
    /// decay to `min_lr` over the remaining steps of the run.
    Cosine {
        min_lr: f64,
        #[serde(default)]
        warmup_steps: usize,
    },
}

fn default_workers() -> usize {
    1
}
fn default_beta_1() -> f32 {
    0.9
}
fn default_beta_2() -> f32 {
    0.999
}
fn default_epsilon() -> f32 {
    1e-8
}

/// Digit classes in MNIST.
const MNIST_CLASSES: usize = 10;

/// Validates `model` and checks that it takes what the MNIST pipeline gives (one-channel 28×28
/// images) and answers its ten classes: a model built otherwise would panic on the first batch
/// or train on labels it cannot output. The error names the key and its value.
pub fn check_fits_mnist(model: &VitConfig) -> anyhow::Result<()> {
    model.validate()?;
    let expected = [
        ("image_size", model.image_size, vit_data::IMAGE_SIDE),
        ("channels", model.channels, 1),
        ("num_classes", model.num_classes, MNIST_CLASSES),
    ];
    for (key, value, wanted) in expected {
        if value != wanted {
            bail!("model.{key} {value} must be {wanted} for MNIST");
        }
    }
    Ok(())
}

impl TrainingConfig {
    /// Reads, parses and validates a config file, naming the file in any error.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let config: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid training config", path.display()))?;
        config
            .validate()
            .with_context(|| format!("{}: invalid training config", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        check_fits_mnist(&self.model)?;
        let lr = self.optimizer.learning_rate;
        if !(lr > 0.0 && lr <= 1.0) {
            bail!("optimizer.learning_rate {lr} must be in (0, 1]");
        }
        if let Schedule::Cosine { min_lr, .. } = self.schedule
            && !(0.0..=lr).contains(&min_lr)
        {
            bail!("schedule.cosine.min_lr {min_lr} must be in [0, learning_rate {lr}]");
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!("label_smoothing {} must be in [0, 1)", self.label_smoothing);
        }
        if !(self.optimizer.weight_decay >= 0.0) {
            bail!(
                "optimizer.weight_decay {} must be at least 0",
                self.optimizer.weight_decay
            );
        }
        for (name, beta) in [
            ("beta_1", self.optimizer.beta_1),
            ("beta_2", self.optimizer.beta_2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                bail!("optimizer.{name} {beta} must be in [0, 1)");
            }
        }
        let epsilon = self.optimizer.epsilon;
        if !(epsilon > 0.0 && epsilon.is_finite()) {
            bail!("optimizer.epsilon {epsilon} must be greater than 0");
        }
        if let Some(norm) = self.optimizer.grad_clip_norm
            && !(norm > 0.0)
        {
            bail!("optimizer.grad_clip_norm {norm} must be greater than 0");
        }
        if self
            .early_stopping
            .as_ref()
            .is_some_and(|e| e.patience == 0)
        {
            bail!("early_stopping.patience must be greater than 0");
        }
        if self.early_stopping.is_some() && self.data.valid_size == 0 {
            bail!(
                "early_stopping watches the validation loss, and data.valid_size 0 holds out no \
                 validation images"
            );
        }
        if let Some(count) = self.average_last
            && !(2..=self.epochs).contains(&count)
        {
            bail!(
                "average_last {count} must be between 2 and epochs {}",
                self.epochs
            );
        }
        if let Some(augment) = &self.augment {
            augment.validate().map_err(anyhow::Error::msg)?;
        }
        for (name, value) in [("batch_size", self.batch_size), ("epochs", self.epochs)] {
            if value == 0 {
                bail!("{name} must be greater than 0");
            }
        }
        Ok(())
    }

    pub fn optimizer(&self) -> ModuleOptimizer {
        let o = &self.optimizer;
        let weight_decay = match o.kind {
            _ if o.weight_decay == 0.0 => WeightDecay::None,
            OptimizerKind::Adam => WeightDecay::L2(o.weight_decay),
            OptimizerKind::AdamW => WeightDecay::Decoupled(o.weight_decay),
        };
        let optimizer = ModuleOptimizer::from(Adam::new(AdamSettings {
            beta_1: o.beta_1,
            beta_2: o.beta_2,
            epsilon: o.epsilon,
            weight_decay,
        }));
        match o.grad_clip_norm {
            Some(norm) => optimizer.with_grad_clipping(GradientClippingConfig::Norm(norm).init()),
            None => optimizer,
        }
    }

    /// Optimiser steps in one epoch over `train_images` images.
    pub fn steps_per_epoch(&self, train_images: usize) -> usize {
        train_images.div_ceil(self.batch_size)
    }

    /// The learning-rate scheduler for a run of `steps` optimiser steps.
    pub fn scheduler(&self, steps: usize) -> anyhow::Result<ModuleLrScheduler> {
        let lr = self.optimizer.learning_rate;
        let scheduler = match self.schedule {
            Schedule::Constant => return Ok(lr.into()),
            Schedule::Cosine {
                min_lr,
                warmup_steps: 0,
            } => CosineAnnealingLrSchedulerConfig::new(lr, steps)
                .with_min_lr(min_lr)
                .init(),
            Schedule::Cosine {
                min_lr,
                warmup_steps,
            } => {
                if warmup_steps >= steps {
                    bail!(
                        "schedule.cosine.warmup_steps {warmup_steps} leaves none of the run's {steps} steps"
                    );
                }
                let warmup = LinearLrSchedulerConfig::new(lr / 100.0, lr, warmup_steps);
                let decay = CosineAnnealingLrSchedulerConfig::new(lr, steps - warmup_steps)
                    .with_min_lr(min_lr);
                SequentialLrSchedulerConfig::new(
                    vec![
                        LrSchedulerConfig::Linear(warmup),
                        LrSchedulerConfig::Cosine(decay),
                    ],
                    vec![warmup_steps],
                )
                .init()
            }
        };
        scheduler.map_err(anyhow::Error::msg)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn tutorial() -> TrainingConfig {
        TrainingConfig::load(&configs_dir().join("vit-mnist-tutorial.json")).unwrap()
    }

    #[test]
    fn warmup_rises_linearly_then_cosine_decays() {
        let config = TrainingConfig {
            schedule: Schedule::Cosine {
                min_lr: 0.0,
                warmup_steps: 10,
            },
            ..tutorial()
        };
        let mut scheduler = config.scheduler(110).unwrap();
        let rates: Vec<f64> = (0..110).map(|_| scheduler.step().base()).collect();
        assert!(rates[0] < 1e-4, "starts near lr/100: {}", rates[0]);
        assert!(
            rates.windows(2).take(9).all(|w| w[1] > w[0]),
            "rises during warm-up: {rates:?}"
        );
        let peak = rates.iter().cloned().fold(0.0, f64::max);
        assert!(
            (peak - 3e-3).abs() < 1e-9,
            "peaks at the optimiser's rate: {peak}"
        );
        assert!(
            rates[10..].windows(2).all(|w| w[1] <= w[0]),
            "then only falls: {rates:?}"
        );
        assert!(rates[109] < 1e-5, "ends near 0: {}", rates[109]);

        let too_long = TrainingConfig {
            schedule: Schedule::Cosine {
                min_lr: 0.0,
                warmup_steps: 110,
            },
            ..tutorial()
        };
        let error = too_long
            .scheduler(110)
            .err()
            .expect("too long a warm-up is an error");
        assert!(error.to_string().contains("warmup_steps 110"), "{error}");
    }

    #[test]
    fn optimiser_options_are_read_and_checked() {
        let json = r#"{"kind": "adamw", "learning_rate": 0.001, "weight_decay": 0.05, "grad_clip_norm": 1.0}"#;
        let optimizer: OptimizerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(optimizer.kind, OptimizerKind::AdamW);
        let config = TrainingConfig {
            optimizer,
            label_smoothing: 0.1,
            ..tutorial()
        };
        config.validate().unwrap();
        config.optimizer();

        let bad = TrainingConfig {
            label_smoothing: 1.0,
            ..tutorial()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("label_smoothing 1")
        );
        let bad = TrainingConfig {
            early_stopping: Some(EarlyStopping { patience: 0 }),
            ..tutorial()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("patience"));
        for count in [1, 11] {
            let bad = TrainingConfig {
                average_last: Some(count),
                ..tutorial()
            };
            let error = bad.validate().unwrap_err().to_string();
            assert!(error.contains(&format!("average_last {count}")), "{error}");
        }
        assert!(
            serde_json::from_str::<OptimizerConfig>(r#"{"kind": "sgd", "learning_rate": 0.1}"#)
                .is_err()
        );
    }

    /// A config with every section and option set to a non-default value. Struct literals
    /// without `..`: a new field does not compile until it is added here.
    fn every_key_set(schedule: Schedule) -> TrainingConfig {
        TrainingConfig {
            model: VitConfig {
                image_size: 28,
                channels: 1,
                patch_size: 4,
                dim: 64,
                depth: 6,
                heads: 8,
                mlp_dim: 128,
                num_classes: 10,
                dropout: 0.1,
                stem_channels: vec![16, 32],
            },
            optimizer: OptimizerConfig {
                kind: OptimizerKind::AdamW,
                learning_rate: 1e-3,
                weight_decay: 0.05,
                grad_clip_norm: Some(1.0),
                beta_1: 0.8,
                beta_2: 0.99,
                epsilon: 1e-6,
            },
            schedule,
            data: DataConfig {
                valid_size: 5000,
                train_limit: Some(100),
                eval_limit: Some(100),
            },
            augment: Some(AugmentConfig {
                rotation_degrees: 10.0,
                translate_pixels: 2.0,
                scale: 0.1,
                elastic_alpha: 34.0,
                elastic_sigma: 4.0,
                shear_degrees: 5.0,
            }),
            label_smoothing: 0.1,
            early_stopping: Some(EarlyStopping { patience: 3 }),
            average_last: Some(3),
            batch_size: 128,
            epochs: 35,
            seed: 42,
            num_workers: 1,
        }
    }

    /// Dotted paths of the leaves of `value` (`optimizer.beta_1`, `schedule.cosine.min_lr`).
    fn leaf_keys(value: &serde_json::Value, prefix: &str, keys: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (name, field) in fields {
                    let path = if prefix.is_empty() {
                        name.clone()
                    } else {
                        format!("{prefix}.{name}")
                    };
                    leaf_keys(field, &path, keys);
                }
            }
            _ => {
                keys.insert(prefix.to_string());
            }
        }
    }

    #[test]
    fn the_readme_config_table_lists_exactly_the_keys_a_config_can_have() {
        let mut accepted = BTreeSet::new();
        let schedules = [
            Schedule::Constant,
            Schedule::Cosine {
                min_lr: 0.0,
                warmup_steps: 100,
            },
        ];
        for schedule in schedules {
            let config = every_key_set(schedule);
            config.validate().unwrap();
            let json = serde_json::to_value(&config).unwrap();
            let text = json.to_string();
            assert_eq!(
                serde_json::from_str::<TrainingConfig>(&text).unwrap(),
                config,
                "the config reads back"
            );
            leaf_keys(&json, "", &mut accepted);
        }
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("\n## ")
            .find(|section| section.starts_with("Config reference"))
            .expect("README has a `## Config reference` section");
        let documented: BTreeSet<String> = section
            .lines()
            .filter_map(|line| line.strip_prefix("| `")?.split_once('`'))
            .map(|(key, _)| key.to_string())
            .collect();
        let missing: Vec<_> = accepted.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&accepted).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "README's config table: missing {missing:?}, not a config key {unknown:?}"
        );
    }

    fn configs_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
    }

    #[test]
    fn every_file_in_configs_parses_and_validates() {
        let mut checked = 0;
        for entry in std::fs::read_dir(configs_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "json") {
                let config = TrainingConfig::load(&path).unwrap();
                // The run's real step count on full MNIST: a warm-up must fit in it.
                let train_images = config
                    .data
                    .train_limit
                    .unwrap_or(60_000 - config.data.valid_size);
                let steps = config.epochs * config.steps_per_epoch(train_images);
                config.scheduler(steps).unwrap();
                checked += 1;
            }
        }
        assert!(
            checked >= 2,
            "expected the tutorial and smoke presets, found {checked} configs"
        );
    }

    #[test]
    fn the_tutorial_preset_is_the_tutorial() {
        let config = TrainingConfig::load(&configs_dir().join("vit-mnist-tutorial.json")).unwrap();
        assert_eq!(config.model, VitConfig::tutorial());
        assert_eq!((config.batch_size, config.epochs), (100, 10));
        assert_eq!(config.optimizer.learning_rate, 3e-3);
        assert_eq!(
            config.schedule,
            Schedule::Cosine {
                min_lr: 0.0,
                warmup_steps: 0
            }
        );
        assert_eq!(config.optimizer.kind, OptimizerKind::Adam);
        assert_eq!(
            (
                config.optimizer.weight_decay,
                config.optimizer.grad_clip_norm
            ),
            (0.0, None)
        );
        assert_eq!((config.label_smoothing, config.early_stopping), (0.0, None));
        assert_eq!(config.data.valid_size, 5_000);
        assert_eq!(
            config.augment, None,
            "the tutorial trains on the images as they are"
        );
    }

    /// Each invalid value of each key, as a user could write it in the JSON file: the load
    /// fails, and the error names the key and the value.
    #[test]
    fn every_checked_key_names_itself_when_wrong() {
        let cases: [(&str, serde_json::Value, &str); 20] = [
            ("/model/image_size", 35.into(), "image_size 35"),
            ("/model/image_size", 0.into(), "image_size"),
            ("/model/channels", 3.into(), "channels 3"),
            ("/model/num_classes", 5.into(), "num_classes 5"),
            ("/model/num_classes", 11.into(), "num_classes 11"),
            ("/model/patch_size", 5.into(), "patch_size 5"),
            ("/model/heads", 7.into(), "heads 7"),
            ("/model/dim", 0.into(), "dim"),
            ("/model/dropout", 1.0.into(), "dropout 1"),
            ("/optimizer/beta_1", 1.0.into(), "beta_1 1"),
            ("/optimizer/beta_1", (-0.1).into(), "beta_1 -0.1"),
            ("/optimizer/beta_2", 1.5.into(), "beta_2 1.5"),
            ("/optimizer/epsilon", 0.0.into(), "epsilon 0"),
            ("/optimizer/weight_decay", (-1.0).into(), "weight_decay -1"),
            ("/optimizer/learning_rate", 0.0.into(), "learning_rate 0"),
            ("/optimizer/grad_clip_norm", 0.0.into(), "grad_clip_norm 0"),
            ("/label_smoothing", 1.0.into(), "label_smoothing 1"),
            ("/batch_size", 0.into(), "batch_size"),
            ("/epochs", 0.into(), "epochs"),
            ("/average_last", 1.into(), "average_last 1"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let preset: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(configs_dir().join("vit-mnist-tutorial.json")).unwrap(),
        )
        .unwrap();
        for (pointer, value, expected) in cases {
            let mut json = preset.clone();
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let section = if parent.is_empty() {
                &mut json
            } else {
                json.pointer_mut(parent).unwrap()
            };
            section[key] = value.clone();
            let path = dir.path().join("bad.json");
            std::fs::write(&path, json.to_string()).unwrap();
            let error = format!("{:#}", TrainingConfig::load(&path).unwrap_err());
            assert!(
                error.contains(expected) && error.contains("bad.json"),
                "{pointer} = {value}: {error}"
            );
        }
    }

    /// The JSON pointers of every leaf value in `json`.
    fn leaves(json: &serde_json::Value, at: String, out: &mut Vec<String>) {
        match json {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    leaves(value, format!("{at}/{key}"), out);
                }
            }
            serde_json::Value::Array(items) => {
                for (index, value) in items.iter().enumerate() {
                    leaves(value, format!("{at}/{index}"), out);
                }
            }
            _ => out.push(at),
        }
    }

    /// Values a user might put anywhere: zero, signs, extremes, fractions and other types.
    fn odd_json_values() -> Vec<serde_json::Value> {
        use serde_json::json;
        vec![
            json!(0),
            json!(-1),
            json!(1),
            json!(3),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1e30),
            json!(-1e3),
            json!(-0.5),
            json!(1e-9),
            json!(0.5),
            json!(999.9),
            json!(null),
            json!("adam"),
            json!(true),
            json!([]),
            json!({}),
        ]
    }

    /// Every leaf of every preset replaced by each of [`odd_json_values`] (all of them, not a
    /// random sample): the reader gives an error or a config whose optimiser and schedule can
    /// be built, and never panics.
    #[test]
    fn a_mutated_preset_is_an_error_or_a_usable_config() {
        for preset in [
            "vit-mnist-tutorial.json",
            "vit-mnist-best.json",
            "vit-mnist-fast.json",
            "vit-mnist-quick.json",
            "vit-mnist-augmented.json",
            "smoke.json",
        ] {
            let text = std::fs::read_to_string(configs_dir().join(preset)).unwrap();
            let original: serde_json::Value = serde_json::from_str(&text).unwrap();
            let mut pointers = Vec::new();
            leaves(&original, String::new(), &mut pointers);
            for pointer in &pointers {
                for value in odd_json_values() {
                    let mut json = original.clone();
                    *json.pointer_mut(pointer).unwrap() = value;
                    if let Ok(config) = serde_json::from_value::<TrainingConfig>(json)
                        && config.validate().is_ok()
                    {
                        config.optimizer();
                        let _ = config.scheduler(config.epochs * config.steps_per_epoch(55_000));
                    }
                }
            }
        }
    }

    #[test]
    fn a_wrong_value_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        let mut json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(configs_dir().join("vit-mnist-tutorial.json")).unwrap(),
        )
        .unwrap();
        json["model"]["heads"] = 7.into();
        std::fs::write(&path, json.to_string()).unwrap();
        let error = format!("{:#}", TrainingConfig::load(&path).unwrap_err());
        assert!(
            error.contains("bad.json") && error.contains("heads 7"),
            "{error}"
        );

        json["model"]["heads"] = 8.into();
        json["optimiser"] = json["optimizer"].clone();
        std::fs::write(&path, json.to_string()).unwrap();
        let error = format!("{:#}", TrainingConfig::load(&path).unwrap_err());
        assert!(error.contains("optimiser"), "{error}");
    }
}
