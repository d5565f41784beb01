//! The fused Adam update on flex and on libtorch's CPU device: the parameter and both moments
//! are written in place when nothing else holds their buffers (the usual case in training),
//! after a copy otherwise. A compute server's device ships it to the server (`remote.rs`).

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::Tensor;

use super::step::AdamStep;

#[backend_extension(
    Flex: cfg(feature = "flex"),
    LibTorch: cfg(feature = "tch"),
    Remote: cfg(feature = "remote"),
)]
pub trait AdamOps: Backend {
    /// The parameter and its two moments after one Adam step. By default one pass over their
    /// values on the host, in copies (what a compute server of a backend without its own
    /// update runs, `remote.rs`); flex and libtorch write their own buffers.
    fn adam_update(
        parameter: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        use crate::host::buffers::host;
        let (shape, device) = (parameter.shape(), parameter.device());
        let mut parameter = host::<Self>(parameter).into_unique();
        let mut moment_1 = host::<Self>(moment_1).into_unique();
        let mut moment_2 = host::<Self>(moment_2).into_unique();
        step.apply(
            parameter.values_mut(),
            host::<Self>(grad).f32s(),
            moment_1.values_mut(),
            moment_2.values_mut(),
        );
        let [parameter, moment_1, moment_2] = [parameter, moment_1, moment_2]
            .map(|values| values.into_tensor::<Self>(shape.clone(), &device));
        (parameter, moment_1, moment_2)
    }
}

#[cfg(all(feature = "ndarray", feature = "remote"))]
impl AdamOps for burn::backend::NdArray {}

#[cfg(all(feature = "wgpu", feature = "remote"))]
impl AdamOps for burn::backend::Cube {}

/// One Adam step for an `f32` parameter on a device [`crate::route::updates_in_place`] names.
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

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::TensorData;

    use crate::host::buffers::overwritable;

    use super::AdamOps;
    use crate::adam::step::AdamStep;

    impl AdamOps for Flex {
        fn adam_update(
            mut parameter: FlexTensor,
            grad: FlexTensor,
            moment_1: FlexTensor,
            moment_2: FlexTensor,
            step: AdamStep,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let (mut moment_1, mut moment_2) = (writable(moment_1), writable(moment_2));
            // Read in place when it is contiguous `f32`, held or not.
            let grad = match grad.as_slice::<f32>() {
                Some(_) => grad,
                None => writable(grad),
            };
            let len = parameter.layout().num_elements();
            for tensor in [&moment_1, &moment_2, &grad] {
                assert_eq!(
                    tensor.layout().num_elements(),
                    len,
                    "Adam state of another shape"
                );
            }
            let grad = grad
                .as_slice::<f32>()
                .expect("contiguous f32, made so above");
            let (moment_1_values, moment_2_values) =
                (values_mut(&mut moment_1), values_mut(&mut moment_2));
            // In training the parameter is held: burn-train's Learner keeps the model while
            // the optimizer steps a clone of it. Its updated values then go to a new buffer
            // in the same pass, instead of a copy made first and updated after.
            let held = if overwritable(&mut parameter) {
                None
            } else {
                parameter.as_slice::<f32>()
            };
            let parameter = match held {
                Some(values) => {
                    let mut updated = Vec::with_capacity(len);
                    step.apply_into(
                        values,
                        &mut updated.spare_capacity_mut()[..len],
                        grad,
                        moment_1_values,
                        moment_2_values,
                    );
                    // SAFETY: `apply_into` wrote all `len` values.
                    unsafe { updated.set_len(len) };
                    let shape = parameter.layout().shape().clone();
                    FlexTensor::from_data(TensorData::new(updated, shape))
                }
                None => {
                    let mut parameter = writable(parameter);
                    step.apply(
                        values_mut(&mut parameter),
                        grad,
                        moment_1_values,
                        moment_2_values,
                    );
                    parameter
                }
            };
            (parameter, moment_1, moment_2)
        }
    }

    /// `tensor` itself when its values may be overwritten ([`overwritable`]), else such a copy.
    fn writable(mut tensor: FlexTensor) -> FlexTensor {
        if overwritable(&mut tensor) {
            return tensor;
        }
        let shape = tensor.layout().shape().clone();
        let data = tensor.into_data().convert::<f32>();
        let values = data.to_vec::<f32>().expect("converted to f32 just above");
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    fn values_mut(tensor: &mut FlexTensor) -> &mut [f32] {
        tensor
            .try_storage_mut::<f32>()
            .expect("`writable` made it the only holder of its buffer")
    }
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;

    use super::AdamOps;
    use crate::adam::step::AdamStep;

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
}
