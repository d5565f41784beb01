//! The backends as the xtask sees them: their names (each a cargo feature of the trainer), what
//! each needs on the machine, and the environment a build or run with them gets.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The backends, each the name of a cargo feature of the trainer.
pub const BACKENDS: [&str; 4] = ["flex", "ndarray", "wgpu", "tch"];
/// Always in the test build: the unit tests are written against them and they need nothing.
pub const CPU_BACKENDS: [&str; 2] = ["flex", "ndarray"];
/// The trainer's feature for Burn compute servers: in the test build, and in a trainer's own
/// build when the command serves or uses one.
pub const REMOTE_FEATURE: &str = "remote";
/// The faster CPU backend on the reference machine (README, "Backends").
pub const DEFAULT_BACKEND: &str = "flex";
/// The libtorch version torch-sys 0.22 is written against.
pub const TORCH_VERSION: &str = "2.9.0";

/// Splits every `--backend B` / `--backend=B` out of the arguments meant for the trainer.
pub fn take_backends(args: &[String]) -> Result<(Vec<String>, Vec<String>), String> {
    let mut backends = Vec::new();
    let mut rest = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let backend = if arg == "--backend" {
            args.next().ok_or("--backend needs a value")?.clone()
        } else if let Some(value) = arg.strip_prefix("--backend=") {
            value.to_string()
        } else {
            rest.push(arg.clone());
            continue;
        };
        if !BACKENDS.contains(&backend.as_str()) {
            return Err(format!(
                "unknown backend `{backend}`; choose one of {}",
                BACKENDS.join(", ")
            ));
        }
        if !backends.contains(&backend) {
            backends.push(backend);
        }
    }
    Ok((backends, rest))
}

/// Checks that `backend` can be built and run here, and gives `command` (a cargo or a program
/// built with it) the environment it needs. The error says what is missing and what installs it.
pub fn prepare(backend: &str, command: &mut Command) -> Result<(), String> {
    match backend {
        "wgpu" => {
            // The Vulkan loader complains on every start without a runtime directory.
            if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
                command.env("XDG_RUNTIME_DIR", std::env::temp_dir());
            }
            vulkan_driver().map(drop)
        }
        "tch" => {
            let torch = Torch::find()?;
            torch.apply(command);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The Vulkan driver manifest wgpu will load on Linux (other systems bring Metal or DX12).
pub fn vulkan_driver() -> Result<Option<PathBuf>, String> {
    let named = ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"]
        .iter()
        .any(|variable| std::env::var_os(variable).is_some());
    if !cfg!(target_os = "linux") || named {
        return Ok(None);
    }
    let manifests = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "json"));
    manifests.map(Some).ok_or_else(|| {
        "wgpu needs a Vulkan driver and none is installed (no manifest in \
         /usr/share/vulkan/icd.d): run `cargo xtask setup --backend wgpu`, which installs \
         Debian's software Vulkan (`apt-get install mesa-vulkan-drivers libvulkan1`), or \
         install your GPU vendor's driver"
            .to_string()
    })
}

/// Where libtorch is: an unpacked libtorch the user named with `LIBTORCH`, or the torch wheel
/// in the project's Python venv.
pub enum Torch {
    Unpacked { lib: PathBuf },
    Venv { venv: PathBuf, lib: PathBuf },
}

impl Torch {
    /// The venv `cargo xtask setup --backend tch` fills: `$VIT_TORCH_VENV`, else
    /// `~/.cache/vit-mnist/venv`.
    pub fn venv_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("VIT_TORCH_VENV") {
            return dir.into();
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
        Path::new(&home).join(".cache/vit-mnist/venv")
    }

    pub fn find() -> Result<Torch, String> {
        if let Some(libtorch) = std::env::var_os("LIBTORCH") {
            let lib = Path::new(&libtorch).join("lib");
            if !lib.join("libtorch_cpu.so").is_file() && cfg!(target_os = "linux") {
                return Err(format!(
                    "LIBTORCH={} has no lib/libtorch_cpu.so: point it at an unpacked libtorch \
                     {TORCH_VERSION}, or unset it and run `cargo xtask setup --backend tch`",
                    lib.parent().unwrap_or(&lib).display()
                ));
            }
            return Ok(Torch::Unpacked { lib });
        }
        let venv = Self::venv_dir();
        match torch_lib_in(&venv) {
            Some(lib) => Ok(Torch::Venv { venv, lib }),
            None => Err(format!(
                "the tch backend needs libtorch {TORCH_VERSION} and there is none in {}: run \
                 `cargo xtask setup --backend tch` (a Python venv with pip's \
                 torch=={TORCH_VERSION}, about 6 GB), or set LIBTORCH to an unpacked libtorch \
                 {TORCH_VERSION}",
                venv.display()
            )),
        }
    }

    /// torch-sys finds the headers through the venv's Python (`LIBTORCH_USE_PYTORCH`); the
    /// program finds the shared libraries through `LD_LIBRARY_PATH`.
    pub fn apply(&self, command: &mut Command) {
        let lib = match self {
            Torch::Unpacked { lib } => lib,
            Torch::Venv { venv, lib } => {
                let path = std::env::var_os("PATH").unwrap_or_default();
                let mut paths = vec![venv.join("bin")];
                paths.extend(std::env::split_paths(&path));
                command
                    .env("VIRTUAL_ENV", venv)
                    .env("PATH", std::env::join_paths(paths).expect("PATH entries"))
                    .env("LIBTORCH_USE_PYTORCH", "1");
                lib
            }
        };
        let mut libraries = vec![lib.clone()];
        if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH") {
            libraries.extend(std::env::split_paths(&existing));
        }
        command.env(
            "LD_LIBRARY_PATH",
            std::env::join_paths(libraries).expect("library paths"),
        );
    }

    /// The venv's Python, for the PyTorch reference scripts.
    pub fn python(&self) -> Option<PathBuf> {
        match self {
            Torch::Venv { venv, .. } => Some(venv.join("bin/python")),
            Torch::Unpacked { .. } => None,
        }
    }
}

/// `<venv>/lib/python3.*/site-packages/torch/lib`, when it holds libtorch.
fn torch_lib_in(venv: &Path) -> Option<PathBuf> {
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("site-packages/torch/lib"))
        .find(|lib| lib.join("libtorch_cpu.so").is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn backend_is_taken_out_and_the_rest_passed_on() {
        let (backends, rest) =
            take_backends(&strings(&["--config", "c.json", "--backend", "ndarray"])).unwrap();
        assert_eq!(
            (backends, rest),
            (strings(&["ndarray"]), strings(&["--config", "c.json"]))
        );
        let (backends, _) = take_backends(&strings(&["--backend=tch"])).unwrap();
        assert_eq!(backends, strings(&["tch"]));
    }

    #[test]
    fn several_backends_are_kept_once_each_in_order() {
        let args = strings(&["--backend", "tch", "--backend=flex", "--backend", "tch"]);
        let (backends, rest) = take_backends(&args).unwrap();
        assert_eq!(backends, strings(&["tch", "flex"]));
        assert!(rest.is_empty());
    }

    #[test]
    fn no_backend_and_unknown_backends() {
        assert!(take_backends(&[]).unwrap().0.is_empty());
        let error = take_backends(&strings(&["--backend", "cuda"])).unwrap_err();
        assert!(error.contains("cuda") && error.contains("flex"), "{error}");
        assert!(take_backends(&strings(&["--backend"])).is_err());
    }

    #[test]
    fn every_backend_is_a_trainer_feature() {
        let manifest = include_str!("../../crates/trainer/Cargo.toml");
        for backend in BACKENDS {
            assert!(
                manifest.contains(&format!("\n{backend} = [")),
                "trainer has no `{backend}` feature"
            );
        }
    }

    #[test]
    fn torch_is_found_in_the_venv_site_packages() {
        let empty = tempfile_dir();
        assert!(torch_lib_in(&empty).is_none());
        let lib = empty.join("lib/python3.11/site-packages/torch/lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libtorch_cpu.so"), b"").unwrap();
        assert_eq!(torch_lib_in(&empty), Some(lib));
        std::fs::remove_dir_all(&empty).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
