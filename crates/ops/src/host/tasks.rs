//! How the host kernels run their tasks: on rayon's pool when there are several, on the
//! calling thread when there is one.
//!
//! A parallel iterator hands its work to rayon's pool even when it holds a single task: from a
//! thread outside the pool, that wakes a pool thread, most often on the other core, and puts
//! the caller to sleep until the task is done. A one-image prediction runs a dozen such
//! kernels, each a few microseconds of work; on a virtual machine, waking an idle core costs
//! more than that.

use rayon::iter::plumbing::{Producer, ProducerCallback};
use rayon::prelude::*;

/// `tasks.for_each(task)`, on the calling thread when there is only one task.
pub(super) fn for_each<I>(tasks: I, task: impl Fn(I::Item) + Sync + Send)
where
    I: IndexedParallelIterator,
{
    if tasks.len() > 1 {
        tasks.for_each(task);
    } else {
        tasks.with_producer(Inline(task));
    }
}

/// Runs a producer's items in order on the calling thread.
struct Inline<F>(F);

impl<T, F: FnMut(T)> ProducerCallback<T> for Inline<F> {
    type Output = ();

    fn callback<P: Producer<Item = T>>(self, producer: P) {
        producer.into_iter().for_each(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task runs once, whatever their number; a lone task on the calling thread.
    #[test]
    fn each_task_runs_once_and_a_lone_one_inline() {
        use std::sync::Mutex;

        for len in [1usize, 3, 100] {
            let mut values = vec![0u32; len];
            let threads = Mutex::new(Vec::new());
            for_each(values.par_chunks_mut(1), |chunk| {
                chunk[0] += 1;
                threads.lock().unwrap().push(std::thread::current().id());
            });
            assert!(values.iter().all(|&value| value == 1), "{len} tasks");
            if len == 1 {
                assert_eq!(threads.into_inner().unwrap(), [std::thread::current().id()]);
            }
        }
    }
}
