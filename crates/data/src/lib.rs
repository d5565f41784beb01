//! MNIST for the ViT: the IDX file reader, Burn `Dataset`s for the train / validation / test
//! splits, the batcher that makes normalised `[batch, 1, 28, 28]` tensors, the order and
//! augmentation of each training epoch, and the download of the files.

pub mod augment;
mod batcher;
pub mod download;
pub mod epochs;
mod error;
pub mod idx;
mod mnist;
mod rng;

pub use batcher::{MnistBatch, MnistBatcher, PIXEL_MEAN, PIXEL_STD, normalise};
pub use error::DataError;
pub use mnist::{
    DataConfig, DataDirSource, FILES, IMAGE_SIDE, MnistDataset, MnistItem, Split, content_sha256s,
    default_data_dir, resolve_data_dir,
};
