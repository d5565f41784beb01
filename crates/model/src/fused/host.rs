//! How the host kernels read their inputs: on flex straight from the tensor's own buffer, on
//! the other CPU backends from a copy.
//!
//! Reading through `float_into_data` copies a tensor whenever anything else holds it, and in
//! training the autodiff graph holds most inputs of an operation for its backward pass: the
//! attention's projection, GELU's input, LayerNorm's input. On flex this reads them in place;
//! the step time it saved was within the noise of the machine it was measured on
//! (docs/benchmarks.md, sitting G).

use burn::backend::Backend;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{TensorData, read_sync};

#[cfg(feature = "flex")]
use burn::backend::flex::FlexTensor;

/// A tensor's `f32` values in row-major order.
pub(super) enum HostValues {
    /// A contiguous flex tensor, read in place.
    #[cfg(feature = "flex")]
    Flex(FlexTensor),
    Copied(TensorData),
}

/// `tensor`'s values on the host; callers send `f32` tensors only.
pub(super) fn host<B: Backend>(tensor: FloatTensor<B>) -> HostValues {
    #[cfg(feature = "flex")]
    let tensor = match downcast::<_, FlexTensor>(tensor) {
        Ok(flex) if flex.as_slice::<f32>().is_some() => return HostValues::Flex(flex),
        Ok(flex) => return HostValues::Copied(flex.into_data()),
        Err(other) => other,
    };
    HostValues::Copied(
        read_sync(B::float_into_data(tensor)).expect("a CPU backend's tensor is readable"),
    )
}

impl HostValues {
    pub fn f32s(&self) -> &[f32] {
        let values = match self {
            #[cfg(feature = "flex")]
            Self::Flex(tensor) => tensor.as_slice::<f32>(),
            Self::Copied(data) => data.as_slice::<f32>().ok(),
        };
        values.expect("the callers send contiguous f32 tensors only")
    }

    /// The values as a vector of their own: the tensor's buffer itself when nothing else holds
    /// it, a copy otherwise.
    pub fn into_vec(self) -> Vec<f32> {
        let data = match self {
            #[cfg(feature = "flex")]
            Self::Flex(tensor) => tensor.into_data(),
            Self::Copied(data) => data,
        };
        data.into_vec::<f32>()
            .expect("the callers send f32 tensors only")
    }
}

/// `value` as a `T` when it is one, without boxing it.
#[cfg(feature = "flex")]
fn downcast<V: 'static, T: 'static>(value: V) -> Result<T, V> {
    use std::any::Any;

    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        Some(target) => Ok(target.take().expect("the slot was filled just above")),
        None => Err(slot.expect("a failed downcast leaves the slot filled")),
    }
}
