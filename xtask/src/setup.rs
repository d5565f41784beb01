//! `cargo xtask setup [--backend B]…`: installs what a backend needs beyond Rust, once.
//! Running it again finds everything in place and changes nothing.
//!
//! - wgpu: a Vulkan driver; without one, Debian's software Vulkan (lavapipe) via apt-get.
//! - tch: libtorch, as pip's `torch` wheel in a venv (`~/.cache/vit-mnist/venv`), with the
//!   packages the Python tools use (safetensors, numpy, onnx, onnxruntime).
//! - flex, ndarray: nothing.

use std::process::Command;

use crate::backend::{BACKENDS, TORCH_VERSION, Torch, vulkan_driver};

const VULKAN_PACKAGES: [&str; 2] = ["mesa-vulkan-drivers", "libvulkan1"];
/// The ONNX package (`onnx.checker`) the venv gets beside torch.
const ONNX_VERSION: &str = "1.23.2";
/// The ONNX Runtime the exported model is checked and timed in.
const ONNX_RUNTIME_VERSION: &str = "1.32.0";

/// Sets up `backends` (all of them when empty).
pub fn run(backends: &[String]) -> Result<(), String> {
    let all: Vec<String> = BACKENDS.iter().map(ToString::to_string).collect();
    for backend in if backends.is_empty() { &all } else { backends } {
        match backend.as_str() {
            "wgpu" => vulkan()?,
            "tch" => torch()?,
            other => println!("{other}: needs nothing beyond Rust"),
        }
    }
    Ok(())
}

fn vulkan() -> Result<(), String> {
    if let Ok(found) = vulkan_driver() {
        let found = found.map_or("VK_ICD_FILENAMES or the system's own API".into(), |path| {
            path.parent().unwrap_or(&path).display().to_string()
        });
        println!("wgpu: Vulkan drivers present ({found})");
        return Ok(());
    }
    let is_root = output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0");
    if !is_root || output(Command::new("apt-get").arg("--version")).is_err() {
        return Err(format!(
            "wgpu: no Vulkan driver. On Debian/Ubuntu, as root: `apt-get install -y {}` (a \
             software Vulkan that runs on the CPU); elsewhere, your GPU vendor's driver",
            VULKAN_PACKAGES.join(" ")
        ));
    }
    println!("wgpu: installing {}", VULKAN_PACKAGES.join(" "));
    let install = || {
        status(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(VULKAN_PACKAGES),
        )
    };
    // A fresh machine's package lists may be empty or stale: refresh them once and retry.
    install()
        .or_else(|_| status(Command::new("apt-get").arg("update")).and_then(|()| install()))?;
    vulkan_driver().map(drop)
}

fn torch() -> Result<(), String> {
    if let Ok(torch) = Torch::find() {
        match torch.python() {
            Some(python) if torch_version(&python).is_some() => {
                println!("tch: torch {TORCH_VERSION} present ({})", python.display());
                return Ok(());
            }
            None => {
                println!(
                    "tch: using LIBTORCH={}",
                    std::env::var("LIBTORCH").unwrap_or_default()
                );
                return Ok(());
            }
            Some(_) => {}
        }
    }
    let venv = Torch::venv_dir();
    let python = venv.join("bin/python");
    if !python.is_file() {
        println!("tch: creating the venv {}", venv.display());
        status(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    println!(
        "tch: installing torch=={TORCH_VERSION} into {} (about 6 GB)",
        venv.display()
    );
    status(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        &format!("torch=={TORCH_VERSION}"),
        "safetensors",
        "numpy",
        // For `cargo xtask onnx`: the exported model checked and timed in ONNX Runtime.
        &format!("onnx=={ONNX_VERSION}"),
        &format!("onnxruntime=={ONNX_RUNTIME_VERSION}"),
    ]))?;
    match torch_version(&python) {
        Some(version) => {
            println!("tch: torch {version} installed");
            Ok(())
        }
        None => Err(format!(
            "tch: torch {TORCH_VERSION} did not install into {}",
            venv.display()
        )),
    }
}

/// The venv's torch version, when it is the one torch-sys wants and the other packages the
/// Python tools import are there.
fn torch_version(python: &std::path::Path) -> Option<String> {
    let script = "import torch, safetensors, numpy, onnx, onnxruntime; print(torch.__version__)";
    let version = output(Command::new(python).args(["-c", script])).ok()?;
    let version = version.trim().to_string();
    version.starts_with(TORCH_VERSION).then_some(version)
}

fn status(command: &mut Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|error| format!("cannot run {command:?}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({status})"))
    }
}

fn output(command: &mut Command) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|error| format!("cannot run {command:?}: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("{command:?} failed ({})", output.status))
    }
}
