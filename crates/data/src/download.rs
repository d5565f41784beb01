//! Fetching MNIST when it is not on disk. Several public mirrors are tried in order. The `.gz`
//! bytes differ between correct copies, but the decompressed IDX content does not, so that is
//! what each download is checked against. Files are written to a temporary name in the target
//! directory and renamed only once they check out.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};

use crate::{DataError, FILES};

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

/// The mirrors to use: `$MNIST_MIRRORS` if set, else [`MIRRORS`].
pub fn mirrors() -> Vec<String> {
    match std::env::var(MIRRORS_VAR) {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|m| m.trim().to_string()).collect()
        }
        _ => MIRRORS.iter().map(ToString::to_string).collect(),
    }
}

/// Downloads every standard MNIST file that `dir` lacks (as `NAME` or `NAME.gz`).
pub fn ensure_mnist(dir: &Path, mirrors: &[String]) -> Result<(), DataError> {
    for (name, sha256) in FILES.iter().zip(SHA256) {
        if !dir.join(name).is_file() && !dir.join(format!("{name}.gz")).is_file() {
            fetch_file(dir, name, sha256, mirrors)?;
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
    let partial = dir.join(format!("{name}.gz.partial"));
    let mut failures = Vec::new();
    for mirror in mirrors {
        let url = format!("{mirror}{name}.gz");
        let outcome = download(&url, &partial).and_then(|()| content_sha256(&partial));
        match outcome {
            Ok(found) if found == sha256 => {
                std::fs::rename(&partial, &target).map_err(|source| DataError::Io {
                    path: target.clone(),
                    source,
                })?;
                return Ok(target);
            }
            Ok(found) => failures.push(format!(
                "{url}: wrong content (SHA-256 {found}, expected {sha256})"
            )),
            Err(reason) => failures.push(format!("{url}: {reason}")),
        }
        let _ = std::fs::remove_file(&partial);
    }
    Err(DataError::Download {
        file: format!("{name}.gz"),
        dir: dir.into(),
        attempts: failures.join("\n  "),
    })
}

/// Streams `url` into `path`, with a progress bar on a terminal.
fn download(url: &str, path: &Path) -> Result<(), String> {
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
    let mut file =
        File::create(path).map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    let mut progress = Progress::new(url, total);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = body
            .read(&mut buffer)
            .map_err(|error| format!("download broke off: {error}"))?;
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n])
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        progress.advance(n as u64);
    }
    progress.finish();
    file.sync_all()
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// SHA-256 of the file's content, decompressed if it is gzipped.
fn content_sha256(path: &Path) -> Result<String, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|error| error.to_string())?;
    let mut hasher = Sha256::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut content = Vec::new();
        GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut content)
            .map_err(|error| format!("not a complete gzip file: {error}"))?;
        hasher.update(&content);
    } else {
        hasher.update(&bytes);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
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
