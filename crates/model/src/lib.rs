//! A Vision Transformer (Dosovitskiy et al., 2020) for small single-channel images such as MNIST,
//! written once against Burn's backend-agnostic `Tensor` so it runs on every compiled-in backend.
//!
//! - [`VitConfig`] describes the network and validates itself; [`VitConfig::tutorial`] is the
//!   configuration of the PyTorch MNIST tutorial this project starts from.
//! - [`Vit`] is the network: logits `[batch, classes]` from images `[batch, channels, h, w]`.
//! - [`artifact`] owns the file names of a saved model, for the trainer and for embedders alike.
//! - [`load`] and [`Predictor::predict`]: class probabilities for raw gray images, for programs
//!   that embed a trained model (`examples/predict.rs`).
//! - [`mnist_style`]: any picture of a digit as MNIST shows one (cropped, 20×20, centred), the
//!   way `vit-trainer infer` reads image files.
//! - [`explain`]: the attention rollout and the last block's attention maps of an image.
//! - [`Views`]: test-time augmentation, probabilities averaged over one-pixel shifts.
//! - [`interchange`] moves weights to and from PyTorch as safetensors.
//! - [`input`] is the pixel normalisation the network was trained with.
//! - [`files`]: files written whole or not at all.
//!
//! The layers run as the single operations of `vit-ops` (the kernels live there, not here).

pub mod artifact;
mod config;
pub mod explain;
pub mod files;
pub mod input;
pub mod interchange;
pub mod mnist_style;
mod predict;
mod views;
mod vit;

pub use config::{ConfigError, VitConfig};
pub use predict::{PredictError, Predictor, best, load};
pub use views::Views;
pub use vit::Vit;

/// The README's Rust code, compiled by the doctests so that its embedding example cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExamples;
