//! The MNIST splits as Burn datasets. The last `valid_size` training images are held out as the
//! validation split, which drives every choice made during training; the test split is for the
//! final evaluation only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataset::{Dataset, DatasetError};
use serde::{Deserialize, Serialize};

use crate::DataError;
use crate::idx::{read_images, read_labels};

/// Side of an MNIST image, in pixels.
pub const IMAGE_SIDE: usize = vit_model::mnist_style::IMAGE_SIDE;
const PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;

/// The four standard files: (train images, train labels, test images, test labels).
pub const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// How the training data is split and, for quick runs, trimmed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Images held out of the end of the training set for validation.
    pub valid_size: usize,
    /// Use only the first N images of the training split (for smoke runs).
    #[serde(default)]
    pub train_limit: Option<usize>,
    /// Use only the first N images of the validation and test splits (for smoke runs).
    #[serde(default)]
    pub eval_limit: Option<usize>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            valid_size: 5_000,
            train_limit: None,
            eval_limit: None,
        }
    }
}

/// Which part of MNIST a dataset serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Valid,
    Test,
}

/// One image and its digit.
#[derive(Clone, Debug, PartialEq)]
pub struct MnistItem {
    pub pixels: [u8; PIXELS],
    pub label: u8,
}

/// A contiguous range of one loaded MNIST file pair. Cloning shares the pixels.
#[derive(Clone, Debug)]
pub struct MnistDataset {
    pixels: Arc<Vec<u8>>,
    labels: Arc<Vec<u8>>,
    start: usize,
    len: usize,
}

impl MnistDataset {
    /// Loads `split` from the four MNIST files in `dir`.
    pub fn load(dir: &Path, split: Split, config: &DataConfig) -> Result<Self, DataError> {
        let [train_images, train_labels, test_images, test_labels] = locate_files(dir)?;
        let (images, labels) = match split {
            Split::Train | Split::Valid => (train_images, train_labels),
            Split::Test => (test_images, test_labels),
        };
        Self::from_files(&images, &labels)?.part(split, config)
    }

    /// The training and validation splits from one reading of the training files.
    pub fn load_training(dir: &Path, config: &DataConfig) -> Result<(Self, Self), DataError> {
        let [images, labels, ..] = locate_files(dir)?;
        let all = Self::from_files(&images, &labels)?;
        Ok((
            all.clone().part(Split::Train, config)?,
            all.part(Split::Valid, config)?,
        ))
    }

    /// The images of `split` in this whole file pair: the last `valid_size` training images
    /// are the validation split, and the limits trim each split.
    fn part(self, split: Split, config: &DataConfig) -> Result<Self, DataError> {
        let total = self.len;
        if split != Split::Test && config.valid_size >= total {
            return Err(DataError::SplitTooLarge {
                valid: config.valid_size,
                total,
            });
        }
        let (start, len, limit) = match split {
            Split::Train => (0, total - config.valid_size, config.train_limit),
            Split::Valid => (
                total - config.valid_size,
                config.valid_size,
                config.eval_limit,
            ),
            Split::Test => (0, total, config.eval_limit),
        };
        Ok(Self {
            start: self.start + start,
            len: limit.map_or(len, |l| l.min(len)),
            ..self
        })
    }

    /// Reads an image file and its label file, checking that they belong together.
    pub fn from_files(images_path: &Path, labels_path: &Path) -> Result<Self, DataError> {
        let images = read_images(images_path)?;
        if (images.rows, images.cols) != (IMAGE_SIDE, IMAGE_SIDE) {
            return Err(DataError::ImageSize {
                path: images_path.into(),
                rows: images.rows as u32,
                cols: images.cols as u32,
                expected: IMAGE_SIDE,
            });
        }
        let labels = read_labels(labels_path)?;
        if labels.len() != images.count {
            return Err(DataError::CountMismatch {
                images: images_path.into(),
                image_count: images.count,
                labels: labels_path.into(),
                label_count: labels.len(),
            });
        }
        if let Some((index, &label)) = labels.iter().enumerate().find(|(_, l)| **l > 9) {
            return Err(DataError::LabelOutOfRange {
                path: labels_path.into(),
                index,
                label,
            });
        }
        Ok(Self {
            pixels: Arc::new(images.pixels),
            labels: Arc::new(labels),
            start: 0,
            len: images.count,
        })
    }
}

impl Dataset<MnistItem> for MnistDataset {
    /// In memory, so never an error; like slice indexing, an index past the end panics.
    fn get(&self, index: usize) -> Result<MnistItem, DatasetError> {
        assert!(
            index < self.len,
            "index {index} out of a dataset of {}",
            self.len
        );
        let i = self.start + index;
        let pixels = self.pixels[i * PIXELS..(i + 1) * PIXELS]
            .try_into()
            .expect("784 bytes");
        Ok(MnistItem {
            pixels,
            label: self.labels[i],
        })
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// The content SHA-256 (decompressed) of the standard files in `dir` that `splits` read, by
/// name: what a run records to know, when it is resumed, that it reads the data it started
/// with. A missing file is the same error as for [`MnistDataset::load`].
pub fn content_sha256s(dir: &Path, splits: &[Split]) -> Result<Vec<(String, String)>, DataError> {
    let reads_training_file = splits.iter().any(|split| *split != Split::Test);
    let reads_test_file = splits.contains(&Split::Test);
    // FILES holds the two training files, then the two test files.
    let read = [
        reads_training_file,
        reads_training_file,
        reads_test_file,
        reads_test_file,
    ];
    let paths = locate_files(dir)?;
    FILES
        .iter()
        .zip(paths)
        .zip(read)
        .filter(|(_, read)| *read)
        .map(|((name, path), _)| Ok((name.to_string(), crate::idx::content_sha256(&path)?)))
        .collect()
}

/// The standard file `name` in `dir`, gzipped (`NAME.gz`, preferred) or not (`NAME`).
pub(crate) fn locate(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(format!("{name}.gz")), dir.join(name)]
        .into_iter()
        .find(|path| path.is_file())
}

/// Finds each standard file in `dir` with [`locate`].
fn locate_files(dir: &Path) -> Result<[PathBuf; 4], DataError> {
    let found = FILES.map(|name| locate(dir, name));
    let missing: Vec<&str> = FILES
        .iter()
        .zip(&found)
        .filter(|(_, path)| path.is_none())
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(DataError::MissingFiles {
            dir: dir.into(),
            missing: missing.join(", "),
            all: FILES.map(|name| format!("{name}.gz")).join(", "),
        });
    }
    Ok(found.map(|path| path.expect("checked above")))
}

/// Where the data directory came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirSource {
    /// Named on the command line.
    Given,
    /// Named by `$MNIST_DIR`.
    Environment,
    /// Neither: the cache directory, which the program may fill by downloading.
    Cache,
}

/// The data directory: the one given, else `$MNIST_DIR`, else [`default_data_dir`].
pub fn resolve_data_dir(given: Option<&Path>) -> (PathBuf, DataDirSource) {
    if let Some(dir) = given {
        return (dir.to_path_buf(), DataDirSource::Given);
    }
    match std::env::var_os("MNIST_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => (PathBuf::from(dir), DataDirSource::Environment),
        None => (default_data_dir(), DataDirSource::Cache),
    }
}

/// `$XDG_CACHE_HOME/vit-mnist/mnist`, else `~/.cache/vit-mnist/mnist`.
pub fn default_data_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("vit-mnist").join("mnist")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::encode;

    /// Writes a tiny MNIST directory: `train` training images (image i filled with i, label
    /// i % 10) and 3 test images.
    fn tiny_mnist(dir: &Path, train: u32) {
        let images = |n: u32| {
            encode(
                &[n, 28, 28],
                &(0..n).flat_map(|i| [i as u8; PIXELS]).collect::<Vec<_>>(),
            )
        };
        let labels = |n: u32| encode(&[n], &(0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>());
        std::fs::write(dir.join(FILES[0]), images(train)).unwrap();
        std::fs::write(dir.join(FILES[1]), labels(train)).unwrap();
        std::fs::write(dir.join(FILES[2]), images(3)).unwrap();
        std::fs::write(dir.join(FILES[3]), labels(3)).unwrap();
    }

    #[test]
    fn validation_is_held_out_of_the_end_of_training() {
        let dir = tempfile::tempdir().unwrap();
        tiny_mnist(dir.path(), 12);
        let config = DataConfig {
            valid_size: 4,
            ..DataConfig::default()
        };
        let train = MnistDataset::load(dir.path(), Split::Train, &config).unwrap();
        let valid = MnistDataset::load(dir.path(), Split::Valid, &config).unwrap();
        let test = MnistDataset::load(dir.path(), Split::Test, &config).unwrap();
        assert_eq!((train.len(), valid.len(), test.len()), (8, 4, 3));
        assert_eq!(train.get(7).unwrap().pixels[0], 7);
        assert_eq!(valid.get(0).unwrap().pixels[0], 8);
        assert_eq!(valid.get(3).unwrap().label, 1);
    }

    #[test]
    fn limits_trim_the_splits() {
        let dir = tempfile::tempdir().unwrap();
        tiny_mnist(dir.path(), 12);
        let config = DataConfig {
            valid_size: 4,
            train_limit: Some(5),
            eval_limit: Some(2),
        };
        assert_eq!(
            MnistDataset::load(dir.path(), Split::Train, &config)
                .unwrap()
                .len(),
            5
        );
        assert_eq!(
            MnistDataset::load(dir.path(), Split::Valid, &config)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            MnistDataset::load(dir.path(), Split::Test, &config)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn missing_files_are_listed_with_where_to_put_them() {
        let dir = tempfile::tempdir().unwrap();
        tiny_mnist(dir.path(), 12);
        std::fs::remove_file(dir.path().join(FILES[3])).unwrap();
        let error =
            MnistDataset::load(dir.path(), Split::Train, &DataConfig::default()).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("missing t10k-labels-idx1-ubyte."),
            "{message}"
        );
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("MNIST_DIR"), "{message}");
    }

    #[test]
    fn images_and_labels_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        tiny_mnist(dir.path(), 12);
        std::fs::write(dir.path().join(FILES[1]), encode(&[11], &[0; 11])).unwrap();
        let error =
            MnistDataset::load(dir.path(), Split::Train, &DataConfig::default()).unwrap_err();
        assert!(
            matches!(
                error,
                DataError::CountMismatch {
                    image_count: 12,
                    label_count: 11,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn labels_must_be_digits() {
        let dir = tempfile::tempdir().unwrap();
        tiny_mnist(dir.path(), 3);
        std::fs::write(dir.path().join(FILES[3]), encode(&[3], &[1, 10, 2])).unwrap();
        let error =
            MnistDataset::load(dir.path(), Split::Test, &DataConfig::default()).unwrap_err();
        assert!(
            matches!(
                error,
                DataError::LabelOutOfRange {
                    index: 1,
                    label: 10,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn images_must_be_28_by_28() {
        let dir = tempfile::tempdir().unwrap();
        tiny_mnist(dir.path(), 3);
        std::fs::write(dir.path().join(FILES[2]), encode(&[3, 2, 2], &[0; 12])).unwrap();
        let error =
            MnistDataset::load(dir.path(), Split::Test, &DataConfig::default()).unwrap_err();
        assert!(
            matches!(
                error,
                DataError::ImageSize {
                    rows: 2,
                    cols: 2,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn a_validation_split_larger_than_training_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        tiny_mnist(dir.path(), 3);
        let config = DataConfig {
            valid_size: 3,
            ..DataConfig::default()
        };
        let error = MnistDataset::load(dir.path(), Split::Train, &config).unwrap_err();
        assert!(
            matches!(error, DataError::SplitTooLarge { valid: 3, total: 3 }),
            "{error}"
        );
    }

    #[test]
    fn an_explicit_directory_wins_over_the_environment() {
        let given = Path::new("/given");
        assert_eq!(
            resolve_data_dir(Some(given)),
            (given.to_path_buf(), DataDirSource::Given)
        );
    }
}
