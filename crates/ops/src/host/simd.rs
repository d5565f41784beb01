//! What the host kernels need to use the CPU's vector units from stable Rust: a way to run a
//! kernel compiled for AVX2 where the CPU has it (the crate itself is built for baseline
//! x86-64, whose vectors hold 4 floats), and reductions and an `exp` written so that the
//! compiler can vectorize them (a plain float sum is a chain it must keep in order).

use super::vectors::Vectors;

/// Lanes of the partial sums in [`dot`] and [`sum`]: one AVX2 vector of `f32`.
const LANES: usize = 8;

/// `vectorized!(fn name(arguments) => body)` defines `name`, which runs `body` (an
/// `#[inline(always)]` function, as are all it calls) compiled with AVX2 and FMA when this CPU
/// has them, and as compiled otherwise. Code is compiled for the features of the function it
/// ends up in, so `body` is inlined into one function of each kind.
macro_rules! vectorized {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $type:ty),* $(,)?) => $body:path) => {
        $(#[$doc])*
        fn $name($($arg: $type),*) {
            #[cfg(target_arch = "x86_64")]
            if $crate::host::vectors::has_avx2() {
                #[target_feature(enable = "avx2,fma")]
                fn with_avx2($($arg: $type),*) {
                    $body($($arg),*)
                }
                // SAFETY: the CPU has both features, checked just above.
                return unsafe { with_avx2($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}
/// `vectorized_with!(fn name(arguments) => body)`: as [`vectorized!`], where `body` takes the
/// [`Vectors`](super::vectors::Vectors) to compute with as its first argument: `Avx2` in the
/// AVX2 version, `Plain` in the other.
macro_rules! vectorized_with {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $type:ty),* $(,)?) => $body:path) => {
        $(#[$doc])*
        fn $name($($arg: $type),*) {
            use $crate::host::vectors;
            #[cfg(target_arch = "x86_64")]
            if let Some(avx2) = vectors::Avx2::detect() {
                #[target_feature(enable = "avx2,fma")]
                fn with_avx2(avx2: vectors::Avx2, $($arg: $type),*) {
                    $body(avx2, $($arg),*)
                }
                // SAFETY: `avx2` exists only where the CPU has both features.
                return unsafe { with_avx2(avx2, $($arg),*) };
            }
            $body(vectors::Plain, $($arg),*)
        }
    };
}
pub(super) use {vectorized, vectorized_with};

/// `Σ a_i · b_i` over the shorter of the two, in [`LANES`] partial sums.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a, b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a
        .remainder()
        .iter()
        .zip(b.remainder())
        .map(|(a, b)| a * b)
        .sum();
    let mut lanes = [0.0f32; LANES];
    for (a, b) in a.zip(b) {
        for lane in 0..LANES {
            lanes[lane] += a[lane] * b[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ a_i · b_i · c_i` over the shortest of the three, in [`LANES`] partial sums.
#[inline(always)]
pub(super) fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let (a, b, c) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let tail: f32 = a
        .remainder()
        .iter()
        .zip(b.remainder())
        .zip(c.remainder())
        .map(|((a, b), c)| a * b * c)
        .sum();
    let mut lanes = [0.0f32; LANES];
    for ((a, b), c) in a.zip(b).zip(c) {
        for lane in 0..LANES {
            lanes[lane] += a[lane] * b[lane] * c[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ x_i`, in [`LANES`] partial sums.
#[inline(always)]
pub(super) fn sum(x: &[f32]) -> f32 {
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    let mut lanes = [0.0f32; LANES];
    for chunk in chunks {
        for lane in 0..LANES {
            lanes[lane] += chunk[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `e^x` to within 2 ulp for `x` in [-87, 88] (0 below, `e^88` above), from arithmetic the
/// compiler can vectorize: `e^x = 2^k · e^r` with `k = round(x / ln 2)`, `|r| ≤ ln 2 / 2`,
/// and `e^r` as its Taylor polynomial of degree 7 (Horner, in fused multiply-adds where
/// `vectors` has them).
#[inline(always)]
pub(super) fn exp(vectors: impl Vectors, x: f32) -> f32 {
    const LN_2_HIGH: f32 = 0.693_145_75;
    const LN_2_LOW: f32 = 1.428_606_8e-6;
    let clamped = x.clamp(-87.0, 88.0);
    let k = (clamped * std::f32::consts::LOG2_E + 0.5).floor();
    let r = vectors.mul_add(-k, LN_2_LOW, vectors.mul_add(-k, LN_2_HIGH, clamped));
    let mut p = 1.0 / 5040.0;
    for coefficient in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = vectors.mul_add(p, r, coefficient);
    }
    // `as i32` saturates and maps NaN to 0, which compiles to scalar code; `k` is a whole
    // number in [-126, 127] for every input but NaN.
    let k = if k.is_nan() { 0.0 } else { k };
    // SAFETY: `k` is finite and in i32's range (see above).
    let exponent = unsafe { k.to_int_unchecked::<i32>() };
    let scale = f32::from_bits(((exponent + 127) as u32) << 23);
    let value = p * scale;
    if x < -87.0 { 0.0 } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "x86_64")]
    use crate::host::vectors::Avx2;
    use crate::host::vectors::Plain;

    /// With and without fused multiply-adds (where this CPU has them).
    fn exp_is_within_two_ulp_of_the_standard_one(vectors: impl Vectors) {
        let mut worst = 0.0f32;
        for step in -86_999..=87_999 {
            let x = step as f32 * 1e-3;
            let (fast, exact) = (exp(vectors, x), (x as f64).exp() as f32);
            let ulp = (exact.to_bits() as i64 - fast.to_bits() as i64).abs() as f32;
            worst = worst.max(ulp);
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp(vectors, -200.0), 0.0);
        assert_eq!(exp(vectors, f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn exp_is_within_two_ulp_in_plain_arithmetic() {
        exp_is_within_two_ulp_of_the_standard_one(Plain);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_is_within_two_ulp_with_fused_multiply_adds() {
        match Avx2::detect() {
            Some(avx2) => exp_is_within_two_ulp_of_the_standard_one(avx2),
            None => eprintln!("this CPU has no AVX2 and FMA: the plain test covers exp"),
        }
    }

    #[test]
    fn lane_sums_give_the_plain_sums() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.25).collect();
        let plain: f32 = a.iter().zip(&b).map(|(a, b)| a * b).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
        assert_eq!(sum(&a), a.iter().sum::<f32>());
    }
}
