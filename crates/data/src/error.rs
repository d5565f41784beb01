//! Everything that can be wrong with the data, each naming the file at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: not an IDX {kind} file: magic number {found:#010x}, expected {expected:#010x}"
    )]
    BadMagic {
        path: PathBuf,
        kind: &'static str,
        found: u32,
        expected: u32,
    },
    #[error(
        "{path}: file ends inside the {what} (at most {found} bytes where {expected} are needed)"
    )]
    Truncated {
        path: PathBuf,
        what: &'static str,
        expected: u64,
        found: u64,
    },
    #[error("{path}: {extra} unexpected bytes after the last item the header announces")]
    TrailingBytes { path: PathBuf, extra: u64 },
    #[error("{path}: images are {rows}x{cols}, expected {expected}x{expected}")]
    ImageSize {
        path: PathBuf,
        rows: u32,
        cols: u32,
        expected: usize,
    },
    #[error("{images}: {image_count} images but {labels} has {label_count} labels")]
    CountMismatch {
        images: PathBuf,
        image_count: usize,
        labels: PathBuf,
        label_count: usize,
    },
    #[error("{path}: label {label} at index {index} is not a digit 0-9")]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        label: u8,
    },
    #[error(
        "MNIST not found in {dir}: missing {missing}.\n\
         Put the four standard files there (gzipped or not): {all}.\n\
         Or point at a directory that has them with --data-dir DIR or MNIST_DIR=DIR."
    )]
    MissingFiles {
        dir: PathBuf,
        missing: String,
        all: String,
    },
    #[error("validation split of {valid} images leaves none of the {total} training images")]
    SplitTooLarge { valid: usize, total: usize },
    #[error(
        "could not download {file} into {dir}; tried:\n  {attempts}\n\
         Put the four MNIST files there by hand, or point at a directory that has them with \
         --data-dir DIR or MNIST_DIR=DIR."
    )]
    Download {
        file: String,
        dir: PathBuf,
        attempts: String,
    },
    #[error(
        "{path}: wrong content (SHA-256 {found}, expected {expected}): the file is damaged or \
         not the standard MNIST file. Delete it and it is downloaded again."
    )]
    WrongContent {
        path: PathBuf,
        found: String,
        expected: String,
    },
}
