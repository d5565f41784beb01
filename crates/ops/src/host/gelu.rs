//! Exact GELU, `x · Φ(x)`, on the host with an `erf` the compiler can vectorize.
//!
//! flex computes GELU and its gradient with the scalar `erff` of libm, one call per value, a
//! few per cent of a training step on its own. Here `erf` is the Abramowitz–Stegun 7.1.26
//! rational approximation (absolute error below 1.5e-7, far under float32 training noise), from
//! arithmetic that runs eight values at a time under AVX2, its polynomials in fused
//! multiply-adds.

use std::mem::MaybeUninit;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use rayon::prelude::*;

use super::buffers::{host, new_tensor};
use super::vectors::Vectors;
use super::{simd, tasks};

/// Values handed to one task: enough work to outweigh a task's cost.
const VALUES_PER_TASK: usize = 16 * 1024;

/// `gelu(x)` for every value of `x`: in `x`'s own buffer when nothing else holds it (in
/// inference), else into a new one (in training, the autodiff graph keeps `x`).
pub(crate) fn host_gelu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let (device, shape) = (x.device(), x.shape());
    match host::<B>(x).try_into_unique() {
        Ok(mut values) => {
            let chunks = values.values_mut().par_chunks_mut(VALUES_PER_TASK);
            tasks::for_each(chunks, gelu_in_place);
            values.into_tensor::<B>(shape, &device)
        }
        Err(x) => {
            let fill = |out: &mut [MaybeUninit<f32>]| {
                let chunks = out
                    .par_chunks_mut(VALUES_PER_TASK)
                    .zip(x.f32s().par_chunks(VALUES_PER_TASK));
                tasks::for_each(chunks, |(out, x)| gelu_into(out, x));
            };
            // SAFETY: the chunks of `out` and `x` pair up one to one (same length, same
            // chunk size), and `gelu_into` writes every value of its chunk.
            unsafe { new_tensor::<B>(shape, &device, fill) }
        }
    }
}

/// `grad · gelu'(x)` for every value, in the gradient's own buffer where nothing else holds it
/// (the usual case in training).
pub(crate) fn host_gelu_backward<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let (device, shape) = (x.device(), x.shape());
    let x = host::<B>(x);
    let mut out = host::<B>(grad).into_unique();
    let chunks = out
        .values_mut()
        .par_chunks_mut(VALUES_PER_TASK)
        .zip(x.f32s().par_chunks(VALUES_PER_TASK));
    tasks::for_each(chunks, |(grad, x)| gelu_backward_in_place(grad, x));
    out.into_tensor::<B>(shape, &device)
}

simd::vectorized_with! {
    fn gelu_in_place(values: &mut [f32]) => gelu_values
}

simd::vectorized_with! {
    /// `out` becomes `gelu(x)`, value by value (the two have one length).
    fn gelu_into(out: &mut [MaybeUninit<f32>], x: &[f32]) => gelu_values_into
}

simd::vectorized_with! {
    /// `grad` becomes `grad · gelu'(x)`.
    fn gelu_backward_in_place(grad: &mut [f32], x: &[f32]) => gelu_backward_values
}

#[inline(always)]
fn gelu_values_into(vectors: impl Vectors, out: &mut [MaybeUninit<f32>], x: &[f32]) {
    assert_eq!(out.len(), x.len(), "one output per value");
    for (out, &x) in out.iter_mut().zip(x) {
        out.write(x * normal_cdf(vectors, x));
    }
}

#[inline(always)]
fn gelu_values(vectors: impl Vectors, values: &mut [f32]) {
    for x in values {
        *x = *x * normal_cdf(vectors, *x);
    }
}

/// `gelu'(x) = Φ(x) + x·φ(x)`, with the one exponential `e^(-x²/2)` serving both: it is
/// `e^(-z²)` for `erf`'s `z = x / √2`, and the normal density's.
#[inline(always)]
fn gelu_backward_values(vectors: impl Vectors, grad: &mut [f32], x: &[f32]) {
    let inverse_sqrt_2pi = 1.0 / (2.0 * std::f32::consts::PI).sqrt();
    for (grad, &x) in grad.iter_mut().zip(x) {
        let gaussian = simd::exp(vectors, -0.5 * x * x);
        let z = x * std::f32::consts::FRAC_1_SQRT_2;
        let cdf = vectors.mul_add(0.5, erf_with(vectors, z, gaussian), 0.5);
        *grad *= vectors.mul_add(x * inverse_sqrt_2pi, gaussian, cdf);
    }
}

/// `Φ(x) = (1 + erf(x / √2)) / 2`.
#[inline(always)]
fn normal_cdf(vectors: impl Vectors, x: f32) -> f32 {
    vectors.mul_add(0.5, erf(vectors, x * std::f32::consts::FRAC_1_SQRT_2), 0.5)
}

/// Abramowitz & Stegun 7.1.26: `erf(z) ≈ 1 - t·P(t)·e^(-z²)`, `t = 1 / (1 + p·z)` for
/// `z ≥ 0`, odd in `z`.
#[inline(always)]
fn erf(vectors: impl Vectors, z: f32) -> f32 {
    erf_with(vectors, z, simd::exp(vectors, -z * z))
}

/// [`erf`] given `gaussian = e^(-z²)`.
#[inline(always)]
fn erf_with(vectors: impl Vectors, z: f32, gaussian: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152,
        1.061_405_4,
    ];
    let magnitude = z.abs();
    let t = 1.0 / vectors.mul_add(P, magnitude, 1.0);
    let mut polynomial = A[4];
    for coefficient in [A[3], A[2], A[1], A[0]] {
        polynomial = vectors.mul_add(polynomial, t, coefficient);
    }
    let value = vectors.mul_add(-(t * polynomial), gaussian, 1.0);
    value.copysign(z)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `erf` from its Taylor series, in f64 (accurate for |z| ≤ 3).
    fn reference_erf(z: f64) -> f64 {
        let (mut term, mut sum) = (z, z);
        for n in 1..200 {
            term *= -z * z / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    fn erf_is_within_its_published_error(vectors: impl Vectors) {
        for step in -300..=300 {
            let z = step as f64 * 0.01;
            let diff = (erf(vectors, z as f32) as f64 - reference_erf(z)).abs();
            assert!(diff < 5e-7, "erf({z}) off by {diff:e}");
        }
        // erfc(6) is 2e-17: ±1 to float32 precision.
        assert_eq!((erf(vectors, 6.0), erf(vectors, -6.0)), (1.0, -1.0));
    }

    #[test]
    fn erf_is_within_its_published_error_in_plain_arithmetic() {
        erf_is_within_its_published_error(crate::host::vectors::Plain);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn erf_is_within_its_published_error_with_fused_multiply_adds() {
        match crate::host::vectors::Avx2::detect() {
            Some(avx2) => erf_is_within_its_published_error(avx2),
            None => eprintln!("this CPU has no AVX2 and FMA: the plain test covers erf"),
        }
    }

    /// In the tensor's own buffer when nothing else holds it, into a new one when something
    /// does: the same values either way, and the held tensor untouched.
    #[cfg(feature = "flex")]
    #[test]
    fn gelu_writes_in_place_only_what_nothing_else_holds() {
        use burn::backend::Flex;
        use burn::backend::ops::FloatTensorOps;
        use burn::tensor::TensorData;

        let xs: Vec<f32> = (0..40_000).map(|i| (i % 801) as f32 * 0.01 - 4.0).collect();
        let mut expected = xs.clone();
        gelu_in_place(&mut expected);
        let tensor =
            || Flex::float_from_data(TensorData::new(xs.clone(), [200, 200]), &Default::default());
        let values = |tensor| host::<Flex>(tensor).f32s().to_vec();

        assert_eq!(values(host_gelu::<Flex>(tensor())), expected, "unique");
        let held = tensor();
        let output = host_gelu::<Flex>(held.clone());
        assert_eq!(values(output), expected, "shared");
        assert_eq!(values(held), xs, "the held input");
    }

    #[test]
    fn the_gradient_is_the_slope_of_the_values() {
        let xs: Vec<f32> = (-40..=40).map(|i| i as f32 * 0.1).collect();
        let mut slopes = vec![1.0f32; xs.len()];
        gelu_backward_in_place(&mut slopes, &xs);
        for (x, slope) in xs.iter().zip(slopes) {
            let h = 1e-2f32;
            let mut around = [x - h, x + h];
            gelu_in_place(&mut around);
            let numeric = (around[1] - around[0]) / (2.0 * h);
            assert!(
                (numeric - slope).abs() < 1e-3,
                "at {x}: {numeric} vs {slope}"
            );
        }
    }
}
