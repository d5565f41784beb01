//! A small seeded generator (SplitMix64) for augmentation: fast, stable across releases of any
//! crate, and cheap to derive one stream per (seed, image, draw).

#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for one of many independent streams, e.g. (seed, image index, draw).
    pub fn for_stream(parts: &[u64]) -> Self {
        let mut state = Self::new(0x9e37_79b9_7f4a_7c15);
        for part in parts {
            state = Self::new(state.next_u64() ^ part);
        }
        state
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-bound, bound).
    pub fn symmetric(&mut self, bound: f32) -> f32 {
        (2.0 * self.next_f32() - 1.0) * bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let draw = |parts: &[u64]| SplitMix64::for_stream(parts).next_u64();
        assert_eq!(draw(&[1, 2, 3]), draw(&[1, 2, 3]));
        assert_ne!(draw(&[1, 2, 3]), draw(&[1, 2, 4]));
        assert_ne!(draw(&[1, 2, 3]), draw(&[1, 3, 2]));
    }

    #[test]
    fn uniform_values_stay_in_range_and_spread() {
        let mut rng = SplitMix64::new(5);
        let values: Vec<f32> = (0..10_000).map(|_| rng.symmetric(2.0)).collect();
        assert!(values.iter().all(|v| (-2.0..2.0).contains(v)));
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        assert!(mean.abs() < 0.1, "mean {mean}");
    }
}
