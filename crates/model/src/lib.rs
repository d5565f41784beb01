//! A Vision Transformer (Dosovitskiy et al., 2020) for small single-channel images such as MNIST,
//! written once against Burn's backend-agnostic `Tensor` so it runs on every compiled-in backend.
//!
//! - [`VitConfig`] describes the network and validates itself; [`VitConfig::tutorial`] is the
//!   configuration of the PyTorch MNIST tutorial this project starts from.
//! - [`Vit`] is the network: logits `[batch, classes]` from images `[batch, channels, h, w]`.
//! - [`artifact`] owns the file names of a saved model, for the trainer and for embedders alike.

pub mod artifact;
mod config;
mod vit;

pub use config::{ConfigError, VitConfig};
pub use vit::Vit;
