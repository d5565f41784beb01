//! Why an export fails.

use std::path::PathBuf;

/// Why a model could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the model's weights do not match its config: {0}")]
    Weights(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
