//! Fetching MNIST when it is not on disk. Several public mirrors are tried in order. The `.gz`
//! bytes differ between correct copies, but the decompressed IDX content does not, so that is
//! what each download is checked against, in memory, before it is written (atomically) into
//! the cache. Files already in the cache are checked the same way each time they are used.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{DataError, FILES, idx};

/// Public copies of the MNIST files, tried in this order (`<mirror><file>.gz`).
pub const MIRRORS: [&str; 3] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
];

/// SHA-256 of each file's decompressed IDX content, in the order of [`FILES`].
pub const SHA256: [&str; 4] = [
    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
];

/// The variable that replaces [`MIRRORS`] with a comma-separated list of base URLs.
pub const MIRRORS_VAR: &str = "MNIST_MIRRORS";

/// No MNIST file is anywhere near this large; a server that sends more is wrong.
const MAX_DOWNLOAD_BYTES: u64 = 128 << 20;
/// The largest MNIST file holds 47,040,016 bytes of content; a download that inflates past
/// this is refused as soon as it does, not after filling memory or disk.
pub const MAX_CONTENT_BYTES: u64 = 64 << 20;

/// The mirrors to use: `$MNIST_MIRRORS` if set, else [`MIRRORS`].
pub fn mirrors() -> Vec<String> {
    match std::env::var(MIRRORS_VAR) {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|m| m.trim().to_string()).collect()
        }
        _ => MIRRORS.iter().map(ToString::to_string).collect(),
    }
}

/// Downloads every standard MNIST file that `dir` lacks (as `NAME` or `NAME.gz`) and checks
/// the content of those it has.
pub fn ensure_mnist(dir: &Path, mirrors: &[String]) -> Result<(), DataError> {
    let expected: Vec<(&str, &str)> = FILES.into_iter().zip(SHA256).collect();
    ensure_files(dir, &expected, mirrors)
}

/// For each `(name, content SHA-256)`: a file found in `dir` must have that content (a cache
/// can rot); a missing one is fetched from the mirrors.
pub fn ensure_files(
    dir: &Path,
    expected: &[(&str, &str)],
    mirrors: &[String],
) -> Result<(), DataError> {
    for &(name, sha256) in expected {
        match crate::mnist::locate(dir, name) {
            Some(path) => {
                let content = idx::content_sha256(&path)?;
                if content != sha256 {
                    return Err(DataError::WrongContent {
                        path,
                        found: content,
                        expected: sha256.into(),
                    });
                }
            }
            None => {
                fetch_file(dir, name, sha256, mirrors)?;
            }
        }
    }
    Ok(())
}

/// Fetches `<mirror><name>.gz` from the first mirror whose copy decompresses to content with
/// the given SHA-256, and stores it as `dir/<name>.gz`.
pub fn fetch_file(
    dir: &Path,
    name: &str,
    sha256: &str,
    mirrors: &[String],
) -> Result<PathBuf, DataError> {
    std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
        path: dir.into(),
        source,
    })?;
    let target = dir.join(format!("{name}.gz"));
    let mut failures = Vec::new();
    for mirror in mirrors {
        let url = format!("{mirror}{name}.gz");
        let outcome = download(&url).and_then(|bytes| {
            let found = idx::bytes_content_sha256(&bytes, MAX_CONTENT_BYTES)
                .map_err(|error| error.to_string())?;
            Ok((bytes, found))
        });
        match outcome {
            Ok((bytes, found)) if found == sha256 => {
                vit_model::files::write_atomically(&target, |file| file.write_all(&bytes))
                    .map_err(|source| DataError::Io {
                        path: target.clone(),
                        source,
                    })?;
                return Ok(target);
            }
            Ok((_, found)) => failures.push(format!(
                "{url}: wrong content (SHA-256 {found}, expected {sha256})"
            )),
            Err(reason) => failures.push(format!("{url}: {reason}")),
        }
    }
    Err(DataError::Download {
        file: format!("{name}.gz"),
        dir: dir.into(),
        attempts: failures.join("\n  "),
    })
}

/// The body of `url`, at most [`MAX_DOWNLOAD_BYTES`], with a progress bar on a terminal.
fn download(url: &str) -> Result<Vec<u8>, String> {
    let agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_body(Some(Duration::from_secs(300)))
        .build()
        .new_agent();
    let response = agent.get(url).call().map_err(|error| error.to_string())?;
    let total = response.body().content_length();
    let mut body = response
        .into_body()
        .into_with_config()
        .limit(MAX_DOWNLOAD_BYTES)
        .reader();
    let mut bytes = Vec::new();
    let mut progress = Progress::new(url, total);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = body
            .read(&mut buffer)
            .map_err(|error| format!("download broke off: {error}"))?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buffer[..n]);
        progress.advance(n as u64);
    }
    progress.finish();
    Ok(bytes)
}

/// A one-line progress bar on stderr when it is a terminal; a start and an end line otherwise.
struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    terminal: bool,
    last_draw: Instant,
}

impl Progress {
    fn new(url: &str, total: Option<u64>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        if !terminal {
            eprintln!("downloading {url}");
        }
        Self {
            label: url.to_string(),
            total,
            done: 0,
            terminal,
            last_draw: Instant::now(),
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if self.terminal && self.last_draw.elapsed() > Duration::from_millis(100) {
            self.last_draw = Instant::now();
            self.draw();
        }
    }

    fn draw(&self) {
        const WIDTH: u64 = 30;
        let megabytes = self.done as f64 / 1e6;
        match self.total {
            Some(total) if total > 0 => {
                let filled = (WIDTH * self.done.min(total) / total) as usize;
                eprint!(
                    "\r{} [{}{}] {megabytes:.1}/{:.1} MB",
                    self.label,
                    "#".repeat(filled),
                    " ".repeat(WIDTH as usize - filled),
                    total as f64 / 1e6
                );
            }
            _ => eprint!("\r{} {megabytes:.1} MB", self.label),
        }
    }

    fn finish(&self) {
        if self.terminal {
            self.draw();
            eprintln!();
        } else {
            eprintln!("downloaded {:.1} MB", self.done as f64 / 1e6);
        }
    }
}
