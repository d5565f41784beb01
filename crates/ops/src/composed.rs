//! LayerNorm's and softmax's backward passes from Burn's primitive operations: the extension's
//! defaults, for backends without kernels of their own for them (wgpu), and for tensors that
//! are not `f32` on the host backends.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};

/// LayerNorm's backward pass from primitive operations, for backends without a better one:
/// with `x̂ = (x - mean) · rstd` and `g = grad · gamma`,
/// `dx = rstd · (g - mean(g) - x̂ · mean(g · x̂))`, `dgamma = Σ grad · x̂`, `dbeta = Σ grad`.
pub(crate) fn composed_layer_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    grad: FloatTensor<B>,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let shape = x.shape();
    let last = shape.num_dims() - 1;
    let features = shape[last];
    let rows = shape.num_elements() / features;
    let x = B::float_reshape(x, [rows, features].into());
    let grad = B::float_reshape(grad, [rows, features].into());
    let gamma = B::float_reshape(gamma, [1, features].into());

    let mean = B::float_mean_dim(x.clone(), 1);
    let centered = B::float_sub(x, mean);
    let variance = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), 1);
    let rstd = B::float_powf_scalar(B::float_add_scalar(variance, epsilon.into()), (-0.5).into());
    let normalized = B::float_mul(centered, rstd.clone());

    let scaled = B::float_mul(grad.clone(), gamma);
    let scaled_mean = B::float_mean_dim(scaled.clone(), 1);
    let projection = B::float_mean_dim(B::float_mul(scaled.clone(), normalized.clone()), 1);
    let grad_x = B::float_mul(
        B::float_sub(
            B::float_sub(scaled, scaled_mean),
            B::float_mul(normalized.clone(), projection),
        ),
        rstd,
    );
    let grad_gamma = B::float_sum_dim(B::float_mul(grad.clone(), normalized), 0);
    let grad_beta = B::float_sum_dim(grad, 0);
    (
        B::float_reshape(grad_x, shape),
        B::float_reshape(grad_gamma, [features].into()),
        B::float_reshape(grad_beta, [features].into()),
    )
}

/// Softmax's backward pass from primitive operations: `dx = y · (grad - Σ grad · y)`.
pub(crate) fn composed_softmax_backward<B: Backend>(
    output: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let last = output.shape().num_dims() - 1;
    let projection = B::float_sum_dim(B::float_mul(grad.clone(), output.clone()), last);
    B::float_mul(output, B::float_sub(grad, projection))
}
