//! Writing files whole or not at all, and the error a saved model's files give: what the
//! artifact and interchange modules (and the data crate, the charts and the bench report) share.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::ConfigError;

/// Why a model could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid model config: {source}")]
    ConfigJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    InvalidConfig { path: PathBuf, source: ConfigError },
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("{path}: the weights do not fit the network of {config}: {message}")]
    Record {
        path: PathBuf,
        config: PathBuf,
        message: String,
    },
}

/// Writes the file at `path` whole or not at all: `write` fills a temporary sibling, which is
/// flushed to disk and renamed over `path`, so a reader never sees half a file and a write cut
/// short leaves the previous file as it was. The one way this workspace writes its files.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let temporary = temporary_sibling(path);
    let written = fs::File::create(&temporary).and_then(|file| {
        let mut buffered = BufWriter::new(file);
        write(&mut buffered)?;
        buffered.into_inner()?.sync_all()
    });
    let renamed = written.and_then(|()| fs::rename(&temporary, path));
    if renamed.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    renamed
}

/// [`write_atomically`] of `bytes`, naming the file in the error.
pub(crate) fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    write_atomically(path, |file| file.write_all(bytes)).map_err(|source| ArtifactError::Io {
        path: path.into(),
        source,
    })
}

/// `<path>.tmp`: where a file is written before it is renamed into place.
fn temporary_sibling(path: &Path) -> PathBuf {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    PathBuf::from(temporary)
}
