//! The operations on tensors, each routed once by [`Route`]: one operation of the extension
//! where the backend has it, Burn's composed operations elsewhere, so the result never depends
//! on how the crate was built, only the speed. The layer-level forms in `lib.rs` call these.

use burn::backend::Dispatch;
use burn::tensor::{DType, Tensor};

use crate::extension::FusedOps;
use crate::route::Route;

/// LayerNorm over the last dimension: one operation (forward and backward) where the backend
/// supports it, Burn's composed `layer_norm` elsewhere.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    if Route::of_tensor(&x) == Route::Burn {
        return burn::tensor::module::layer_norm(x, gamma, Some(beta), epsilon);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

/// Softmax along the last dimension: one operation (forward and backward) where the backend
/// supports it, Burn's composed `softmax` elsewhere.
pub fn softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if Route::of_tensor(&x) == Route::Burn {
        return burn::tensor::activation::softmax(x, D - 1);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_softmax(x.into_dispatch()))
}

/// GELU with the exact normal CDF: one host sweep with a vectorized `erf` on flex and ndarray
/// and their compute servers (forward and backward), Burn's `gelu` elsewhere.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !Route::of_tensor(&x).runs_host_kernels() {
        return burn::tensor::activation::gelu(x);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_gelu(x.into_dispatch()))
}

/// `x · weight + bias` over the last dimension of `x`, as Burn's `linear`: one operation with a
/// backward step of its own where the backend supports it, whose products on flex write into
/// buffers of their own with the bias added in the product (`host/linear.rs`).
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    if D < 2 || Route::of_tensor(&x) == Route::Burn || weight.dtype() != DType::F32 {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let (x, weight) = (x.into_dispatch(), weight.into_dispatch());
    Tensor::from_dispatch(match bias {
        Some(bias) => <Dispatch as FusedOps>::fused_linear(x, weight, bias.into_dispatch()),
        None => <Dispatch as FusedOps>::fused_linear_unbiased(x, weight),
    })
}
