//! Data parallelism on the CPU backends that run most operations on one thread (flex,
//! ndarray): a batch cut into one slice per core, the slices run side by side on threads of
//! their own. `vit_model::Vit::predict` and the trainer's training steps both cut their batches
//! here.

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::Device;
use rayon::{ThreadPool, ThreadPoolBuilder};

/// How many slices a batch of `batch` images is cut into on `device`: one per core on flex and
/// ndarray, each of at least `min_slice` images; none (1) elsewhere (libtorch and GPUs
/// parallelise each operation themselves).
pub fn count(device: &Device, batch: usize, min_slice: usize) -> usize {
    if batch < 2 * min_slice || !crate::runs_on_host(device) {
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
///
/// Each job runs inside a rayon pool of one thread, its own: the operations within a slice that
/// would split their work across rayon's global pool (flex's products and element-wise
/// passes, this crate's host kernels) then run inline on the slice's thread, instead of handing
/// each piece to the global pool's threads and sleeping until they finish. The slices already
/// keep every core busy.
pub fn side_by_side<T, F>(jobs: Vec<F>) -> Vec<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let pools = single_thread_pools(jobs.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .into_iter()
            .zip(pools)
            .map(|(job, pool)| scope.spawn(move || pool.install(job)))
            .collect();
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

/// `count` rayon pools of one thread each, made on first use and kept for the process's life
/// (a slice's thread is its pool's, and starting threads every step would cost).
fn single_thread_pools(count: usize) -> Vec<Arc<ThreadPool>> {
    static POOLS: Mutex<Vec<Arc<ThreadPool>>> = Mutex::new(Vec::new());
    let mut pools = POOLS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    while pools.len() < count {
        let index = pools.len();
        let pool = ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(move |_| format!("vit-slice-{index}"))
            .build()
            .expect("the system starts a thread");
        pools.push(Arc::new(pool));
    }
    pools[..count].to_vec()
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

    /// Each job has a thread of its own, and the rayon work inside a job stays on that thread.
    #[test]
    fn each_slice_runs_its_rayon_work_on_its_own_thread() {
        use rayon::prelude::*;

        let job = || {
            let own = std::thread::current().id();
            let workers: Vec<_> = (0..64)
                .into_par_iter()
                .map(|_| std::thread::current().id())
                .collect();
            (own, rayon::current_num_threads(), workers)
        };
        let results = side_by_side(vec![job, job, job]);
        let threads: std::collections::HashSet<_> = results.iter().map(|(own, _, _)| own).collect();
        assert_eq!(threads.len(), 3, "one thread per job");
        for (own, pool_threads, workers) in &results {
            assert_eq!(*pool_threads, 1);
            assert!(workers.iter().all(|worker| worker == own));
        }
    }
}
