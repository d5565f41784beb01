//! Which backend runs which kernels: the host backends (flex, ndarray) opt into the host
//! kernels for everything [`FusedOps`] has one for, flex into its own linear products too, and
//! wgpu keeps the trait's defaults (reading its tensors back to the host would cost more than
//! the operations it saves). libtorch's backward kernels are in `libtorch.rs`.

use crate::block::BlockOps;
use crate::extension::{FusedOps, HostOps};

/// The host kernels of [`FusedOps`], for `f32` tensors; other float types take the defaults.
macro_rules! host_kernels {
    () => {
        fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            if all_f32::<Self>(&[&x]) {
                host_gelu::<Self>(x)
            } else {
                <Self as ActivationOps<Self>>::gelu(x)
            }
        }

        fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            if all_f32::<Self>(&[&x, &grad]) {
                host_gelu_backward::<Self>(x, grad)
            } else {
                <Self as ActivationOps<Self>>::gelu_backward(x, grad)
            }
        }

        fn layer_norm_backward(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            epsilon: f64,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            if all_f32::<Self>(&[&x, &gamma, &grad]) {
                host_layer_norm_backward::<Self>(x, gamma, grad, epsilon)
            } else {
                composed_layer_norm_backward::<Self>(x, gamma, grad, epsilon)
            }
        }

        fn softmax_backward(
            output: FloatTensor<Self>,
            grad: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            if all_f32::<Self>(&[&output, &grad]) {
                host_softmax_backward::<Self>(output, grad)
            } else {
                composed_softmax_backward::<Self>(output, grad)
            }
        }
    };
}

#[cfg(any(feature = "flex", feature = "ndarray"))]
use {
    crate::composed::{composed_layer_norm_backward, composed_softmax_backward},
    crate::host::gelu::{host_gelu, host_gelu_backward},
    crate::host::rows::{all_f32, host_layer_norm_backward, host_softmax_backward},
    burn::backend::ops::ActivationOps,
    burn::backend::tensor::FloatTensor,
};

/// flex runs the linear layers' products itself too (`host/linear.rs`).
#[cfg(feature = "flex")]
impl FusedOps for burn::backend::Flex {
    host_kernels!();

    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        crate::host::linear::linear(x, weight, Some(bias))
    }

    fn fused_linear_unbiased(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::host::linear::linear(x, weight, None)
    }

    fn linear_x_gradient(weight: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::host::linear::x_gradient(weight, grad)
    }

    fn linear_weight_gradient(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::host::linear::weight_gradient(x, grad)
    }

    fn linear_bias_gradient(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::host::linear::bias_gradient(grad)
    }
}

#[cfg(feature = "flex")]
impl HostOps for burn::backend::Flex {}

#[cfg(feature = "flex")]
impl BlockOps for burn::backend::Flex {}

#[cfg(feature = "ndarray")]
impl FusedOps for burn::backend::NdArray {
    host_kernels!();
}

#[cfg(feature = "ndarray")]
impl HostOps for burn::backend::NdArray {}

#[cfg(feature = "ndarray")]
impl BlockOps for burn::backend::NdArray {}

#[cfg(feature = "wgpu")]
impl FusedOps for burn::backend::Cube {}

#[cfg(all(feature = "wgpu", feature = "remote"))]
impl HostOps for burn::backend::Cube {}

#[cfg(all(feature = "wgpu", feature = "remote"))]
impl BlockOps for burn::backend::Cube {}
