//! Data parallelism on the CPU backends that run most operations on one thread (flex,
//! ndarray): a batch cut into one slice per core, the slices run side by side on threads of
//! their own. [`crate::Vit::predict`] and the trainer's training steps both cut their batches
//! here.

use std::ops::Range;
use std::sync::OnceLock;

use burn::tensor::Device;

/// How many slices a batch of `batch` images is cut into on `device`: one per core on flex and
/// ndarray, each of at least `min_slice` images; none (1) elsewhere (libtorch and GPUs
/// parallelise each operation themselves).
pub fn count(device: &Device, batch: usize, min_slice: usize) -> usize {
    if batch < 2 * min_slice || !crate::fused::runs_on_host(device) {
        return 1;
    }
    // Asked once: std reads the cgroup's CPU quota from files each time (tens of µs, a tenth
    // of a one-image prediction).
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from));
    cores.min(batch / min_slice).max(1)
}

/// `0..batch` cut into `slices` ranges whose lengths differ by at most one.
pub fn ranges(batch: usize, slices: usize) -> Vec<Range<usize>> {
    let slices = slices.clamp(1, batch.max(1));
    (0..slices)
        .map(|slice| slice * batch / slices..(slice + 1) * batch / slices)
        .collect()
}

/// Runs each job on a thread of its own and returns their results in order; a job's panic is
/// the caller's.
pub fn side_by_side<T, F>(jobs: Vec<F>) -> Vec<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs.into_iter().map(|job| scope.spawn(job)).collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_batch_in_near_equal_slices() {
        assert_eq!(ranges(100, 2), vec![0..50, 50..100]);
        assert_eq!(ranges(10, 3), vec![0..3, 3..6, 6..10]);
        assert_eq!(ranges(2, 5), vec![0..1, 1..2]);
        assert_eq!(ranges(7, 1), vec![0..7]);
    }
}
