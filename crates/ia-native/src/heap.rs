//! Keeping freed memory in the heap while a native session lives.
//!
//! glibc hands blocks above its mmap threshold (32 MiB at most) and the top of the heap back to
//! the kernel as soon as they are freed, so the next call faults every page of its activations
//! back in (and the kernel zeroes each). A training step frees and reallocates gigabytes of
//! activations and gradients, and faulting those pages back in cost more CPU time than the
//! arithmetic: two BERT-base steps (batch 8 x 128) took 4.8 M page faults and 44 s of system
//! time. With freed memory kept for the next step, `bench --models bert,vit --random-weights
//! --mode training --gradient-checkpointing false,true --batch-sizes 8 --seq-len 128` went
//! from a p50 step of 28.7 s to 14.3 s for BERT-base and 14.1 s to 12.4 s for ViT-base.
//! Inference pays the same on large activations: wav2vec2-base's first convolution (11,007
//! frames x 512 channels, 22 MB out) took 13.8-18.6 ms a call with the defaults and 2.9-4.9 ms
//! with the heap kept. So while a session lives, no allocation is memory-mapped and the heap is never
//! trimmed; when the last session goes, the defaults come back and the free memory is returned
//! (malloc_trim). glibc's dynamic mmap threshold stays off afterwards (any mallopt call turns
//! it off), which only the rest of a process that ran the native engine sees.
//!
//! An inference session or speech recogniser takes its hold after loading ([`Retained`]), so
//! the temporaries of loading (the checkpoint's bytes, unpacked weights) go back to the kernel
//! under the defaults instead of staying in the heap for the session's life. Text generators
//! do not take it: nobody measured them with it.

use ia_engine::generation::{ImageBatch, SequenceId, SequencePool, TextGenerator};
use ia_engine::speech::{SpeechRecognizer, TranscribeOptions, Transcription};
use ia_engine::{EngineError, Inputs, Outputs, Session, SessionInfo};
use std::sync::Mutex;

/// Sessions alive. A lock rather than an atomic count: the first session's settings and the
/// last one's restoring must not interleave when sessions load and drop on several threads
/// (the server).
static SESSIONS: Mutex<usize> = Mutex::new(0);

/// Held by each native session.
pub(crate) struct RetainedHeap;

impl RetainedHeap {
    pub(crate) fn new() -> Self {
        let mut sessions = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
        if *sessions == 0 {
            set(0, i32::MAX);
        }
        *sessions += 1;
        RetainedHeap
    }
}

impl Drop for RetainedHeap {
    fn drop(&mut self) {
        let mut sessions = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
        *sessions -= 1;
        if *sessions == 0 {
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

/// A loaded inference session or speech recogniser that holds the heap while it lives.
pub(crate) struct Retained<S: ?Sized> {
    inner: Box<S>,
    _heap: RetainedHeap,
}

impl<S: ?Sized> Retained<S> {
    /// Takes the hold after `inner` has loaded.
    pub(crate) fn new(inner: Box<S>) -> Self {
        Self {
            inner,
            _heap: RetainedHeap::new(),
        }
    }
}

impl<S: Session + ?Sized> Session for Retained<S> {
    fn info(&self) -> &SessionInfo {
        self.inner.info()
    }

    fn run(&mut self, inputs: &Inputs) -> Result<Outputs, EngineError> {
        on_pool(|| self.inner.run(inputs))
    }
}

impl<S: SpeechRecognizer + ?Sized> SpeechRecognizer for Retained<S> {
    fn info(&self) -> &SessionInfo {
        self.inner.info()
    }

    fn sample_rate(&self) -> u32 {
        self.inner.sample_rate()
    }

    fn transcribe(
        &mut self,
        waveform: &[f32],
        options: &TranscribeOptions,
    ) -> Result<Transcription, EngineError> {
        on_pool(|| self.inner.transcribe(waveform, options))
    }
}

/// A text generator whose prefills and steps run on a thread of rayon's pool ([`on_pool`]),
/// and so do the passes of its continuous-batching pool (the server's generations); it does
/// not hold the heap (nobody measured generators with it). A decode step of a
/// Qwen2-0.5B-shaped model at one sequence is hundreds of small parallel steps: q8_0 decode
/// went from 55.6 / 70.6 to 82.9 / 99.4 tokens/s (two alternating runs, 2-core Zen 5).
pub(crate) struct OnPool(pub(crate) Box<dyn TextGenerator>);

impl TextGenerator for OnPool {
    fn info(&self) -> &SessionInfo {
        self.0.info()
    }

    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        on_pool(|| self.0.prefill(prompt))
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>, EngineError> {
        on_pool(|| self.0.step(token))
    }

    fn max_context(&self) -> usize {
        self.0.max_context()
    }

    fn eos_tokens(&self) -> Vec<u32> {
        self.0.eos_tokens()
    }

    fn weight_bytes(&self) -> Option<u64> {
        self.0.weight_bytes()
    }

    fn prefill_batch(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        on_pool(|| self.0.prefill_batch(prompts))
    }

    fn step_batch(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        on_pool(|| self.0.step_batch(tokens))
    }

    fn sequence_pool(&mut self) -> Option<&mut dyn SequencePool> {
        match self.0.sequence_pool() {
            Some(_) => Some(self),
            None => None,
        }
    }

    fn image_token(&self) -> Option<u32> {
        self.0.image_token()
    }

    fn attach_images(&mut self, images: &ImageBatch) -> Result<Vec<usize>, EngineError> {
        on_pool(|| self.0.attach_images(images))
    }
}

/// The model's own pool, handed out by [`OnPool::sequence_pool`] only where the model has one.
impl SequencePool for OnPool {
    fn run(
        &mut self,
        start: &[&[u32]],
        steps: &[(SequenceId, u32)],
    ) -> Result<(Vec<(SequenceId, Vec<f32>)>, Vec<Vec<f32>>), EngineError> {
        on_pool(|| match self.0.sequence_pool() {
            Some(pool) => pool.run(start, steps),
            None => Err(EngineError::Unsupported(
                "this generator has no sequence pool".into(),
            )),
        })
    }

    fn end(&mut self, id: SequenceId) {
        if let Some(pool) = self.0.sequence_pool() {
            pool.end(id)
        }
    }
}

/// Runs `f` on a thread of rayon's pool (on this one if it is one). Called from outside the
/// pool, every parallel step of a model hands its work to the pool and puts the calling thread
/// to sleep until the pool has finished it: bert-base b=1 in bf16 made about 550 futex calls
/// and 410 context switches an inference that way (`perf stat`, 2-core Zen 5), against about
/// 250 and 95 from inside the pool, where a step splits between the pool's threads by work
/// stealing (40 and 25 with an arena per thread; the rest now wait on the one arena's lock).
/// The pool's threads allocate from glibc's main arena ([`one_arena`]), as the calling thread
/// did.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// One glibc arena for every thread of the process. A thread other than the first gets an
/// arena of its own, made of 64 MiB mappings that glibc unmaps whenever one is wholly free,
/// whatever the trim threshold: the retained heap above holds the main arena only. A model run
/// on a pool thread ([`on_pool`]) then faulted its activations back in on every call: ViT-base
/// b=8 in bf16 took 3.1x the page faults (532,000 against 172,000 over 8 inferences) and ran
/// 11-23% slower. Small blocks still come from each thread's cache without the arena's lock.
///
/// Call it first thing in `main`, before any other thread exists: glibc fixes the number of
/// arenas when the second thread first allocates.
pub(crate) fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: mallopt changes an allocator parameter; 1 is a valid arena count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The system allocator, with every block of [`LINE_ALIGNED_BYTES`] or more starting on a
/// cache line (glibc's start 16 bytes past one, so a row of activations or a kernel's block
/// of outputs straddled lines). A binary opts in with `#[global_allocator]`. ViT-base b=8
/// bf16 on the 2-core AMX Xeon (`bench` p50, 4 alternated rounds): 500.6 ms without it,
/// 469.8 with it.
///
/// Such a block is one ordinary allocation a line longer, started at the first line inside
/// it, with the allocation's own address kept in the word before the block: not glibc's
/// `posix_memalign`, which carves an aligned block out of a larger free one and frees the few
/// bytes in front of it separately. The small blocks a loop keeps (a timing per iteration)
/// then settle in those bytes, and the freed large block, fenced in by them, is a few bytes
/// short of the next request of the same size: a generation benchmark of a 1 MB decoder
/// (opt-tiny, batch 2, 64 tokens: 150 KB of logits a call) grew its heap by about 110 KB an
/// iteration, to peaks of 180-490 MB in most 3-second runs, where the system allocator's
/// stayed at 98 MB.
pub struct LargeBlocksOnCacheLines;

/// The smallest block [`LargeBlocksOnCacheLines`] aligns: far above the many small ones
/// (a few dozen bytes wasted on each would add up), far below any activation.
const LINE_ALIGNED_BYTES: usize = 64 << 10;

/// A cache line.
const LINE: usize = 64;

impl LargeBlocksOnCacheLines {
    /// Whether `layout` is one this allocator places on a line (one that asks for a line or
    /// more of alignment itself goes to the system allocator as it is).
    fn lined(layout: std::alloc::Layout) -> bool {
        layout.size() >= LINE_ALIGNED_BYTES && layout.align() < LINE
    }

    /// The allocation a lined block of `size` bytes lives in: a line more, at the system's
    /// own alignment (at least 16, so the block starts 16 to 64 bytes in and the word before
    /// it is inside).
    fn holder(size: usize) -> Option<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(size.checked_add(LINE)?, 16).ok()
    }

    /// A lined block of `size` bytes (zeroed or not), or null.
    ///
    /// # Safety
    /// `size` is not zero.
    unsafe fn alloc_lined(size: usize, zeroed: bool) -> *mut u8 {
        use std::alloc::GlobalAlloc;
        let Some(holder) = Self::holder(size) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `holder` has a non-zero size.
        let raw = unsafe {
            if zeroed {
                std::alloc::System.alloc_zeroed(holder)
            } else {
                std::alloc::System.alloc(holder)
            }
        };
        if raw.is_null() {
            return raw;
        }
        let offset = LINE - raw as usize % LINE;
        // SAFETY: `raw` is 16-aligned, so `offset` is 16 to 64 and the block (`size` bytes
        // from there) and the word before it lie inside the `size + LINE` bytes of `raw`.
        unsafe {
            let block = raw.add(offset);
            block.cast::<*mut u8>().sub(1).write_unaligned(raw);
            block
        }
    }

    /// Frees a block from [`Self::alloc_lined`] of `size` bytes.
    ///
    /// # Safety
    /// `block` came from `alloc_lined(size, _)` and is not freed yet.
    unsafe fn dealloc_lined(block: *mut u8, size: usize) {
        use std::alloc::GlobalAlloc;
        // SAFETY: the word before the block holds the allocation it lives in, whose layout
        // `holder(size)` gave when it was made.
        unsafe {
            let raw = block.cast::<*mut u8>().sub(1).read_unaligned();
            let holder = Self::holder(size).expect("made with this layout");
            std::alloc::System.dealloc(raw, holder);
        }
    }
}

// SAFETY: a lined layout's blocks come from `alloc_lined` and go back through
// `dealloc_lined`, any other from and to the system allocator; whether a layout is lined
// follows from the layout alone, so a block is freed the way it was made.
unsafe impl std::alloc::GlobalAlloc for LargeBlocksOnCacheLines {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if Self::lined(layout) {
            // SAFETY: a lined layout is not empty.
            unsafe { Self::alloc_lined(layout.size(), false) }
        } else {
            // SAFETY: as the caller promises (a non-zero size).
            unsafe { std::alloc::System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if Self::lined(layout) {
            // SAFETY: as above.
            unsafe { Self::alloc_lined(layout.size(), true) }
        } else {
            // SAFETY: as above.
            unsafe { std::alloc::System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if Self::lined(layout) {
            // SAFETY: `ptr` came from `alloc` with this layout, so from `alloc_lined`.
            unsafe { Self::dealloc_lined(ptr, layout.size()) }
        } else {
            // SAFETY: `ptr` came from the system allocator with this layout.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller promises `new_size` is non-zero and fits the alignment.
        let new =
            unsafe { std::alloc::Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !Self::lined(layout) && !Self::lined(new) {
            // SAFETY: as the caller promises.
            return unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        }
        // A lined block moves to a new one (the system's realloc of an over-aligned block
        // did the same).
        // SAFETY: `new` is a valid non-empty layout; `ptr` holds `layout.size()` bytes and
        // the new block `new_size`.
        unsafe {
            let moved = self.alloc(new);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout};
    use std::collections::BTreeSet;

    #[test]
    fn large_blocks_start_on_lines_and_keep_their_bytes() {
        let a = LargeBlocksOnCacheLines;
        for size in [LINE_ALIGNED_BYTES, LINE_ALIGNED_BYTES + 8, 1 << 20] {
            let layout = Layout::from_size_align(size, 4).unwrap();
            // SAFETY: non-empty layouts; each block is written within its size and freed
            // with the layout it was made or resized to.
            unsafe {
                let zeroed = a.alloc_zeroed(layout);
                assert_eq!(zeroed as usize % LINE, 0);
                assert!(std::slice::from_raw_parts(zeroed, size)
                    .iter()
                    .all(|&b| b == 0));
                a.dealloc(zeroed, layout);
                let block = a.alloc(layout);
                assert_eq!(block as usize % LINE, 0);
                for i in 0..size {
                    *block.add(i) = i as u8;
                }
                // Down across the threshold and back up: the bytes that fit stay.
                let small = a.realloc(block, layout, 100);
                assert!((0..100).all(|i| *small.add(i) == i as u8));
                let large = a.realloc(small, Layout::from_size_align(100, 4).unwrap(), size);
                assert_eq!(large as usize % LINE, 0);
                assert!((0..100).all(|i| *large.add(i) == i as u8));
                a.dealloc(large, layout);
            }
        }
    }

    /// A loop that frees a large block and keeps a small one each round reuses the large
    /// one's place: through `posix_memalign` the small ones took the bytes glibc freed in
    /// front of each aligned block, and every round's large block went somewhere new.
    #[test]
    fn a_loop_keeping_small_blocks_reuses_its_large_block() {
        let a = LargeBlocksOnCacheLines;
        let large = Layout::from_size_align(150 << 10, 4).unwrap();
        let small: Vec<Layout> = [8, 24, 40, 56]
            .map(|size| Layout::from_size_align(size, 8).unwrap())
            .to_vec();
        let mut kept = Vec::new();
        let mut places = BTreeSet::new();
        for _ in 0..500 {
            // SAFETY: non-empty layouts; each large block is freed with its layout, the
            // small ones below with theirs.
            unsafe {
                let block = a.alloc(large);
                block.write(1);
                places.insert(block as usize);
                for &layout in &small {
                    kept.push((a.alloc(layout), layout));
                }
                a.dealloc(block, large);
            }
        }
        for (block, layout) in kept {
            // SAFETY: made above with `layout`.
            unsafe { a.dealloc(block, layout) };
        }
        assert!(places.len() <= 4, "{} places for 500 rounds", places.len());
    }
}
