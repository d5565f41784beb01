//! Lane-wise arithmetic on short arrays, `[f32; N]`, as whole vector instructions.
//!
//! The head-lane attention keeps one value per head in each `[f32; heads]` and loops over
//! tokens. Written as plain loops over the lanes, LLVM's loop vectorizer turned the loops over
//! tokens into vectors of four tokens instead, gathering every vector one float at a time,
//! which made the attention's forward pass 15 % of a training step. Explicit vector
//! instructions are left alone by the loop vectorizer, so the kernels take a [`Vectors`] and
//! do their lane arithmetic through it.

/// Whether this CPU runs the kernels' AVX2 versions (the detection is cached by std).
#[inline(always)]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The vector unit a kernel computes with: [`Avx2`] where the CPU has AVX2 and FMA, [`Plain`]
/// (lane loops for the compiler) elsewhere. Operations are lane by lane.
pub(super) trait Vectors: Copy {
    /// `sum += a * b`.
    fn multiply_add<const N: usize>(self, sum: &mut [f32; N], a: &[f32; N], b: &[f32; N]);
    /// `x += y`.
    fn add<const N: usize>(self, x: &mut [f32; N], y: &[f32; N]);
    /// `x -= y`.
    fn subtract<const N: usize>(self, x: &mut [f32; N], y: &[f32; N]);
    /// `x *= y`.
    fn multiply<const N: usize>(self, x: &mut [f32; N], y: &[f32; N]);
    /// `x = if y > x { y } else { x }` (a NaN in `y` is skipped, one in `x` kept).
    fn max<const N: usize>(self, x: &mut [f32; N], y: &[f32; N]);
    /// `a · b + c` for one value: a fused multiply-add, rounded once, with [`Avx2`] (in a loop
    /// the compiler vectorizes, a vector FMA); the product and the sum rounded apart with
    /// [`Plain`], whose CPUs may lack the instruction (std's `mul_add` would call libm).
    fn mul_add(self, a: f32, b: f32, c: f32) -> f32;
}

/// Lane loops, for CPUs without AVX2 and for other architectures.
#[derive(Clone, Copy)]
pub(super) struct Plain;

impl Vectors for Plain {
    #[inline(always)]
    fn multiply_add<const N: usize>(self, sum: &mut [f32; N], a: &[f32; N], b: &[f32; N]) {
        for lane in 0..N {
            sum[lane] += a[lane] * b[lane];
        }
    }

    #[inline(always)]
    fn add<const N: usize>(self, x: &mut [f32; N], y: &[f32; N]) {
        for lane in 0..N {
            x[lane] += y[lane];
        }
    }

    #[inline(always)]
    fn subtract<const N: usize>(self, x: &mut [f32; N], y: &[f32; N]) {
        for lane in 0..N {
            x[lane] -= y[lane];
        }
    }

    #[inline(always)]
    fn multiply<const N: usize>(self, x: &mut [f32; N], y: &[f32; N]) {
        for lane in 0..N {
            x[lane] *= y[lane];
        }
    }

    #[inline(always)]
    fn max<const N: usize>(self, x: &mut [f32; N], y: &[f32; N]) {
        for lane in 0..N {
            if y[lane] > x[lane] {
                x[lane] = y[lane];
            }
        }
    }

    #[inline(always)]
    fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Plain, Vectors};

    /// AVX2 and FMA instructions: 8 lanes per instruction, then 4, then the rest one by one.
    /// A value of this type exists only where the CPU has both features ([`Avx2::detect`]),
    /// which is what makes its intrinsics sound to call.
    #[derive(Clone, Copy)]
    pub(in crate::host) struct Avx2(());

    impl Avx2 {
        pub fn detect() -> Option<Self> {
            crate::host::vectors::has_avx2().then_some(Self(()))
        }
    }

    /// Defines a two-operand `Vectors` method from its 8-lane and 4-lane instructions; the
    /// last `N % 4` lanes take `Plain`'s.
    macro_rules! binary {
        ($name:ident, $wide:ident, $narrow:ident) => {
            #[inline(always)]
            fn $name<const N: usize>(self, x: &mut [f32; N], y: &[f32; N]) {
                let (xs, ys) = (x.as_mut_ptr(), y.as_ptr());
                let mut lane = 0;
                // SAFETY: `self` proves AVX2 and FMA; every access is within the N lanes.
                unsafe {
                    while lane + 8 <= N {
                        let (x, y) = (xs.add(lane), ys.add(lane));
                        _mm256_storeu_ps(x, $wide(_mm256_loadu_ps(x), _mm256_loadu_ps(y)));
                        lane += 8;
                    }
                    if lane + 4 <= N {
                        let (x, y) = (xs.add(lane), ys.add(lane));
                        _mm_storeu_ps(x, $narrow(_mm_loadu_ps(x), _mm_loadu_ps(y)));
                        lane += 4;
                    }
                }
                for lane in lane..N {
                    let mut one = [x[lane]];
                    Plain.$name(&mut one, &[y[lane]]);
                    x[lane] = one[0];
                }
            }
        };
    }

    impl Vectors for Avx2 {
        #[inline(always)]
        fn multiply_add<const N: usize>(self, sum: &mut [f32; N], a: &[f32; N], b: &[f32; N]) {
            let (sums, xs, ys) = (sum.as_mut_ptr(), a.as_ptr(), b.as_ptr());
            let mut lane = 0;
            // SAFETY: `self` proves AVX2 and FMA; every access is within the N lanes.
            unsafe {
                while lane + 8 <= N {
                    let (x, y) = (_mm256_loadu_ps(xs.add(lane)), _mm256_loadu_ps(ys.add(lane)));
                    let sum = sums.add(lane);
                    _mm256_storeu_ps(sum, _mm256_fmadd_ps(x, y, _mm256_loadu_ps(sum)));
                    lane += 8;
                }
                if lane + 4 <= N {
                    let (x, y) = (_mm_loadu_ps(xs.add(lane)), _mm_loadu_ps(ys.add(lane)));
                    let sum = sums.add(lane);
                    _mm_storeu_ps(sum, _mm_fmadd_ps(x, y, _mm_loadu_ps(sum)));
                    lane += 4;
                }
            }
            for lane in lane..N {
                sum[lane] += a[lane] * b[lane];
            }
        }

        binary!(add, _mm256_add_ps, _mm_add_ps);
        binary!(subtract, _mm256_sub_ps, _mm_sub_ps);
        binary!(multiply, _mm256_mul_ps, _mm_mul_ps);
        // `maxps(y, x)` is `y > x ? y : x`, the comparison `Plain::max` makes.
        binary!(max, max_of_second, max_of_second_narrow);

        #[inline(always)]
        fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
            // One instruction where this is inlined into a function compiled with FMA, as
            // every user of `Avx2` is (`vectorized_with!`).
            a.mul_add(b, c)
        }
    }

    #[inline(always)]
    unsafe fn max_of_second(x: __m256, y: __m256) -> __m256 {
        // SAFETY: only called from `Avx2`'s methods.
        unsafe { _mm256_max_ps(y, x) }
    }

    #[inline(always)]
    unsafe fn max_of_second_narrow(x: __m128, y: __m128) -> __m128 {
        // SAFETY: only called from `Avx2`'s methods.
        unsafe { _mm_max_ps(y, x) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name`'s operation of `vectors` on `x` and `y` (`multiply_add` with `y` twice).
    fn apply(vectors: impl Vectors, name: &str, x: &mut [f32; 13], y: &[f32; 13]) {
        match name {
            "add" => vectors.add(x, y),
            "subtract" => vectors.subtract(x, y),
            "multiply" => vectors.multiply(x, y),
            "max" => vectors.max(x, y),
            "multiply_add" => vectors.multiply_add(x, y, y),
            other => unreachable!("no operation {other}"),
        }
    }

    /// Every operation of `vectors` beside `Plain`'s on 13 lanes (8 + 4 + 1), the second
    /// operand with and without a NaN.
    fn agrees_with_plain(vectors: impl Vectors) {
        let a: [f32; 13] = std::array::from_fn(|i| i as f32 * 0.75 - 4.0);
        let b: [f32; 13] = std::array::from_fn(|i| 3.0 - i as f32 * 0.5);
        let mut b_with_nan = b;
        b_with_nan[9] = f32::NAN;
        for name in ["add", "subtract", "multiply", "max", "multiply_add"] {
            for y in [&b, &b_with_nan] {
                let (mut got, mut want) = (a, a);
                apply(vectors, name, &mut got, y);
                apply(Plain, name, &mut want, y);
                // Bit for bit, but for a fused multiply-add's single rounding.
                let close = |(g, w): (&f32, &f32)| {
                    g.to_bits() == w.to_bits()
                        || (g.is_nan() && w.is_nan())
                        || (g - w).abs() <= 1e-6 * w.abs()
                };
                assert!(
                    got.iter().zip(&want).all(close),
                    "{name}: {got:?} against {want:?}"
                );
            }
        }
    }

    #[test]
    fn plain_lane_loops_compute_what_they_say() {
        let (mut x, y) = ([1.0, 5.0, f32::NAN], [2.0, 3.0, 1.0]);
        Plain.max(&mut x, &[2.0, 3.0, f32::NAN]);
        assert_eq!(&x[..2], &[2.0, 5.0]);
        assert!(x[2].is_nan());
        let mut sum = [1.0, 1.0, 1.0];
        Plain.multiply_add(&mut sum, &y, &y);
        assert_eq!(sum, [5.0, 10.0, 2.0]);
        assert_eq!(Plain.mul_add(3.0, 4.0, -2.0), 10.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_instructions_agree_with_the_lane_loops() {
        match Avx2::detect() {
            Some(avx2) => {
                agrees_with_plain(avx2);
                // Rounded once: 1 + 2⁻²³ squared is 1 + 2⁻²² + 2⁻⁴⁶, whose last term a
                // separate product rounds away.
                let a = 1.0 + f32::EPSILON;
                let exact_tail = avx2.mul_add(a, a, -(a * a));
                assert_eq!(exact_tail, f32::EPSILON * f32::EPSILON);
                assert_eq!(Plain.mul_add(a, a, -(a * a)), 0.0);
            }
            None => eprintln!("this CPU has no AVX2: only the lane loops run here"),
        }
    }
}
