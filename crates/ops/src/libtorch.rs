//! LayerNorm's and softmax's backward passes on tch: libtorch's own kernels, the ones PyTorch's
//! autograd runs for these two operations.

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use burn::backend::tensor::FloatTensor;

use crate::FusedOps;

impl FusedOps for LibTorch {
    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // tch exposes no `native_layer_norm_backward`; libtorch's autograd on a one-node
        // graph reaches the same kernel (one fused forward to rebuild the node, one fused
        // backward), with no grad-mode change visible outside.
        let last = x.tensor.dim() - 1;
        let features = x.tensor.size()[last];
        let (grad_x, grad_gamma) = tch::with_grad(|| {
            let x = x.tensor.detach().set_requires_grad(true);
            let gamma = gamma.tensor.detach().set_requires_grad(true);
            let output = x.layer_norm([features], Some(&gamma), None, epsilon, false);
            let grads = tch::Tensor::run_backward(
                &[(output * &grad.tensor).sum(None)],
                &[&x, &gamma],
                false,
                false,
            );
            let [grad_x, grad_gamma]: [tch::Tensor; 2] =
                grads.try_into().expect("one gradient per input");
            (grad_x, grad_gamma)
        });
        let rows: Vec<i64> = (0..last as i64).collect();
        let grad_beta = grad.tensor.sum_dim_intlist(rows.as_slice(), false, None);
        (
            TchTensor::new(grad_x),
            TchTensor::new(grad_gamma),
            TchTensor::new(grad_beta),
        )
    }

    fn softmax_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let last = output.tensor.dim() as i64 - 1;
        let kind = output.tensor.kind();
        TchTensor::new(tch::Tensor::internal_softmax_backward_data(
            &grad.tensor,
            &output.tensor,
            last,
            kind,
        ))
    }
}
