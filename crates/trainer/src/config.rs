//! The full description of a training run, read from `configs/*.json` and saved into the run
//! directory before training starts, so every run can be reproduced from its own folder.

use std::path::Path;

use anyhow::{Context, bail};
use burn::optim::AdamConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use serde::{Deserialize, Serialize};
use vit_data::DataConfig;
use vit_data::augment::AugmentConfig;
use vit_model::VitConfig;

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
    pub batch_size: usize,
    pub epochs: usize,
    pub seed: u64,
    /// Threads that load and batch data while the model trains.
    #[serde(default = "default_workers")]
    pub num_workers: usize,
}

/// Adam, as in the tutorial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    pub learning_rate: f64,
    #[serde(default = "default_beta_1")]
    pub beta_1: f32,
    #[serde(default = "default_beta_2")]
    pub beta_2: f32,
    /// PyTorch's Adam default, which the tutorial uses.
    #[serde(default = "default_epsilon")]
    pub epsilon: f32,
}

/// How the learning rate moves over the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The tutorial's recipe: the same rate for every step.
    Constant,
    /// Cosine decay from the optimiser's rate to `min_lr` over all steps of the run.
    Cosine { min_lr: f64 },
}

fn default_workers() -> usize {
    2
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
        self.model.validate()?;
        let lr = self.optimizer.learning_rate;
        if !(lr > 0.0 && lr <= 1.0) {
            bail!("optimizer.learning_rate {lr} must be in (0, 1]");
        }
        if let Schedule::Cosine { min_lr } = self.schedule
            && !(0.0..=lr).contains(&min_lr)
        {
            bail!("schedule.cosine.min_lr {min_lr} must be in [0, learning_rate {lr}]");
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

    pub fn optimizer(&self) -> AdamConfig {
        AdamConfig::new()
            .with_beta_1(self.optimizer.beta_1)
            .with_beta_2(self.optimizer.beta_2)
            .with_epsilon(self.optimizer.epsilon)
    }

    /// The learning-rate scheduler for a run of `steps` optimiser steps.
    pub fn scheduler(&self, steps: usize) -> anyhow::Result<ModuleLrScheduler> {
        let lr = self.optimizer.learning_rate;
        match self.schedule {
            Schedule::Constant => Ok(lr.into()),
            Schedule::Cosine { min_lr } => CosineAnnealingLrSchedulerConfig::new(lr, steps)
                .with_min_lr(min_lr)
                .init()
                .map_err(anyhow::Error::msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                config.scheduler(100).unwrap();
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
        assert_eq!(config.schedule, Schedule::Cosine { min_lr: 0.0 });
        assert_eq!(config.data.valid_size, 5_000);
        assert_eq!(
            config.augment, None,
            "the tutorial trains on the images as they are"
        );
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
