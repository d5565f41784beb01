//! Which backends run what, decided here once per device: [`Route`] for the layer operations
//! (host kernel, the extension's defaults, or Burn's composed operations), [`updates_in_place`]
//! for the Adam update, and the one list of the backends this build holds.

use burn::backend::DispatchDevice;
use burn::tensor::{DType, Device, Tensor};

/// How a device's backend runs the crate's operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// A CPU backend that runs most operations on one thread each (flex, ndarray): the host
    /// kernels, the fused attention among them.
    Host,
    /// A backend this crate is built for whose own kernels do the work (libtorch, wgpu): the
    /// extension's defaults, which are Burn's operations, with one autodiff node per layer.
    #[cfg_attr(not(any(feature = "tch", feature = "wgpu")), allow(dead_code))]
    Extension,
    /// A compute server's device: each operation shipped to the server, whose backend runs
    /// it (`remote.rs`); on a flex or ndarray server, the host kernels.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    Remote,
    /// Any other backend: Burn's composed operations.
    Burn,
}

impl Route {
    /// The route of `device` (with or without autodiff) in this build of the crate.
    pub(crate) fn of(device: &Device) -> Self {
        classify(device).0
    }

    /// The route of `x`: its device's for `f32` tensors, Burn's for any other float type.
    pub(crate) fn of_tensor<const D: usize>(x: &Tensor<D>) -> Self {
        if x.dtype() == DType::F32 {
            Self::of(&x.device())
        } else {
            Self::Burn
        }
    }

    /// Whether the host kernels run the operations, in this process or on a compute server:
    /// the operations only they have (GELU, the fused attention) are taken then.
    pub(crate) fn runs_host_kernels(self) -> bool {
        matches!(self, Self::Host | Self::Remote)
    }
}

/// Whether `device` belongs to a CPU backend with host kernels here (flex, ndarray).
pub fn runs_on_host(device: &Device) -> bool {
    Route::of(device) == Route::Host
}

/// Whether this build of the crate runs LayerNorm, softmax, GELU and the linear layers as
/// single operations of its own on `device` (with or without autodiff).
pub fn supports(device: &Device) -> bool {
    Route::of(device) != Route::Burn
}

/// Whether the Adam update runs in place, in one pass, on `device`: flex's, libtorch's CPU
/// device (a CUDA tensor's values cannot be written from the host), and a compute server's.
pub(crate) fn updates_in_place(device: &Device) -> bool {
    classify(device).1
}

/// The one match over Burn's devices: how `device`'s backend runs the layer operations, and
/// whether its tensors' values can be written in place from the host.
fn classify(device: &Device) -> (Route, bool) {
    #[allow(unreachable_patterns)] // every variant is listed when every backend is built in
    match device.as_dispatch().clone().inner() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => (Route::Host, true),
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => (Route::Host, false),
        #[cfg(feature = "tch")]
        DispatchDevice::LibTorch(device) => (
            Route::Extension,
            device == burn::backend::libtorch::LibTorchDevice::Cpu,
        ),
        #[cfg(feature = "wgpu")]
        DispatchDevice::Cube(_) => (Route::Extension, false),
        // The update is one operation the server runs (`remote.rs`).
        #[cfg(feature = "remote")]
        DispatchDevice::Remote(_) => (Route::Remote, true),
        _ => (Route::Burn, false),
    }
}

/// The backends this build of the crate holds, by name, with a device of each, in the order
/// Burn prefers them. Devices start lazily: listing them runs nothing.
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
