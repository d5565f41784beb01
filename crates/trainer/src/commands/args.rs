//! The arguments several commands share: where the data is, which run to read, and which
//! views a prediction averages over.

use std::path::{Path, PathBuf};

use vit_data::{DataDirSource, download, resolve_data_dir};
use vit_model::Views;

use crate::run_dir::RunDir;

/// Where the MNIST files are.
#[derive(clap::Args)]
pub(super) struct DataArgs {
    /// Directory with the four MNIST files [default: $MNIST_DIR, else ~/.cache/vit-mnist/mnist].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl DataArgs {
    /// The MNIST directory. Only the default cache directory is filled from the mirrors: a
    /// directory the user named is theirs, and missing files there are an error.
    pub(super) fn dir(&self) -> anyhow::Result<PathBuf> {
        let (dir, source) = resolve_data_dir(self.data_dir.as_deref());
        if source == DataDirSource::Cache {
            download::ensure_mnist(&dir, &download::mirrors())?;
        }
        Ok(dir)
    }
}

/// Which run a command reads.
#[derive(clap::Args)]
pub(super) struct RunArgs {
    /// A run directory [default: the newest finished run under artifacts/].
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

impl RunArgs {
    pub(super) fn open(&self) -> anyhow::Result<RunDir> {
        match &self.run_dir {
            Some(path) => RunDir::open(path),
            None => RunDir::latest(Path::new("artifacts")),
        }
    }
}

/// The views a prediction averages over: the image alone, or with its four one-pixel shifts.
pub(super) fn views(tta: bool) -> Views {
    if tta { Views::Shifted } else { Views::Single }
}
