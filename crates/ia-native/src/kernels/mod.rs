//! CPU kernels of our own where candle's are slow, chosen at run time by what the CPU has.
//!
//! Each kernel body is plain Rust compiled three times by [`multiversion!`]: for AVX-512, for
//! AVX2 + FMA, and for the target's baseline (`portable`). The bodies are written so LLVM
//! vectorises them (no branches in inner loops, a polynomial `exp` instead of libm, several
//! accumulators in reductions), so the wide versions need no intrinsics. [`isa`] picks the
//! widest the CPU supports; `IA_NATIVE_ISA=portable|avx2` caps it, so every path can be tested
//! on a machine that has the wider ones.
//!
//! - [`linear`]: a linear layer with its bias, GELU and residual add done by the thread that
//!   computed each block of the product, while it is in cache;
//! - [`panels`]: f32 products against weights packed once at load, on CPUs with AVX2 or
//!   AVX-512 (elsewhere gemm, below);
//! - [`bf16`]: bf16 products on AMX or AVX512-BF16 for `--precision bf16` (weights packed
//!   at load);
//! - [`quant`]: products with Q8_0 weights (`vpdpbusd` on AVX512-VNNI) for `--precision q8_0`;
//! - [`channel_norm_frames`]: GroupNorm with a group per channel over channels-last frames,
//!   with its GELU, in three passes;
//! - [`image_windows`] and [`max_pool`]: channels-last images for convolutional backbones
//!   (a convolution as a linear layer over each pixel's window);
//! - [`attention`]: multi-head attention straight from the stacked query/key/value rows, one
//!   (sequence, head) pair per task; in bf16 models on `vdpbf16ps`, its two products in bf16
//!   ([`bf16_attention`]).
//!
//! Matrix products use the `gemm` crate (built with its AVX-512 micro-kernels, which it
//! selects at run time itself), as candle does, each call on one thread ([`product`]): the
//! kernels split the work between rayon's threads themselves (see [`linear`] for why).

mod attention;
pub mod bf16;
mod bf16_attention;
mod image;
mod linear;
mod math;
mod norm;
mod panels;
pub mod quant;

pub use attention::{attention, biased_attention, cached_attention};
pub use image::{image_windows, max_pool, windows_along};
pub use linear::{
    conv1d_frames, conv_weight, feed_forward, gelu_erf, linear, swiglu, window_rows, Activation,
    Weight,
};
pub use norm::{channel_norm_frames, channel_normed_conv1d_frames, LayerNorm, RmsNorm};

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
use std::sync::OnceLock;

/// The instruction sets the kernels are compiled for, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn as_str(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The widest set this CPU runs.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// The set the kernels use: the detected one, capped by `IA_NATIVE_ISA` when set (a value
/// wider than the CPU has is ignored: it could not run).
pub fn isa() -> Isa {
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let detected = Isa::detected();
        let cap = match std::env::var("IA_NATIVE_ISA").ok().as_deref() {
            Some("portable") => Isa::Portable,
            Some("avx2") => Isa::Avx2,
            Some("avx512") | None => Isa::Avx512,
            Some(other) => {
                tracing::warn!("IA_NATIVE_ISA={other} is not portable, avx2 or avx512: ignored");
                Isa::Avx512
            }
        };
        detected.min(cap)
    })
}

/// Defines `fn $name(isa: Isa, args..)` that runs the `#[inline(always)]` body `$body(args..)`
/// compiled for `isa` (the caller passes [`isa()`] or, in tests, a narrower one).
macro_rules! multiversion {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:path) => {
        $vis fn $name(isa: $crate::kernels::Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                $body($($arg),*)
            }
            match isa {
                // SAFETY: `isa()` and the tests hand out a set only when the CPU has it.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

/// True where the kernels apply: f32 tensors on the CPU (elsewhere the callers use candle).
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// The f32 elements of a contiguous CPU storage.
fn f32_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op} takes f32")
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op} takes contiguous tensors")
    };
    Ok(&v[start..end])
}

/// Runs `f` on the f32 elements of `t` (a contiguous f32 CPU tensor), for the operands a
/// custom op takes besides its inputs (a bias, a mask).
fn with_f32<R>(op: &str, t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{op} runs on the CPU")
    };
    f(f32_slice(op, cpu, layout)?)
}

/// Which of two kernels runs the same product faster on this CPU: each runs three times,
/// alternating, on this thread, and the best time of each counts, so a neighbour's burst on a
/// shared machine does not decide. The winner's index and both best times in seconds.
fn faster_of(mut kernels: [&mut dyn FnMut(); 2]) -> (usize, [f64; 2]) {
    let mut best = [f64::INFINITY; 2];
    for _ in 0..3 {
        for (kernel, best) in kernels.iter_mut().zip(&mut best) {
            let start = std::time::Instant::now();
            kernel();
            *best = best.min(start.elapsed().as_secs_f64());
        }
    }
    (usize::from(best[1] < best[0]), best)
}

/// 64 bytes on a cache line: the unit of the buffers AMX tiles load and store. A tile row is
/// 64 bytes, and a `Vec` of u16 or f32 is only 16-byte aligned, so each row of a tile in one
/// straddled two lines (the activations of ViT-base's products sat 32 bytes past a line).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct CacheLine([u8; 64]);

/// The plain values a buffer of [`CacheLine`]s is viewed as.
///
/// # Safety
/// Every bit pattern is a value, the size divides 64, and the alignment divides 64.
unsafe trait Plain: Copy {}
// SAFETY: plain numbers of 2 and 4 bytes.
unsafe impl Plain for u16 {}
unsafe impl Plain for u32 {}
unsafe impl Plain for f32 {}

/// Lines enough for `len` values of `T`.
fn lines_for<T: Plain>(len: usize) -> usize {
    (len * std::mem::size_of::<T>()).div_ceil(64)
}

/// `lines` as values of `T`, from a 64-byte boundary.
fn view<T: Plain>(lines: &[CacheLine]) -> &[T] {
    // SAFETY: the lines are initialised bytes, any of which make values of T (`Plain`), and
    // 64-byte aligned; the length covers exactly their bytes.
    unsafe {
        std::slice::from_raw_parts(
            lines.as_ptr().cast(),
            lines.len() * 64 / std::mem::size_of::<T>(),
        )
    }
}

/// [`view`], to write.
fn view_mut<T: Plain>(lines: &mut [CacheLine]) -> &mut [T] {
    // SAFETY: as in `view`; any values written are bytes of lines.
    unsafe {
        std::slice::from_raw_parts_mut(
            lines.as_mut_ptr().cast(),
            lines.len() * 64 / std::mem::size_of::<T>(),
        )
    }
}

/// The first `len` lines of a buffer kept between calls (grown where it is shorter, the
/// growth zeroed).
fn lines(buffer: &mut Vec<CacheLine>, len: usize) -> &mut [CacheLine] {
    if buffer.len() < len {
        buffer.resize(len, CacheLine([0; 64]));
    }
    &mut buffer[..len]
}

/// At least `len` values of `T` from a buffer of lines kept between calls ([`lines`]).
fn lines_as<T: Plain>(buffer: &mut Vec<CacheLine>, len: usize) -> &mut [T] {
    &mut view_mut(lines(buffer, lines_for::<T>(len)))[..len]
}

/// A raw pointer that may cross to the worker threads: each writes a disjoint part.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every user writes disjoint elements from each thread.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer `offset` elements on (a method, so closures capture the whole value).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// An output buffer that the kernel fills completely before it is read, allocated without
/// zeroing: `vec![0f32; len]` for every product's output cost 2.5% of bert-base b=8 in
/// memset (`perf`). Unit tests fill it with NaN instead, so an element a kernel fails to write
/// shows up in their comparisons.
struct Output(Vec<std::mem::MaybeUninit<f32>>);

impl Output {
    fn new(len: usize) -> Self {
        let mut buf = Vec::with_capacity(len);
        if cfg!(test) {
            buf.resize(len, std::mem::MaybeUninit::new(f32::NAN));
        } else {
            // SAFETY: MaybeUninit needs no initialisation.
            unsafe { buf.set_len(len) };
        }
        Self(buf)
    }

    /// Zeros, for a kernel that may leave elements unwritten (a product over no inputs).
    fn zeroed(len: usize) -> Self {
        Self(vec![std::mem::MaybeUninit::new(0.0); len])
    }

    /// The elements, to write in place (from one thread, or split between threads).
    fn values_mut(&mut self) -> &mut [std::mem::MaybeUninit<f32>] {
        &mut self.0
    }

    fn ptr(&mut self) -> SharedOut {
        SharedOut(self.0.as_mut_ptr().cast())
    }

    /// # Safety
    /// Every element has been written.
    unsafe fn assume_init(self) -> Vec<f32> {
        let mut buf = std::mem::ManuallyDrop::new(self.0);
        // SAFETY: MaybeUninit<f32> has f32's layout; the caller promises every element is
        // initialised; the allocation moves to the new Vec.
        unsafe { Vec::from_raw_parts(buf.as_mut_ptr().cast(), buf.len(), buf.capacity()) }
    }
}

/// A strided f32 matrix for [`product`]: its first element and the distance, in elements,
/// between consecutive rows and consecutive columns (a block of a larger matrix, or a
/// transposed view, needs no copy).
#[derive(Clone, Copy)]
struct Strided<T> {
    ptr: T,
    row_stride: usize,
    col_stride: usize,
}

/// `dst = lhs . rhs` for an `m x k` lhs and a `k x n` rhs, on the calling thread (the kernels
/// split work between threads themselves), dst overwritten.
///
/// # Safety
/// Each operand's pointer covers its whole matrix at its strides, and no other thread reads
/// or writes dst's elements meanwhile.
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: Strided<*mut f32>,
    lhs: Strided<*const f32>,
    rhs: Strided<*const f32>,
) {
    // SAFETY: as the caller promises.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.col_stride as isize,
            dst.row_stride as isize,
            false,
            lhs.ptr,
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.ptr,
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// A row-major matrix whose rows are `row_stride` elements apart.
fn row_major<T>(ptr: T, row_stride: usize) -> Strided<T> {
    Strided {
        ptr,
        row_stride,
        col_stride: 1,
    }
}

/// The largest absolute difference between two tensors of one shape (the kernels' tests).
#[cfg(test)]
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.max_all()?.to_dtype(candle_core::DType::F32))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}

/// Test check of a product's `finished(r0, rows)` reports: every one of `m` rows reported
/// once, in order.
#[cfg(test)]
pub(crate) fn assert_finished_in_order(finished: &[(usize, usize)], m: usize, what: &str) {
    let mut next = 0;
    for &(r0, rows) in finished {
        assert_eq!(r0, next, "{what}: rows {r0}..");
        next += rows;
    }
    assert_eq!(next, m, "{what}: rows finished");
}
