//! Keeping freed memory in the heap while a training session lives.
//!
//! glibc hands blocks above its mmap threshold (32 MiB at most) and the top of the heap back to
//! the kernel as soon as they are freed. A training step frees and reallocates gigabytes of
//! activations and gradients, and faulting those pages back in cost more CPU time than the
//! arithmetic: two BERT-base steps (batch 8 x 128) took 4.8 M page faults and 44 s of system
//! time. With freed memory kept for the next step, `bench --models bert,vit --random-weights
//! --mode training --gradient-checkpointing false,true --batch-sizes 8 --seq-len 128` went
//! from a p50 step of 28.7 s to 14.3 s for BERT-base and 14.1 s to 12.4 s for ViT-base. So
//! while a session lives, no allocation is memory-mapped and the heap is never trimmed; when the last session
//! goes, the defaults come back and the free memory is returned (malloc_trim). glibc's dynamic
//! mmap threshold stays off afterwards (any mallopt call turns it off), which only the rest of
//! a process that trained sees.

use std::sync::atomic::{AtomicUsize, Ordering};

static SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// Held by each training session.
pub(crate) struct RetainedHeap;

impl RetainedHeap {
    pub(crate) fn new() -> Self {
        if SESSIONS.fetch_add(1, Ordering::SeqCst) == 0 {
            set(0, i32::MAX);
        }
        RetainedHeap
    }
}

impl Drop for RetainedHeap {
    fn drop(&mut self) {
        if SESSIONS.fetch_sub(1, Ordering::SeqCst) == 1 {
            // glibc's defaults: DEFAULT_MMAP_MAX and DEFAULT_TRIM_THRESHOLD.
            set(65_536, 128 * 1024);
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // Safety: malloc_trim only releases free memory of the allocator's own arenas.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(mmap_max: i32, trim_threshold: i32) {
    // Safety: mallopt changes allocator parameters; any value is valid for these two.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, mmap_max);
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim_threshold);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set(_mmap_max: i32, _trim_threshold: i32) {}
