//! The host kernels: the operations of the extensions as sweeps over `f32` values on the CPU,
//! for flex and ndarray, with the buffer plumbing and the vector arithmetic they share.

pub(crate) mod attention;
pub(crate) mod buffers;
pub(crate) mod gelu;
#[cfg(feature = "flex")]
pub(crate) mod linear;
pub(crate) mod rows;
mod simd;
mod tasks;
pub(crate) mod vectors;
