//! MNIST for the ViT: the IDX file reader, Burn `Dataset`s for the train / validation / test
//! splits, the batcher that makes normalised `[batch, 1, 28, 28]` tensors, and the conversion of
//! arbitrary image files into MNIST-style inputs.

pub mod augment;
mod batcher;
pub mod download;
mod error;
pub mod idx;
mod image_input;
mod mnist;
mod rng;

pub use batcher::{MnistBatch, MnistBatcher, PIXEL_MEAN, PIXEL_STD, normalise};
pub use error::DataError;
pub use image_input::{image_file_to_mnist, image_to_mnist};
pub use mnist::{
    DataConfig, DataDirSource, FILES, IMAGE_SIDE, MnistDataset, MnistItem, Split, default_data_dir,
    resolve_data_dir,
};
