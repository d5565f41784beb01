//! Burn's `Linear` and `LayerNorm` layers, applied as the single operations of `functional`.

use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;

use crate::functional;

/// `layer.forward(x)` as one operation with its own backward step.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let bias = layer.bias.as_ref().map(|bias| bias.val());
    functional::linear(x, layer.weight.val(), bias)
}

/// `layer` applied over the last dimension of `x` with `epsilon` (Burn keeps a `LayerNorm`'s
/// epsilon private), as one operation where the backend has it.
pub fn layer_norm<const D: usize>(layer: &LayerNorm, x: Tensor<D>, epsilon: f64) -> Tensor<D> {
    match &layer.beta {
        Some(beta) => functional::layer_norm(x, layer.gamma.val(), beta.val(), epsilon),
        None => layer.forward(x),
    }
}
