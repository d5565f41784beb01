//! The allocator's settings for training. A training step allocates and frees the same large
//! buffers (activations, gradients) step after step. glibc's malloc serves blocks over its
//! threshold with fresh `mmap`s and gives freed memory back to the kernel, so each step faults
//! its buffers in again and the kernel clears every page: about a tenth of a flex step on
//! 2 cores (`cargo xtask bench`, `--phases flex`). Raised limits keep freed memory for reuse.

/// Keeps freed memory in the process for reuse; call once, before the first allocation of a
/// training run. Elsewhere than glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Blocks up to 32 MiB (glibc's largest mmap threshold) come from the heap, freed memory
        // stays mapped up to 1 GiB, and the heap grows 64 MiB at a time.
        let settings = [
            (libc::M_MMAP_THRESHOLD, 32 << 20),
            (libc::M_TRIM_THRESHOLD, 1 << 30),
            (libc::M_TOP_PAD, 64 << 20),
        ];
        for (parameter, value) in settings {
            // SAFETY: mallopt only changes malloc's tuning parameters; any value is accepted
            // or refused with a return of 0, and both leave the allocator consistent.
            unsafe {
                libc::mallopt(parameter, value);
            }
        }
    }
}
