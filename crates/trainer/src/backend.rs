//! Which compiled-in backend runs. Burn picks one (GPUs first) unless `BURN_DEVICE` names
//! another; this module checks that choice before Burn sees it and starts the backend once, so
//! an unknown name or a missing GPU driver is an error message with a remedy, not a panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail};
use burn::prelude::*;

/// The variable Burn reads to choose among compiled-in backends.
pub const DEVICE_VARIABLE: &str = "BURN_DEVICE";

/// The backends this build holds, by name, with a device of each, in the order Burn prefers
/// them. Devices start lazily: listing them runs nothing. The one list of compiled backends
/// (the trainer, the benchmark and the agreement tests all use it).
#[allow(deprecated)]
pub fn compiled_devices() -> Vec<(&'static str, Device)> {
    let mut devices = Vec::new();
    #[cfg(feature = "wgpu")]
    devices.push(("wgpu", Device::wgpu(Default::default())));
    #[cfg(feature = "tch")]
    devices.push(("tch", Device::libtorch()));
    #[cfg(feature = "flex")]
    devices.push(("flex", Device::flex()));
    #[cfg(feature = "ndarray")]
    devices.push(("ndarray", Device::ndarray()));
    devices
}

/// The names of [`compiled_devices`].
pub fn compiled() -> Vec<&'static str> {
    compiled_devices()
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// The device of the chosen backend, started and ready.
pub fn select() -> anyhow::Result<Device> {
    let compiled = compiled();
    let name = match std::env::var(DEVICE_VARIABLE) {
        Ok(name) => {
            let name = name.to_lowercase();
            let Some(known) = compiled.iter().find(|known| **known == name) else {
                bail!(
                    "{DEVICE_VARIABLE}={name}, but this binary was built with {} only; \
                     build it with that backend (`cargo xtask train --backend {name}`)",
                    compiled.join(", ")
                );
            };
            *known
        }
        Err(_) => *compiled
            .first()
            .ok_or_else(|| anyhow!("built without any backend feature"))?,
    };
    let device = Device::default();
    start(&device).map_err(|message| {
        anyhow!(
            "the {name} backend cannot start: {message}\n{}",
            remedy(name)
        )
    })?;
    Ok(device)
}

/// Runs one tiny operation on `device`. Backends start lazily and report a missing driver or
/// library by panicking, often on a thread of their own, so every panic's report is caught
/// while this runs (instead of printed) and the first one returned.
fn start(device: &Device) -> Result<(), String> {
    let reports = Arc::new(Mutex::new(Vec::<String>::new()));
    let previous = std::panic::take_hook();
    let sink = Arc::clone(&reports);
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| {
                info.payload()
                    .downcast_ref::<&str>()
                    .map(ToString::to_string)
            })
            .unwrap_or_else(|| "an unknown failure".into());
        if let Ok(mut reports) = sink.lock() {
            reports.push(message);
        }
    }));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        Tensor::<1>::ones([1], device).into_data()
    }));
    std::panic::set_hook(previous);
    let first = reports
        .lock()
        .ok()
        .and_then(|reports| reports.first().cloned());
    match outcome {
        Ok(_) => Ok(()),
        Err(_) => Err(first.unwrap_or_else(|| "an unknown failure".into())),
    }
}

/// What a user does when `backend` does not start.
fn remedy(backend: &str) -> &'static str {
    match backend {
        "wgpu" => {
            "wgpu needs a GPU driver (Vulkan, Metal or DX12). Without a GPU, a software Vulkan \
             works: `cargo xtask setup --backend wgpu` installs Debian's lavapipe \
             (`apt-get install mesa-vulkan-drivers libvulkan1`)."
        }
        "tch" => {
            "tch needs libtorch 2.9.0: `cargo xtask setup --backend tch` installs it (pip's \
             torch==2.9.0 in a venv), and `cargo xtask … --backend tch` sets LD_LIBRARY_PATH."
        }
        _ => "this backend needs nothing installed; please report the message above.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cpu_backends_are_compiled_in_order() {
        let compiled = compiled();
        let flex = compiled.iter().position(|name| *name == "flex");
        let ndarray = compiled.iter().position(|name| *name == "ndarray");
        assert!(flex.is_some() && flex < ndarray, "{compiled:?}");
    }
}
