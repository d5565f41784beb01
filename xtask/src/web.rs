//! `cargo xtask web --run-dir R --out DIR`: a folder any static host can serve, with a page that
//! classifies a drawn or uploaded digit in the browser: the page (`crates/onnx/web`), the run's
//! model as `model.onnx`, and onnxruntime-web's script and WebAssembly from npm (no CDN).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the page's sources and its npm package (onnxruntime-web) live.
const WEB_DIR: &str = "crates/onnx/web";
/// The page's own files, copied as they are.
const PAGE_FILES: [&str; 3] = ["index.html", "page.js", "mnist-style.js"];
/// onnxruntime-web's files the page loads (WebAssembly backend only), copied into `ort/`.
const RUNTIME_FILES: [&str; 3] = [
    "ort.wasm.min.js",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
];

#[derive(clap::Args)]
pub struct Args {
    /// The run whose model the page runs.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// The folder to write; it must be new or empty unless --force.
    #[arg(long)]
    out: PathBuf,
    /// Write into a folder that holds files already (files of the same names are replaced).
    #[arg(long)]
    force: bool,
}

/// Writes the folder; `export` writes the run's `model.onnx` to the path it is given.
pub fn run(args: &Args, export: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), String> {
    let in_use = args
        .out
        .read_dir()
        .is_ok_and(|mut entries| entries.next().is_some());
    if args.out.is_file() || (in_use && !args.force) {
        return Err(format!(
            "{} already exists and is not an empty folder: pass --force to write into it",
            args.out.display()
        ));
    }
    let runtime = runtime_dir()?;
    let created = !args.out.exists();
    let written = write_folder(&args.out, &runtime, export);
    if written.is_err() && created {
        // A folder this command made and could not finish is not left behind.
        let _ = fs::remove_dir_all(&args.out);
    }
    written?;
    println!(
        "wrote {0}: open it from any static web server, e.g. `python3 -m http.server -d {0}` \
         and http://localhost:8000/",
        args.out.display()
    );
    Ok(())
}

fn write_folder(
    out: &Path,
    runtime: &Path,
    export: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    let ort = out.join("ort");
    fs::create_dir_all(&ort).map_err(|error| format!("{}: {error}", ort.display()))?;
    export(&out.join("model.onnx"))?;
    let web = Path::new(WEB_DIR);
    for name in PAGE_FILES {
        copy(&web.join(name), &out.join(name))?;
    }
    for name in RUNTIME_FILES {
        copy(&runtime.join(name), &ort.join(name))?;
    }
    Ok(())
}

/// onnxruntime-web's `dist/`, installed from npm (`npm ci` in `crates/onnx/web`) when missing.
fn runtime_dir() -> Result<PathBuf, String> {
    let dist = Path::new(WEB_DIR).join("node_modules/onnxruntime-web/dist");
    if !dist.join(RUNTIME_FILES[0]).is_file() {
        println!("installing onnxruntime-web from npm into {WEB_DIR}/node_modules");
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix", WEB_DIR])
            .status()
            .map_err(|error| format!("cannot run npm (Node.js's package manager): {error}"))?;
        if !status.success() {
            return Err(format!("`npm ci --prefix {WEB_DIR}` failed ({status})"));
        }
    }
    Ok(dist)
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    fs::copy(from, to).map(drop).map_err(|error| {
        format!(
            "cannot copy {} to {}: {error}",
            from.display(),
            to.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder with files in it is the user's: without --force nothing is written or exported.
    #[test]
    fn a_folder_in_use_is_refused_without_force() {
        let out = std::env::temp_dir().join(format!("vit-web-test-{}", std::process::id()));
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("notes.txt"), "mine").unwrap();
        let args = Args {
            run_dir: "artifacts/any".into(),
            out: out.clone(),
            force: false,
        };
        let error = run(&args, |_| panic!("nothing is exported")).unwrap_err();
        assert!(error.contains("--force"), "{error}");
        assert_eq!(fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
        assert_eq!(fs::read_dir(&out).unwrap().count(), 1);
        fs::remove_dir_all(&out).unwrap();
    }
}
