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
/// them (the features of `vit-ops`, which are this crate's). The one list of compiled backends:
/// the trainer, the benchmark and the agreement tests all use it.
pub use vit_ops::compiled_devices;

/// The names of [`compiled_devices`].
pub fn compiled() -> Vec<&'static str> {
    compiled_devices()
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// Which libtorch device `--device` asks for (`cpu`, `cuda` or `cuda:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchDevice {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for TorchDevice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("`{text}` is not a device: cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for TorchDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

/// Which wgpu adapter `--device` asks for: `wgpu` (wgpu's own choice, a high-power GPU
/// first, or `CUBECL_WGPU_DEFAULT_DEVICE`), `wgpu:cpu` (a software adapter such as lavapipe),
/// `wgpu:N` or `wgpu:discrete:N` (the N-th discrete GPU), `wgpu:integrated:N`,
/// `wgpu:virtual:N`. Several of them are several devices of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgpuAdapter {
    Default,
    Cpu,
    Discrete(usize),
    Integrated(usize),
    Virtual(usize),
}

impl std::str::FromStr for WgpuAdapter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            format!(
                "`{text}` is not a wgpu adapter: wgpu, wgpu:cpu, wgpu:N, wgpu:discrete:N, \
                 wgpu:integrated:N or wgpu:virtual:N"
            )
        };
        let index = |number: &str| number.parse::<usize>().map_err(|_| invalid());
        let lower = text.to_lowercase();
        match lower.split(':').collect::<Vec<_>>().as_slice() {
            ["wgpu"] | ["wgpu", "default"] => Ok(Self::Default),
            ["wgpu", "cpu"] => Ok(Self::Cpu),
            ["wgpu", number] | ["wgpu", "discrete", number] => index(number).map(Self::Discrete),
            ["wgpu", "integrated", number] => index(number).map(Self::Integrated),
            ["wgpu", "virtual", number] => index(number).map(Self::Virtual),
            _ => Err(invalid()),
        }
    }
}

impl std::fmt::Display for WgpuAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("wgpu:default"),
            Self::Cpu => f.write_str("wgpu:cpu"),
            Self::Discrete(index) => write!(f, "wgpu:discrete:{index}"),
            Self::Integrated(index) => write!(f, "wgpu:integrated:{index}"),
            Self::Virtual(index) => write!(f, "wgpu:virtual:{index}"),
        }
    }
}

/// The libtorch device to run on, given what `--device` asks for and how many CUDA devices
/// libtorch sees, with the line that says so: the first CUDA device when none is asked for
/// and there is one, else the CPU. Asking for a CUDA device that is not there is an error.
pub fn choose_torch_device(
    requested: Option<TorchDevice>,
    cuda_devices: usize,
) -> anyhow::Result<(TorchDevice, String)> {
    Ok(match requested {
        None if cuda_devices > 0 => (
            TorchDevice::Cuda(0),
            format!("tch: running on CUDA device 0 ({cuda_devices} visible to libtorch)"),
        ),
        None => (
            TorchDevice::Cpu,
            "tch: libtorch sees no CUDA device; running on the CPU".into(),
        ),
        Some(TorchDevice::Cpu) => (
            TorchDevice::Cpu,
            "tch: running on the CPU (--device cpu)".into(),
        ),
        Some(TorchDevice::Cuda(index)) if index < cuda_devices => (
            TorchDevice::Cuda(index),
            format!("tch: running on CUDA device {index} (--device cuda:{index})"),
        ),
        Some(TorchDevice::Cuda(index)) => bail!(
            "--device cuda:{index}, but libtorch sees {cuda_devices} CUDA device(s); \
             use --device cpu, or a machine with an NVIDIA GPU and its driver"
        ),
    })
}

/// The device of the chosen backend, started and ready. `requested` is `--device`, which
/// only the tch backend takes.
pub fn select(requested: Option<TorchDevice>) -> anyhow::Result<Device> {
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
    let device = if name == "tch" {
        torch_device(requested)?
    } else if let Some(requested) = requested {
        bail!("--device {requested} chooses a libtorch device; the {name} backend takes none");
    } else {
        Device::default()
    };
    started(name, device)
}

/// The device of the wgpu adapter `adapter`, started and ready: `--device wgpu…`, which
/// chooses the wgpu backend, so a build without it or a `BURN_DEVICE` naming another is an
/// error.
pub fn select_wgpu(adapter: WgpuAdapter) -> anyhow::Result<Device> {
    check_wgpu_choice(
        adapter,
        &compiled(),
        std::env::var(DEVICE_VARIABLE).ok().as_deref(),
    )?;
    started("wgpu", wgpu_device(adapter)?)
}

/// Whether `--device {adapter}` agrees with the build (`compiled`) and `BURN_DEVICE`.
fn check_wgpu_choice(
    adapter: WgpuAdapter,
    compiled: &[&str],
    variable: Option<&str>,
) -> anyhow::Result<()> {
    if !compiled.contains(&"wgpu") {
        bail!(
            "--device {adapter} is a wgpu adapter, and this binary was built with {} only; \
             build it with wgpu (`cargo xtask train --backend wgpu --device {adapter} …`)",
            compiled.join(", ")
        );
    }
    if let Some(name) = variable.map(str::to_lowercase)
        && name != "wgpu"
    {
        bail!("--device {adapter} is a wgpu adapter, but {DEVICE_VARIABLE}={name} chooses {name}");
    }
    Ok(())
}

#[cfg(feature = "wgpu")]
fn wgpu_device(adapter: WgpuAdapter) -> anyhow::Result<Device> {
    use burn::tensor::DeviceKind;
    Ok(Device::wgpu(match adapter {
        WgpuAdapter::Default => DeviceKind::DefaultDevice,
        WgpuAdapter::Cpu => DeviceKind::Cpu,
        WgpuAdapter::Discrete(index) => DeviceKind::DiscreteGpu(index),
        WgpuAdapter::Integrated(index) => DeviceKind::IntegratedGpu(index),
        WgpuAdapter::Virtual(index) => DeviceKind::VirtualGpu(index),
    }))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(adapter: WgpuAdapter) -> anyhow::Result<Device> {
    bail!("--device {adapter}: this build holds no wgpu backend (build with the `wgpu` feature)")
}

/// `device` of the backend `name`, once it has run an operation; a backend that cannot start
/// is an error that says what to install.
fn started(name: &str, device: Device) -> anyhow::Result<Device> {
    start(&device).map_err(|message| {
        anyhow!(
            "the {name} backend cannot start: {message}\n{}",
            remedy(name)
        )
    })?;
    Ok(device)
}

/// The libtorch device [`choose_torch_device`] picks, with its line on stderr.
#[cfg(feature = "tch")]
#[allow(deprecated)] // burn-tch is deprecated upstream; this project still supports it
pub fn torch_device(requested: Option<TorchDevice>) -> anyhow::Result<Device> {
    let visible = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    let (chosen, line) = choose_torch_device(requested, visible)?;
    eprintln!("{line}");
    Ok(match chosen {
        TorchDevice::Cpu => Device::libtorch(),
        TorchDevice::Cuda(index) => Device::libtorch_cuda(index),
    })
}

#[cfg(not(feature = "tch"))]
pub fn torch_device(_requested: Option<TorchDevice>) -> anyhow::Result<Device> {
    bail!("this build holds no tch backend (build with the `tch` feature)")
}

/// Runs one tiny operation on `device`. Backends start lazily and report a missing driver or
/// library by panicking, often on a thread of their own.
pub(crate) fn start(device: &Device) -> Result<(), String> {
    quiet_panics(|| Tensor::<1>::ones([1], device).into_data()).map(drop)
}

/// Runs `work`, catching its panic, and every panic's report on any thread while it runs is
/// kept instead of printed: the first one is the error. For backends that report a failure by
/// panicking (a driver missing, a compute server gone).
pub fn quiet_panics<T>(work: impl FnOnce() -> T) -> Result<T, String> {
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
    let outcome = catch_unwind(AssertUnwindSafe(work));
    std::panic::set_hook(previous);
    let first = reports
        .lock()
        .ok()
        .and_then(|reports| reports.first().cloned());
    match outcome {
        Ok(value) => Ok(value),
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
    fn tch_takes_the_first_cuda_device_when_there_is_one_and_the_cpu_otherwise() {
        let (device, line) = choose_torch_device(None, 2).unwrap();
        assert_eq!(device, TorchDevice::Cuda(0));
        assert!(line.contains("CUDA device 0"), "{line}");
        let (device, line) = choose_torch_device(None, 0).unwrap();
        assert_eq!(device, TorchDevice::Cpu);
        assert!(line.contains("no CUDA device"), "{line}");
    }

    #[test]
    fn an_explicit_device_wins_and_a_missing_gpu_is_an_error_naming_it() {
        let cpu = choose_torch_device(Some(TorchDevice::Cpu), 4).unwrap();
        assert_eq!(cpu.0, TorchDevice::Cpu);
        let second = choose_torch_device(Some(TorchDevice::Cuda(1)), 2).unwrap();
        assert_eq!(second.0, TorchDevice::Cuda(1));
        for visible in [0, 1] {
            let error = choose_torch_device(Some(TorchDevice::Cuda(1)), visible)
                .unwrap_err()
                .to_string();
            assert!(error.contains("--device cuda:1"), "{error}");
            assert!(error.contains(&format!("sees {visible}")), "{error}");
        }
    }

    #[test]
    fn device_names_parse_and_print_back() {
        for (text, device) in [
            ("cpu", TorchDevice::Cpu),
            ("CUDA", TorchDevice::Cuda(0)),
            ("cuda:3", TorchDevice::Cuda(3)),
        ] {
            assert_eq!(text.parse::<TorchDevice>(), Ok(device));
        }
        assert_eq!(TorchDevice::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", ""] {
            let error = bad.parse::<TorchDevice>().unwrap_err();
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
    }

    #[test]
    fn wgpu_adapters_parse_and_print_back() {
        for (text, adapter) in [
            ("wgpu", WgpuAdapter::Default),
            ("wgpu:default", WgpuAdapter::Default),
            ("WGPU:CPU", WgpuAdapter::Cpu),
            ("wgpu:1", WgpuAdapter::Discrete(1)),
            ("wgpu:discrete:2", WgpuAdapter::Discrete(2)),
            ("wgpu:integrated:0", WgpuAdapter::Integrated(0)),
            ("wgpu:virtual:3", WgpuAdapter::Virtual(3)),
        ] {
            assert_eq!(text.parse::<WgpuAdapter>(), Ok(adapter), "{text}");
            assert_eq!(adapter.to_string().parse::<WgpuAdapter>(), Ok(adapter));
        }
        for bad in [
            "wgpux",
            "wgpu:",
            "wgpu:gpu",
            "wgpu:-1",
            "wgpu:discrete",
            "wgpu:tpu:1",
        ] {
            let error = bad.parse::<WgpuAdapter>().unwrap_err();
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
    }

    #[test]
    fn a_wgpu_adapter_needs_wgpu_built_in_and_not_another_backend_chosen() {
        let adapter = WgpuAdapter::Cpu;
        let missing = check_wgpu_choice(adapter, &["flex", "ndarray"], None)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("--device wgpu:cpu") && missing.contains("flex, ndarray only"),
            "{missing}"
        );
        let other = check_wgpu_choice(adapter, &["wgpu", "flex"], Some("flex"))
            .unwrap_err()
            .to_string();
        assert!(other.contains("BURN_DEVICE=flex"), "{other}");
        assert!(check_wgpu_choice(adapter, &["wgpu", "flex"], Some("WGPU")).is_ok());
        assert!(check_wgpu_choice(adapter, &["flex", "wgpu"], None).is_ok());
    }

    #[test]
    fn the_default_cpu_backends_are_compiled_in_order() {
        let compiled = compiled();
        let flex = compiled.iter().position(|name| *name == "flex");
        let ndarray = compiled.iter().position(|name| *name == "ndarray");
        assert!(flex.is_some() && flex < ndarray, "{compiled:?}");
    }
}
