//! How the host kernels read their inputs and get their outputs: on flex straight from the
//! tensor's own buffer, on the other CPU backends from a copy.
//!
//! Reading through `float_into_data` copies a tensor whenever anything else holds it, and in
//! training the autodiff graph holds most inputs of an operation for its backward pass: the
//! attention's projection, GELU's input, LayerNorm's input. On flex this reads them in place.
//! A kernel that overwrites its input does so in the tensor's own buffer when nothing else
//! holds it ([`Unique`]): taking a flex buffer as a `Vec<f32>` would copy it, since flex
//! allocates with a wider alignment than `f32`'s. A kernel whose input is held writes a new
//! buffer without zeroing it first ([`new_tensor`]) instead of copying the input and
//! overwriting the copy.

use std::mem::MaybeUninit;

use burn::backend::Backend;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{Shape, TensorData, read_sync};

#[cfg(feature = "flex")]
use burn::backend::flex::FlexTensor;

/// A tensor's `f32` values in row-major order.
pub(crate) enum HostValues {
    /// A contiguous flex tensor, read in place.
    #[cfg(feature = "flex")]
    Flex(FlexTensor),
    Copied(TensorData),
}

/// `tensor`'s values on the host; callers send `f32` tensors only.
pub(crate) fn host<B: Backend>(tensor: FloatTensor<B>) -> HostValues {
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

    /// The values as a buffer of their own to overwrite: the tensor's own where nothing else
    /// holds it, one copy otherwise.
    pub fn into_unique(self) -> Unique {
        match self.try_into_unique() {
            Ok(unique) => unique,
            Err(shared) => Unique::Vec(shared.f32s().to_vec()),
        }
    }

    /// The values as a buffer of their own, when nothing else holds them.
    pub fn try_into_unique(self) -> Result<Unique, Self> {
        match self {
            #[cfg(feature = "flex")]
            Self::Flex(mut tensor) => {
                if overwritable(&mut tensor) {
                    Ok(Unique::Flex(tensor))
                } else {
                    Err(Self::Flex(tensor))
                }
            }
            // `into_data` copied it (or the backend handed over its own buffer).
            Self::Copied(data) => {
                let values = data
                    .into_vec::<f32>()
                    .expect("the callers send f32 tensors only");
                Ok(Unique::Vec(values))
            }
        }
    }
}

/// Values a kernel may overwrite, then hand back as a tensor of the same shape.
pub(crate) enum Unique {
    /// A flex tensor nothing else holds, overwritten in place (flex's own buffers are aligned
    /// for any type, so taking them as a `Vec<f32>` would copy them).
    #[cfg(feature = "flex")]
    Flex(FlexTensor),
    Vec(Vec<f32>),
}

impl Unique {
    pub fn values_mut(&mut self) -> &mut [f32] {
        match self {
            #[cfg(feature = "flex")]
            Self::Flex(tensor) => tensor
                .try_storage_mut::<f32>()
                .expect("checked unique when it was made"),
            Self::Vec(values) => values,
        }
    }

    pub fn into_tensor<B: Backend>(self, shape: Shape, device: &B::Device) -> FloatTensor<B> {
        match self {
            #[cfg(feature = "flex")]
            Self::Flex(tensor) => match downcast::<FlexTensor, FloatTensor<B>>(tensor) {
                Ok(tensor) => tensor,
                Err(_) => unreachable!("a flex tensor came from flex"),
            },
            Self::Vec(values) => B::float_from_data(TensorData::new(values, shape), device),
        }
    }
}

/// A new tensor of `shape` whose values `fill` writes, without zeroing them first.
///
/// # Safety
///
/// `fill` must write every one of the values it is handed.
pub(crate) unsafe fn new_tensor<B: Backend>(
    shape: Shape,
    device: &B::Device,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]),
) -> FloatTensor<B> {
    let len = shape.num_elements();
    let mut values = Vec::with_capacity(len);
    fill(&mut values.spare_capacity_mut()[..len]);
    // SAFETY: `fill` wrote all `len` values (the caller's promise).
    unsafe { values.set_len(len) };
    B::float_from_data(TensorData::new(values, shape), device)
}

/// Whether `tensor`'s values may be overwritten in place: an `f32` tensor that is its whole
/// buffer, in row-major order, and that no other tensor holds. The host kernels and the
/// in-place Adam ask the same question.
#[cfg(feature = "flex")]
pub(crate) fn overwritable(tensor: &mut FlexTensor) -> bool {
    let whole = tensor.is_contiguous()
        && tensor.layout().start_offset() == 0
        && tensor.bytes().len() == tensor.layout().num_elements() * 4;
    tensor.dtype() == burn::tensor::DType::F32 && whole && tensor.try_storage_mut::<f32>().is_some()
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
