//! The fused Adam update on libtorch's CPU device: the parameter and both moments are written
//! in place when nothing else holds their buffers (the usual case in training), after a copy
//! otherwise.
// tch is deprecated upstream; this project still supports it.
#![allow(deprecated)]

use burn::backend::libtorch::{LibTorchDevice, TchTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, LibTorch, backend_extension};
use burn::tensor::{Device, Tensor};

use super::AdamStep;

#[backend_extension(LibTorch: cfg(feature = "tch"))]
pub trait AdamOps: Backend {
    /// The parameter and its two moments after one Adam step.
    fn adam_update(
        parameter: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether `device` is libtorch's CPU device, whose tensors this module can read and write.
pub(super) fn runs_on(device: &Device) -> bool {
    matches!(
        device.as_dispatch().clone().inner(),
        DispatchDevice::LibTorch(LibTorchDevice::Cpu)
    )
}

/// One Adam step for an `f32` parameter on [`runs_on`]'s device.
pub(super) fn update<const D: usize>(
    parameter: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
    step: AdamStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (parameter, moment_1, moment_2) = <Dispatch as AdamOps>::adam_update(
        parameter.into_dispatch(),
        grad.into_dispatch(),
        moment_1.into_dispatch(),
        moment_2.into_dispatch(),
        step,
    );
    (
        Tensor::from_dispatch(parameter),
        Tensor::from_dispatch(moment_1),
        Tensor::from_dispatch(moment_2),
    )
}

impl AdamOps for LibTorch {
    fn adam_update(
        parameter: TchTensor,
        grad: TchTensor,
        moment_1: TchTensor,
        moment_2: TchTensor,
        step: AdamStep,
    ) -> (TchTensor, TchTensor, TchTensor) {
        let mut parameter = writable(parameter);
        let mut moment_1 = writable(moment_1);
        let mut moment_2 = writable(moment_2);
        let grad = grad.tensor.to_kind(tch::Kind::Float).contiguous();
        let len = parameter.tensor.numel();
        for tensor in [&moment_1.tensor, &moment_2.tensor, &grad] {
            assert_eq!(tensor.numel(), len, "Adam state of another shape");
        }
        // SAFETY: each of the four tensors is a contiguous f32 CPU tensor of `len` values
        // (`writable`, `contiguous` and the check above). The three written ones hold buffers
        // no other tensor holds (`writable`), so they alias neither each other nor `grad`, and
        // nothing else reads them while they are written.
        unsafe {
            step.apply(
                values_mut(&mut parameter.tensor, len),
                std::slice::from_raw_parts(grad.data_ptr() as *const f32, len),
                values_mut(&mut moment_1.tensor, len),
                values_mut(&mut moment_2.tensor, len),
            );
        }
        (parameter, moment_1, moment_2)
    }
}

/// `tensor` itself when its values may be overwritten: a contiguous `f32` CPU tensor whose
/// buffer no other tensor holds. Otherwise a contiguous `f32` copy.
fn writable(tensor: TchTensor) -> TchTensor {
    let reusable = tensor.can_mut()
        && tensor.tensor.is_contiguous()
        && tensor.tensor.kind() == tch::Kind::Float
        && tensor.tensor.device() == tch::Device::Cpu;
    if reusable {
        return tensor;
    }
    let copy = tensor
        .tensor
        .to_device(tch::Device::Cpu)
        .to_kind(tch::Kind::Float)
        .contiguous()
        .copy();
    TchTensor::new(copy)
}

/// # Safety
/// `tensor` must be a contiguous `f32` CPU tensor of `len` values that no other tensor shares.
unsafe fn values_mut(tensor: &mut tch::Tensor, len: usize) -> &mut [f32] {
    unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut f32, len) }
}
