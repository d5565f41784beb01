//! The order of a training epoch as a function of (seed, epoch) alone, so a run resumed at
//! epoch e sees exactly what an uninterrupted run sees there. The loader that starts each pass
//! moves an [`EpochClock`]; [`EpochShuffled`] and the augmentation read it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use burn::data::dataset::{Dataset, DatasetError};

use crate::rng::SplitMix64;

/// Which epoch (1-based) the training pass under way belongs to; shared by clones.
#[derive(Clone, Debug, Default)]
pub struct EpochClock(Arc<AtomicUsize>);

impl EpochClock {
    /// A clock whose next pass is `first_epoch`.
    pub fn starting_at(first_epoch: usize) -> Self {
        Self(Arc::new(AtomicUsize::new(first_epoch.saturating_sub(1))))
    }

    /// The epoch of the pass under way; 0 before the first one starts.
    pub fn current(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Starts the next pass and returns its epoch.
    pub fn advance(&self) -> usize {
        self.0.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// `inner` in the order [`permutation`] gives for the clock's current epoch.
pub struct EpochShuffled<D> {
    inner: D,
    seed: u64,
    clock: EpochClock,
    /// The permutation of the epoch it was made for.
    order: RwLock<(usize, Arc<Vec<usize>>)>,
}

impl<D> EpochShuffled<D> {
    pub fn new(inner: D, seed: u64, clock: EpochClock) -> Self {
        Self {
            inner,
            seed,
            clock,
            order: RwLock::new((usize::MAX, Arc::new(Vec::new()))),
        }
    }

    /// The permutation of `0..len` for the current epoch, made once per epoch.
    fn order(&self, len: usize) -> Arc<Vec<usize>> {
        let epoch = self.clock.current();
        if let Ok(order) = self.order.read()
            && order.0 == epoch
        {
            return Arc::clone(&order.1);
        }
        let fresh = Arc::new(permutation(self.seed, epoch, len));
        if let Ok(mut order) = self.order.write() {
            *order = (epoch, Arc::clone(&fresh));
        }
        fresh
    }
}

impl<D: Dataset<I>, I: Send + Sync> Dataset<I> for EpochShuffled<D> {
    /// Like slice indexing, an index past the end panics.
    fn get(&self, index: usize) -> Result<I, DatasetError> {
        self.inner.get(self.order(self.inner.len())[index])
    }

    fn len(&self) -> usize {
        self.inner.len()
    }
}

/// A seed for the backend's own random draws (dropout) in `epoch`, from the run's seed.
pub fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    /// Keeps this stream apart from the order's and the augmentation's.
    const BACKEND_STREAM: u64 = u64::MAX - 1;
    SplitMix64::for_stream(&[seed, BACKEND_STREAM, epoch as u64]).next_u64()
}

/// A uniform random permutation of `0..len` (Fisher–Yates) drawn from (seed, epoch) only.
pub fn permutation(seed: u64, epoch: usize, len: usize) -> Vec<usize> {
    /// Keeps the order's stream apart from the augmentation's (seed, image, draw) streams.
    const ORDER_STREAM: u64 = u64::MAX;
    let mut rng = SplitMix64::for_stream(&[seed, ORDER_STREAM, epoch as u64]);
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use burn::data::dataset::InMemDataset;

    use super::*;

    #[test]
    fn each_epoch_has_its_own_order_whoever_asks_for_it() {
        let a = permutation(7, 3, 1000);
        assert_eq!(a, permutation(7, 3, 1000));
        assert_ne!(a, permutation(7, 4, 1000));
        assert_ne!(a, permutation(8, 3, 1000));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>(), "a permutation");
    }

    #[test]
    fn a_clock_started_later_reads_the_same_epoch_the_same_way() {
        let items: Vec<u32> = (0..50).collect();
        let read = |clock: &EpochClock| {
            let dataset = EpochShuffled::new(InMemDataset::new(items.clone()), 1, clock.clone());
            clock.advance();
            (0..50).map(|i| dataset.get(i).unwrap()).collect::<Vec<_>>()
        };
        let from_start = EpochClock::starting_at(1);
        let first = read(&from_start);
        let second = read(&from_start);
        assert_ne!(first, second);
        assert_eq!(
            read(&EpochClock::starting_at(2)),
            second,
            "a resumed epoch 2"
        );
    }
}
