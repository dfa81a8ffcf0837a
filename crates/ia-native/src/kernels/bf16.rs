//! bf16 matrix products for `--precision bf16` on the CPU, on Intel AMX (Sapphire Rapids and
//! later) or, without it, on AVX512-BF16 (Cooper Lake, Zen 4 and later). Weights are rounded
//! to bf16 once at load and laid out as the instructions read them; activations are rounded to
//! bf16 per product; products accumulate in f32 and everything around them (bias, GELU,
//! residual, norms, softmax) stays f32 — what oneDNN does for OpenVINO's bf16.
//!
//! All three backends read the same packed weights ([`PackedBf16`]): a row of AMX's weight
//! tile (16 columns x a pair of inputs) is exactly the 512-bit operand of `vdpbf16ps`, and a
//! pair of one row's activations in AMX's tile layout is its broadcast operand; the expanded
//! kernel takes the activations as rounded f32 rows instead ([`Activations`]).
//!
//! - AMX: the tile instructions have no stable intrinsics, so the kernel is a few lines of
//!   inline assembly: one 32 x 32 block of the output (four 16 x 16 f32 tiles) per pass over
//!   the inner dimension, two 16 x 32 bf16 tiles of activations and two of weights per step.
//!   Linux must grant the process the tile state first (`arch_prctl(ARCH_REQ_XCOMP_PERM)`).
//! - AVX512-BF16: `vdpbf16ps` on 8 rows x 32 columns held in 16 registers.
//! - Expanded: the same bf16 weights widened to f32 in registers (a shift and a mask) and
//!   multiplied by bf16-rounded activations with f32 FMAs. Products of two bf16 values are
//!   exact in f32, so this is the same arithmetic; it is faster where `vdpbf16ps` issues at
//!   half the FMA rate (on a 2-core AVX512-BF16 Xeon without AMX, `examples/matmul_shapes`
//!   gave 144-152 GFLOP/s for `vdpbf16ps` against 227-251 expanded at 1024 rows), and the
//!   weights still take half the memory of f32.
//!
//! Without AMX, which of the two vector kernels runs is decided once per process by timing
//! both on the same small product ([`backend`]).

use super::linear::Epilogue;
use super::{lines_as, view, CacheLine};
use std::sync::OnceLock;

/// The instructions the bf16 products run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// AMX-BF16 tiles (`tdpbf16ps`).
    Amx,
    /// AVX512-BF16 vectors (`vdpbf16ps`).
    Avx512Bf16,
    /// bf16 widened to f32 in registers, f32 FMAs (on CPUs with AVX512-BF16 where that is
    /// faster).
    Expanded,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Amx => "AMX-BF16",
            Backend::Avx512Bf16 => "AVX512-BF16",
            Backend::Expanded => "bf16 widened to f32 FMAs",
        }
    }
}

/// What the products run on here: AMX where the CPU has it and Linux grants this process the
/// tile state; else, on a CPU with AVX512-BF16, the faster of [`Backend::Avx512Bf16`] and
/// [`Backend::Expanded`] on a small product; none on CPUs without bf16 arithmetic, or when
/// `IA_NATIVE_ISA` caps the kernels below AVX-512. `IA_NATIVE_BF16=avx512bf16|expanded`
/// forces that kernel (where the CPU has bf16 arithmetic), to test and compare them.
pub fn backend() -> Option<Backend> {
    static CHOSEN: OnceLock<Option<Backend>> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let runs = backends_here();
        let forced = match std::env::var("IA_NATIVE_BF16").ok().as_deref() {
            Some("avx512bf16") => Some(Backend::Avx512Bf16),
            Some("expanded") => Some(Backend::Expanded),
            Some("amx") | None => None,
            Some(other) => {
                tracing::warn!(
                    "IA_NATIVE_BF16={other} is not amx, avx512bf16 or expanded: ignored"
                );
                None
            }
        };
        // A forced backend the CPU lacks is ignored like an unknown one; the vector kernels
        // are timed only where the CPU runs them.
        if let Some(b) = forced.filter(|b| runs.contains(b)) {
            Some(b)
        } else if runs.contains(&Backend::Amx) {
            Some(Backend::Amx)
        } else {
            runs.contains(&Backend::Avx512Bf16)
                .then(faster_vector_kernel)
        }
    })
}

/// Every backend that runs on this CPU (AMX first), none when the kernels are capped below
/// AVX-512 or the CPU has no bf16 arithmetic.
fn backends_here() -> Vec<Backend> {
    let mut runs = Vec::new();
    if super::isa() < super::Isa::Avx512 {
        return runs;
    }
    if amx::enable() {
        runs.push(Backend::Amx);
    }
    if dpbf16::cpu_has() {
        runs.extend([Backend::Avx512Bf16, Backend::Expanded]);
    }
    runs
}

/// The faster of the two vector kernels on the same 64 x 512 x 64 product (about 40
/// microseconds; [`super::faster_of`]).
fn faster_vector_kernel() -> Backend {
    let (m, k, n) = (64, 512, 64);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
    let w: Vec<f32> = (0..k * n).map(|i| (i % 11) as f32 / 11.0 - 0.5).collect();
    let packed = PackedBf16::pack(&w, n, k);
    let mut out = vec![0f32; m * n];
    let dst = out.as_mut_ptr();
    let kernels = [Backend::Avx512Bf16, Backend::Expanded];
    let activations = kernels.map(|b| Activations::convert_for(b, &x, m, k, &packed));
    // SAFETY: out holds m (a multiple of 16) rows of n (a multiple of 32) f32; the CPU has
    // AVX512-BF16 (the caller checked).
    let run = |i: usize| unsafe {
        product_block_on(
            kernels[i],
            &activations[i],
            &packed,
            0,
            n,
            dst,
            n,
            m,
            &Epilogue::NONE,
        )
    };
    let (won, best) = super::faster_of([&mut || run(0), &mut || run(1)]);
    let lost = 1 - won;
    tracing::debug!(
        "bf16 products: {} ({:.1} us) against {} ({:.1} us)",
        kernels[won].as_str(),
        best[won] * 1e6,
        kernels[lost].as_str(),
        best[lost] * 1e6,
    );
    kernels[won]
}

/// Whether this CPU has AVX512-BF16's vector instructions (attention converts with them).
pub(super) fn has_avx512_bf16() -> bool {
    dpbf16::cpu_has()
}

/// Whether bf16 products run here ([`backend`]).
pub fn available() -> bool {
    backend().is_some()
}

/// Why [`available`] is false, for refusals.
pub fn unavailable_reason() -> String {
    if super::isa() < super::Isa::Avx512 {
        format!(
            "the kernels are capped to {} (IA_NATIVE_ISA)",
            super::isa().as_str()
        )
    } else if amx::cpu_has_amx_bf16() {
        "Linux did not grant this process the AMX tile state, and the CPU has no AVX512-BF16".into()
    } else {
        "this CPU has neither AMX-BF16 nor AVX512-BF16".into()
    }
}

/// f32 -> bf16, rounding to nearest even (NaN stays NaN), as PyTorch and oneDNN round.
#[inline(always)]
pub(super) fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// Rows and columns of the output one kernel pass computes.
const BLOCK: usize = 32;
/// The inner dimension of one tile step (32 bf16 = 64 bytes per tile row).
const STEP: usize = 32;

/// A linear layer's weight [k, n] in bf16, in the order AMX's `tdpbf16ps` reads its second
/// operand: for each 16-column panel, the inner dimension in pairs, each pair row holding
/// 16 columns x 2 consecutive k. Padded with zeros to whole 32 x 32 blocks.
pub struct PackedBf16 {
    k: usize,
    n: usize,
    k_padded: usize,
    n_padded: usize,
    /// One pair row (16 columns x 2 inputs) per line.
    data: Vec<Line>,
}

/// 32 bf16 aligned to a cache line: a pair row of the packed weights, so that every 512-bit
/// load (and AMX tile row) reads one line instead of straddling two (a Vec<u16> is only
/// 16-byte aligned).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; 32]);

impl PackedBf16 {
    /// `weight` [n, k] row-major, as checkpoints keep a linear layer's weight ([out, in]):
    /// each pair of inputs is two neighbours of a row, so no transposed copy is made first.
    /// One panel per task.
    pub fn pack(weight: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(weight.len(), k * n, "an [n, k] weight");
        use rayon::prelude::*;
        let k_padded = k.div_ceil(STEP) * STEP;
        let n_padded = n.div_ceil(BLOCK) * BLOCK;
        let mut data = vec![Line([0; 32]); k_padded * n_padded / 32];
        if k_padded > 0 {
            data.par_chunks_mut(k_padded / 2)
                .enumerate()
                .for_each(|(panel, lines)| {
                    for (pair, line) in lines.iter_mut().enumerate() {
                        for c in 0..16 {
                            let col = panel * 16 + c;
                            for p in 0..2 {
                                let kk = 2 * pair + p;
                                if kk < k && col < n {
                                    line.0[c * 2 + p] = to_bf16(weight[col * k + kk]);
                                }
                            }
                        }
                    }
                });
        }
        Self {
            k,
            n,
            k_padded,
            n_padded,
            data,
        }
    }

    pub fn inputs(&self) -> usize {
        self.k
    }

    /// The packed values, pair row after pair row, from a 64-byte boundary.
    fn values(&self) -> *const u16 {
        self.data.as_ptr() as *const u16
    }

    pub fn outputs(&self) -> usize {
        self.n
    }

    /// The memory the packed values take, padding included.
    pub fn bytes(&self) -> u64 {
        std::mem::size_of_val(self.data.as_slice()) as u64
    }

    /// The output columns with the padding to whole blocks.
    pub(super) fn padded_outputs(&self) -> usize {
        self.n_padded
    }

    /// Columns a thread's block must be a multiple of.
    pub(super) const COLUMN_ALIGN: usize = BLOCK;
}

/// Activations [m, k] f32 as a kernel's first operand, rounded to bf16, padded with zeros to
/// whole blocks of 16 rows and steps of 32 inputs.
pub(super) struct Activations {
    rows_padded: usize,
    k_padded: usize,
    values: Values,
}

enum Values {
    /// For AMX and `vdpbf16ps`: bf16 in tiles (for each block of 16 rows, each step of 32
    /// inputs, 16 x 32 contiguous), so that a tile load reads 1 KiB in a row, on whole lines.
    Tiles(Vec<CacheLine>),
    /// For [`Backend::Expanded`]: the rounded values as f32, row-major, `k_padded` a row.
    Rounded(Vec<f32>),
}

impl Activations {
    /// In the layout this process's [`backend`] reads: `m` rows of `w`'s inputs, row r
    /// starting at `x[r * row_stride]` (rows may overlap: a convolution's windows).
    pub fn convert(x: &[f32], m: usize, row_stride: usize, w: &PackedBf16) -> Self {
        Self::convert_for(
            backend().expect("bf16 activations where no bf16 product runs"),
            x,
            m,
            row_stride,
            w,
        )
    }

    fn convert_for(
        backend: Backend,
        x: &[f32],
        m: usize,
        row_stride: usize,
        w: &PackedBf16,
    ) -> Self {
        let (k, k_padded) = (w.k, w.k_padded);
        let rows_padded = m.div_ceil(16) * 16;
        let isa = super::isa();
        use rayon::prelude::*;
        // The buffers are this thread's scratch (every value is written below, padding
        // included): a fresh allocation of this size per product is a fresh mapping, and
        // unmapping it interrupts every thread to flush its TLB; in a VM that doubled the time
        // of BERT-base at batch 8. They keep the length of the largest product so far: cut
        // to each product's and grown back, they were zeroed again on every growth (an FFN's
        // second product has four times the inputs): `memset` 1.52% -> 1.25% of ViT-base b=8.
        let len = rows_padded * k_padded;
        let row_of = |block: usize, i: usize| {
            let r = block * 16 + i;
            (r < m).then(|| &x[r * row_stride..r * row_stride + k])
        };
        let values = if backend == Backend::Expanded {
            let mut data = SCRATCH_F32.with_borrow_mut(std::mem::take);
            if data.len() < len {
                data.resize(len, 0.0);
            }
            if k > 0 {
                data[..len]
                    .par_chunks_mut(16 * k_padded)
                    .enumerate()
                    .for_each(|(block, rows)| {
                        for (i, dst) in rows.chunks_exact_mut(k_padded).enumerate() {
                            match row_of(block, i) {
                                Some(src) => {
                                    round_row(isa, src, &mut dst[..k]);
                                    dst[k..].fill(0.0);
                                }
                                None => dst.fill(0.0),
                            }
                        }
                    });
            }
            Values::Rounded(data)
        } else {
            let mut lines = take_tiles();
            let data = lines_as::<u16>(&mut lines, len);
            if k > 0 {
                // One block of 16 rows per task.
                data.par_chunks_mut(16 * k_padded)
                    .enumerate()
                    .for_each(|(block, slab)| {
                        for i in 0..16 {
                            match row_of(block, i) {
                                Some(src) => convert_row(isa, src, slab, i),
                                None => {
                                    for step in slab.chunks_exact_mut(16 * STEP) {
                                        step[i * STEP..(i + 1) * STEP].fill(0);
                                    }
                                }
                            }
                        }
                    });
            }
            Values::Tiles(lines)
        };
        Self {
            rows_padded,
            k_padded,
            values,
        }
    }

    /// Room for the `m` rows of `w`'s inputs in the tile layout, for a product to write
    /// ([`product_block_to_tiles`]): the feed-forward block's inner rows, written by its
    /// first product and read by its second without an f32 copy in between. The values are
    /// whatever the buffer held until the writer has written every one of them, padding
    /// included.
    pub fn to_be_written(m: usize, w: &PackedBf16) -> Self {
        let (rows_padded, k_padded) = (m.div_ceil(16) * 16, w.k_padded);
        let mut lines = take_tiles();
        lines_as::<u16>(&mut lines, rows_padded * k_padded);
        Self {
            rows_padded,
            k_padded,
            values: Values::Tiles(lines),
        }
    }

    /// The tile layout (AMX and `vdpbf16ps` convert to it).
    #[inline]
    fn tiles(&self) -> &[u16] {
        match &self.values {
            Values::Tiles(t) => &view(t)[..self.rows_padded * self.k_padded],
            Values::Rounded(_) => unreachable!("converted for the expanded kernel"),
        }
    }

    /// The rounded f32 rows (the expanded kernel converts to them).
    fn rounded(&self) -> &[f32] {
        match &self.values {
            Values::Rounded(r) => &r[..self.rows_padded * self.k_padded],
            Values::Tiles(_) => unreachable!("converted for a bf16 instruction kernel"),
        }
    }
}

/// `dst[i]` = `src[i]` rounded to bf16, as f32.
#[inline(always)]
fn round_row_body(src: &[f32], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((to_bf16(s) as u32) << 16);
    }
}

super::multiversion!(fn round_row(src: &[f32], dst: &mut [f32]) => round_row_body);

thread_local! {
    /// The last activations buffers of this thread, reused by the next product: one for the
    /// expanded kernel; for the tile layout, up to [`KEPT_TILE_BUFFERS`] (a feed-forward block
    /// holds its input's and its inner rows' at once).
    static SCRATCH_F32: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH_TILES: std::cell::RefCell<Vec<Vec<CacheLine>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Tile-layout buffers a thread keeps between products.
const KEPT_TILE_BUFFERS: usize = 2;

/// The largest kept tile buffer of this thread (empty where none is kept).
fn take_tiles() -> Vec<CacheLine> {
    SCRATCH_TILES.with_borrow_mut(|kept| kept.pop().unwrap_or_default())
}

/// Keeps `buffer` for a later product, dropping the smallest kept one past
/// [`KEPT_TILE_BUFFERS`]; the largest is last.
fn keep_tiles(buffer: Vec<CacheLine>) {
    SCRATCH_TILES.with_borrow_mut(|kept| {
        kept.push(buffer);
        kept.sort_by_key(Vec::len);
        if kept.len() > KEPT_TILE_BUFFERS {
            kept.remove(0);
        }
    })
}

impl Drop for Activations {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.values, Values::Tiles(Vec::new())) {
            Values::Rounded(v) => SCRATCH_F32.with_borrow_mut(|s| *s = v),
            Values::Tiles(v) if v.capacity() > 0 => keep_tiles(v),
            Values::Tiles(_) => {}
        }
    }
}

/// Where row `row` (of 16) of a block of tiles holds its inputs `step * 32..step * 32 + 32`,
/// from the block's start: each step of 32 inputs is a 16 x 32 tile, rows one after another.
#[inline(always)]
fn in_tile_block(row: usize, step: usize) -> usize {
    step * 16 * STEP + row * STEP
}

/// Row `row` (of 16) of a block of tiles ([`in_tile_block`]), the last step's padding zeroed.
#[inline(always)]
fn convert_row_body(src: &[f32], slab: &mut [u16], row: usize) {
    for (step, chunk) in src.chunks(STEP).enumerate() {
        let dst = &mut slab[in_tile_block(row, step)..][..STEP];
        for (d, &s) in dst.iter_mut().zip(chunk) {
            *d = to_bf16(s);
        }
        dst[chunk.len()..].fill(0);
    }
}

super::multiversion!(fn convert_row(src: &[f32], slab: &mut [u16], row: usize) => convert_row_body);

/// `out[r * stride + c - col0] = epilogue(sum_k a[r, k] w[k, c])` for the first `rows` rows
/// (at most the activations' rows) and the columns `col0..col0 + cols` (both multiples of 32,
/// within the packed weight), overwriting what `out` holds; the epilogue's column c is the
/// block's (`c - col0`). The vector kernels apply it after each pass of rows whose
/// activations stay in L2, while those rows are in cache; AMX to each 32 x 32 block of sums
/// before it leaves L1.
///
/// # Safety
/// `out` is valid for reads and writes of `rows` rows of `stride` f32 (`cols` at the start of
/// each), and no other thread touches those elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product_block(
    a: &Activations,
    w: &PackedBf16,
    col0: usize,
    cols: usize,
    out: *mut f32,
    stride: usize,
    rows: usize,
    epilogue: &Epilogue,
) {
    assert!(col0.is_multiple_of(BLOCK) && cols.is_multiple_of(BLOCK) && stride >= cols);
    assert!(col0 + cols <= w.n_padded && a.k_padded == w.k_padded && rows <= a.rows_padded);
    let backend = backend().expect("a bf16 product where none runs");
    if a.k_padded > 0 {
        // SAFETY: as the caller promises; the backend runs on this CPU.
        unsafe { product_block_on(backend, a, w, col0, cols, out, stride, rows, epilogue) }
    } else {
        // SAFETY: as the caller promises (the caller zeroed the sums over no inputs).
        unsafe { epilogue.apply(super::isa(), out, stride, 0, rows, cols) }
    }
}

/// Where [`product_block_to_tiles`] writes: the buffer of an [`Activations::to_be_written`],
/// shared by the threads that write its column blocks.
#[derive(Clone, Copy)]
pub(super) struct TilesOut {
    at: *mut u16,
    rows_padded: usize,
    k_padded: usize,
}

// SAFETY: every writer writes its own columns (whole steps of 32) of the buffer.
unsafe impl Send for TilesOut {}
unsafe impl Sync for TilesOut {}

impl Activations {
    /// Where products write these activations ([`product_block_to_tiles`]).
    pub(super) fn written_by(&mut self) -> TilesOut {
        let (rows_padded, k_padded) = (self.rows_padded, self.k_padded);
        match &mut self.values {
            Values::Tiles(t) => TilesOut {
                at: t.as_mut_ptr().cast(),
                rows_padded,
                k_padded,
            },
            Values::Rounded(_) => unreachable!("written in the tile layout only"),
        }
    }
}

/// Whether [`product_block_to_tiles`] runs here: on AMX, whose kernel finishes each block of
/// sums in L1 and can round it to bf16 on its way out. The vector kernels apply their
/// epilogue in place over f32 rows, so where they run, a product's output is converted by
/// the next product as before.
pub(super) fn writes_tiles() -> bool {
    backend() == Some(Backend::Amx)
}

/// [`product_block`] with the finished values rounded to bf16 (as [`Activations::convert`]
/// rounds them) into `to`'s tile layout, as the inputs `col0..col0 + cols` of the next
/// product; the padding rows up to `rows`' whole tiles are zeros.
///
/// # Safety
/// `to` comes from an [`Activations::to_be_written`] that lives until the call returns, and no
/// other thread writes those columns meanwhile (its rows and columns are checked).
pub(super) unsafe fn product_block_to_tiles(
    a: &Activations,
    w: &PackedBf16,
    col0: usize,
    cols: usize,
    rows: usize,
    epilogue: &Epilogue,
    to: TilesOut,
) {
    assert!(col0.is_multiple_of(BLOCK) && cols.is_multiple_of(BLOCK) && col0 + cols <= to.k_padded);
    assert!(rows <= to.rows_padded);
    assert!(col0 + cols <= w.n_padded && a.k_padded == w.k_padded && rows <= a.rows_padded);
    assert!(writes_tiles() && a.k_padded > 0);
    let dest = amx::Dest::Tiles { to, col0 };
    // SAFETY: as the caller promises; AMX runs here.
    unsafe { amx::product_block(a, w, col0, cols, dest, rows, epilogue) }
}

/// [`product_block`] on the given backend (the tests run each one the CPU has).
///
/// # Safety
/// As [`product_block`], and the CPU runs `backend` (AMX: the tile state is granted).
#[allow(clippy::too_many_arguments)]
unsafe fn product_block_on(
    backend: Backend,
    a: &Activations,
    w: &PackedBf16,
    col0: usize,
    cols: usize,
    out: *mut f32,
    stride: usize,
    rows: usize,
    epilogue: &Epilogue,
) {
    let isa = super::isa();
    // SAFETY (of the closure): each pass's rows of the block's columns, which the caller lent.
    let finished = &mut |r0: usize, n: usize| unsafe {
        epilogue.apply(isa, out.add(r0 * stride), stride, r0, n, cols)
    };
    // SAFETY: as the caller promises.
    unsafe {
        match backend {
            Backend::Amx => {
                let dest = amx::Dest::F32 { out, stride };
                amx::product_block(a, w, col0, cols, dest, rows, epilogue)
            }
            Backend::Avx512Bf16 => {
                dpbf16::product_block(a, w, col0, cols, out, stride, rows, finished)
            }
            Backend::Expanded => {
                dpbf16::expanded_block(a, w, col0, cols, out, stride, rows, finished)
            }
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(super) mod amx {
    use super::{in_tile_block, lines_as, Activations, Epilogue, PackedBf16, TilesOut, STEP};
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// Leaf 7's EDX: AMX-BF16 is bit 22, AMX-TILE bit 24.
    pub fn cpu_has_amx_bf16() -> bool {
        let leaf = std::arch::x86_64::__cpuid_count(7, 0);
        leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0
    }

    pub fn enable() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain syscall with integer arguments.
        cpu_has_amx_bf16()
            && unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            } == 0
    }

    /// ldtilecfg's 64-byte operand: palette 1, every tile 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    const CONFIG: TileConfig = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// Tile steps of the inner dimension per pass (1536 values): BERT-base's and ViT-base's
    /// products run over their 768 inputs in one pass, keeping their accumulators in the
    /// tiles from start to end, and the FFN's second product in two. Single-threaded on a
    /// 2-core Xeon with AMX (the calls of the two alternated 40 times on each shape), this
    /// ran their shapes 5-15% faster than passes of 256 values, whose weights (2 panels x 8
    /// steps x 1 KiB) stay in L1 while every row block runs over them but whose
    /// accumulators go to memory and back after each pass.
    const STEPS_PER_PASS: usize = 48;

    /// Activations per pass over the columns: a quarter of a Sapphire Rapids core's 2 MiB L2.
    const ACTIVATION_BYTES_PER_PASS: usize = 512 << 10;

    /// Writes the products to `dest` ([`super::product_block`], or in bf16
    /// [`super::product_block_to_tiles`]). Each 16 x 16 accumulator starts from zeros
    /// (`tilezero`), is kept between passes over the inner dimension in a scratch block where
    /// each tile is 1 KiB in a row, and after the last pass goes to a 32 x 32 block in L1,
    /// whose rows go through the epilogue on their way into `dest` (the rows past `rows` of a
    /// last, padded block do not; in bf16 they are zeros). Storing the tiles into the output
    /// itself, 16 rows a whole output row apart, had been a fifth of the kernel's `perf` samples on
    /// BERT-base b=8, and the epilogue then read them back from L2 or memory. The block's
    /// residual is prefetched before its last pass of products: `perf` had the epilogue
    /// waiting on those loads.
    ///
    /// # Safety
    /// As [`super::product_block`] or [`super::product_block_to_tiles`] (for `dest`), and the
    /// tile state is granted.
    pub unsafe fn product_block(
        a: &Activations,
        w: &PackedBf16,
        col0: usize,
        cols: usize,
        dest: Dest,
        rows: usize,
        epilogue: &Epilogue,
    ) {
        let steps = a.k_padded / STEP;
        // A block of 16 rows: `steps` tiles of 16 x 32.
        let a_block = steps * 512;
        // One panel (16 columns) of packed weights, all pair rows: 512 u16 per step.
        let panel_len = w.k_padded / 2 * 32;
        let rows16 = rows.div_ceil(16) * 16;
        // Rows per pass over the columns: their activations (k_padded bf16 each) stay in L2
        // while every column pair runs over them, instead of streaming once per column pair.
        let rows_per_pass = (ACTIVATION_BYTES_PER_PASS / (a.k_padded * 2)).max(32) / 32 * 32;
        // The finished sums of up to 32 rows x 32 columns, rows 128 bytes apart.
        let mut sums = Vec::new();
        let sums = lines_as::<f32>(&mut sums, 32 * 32).as_mut_ptr();
        // A pass of rows' accumulators for one column pair: per block of 16 rows, its two
        // tiles of 256 f32.
        let passes = steps > STEPS_PER_PASS;
        let mut kept = Vec::new();
        let kept_len = if passes {
            rows_per_pass.min(rows16) * 32
        } else {
            0
        };
        let kept = lines_as::<f32>(&mut kept, kept_len).as_mut_ptr();
        // SAFETY (of every pointer below): the tile state was granted (the caller's promise);
        // every tile load reads 1 KiB inside `a.tiles()` (tile `step` of row block r / 16) or
        // inside a panel of `w.values()`; an accumulator's 16 rows of 16 f32 are inside
        // `sums` or inside `kept` (block (r - row0) / 16 of the pass); the rows copied out
        // are below `rows`, inside this block's columns of `out`.
        unsafe {
            configure();
            let to_sums = [sums, sums.add(16), sums.add(512), sums.add(528)];
            for row0 in (0..rows16).step_by(rows_per_pass) {
                let row_end = (row0 + rows_per_pass).min(rows16);
                let kept_at = |r: usize| {
                    let c = kept.add((r - row0) / 16 * 512);
                    [c, c.add(256), c.add(512), c.add(768)]
                };
                for pair in (col0 / 16..(col0 + cols) / 16).step_by(2) {
                    let c_col = pair * 16 - col0;
                    for first in (0..steps).step_by(STEPS_PER_PASS) {
                        let n = STEPS_PER_PASS.min(steps - first);
                        let last = first + n == steps;
                        let b0 = w.values().add(pair * panel_len + first * 512);
                        let b1 = b0.add(panel_len);
                        let mut r = row0;
                        while r < row_end {
                            let a0 = a.tiles().as_ptr().add(r / 16 * a_block + first * 512);
                            // Two blocks of 16 rows (four accumulators) where both exist.
                            let two = r + 32 <= row_end;
                            if first == 0 {
                                tiles::zero(two);
                            } else {
                                tiles::load(two, kept_at(r), 64);
                            }
                            if last {
                                epilogue.prefetch_residual(r, if two { 32 } else { 16 }, c_col);
                            }
                            tiles::steps(two, a0, a0.add(a_block), b0, b1, n);
                            if last {
                                tiles::store(two, to_sums, 128);
                                let n = (if two { 32 } else { 16 }).min(rows - r);
                                let sums = std::slice::from_raw_parts(sums, n * 32);
                                let to = BlockOut { dest, r, c: c_col };
                                finish_block(epilogue, sums, to);
                                if let Dest::Tiles { to, col0 } = dest {
                                    let rows = r + n..r + if two { 32 } else { 16 };
                                    zero_rows(to, rows, col0 + c_col);
                                }
                            } else {
                                tiles::store(two, kept_at(r), 64);
                            }
                            r += if two { 32 } else { 16 };
                        }
                    }
                }
            }
            release();
        }
    }

    /// Where a product's finished values go.
    #[derive(Clone, Copy)]
    pub enum Dest {
        /// f32 rows `stride` apart from the caller's block's first column.
        F32 { out: *mut f32, stride: usize },
        /// bf16 in the tile layout of `to`, the caller's block's first column being input
        /// `col0` there ([`super::product_block_to_tiles`]).
        Tiles { to: TilesOut, col0: usize },
    }

    /// Where a block of finished sums goes: row `r`, column `c` of the caller's block.
    #[derive(Clone, Copy)]
    struct BlockOut {
        dest: Dest,
        r: usize,
        c: usize,
    }

    /// 16 f32 rounded to bf16 as [`super::to_bf16`] rounds them (to nearest even, NaN kept quiet),
    /// in registers: the scalar function, inlined into [`finish_block`]'s store, was not
    /// vectorised there and took most of its time.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn sixteen_to_bf16(v: __m512) -> __m256i {
        let bits = _mm512_castps_si512(v);
        let high = _mm512_srli_epi32::<16>(bits);
        let even = _mm512_add_epi32(
            _mm512_and_si512(high, _mm512_set1_epi32(1)),
            _mm512_set1_epi32(0x7fff),
        );
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, even));
        let quiet = _mm512_or_si512(high, _mm512_set1_epi32(0x40));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet))
    }

    /// Row `r`'s 32 inputs from `column` (a multiple of 32) in `to`'s tile layout: one line.
    #[inline(always)]
    fn tile_row(to: TilesOut, r: usize, column: usize) -> *mut u16 {
        to.at
            .wrapping_add(r / 16 * 16 * to.k_padded + in_tile_block(r % 16, column / STEP))
    }

    /// Zeros the inputs `column..column + 32` of `rows` in `to` (a last block's padding rows,
    /// which the next product multiplies as any other).
    ///
    /// # Safety
    /// `to` holds those rows, written by this thread only.
    unsafe fn zero_rows(to: TilesOut, rows: std::ops::Range<usize>, column: usize) {
        for r in rows {
            // SAFETY: as the caller promises.
            unsafe { std::ptr::write_bytes(tile_row(to, r, column), 0, STEP) };
        }
    }

    /// Writes the block of sums (rows of 32, one after another) to `to` through the
    /// epilogue.
    ///
    /// # Safety
    /// AVX-512 runs here (it does wherever AMX does); `to`'s destination holds those rows.
    #[target_feature(enable = "avx512f")]
    unsafe fn finish_block(epilogue: &Epilogue, sums: &[f32], to: BlockOut) {
        let BlockOut { dest, r, c } = to;
        // SAFETY (both stores): the block's rows and columns in the destination, as the
        // caller promises.
        match dest {
            Dest::F32 { out, stride } => {
                let at = out.wrapping_add(r * stride + c);
                let store = |i: usize, half: usize, v: &[f32; 16]| unsafe {
                    _mm512_storeu_ps(at.add(i * stride + 16 * half), _mm512_loadu_ps(v.as_ptr()))
                };
                // SAFETY: as the caller promises.
                unsafe { finish_block_by(epilogue, sums, r, c, store) }
            }
            Dest::Tiles { to, col0 } => {
                let store = |i: usize, half: usize, v: &[f32; 16]| unsafe {
                    let at = tile_row(to, r + i, col0 + c).wrapping_add(16 * half);
                    let v = sixteen_to_bf16(_mm512_loadu_ps(v.as_ptr()));
                    _mm256_storeu_si256(at as *mut __m256i, v)
                };
                // SAFETY: as the caller promises.
                unsafe { finish_block_by(epilogue, sums, r, c, store) }
            }
        }
    }

    /// [`finish_block`] through `store` (row of the block, half of the row, its 16 finished
    /// values), with the activation matched once.
    ///
    /// # Safety
    /// As [`finish_block`].
    #[inline(always)]
    unsafe fn finish_block_by(
        epilogue: &Epilogue,
        sums: &[f32],
        r: usize,
        c: usize,
        store: impl Fn(usize, usize, &[f32; 16]),
    ) {
        use crate::kernels::{math, Activation};
        // SAFETY (all three): as the caller promises.
        unsafe {
            match epilogue.act {
                Activation::Identity => finish_block_with(epilogue, |v| v, sums, r, c, store),
                Activation::GeluErf => {
                    finish_block_with(epilogue, math::gelu_erf, sums, r, c, store)
                }
                Activation::QuickGelu => {
                    finish_block_with(epilogue, math::quick_gelu, sums, r, c, store)
                }
            }
        }
    }

    /// [`finish_block`] with the activation's element function, matched once a block: with
    /// the match inside the 16-value epilogue (`linear::epilogue_body`), the compiler did not
    /// vectorise it and `finish_block` went from 7% to 34% of ViT-base b=8 bf16's samples.
    /// Each 16 values are stored as soon as they are finished.
    ///
    /// # Safety
    /// As [`finish_block`].
    #[inline(always)]
    unsafe fn finish_block_with(
        epilogue: &Epilogue,
        act: impl Fn(f32) -> f32 + Copy,
        sums: &[f32],
        r: usize,
        c: usize,
        store: impl Fn(usize, usize, &[f32; 16]),
    ) {
        for (i, row) in sums.chunks_exact(32).enumerate() {
            for half in 0..2 {
                store(
                    i,
                    half,
                    &epilogue.sixteen(act, r + i, c + 16 * half, &row[16 * half..]),
                );
            }
        }
    }

    /// Configures every tile as 16 rows of 64 bytes, for [`pair_product`] calls until
    /// [`release`].
    ///
    /// # Safety
    /// The tile state is granted ([`enable`]).
    pub unsafe fn configure() {
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
    }

    /// Releases the tiles [`configure`] set up.
    ///
    /// # Safety
    /// The tile state is granted.
    pub unsafe fn release() {
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// The 16 x 32 f32 at `c` (rows `c_stride` bytes apart) = the sum over `steps` steps t
    /// of the 16 x 32 bf16 at `a + 32 t` (rows `a_stride` bytes apart) times the two
    /// 1 KiB tiles at `b0 + 512 t` and `b1 + 512 t` ([`super::PackedBf16`]'s layout: 16
    /// lines of 16 columns x a pair of inputs); `b0`'s columns first.
    ///
    /// # Safety
    /// [`configure`]d; `steps` at least 1; every operand readable and `c` writable as said.
    pub unsafe fn pair_product(
        a: *const u16,
        a_stride: usize,
        b0: *const u16,
        b1: *const u16,
        steps: usize,
        c: *mut f32,
        c_stride: usize,
    ) {
        unsafe {
            tiles::zero(false);
            tiles::one_block(a, a_stride, 64, b0, b1, steps);
            tiles::store(false, [c, c.add(16), c, c], c_stride);
        }
    }

    /// The tile instructions on the accumulators tmm0..tmm3 (tmm0 / tmm1: a block of 16 rows'
    /// two 16-column tiles; tmm2 / tmm3: the next block's, used where `two`), the activations
    /// tmm4 / tmm5 and the weights tmm6 / tmm7. The tiles keep their values from one call to
    /// the next (nothing else in the process uses them while a product runs).
    mod tiles {
        use std::arch::asm;

        /// # Safety
        /// The tile state is granted and configured.
        #[inline(always)]
        pub unsafe fn zero(two: bool) {
            unsafe {
                asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
                if two {
                    asm!("tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                }
            }
        }

        /// Loads the accumulators from `c` (the first two, or four where `two`), each 16 rows
        /// `stride` bytes apart.
        ///
        /// # Safety
        /// Configured as [`zero`]; each accumulator's 16 rows of 16 f32 are readable.
        #[inline(always)]
        pub unsafe fn load(two: bool, c: [*mut f32; 4], stride: usize) {
            unsafe {
                asm!(
                    "tileloadd tmm0, [{c0} + {s}]",
                    "tileloadd tmm1, [{c1} + {s}]",
                    c0 = in(reg) c[0],
                    c1 = in(reg) c[1],
                    s = in(reg) stride,
                    options(nostack, readonly),
                );
                if two {
                    asm!(
                        "tileloadd tmm2, [{c2} + {s}]",
                        "tileloadd tmm3, [{c3} + {s}]",
                        c2 = in(reg) c[2],
                        c3 = in(reg) c[3],
                        s = in(reg) stride,
                        options(nostack, readonly),
                    );
                }
            }
        }

        /// Stores the accumulators as [`load`] reads them.
        ///
        /// # Safety
        /// Configured as [`zero`]; each accumulator's 16 rows of 16 f32 are writable.
        #[inline(always)]
        pub unsafe fn store(two: bool, c: [*mut f32; 4], stride: usize) {
            unsafe {
                asm!(
                    "tilestored [{c0} + {s}], tmm0",
                    "tilestored [{c1} + {s}], tmm1",
                    c0 = in(reg) c[0],
                    c1 = in(reg) c[1],
                    s = in(reg) stride,
                    options(nostack),
                );
                if two {
                    asm!(
                        "tilestored [{c2} + {s}], tmm2",
                        "tilestored [{c3} + {s}], tmm3",
                        c2 = in(reg) c[2],
                        c3 = in(reg) c[3],
                        s = in(reg) stride,
                        options(nostack),
                    );
                }
            }
        }

        /// `n` (at least 1) steps of 32 inputs: the accumulators += the activations' tiles from
        /// `a0` (and `a1` where `two`) times the weights' from `b0` and `b1`, each tile 1 KiB
        /// in a row, the next step's 1 KiB further on.
        ///
        /// Each step of two blocks prefetches the four tiles of the step after next into L1
        /// (64 lines): the kernel waits on its tile loads, not on the products (its samples
        /// sit on the `tileloadd`s), and the hardware's prefetchers do not bring the tiles
        /// from L2 in time. On the 2-core AMX Xeon, ViT-base's four products at batch 8
        /// (`examples/amx_ab`, throwaway, 15 rounds alternated) went from a median of 483 to
        /// 535 GFLOP/s; a distance of four steps instead of two gave 491.
        ///
        /// # Safety
        /// Configured as [`zero`]; `n` tiles are readable from each pointer used.
        #[inline(always)]
        pub unsafe fn steps(
            two: bool,
            a0: *const u16,
            a1: *const u16,
            b0: *const u16,
            b1: *const u16,
            n: usize,
        ) {
            unsafe {
                if two {
                    asm!(
                        "2:",
                        ".irp off, 0,64,128,192,256,320,384,448,512,576,640,704,768,832,896,960",
                        "prefetcht0 [{a0} + 2048 + \\off]",
                        "prefetcht0 [{a1} + 2048 + \\off]",
                        "prefetcht0 [{b0} + 2048 + \\off]",
                        "prefetcht0 [{b1} + 2048 + \\off]",
                        ".endr",
                        "tileloadd tmm4, [{a0} + {s64}]",
                        "tileloadd tmm5, [{a1} + {s64}]",
                        "tileloadd tmm6, [{b0} + {s64}]",
                        "tileloadd tmm7, [{b1} + {s64}]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        "add {a0}, 1024",
                        "add {a1}, 1024",
                        "add {b0}, 1024",
                        "add {b1}, 1024",
                        "dec {n}",
                        "jnz 2b",
                        a0 = inout(reg) a0 => _,
                        a1 = inout(reg) a1 => _,
                        b0 = inout(reg) b0 => _,
                        b1 = inout(reg) b1 => _,
                        n = inout(reg) n => _,
                        s64 = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                } else {
                    one_block(a0, 64, 1024, b0, b1, n);
                }
            }
        }

        /// `n` (at least 1) steps of 32 inputs for one block of 16 rows: tmm0 / tmm1 += the
        /// 16 x 32 bf16 at `a` (rows `a_stride` bytes apart, the next step's `a_advance` bytes
        /// further on) times the weights' tiles from `b0` and `b1` (1 KiB each in a row, the
        /// next step's 1 KiB further on).
        ///
        /// # Safety
        /// Configured as [`zero`]; `n` tiles are readable from each pointer.
        #[inline(always)]
        pub unsafe fn one_block(
            a: *const u16,
            a_stride: usize,
            a_advance: usize,
            b0: *const u16,
            b1: *const u16,
            n: usize,
        ) {
            unsafe {
                asm!(
                    "2:",
                    "tileloadd tmm4, [{a} + {sa}]",
                    "tileloadd tmm6, [{b0} + {s64}]",
                    "tileloadd tmm7, [{b1} + {s64}]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "add {a}, {aa}",
                    "add {b0}, 1024",
                    "add {b1}, 1024",
                    "dec {n}",
                    "jnz 2b",
                    a = inout(reg) a => _,
                    b0 = inout(reg) b0 => _,
                    b1 = inout(reg) b1 => _,
                    n = inout(reg) n => _,
                    sa = in(reg) a_stride,
                    aa = in(reg) a_advance,
                    s64 = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(super) mod amx {
    use super::{Activations, Epilogue, PackedBf16, TilesOut};

    pub fn cpu_has_amx_bf16() -> bool {
        false
    }

    pub fn enable() -> bool {
        false
    }

    pub unsafe fn configure() {
        unreachable!("available() is false off x86-64 Linux")
    }

    pub unsafe fn release() {
        unreachable!("available() is false off x86-64 Linux")
    }

    pub unsafe fn pair_product(
        _: *const u16,
        _: usize,
        _: *const u16,
        _: *const u16,
        _: usize,
        _: *mut f32,
        _: usize,
    ) {
        unreachable!("available() is false off x86-64 Linux")
    }

    #[allow(clippy::too_many_arguments)]
    pub unsafe fn product_block(
        _: &Activations,
        _: &PackedBf16,
        _: usize,
        _: usize,
        _: Dest,
        _: usize,
        _: &Epilogue,
    ) {
        unreachable!("available() is false off x86-64 Linux")
    }

    #[allow(dead_code)]
    pub enum Dest {
        F32 { out: *mut f32, stride: usize },
        Tiles { to: TilesOut, col0: usize },
    }
}

#[cfg(target_arch = "x86_64")]
mod dpbf16 {
    use super::{Activations, PackedBf16, STEP};
    use std::arch::x86_64::*;

    pub fn cpu_has() -> bool {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }

    /// Rows of the output one tile holds (two 16-column panels each: 16 accumulators).
    const ROWS: usize = 8;

    /// Steps of the inner dimension per pass (256 values), as the AMX kernel's: the pass's
    /// weights (2 panels x 16 KiB) stay in L1 while every row of the pass runs over them.
    const STEPS_PER_PASS: usize = 8;

    /// Activations per pass over the columns (kept in L2 while every panel pair reads them).
    const ACTIVATION_BYTES_PER_PASS: usize = 512 << 10;

    /// Writes the products to `out`, with `vdpbf16ps`.
    ///
    /// # Safety
    /// As [`super::product_block`], on a CPU with AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn product_block(
        a: &Activations,
        w: &PackedBf16,
        col0: usize,
        cols: usize,
        out: *mut f32,
        stride: usize,
        rows: usize,
        finished: &mut dyn FnMut(usize, usize),
    ) {
        let tile = |r, panel, steps, c, stride| {
            // SAFETY: as `passes` promises; `tile` runs on this CPU.
            unsafe { tile(a, w, r, panel, steps, c, stride) }
        };
        // SAFETY: as the caller promises.
        unsafe { passes(a, w, col0, cols, out, stride, rows, 2, tile, finished) }
    }

    /// Writes the products to `out`, widening the bf16 weights to f32 in registers.
    ///
    /// # Safety
    /// As [`super::product_block`], on a CPU with AVX-512; `a` was converted for
    /// [`super::Backend::Expanded`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn expanded_block(
        a: &Activations,
        w: &PackedBf16,
        col0: usize,
        cols: usize,
        out: *mut f32,
        stride: usize,
        rows: usize,
        finished: &mut dyn FnMut(usize, usize),
    ) {
        let tile = |r, panel, steps, c, stride| {
            // SAFETY: as `passes` promises; `expanded_tile` runs on this CPU.
            unsafe { expanded_tile(a, w, r, panel, steps, c, stride) }
        };
        // SAFETY: as the caller promises.
        unsafe { passes(a, w, col0, cols, out, stride, rows, 4, tile, finished) }
    }

    /// The blocking both vector kernels share: passes of rows whose activations
    /// (`value_bytes` each) stay in L2, then for each pair of panels and each pass over 256
    /// inputs, `tile(r, panel, steps, out, stride)` on every 8 rows, and `finished` on the
    /// pass's rows. The 8 rows that reach past `rows` go to a buffer, copied out after the
    /// pair's last pass.
    ///
    /// While the tiles of one pass run, the next pass's weights are prefetched, a share before
    /// each tile: a model's weights come from memory, not from the caches, and the hardware's
    /// prefetchers alone left the products of one sequence (128 rows) 10-15% slower on cold
    /// weights than on warm ones.
    ///
    /// # Safety
    /// As [`super::product_block`], and `tile` is safe for any 8 rows below the padded rows,
    /// any panel pair of the block, any steps range within the inner dimension and any output
    /// valid for 8 rows of 32 f32 at the stride given.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn passes(
        a: &Activations,
        w: &PackedBf16,
        col0: usize,
        cols: usize,
        out: *mut f32,
        stride: usize,
        rows: usize,
        value_bytes: usize,
        mut tile: impl FnMut(usize, usize, std::ops::Range<usize>, *mut f32, usize),
        finished: &mut dyn FnMut(usize, usize),
    ) {
        let steps = a.k_padded / STEP;
        let rows_per_pass =
            (ACTIVATION_BYTES_PER_PASS / (a.k_padded * value_bytes)).max(16) / 16 * 16;
        let whole = rows / ROWS * ROWS;
        let mut tail = [0f32; ROWS * 32];
        let panels = col0 / 16..(col0 + cols) / 16;
        // A pair row of a panel is one cache line (32 bf16).
        let panel_lines = w.k_padded / 2;
        let line = |panel: usize, pair: usize| {
            w.values().wrapping_add((panel * panel_lines + pair) * 32) as *const i8
        };
        for row0 in (0..rows).step_by(rows_per_pass) {
            let row_end = (row0 + rows_per_pass).min(rows.next_multiple_of(ROWS));
            let tiles = (row_end - row0) / ROWS;
            for panel in panels.clone().step_by(2) {
                // Rows r..r + 8 and the panel pair's 32 columns of the caller's output
                // (col0 is a multiple of 32, so the pair is whole).
                let at = |r: usize| out.wrapping_add(r * stride + panel * 16 - col0);
                for first in (0..steps).step_by(STEPS_PER_PASS) {
                    let last = (first + STEPS_PER_PASS).min(steps);
                    // The next pass: the pair's next steps, else the next pair's first.
                    let next = if last < steps {
                        Some((panel, last..(last + STEPS_PER_PASS).min(steps)))
                    } else if panel + 2 < panels.end {
                        Some((panel + 2, 0..STEPS_PER_PASS.min(steps)))
                    } else {
                        None
                    };
                    for (j, r) in (row0..row_end).step_by(ROWS).enumerate() {
                        if let Some((panel, steps)) = &next {
                            let pairs = steps.start * STEP / 2..steps.end * STEP / 2;
                            let share = |j: usize| pairs.start + pairs.len() * j / tiles;
                            for pair in share(j)..share(j + 1) {
                                for p in [*panel, panel + 1] {
                                    // SAFETY: a prefetch does not fault; the line is inside
                                    // the packed weights anyway (both panels exist).
                                    unsafe { _mm_prefetch::<_MM_HINT_T0>(line(p, pair)) };
                                }
                            }
                        }
                        if r < whole {
                            tile(r, panel, first..last, at(r), stride);
                        } else {
                            tile(r, panel, first..last, tail.as_mut_ptr(), 32);
                        }
                    }
                }
                if row_end > whole {
                    for (i, row) in tail.chunks_exact(32).take(rows - whole).enumerate() {
                        // SAFETY: row whole + i < rows of the caller's output.
                        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), at(whole + i), 32) };
                    }
                }
            }
            finished(row0, row_end.min(rows) - row0);
        }
    }

    /// The 8 x 32 f32 output tile at `out` (rows `stride` apart) into 16 registers.
    ///
    /// # Safety
    /// AVX-512 runs here; `out` is valid for 8 rows of 32 f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_tile(out: *const f32, stride: usize) -> [[__m512; 2]; ROWS] {
        std::array::from_fn(|i| {
            // SAFETY: as the caller promises.
            std::array::from_fn(|j| unsafe { _mm512_loadu_ps(out.add(i * stride + j * 16)) })
        })
    }

    /// [`load_tile`]'s registers back to `out`.
    ///
    /// # Safety
    /// As [`load_tile`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_tile(acc: &[[__m512; 2]; ROWS], out: *mut f32, stride: usize) {
        for (i, acc) in acc.iter().enumerate() {
            for (j, v) in acc.iter().enumerate() {
                // SAFETY: as the caller promises.
                unsafe { _mm512_storeu_ps(out.add(i * stride + j * 16), *v) };
            }
        }
    }

    /// Rows `r..r + 8` by panels `panel` and `panel + 1`, over the inner steps `steps`, into
    /// the 8 x 32 f32 at `out` (rows `stride` apart): added to them after the first step.
    ///
    /// # Safety
    /// AVX512-BF16 runs here; `r` is a multiple of 8 below the padded rows; both panels exist;
    /// `out` is valid for 8 rows of 32 f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile(
        a: &Activations,
        w: &PackedBf16,
        r: usize,
        panel: usize,
        steps: std::ops::Range<usize>,
        out: *mut f32,
        stride: usize,
    ) {
        // Weights: each panel is k_padded / 2 pair rows of 32 bf16.
        let panel_len = w.k_padded / 2 * 32;
        let b0 = w.values().wrapping_add(panel * panel_len);
        let b1 = b0.wrapping_add(panel_len);
        // Activations: blocks of 16 rows, each step 16 rows x 32 values.
        let a0 = a
            .tiles()
            .as_ptr()
            .wrapping_add(r / 16 * a.k_padded * 16 + r % 16 * STEP);
        // SAFETY (every load and store below): out holds 8 rows of 32 f32; pair row p of a
        // panel is inside it for p < k_padded / 2; row r + i's values of step s are inside
        // the activations' block for s < k_padded / 32.
        let mut acc = if steps.start == 0 {
            [[_mm512_setzero_ps(); 2]; ROWS]
        } else {
            unsafe { load_tile(out, stride) }
        };
        for s in steps {
            for q in 0..STEP / 2 {
                let p = s * STEP / 2 + q;
                let w0: __m512bh =
                    unsafe { std::mem::transmute(_mm512_loadu_si512(b0.add(p * 32) as *const _)) };
                let w1: __m512bh =
                    unsafe { std::mem::transmute(_mm512_loadu_si512(b1.add(p * 32) as *const _)) };
                let at = unsafe { a0.add(s * 16 * STEP + q * 2) };
                for (i, acc) in acc.iter_mut().enumerate() {
                    let pair = unsafe { std::ptr::read_unaligned(at.add(i * STEP) as *const i32) };
                    let x: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(pair)) };
                    acc[0] = _mm512_dpbf16_ps(acc[0], x, w0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], x, w1);
                }
            }
        }
        unsafe { store_tile(&acc, out, stride) };
    }

    /// [`tile`] with the weights widened to f32: a pair row's 32-bit lane holds column c's
    /// bf16 for the even input in its low half and for the odd one in its high half, so a
    /// shift and a mask give the two f32 vectors, each multiplied by one rounded activation.
    ///
    /// # Safety
    /// As [`tile`], on a CPU with AVX-512, the activations rounded to f32 rows.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn expanded_tile(
        a: &Activations,
        w: &PackedBf16,
        r: usize,
        panel: usize,
        steps: std::ops::Range<usize>,
        out: *mut f32,
        stride: usize,
    ) {
        let panel_len = w.k_padded / 2 * 32;
        let b0 = w.values().wrapping_add(panel * panel_len);
        let b1 = b0.wrapping_add(panel_len);
        let k = a.k_padded;
        let x0 = a.rounded().as_ptr().wrapping_add(r * k);
        let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
        // SAFETY (every load and store below): as in `tile`; rows r..r + 8 of the rounded
        // activations hold k_padded values each.
        let mut acc = if steps.start == 0 {
            [[_mm512_setzero_ps(); 2]; ROWS]
        } else {
            unsafe { load_tile(out, stride) }
        };
        for p in steps.start * STEP / 2..steps.end * STEP / 2 {
            let v0 = unsafe { _mm512_loadu_si512(b0.add(p * 32) as *const _) };
            let v1 = unsafe { _mm512_loadu_si512(b1.add(p * 32) as *const _) };
            let even = [v0, v1].map(|v| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v)));
            let odd = [v0, v1].map(|v| _mm512_castsi512_ps(_mm512_and_si512(v, high)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let xe = _mm512_set1_ps(unsafe { *x0.add(i * k + 2 * p) });
                let xo = _mm512_set1_ps(unsafe { *x0.add(i * k + 2 * p + 1) });
                for j in 0..2 {
                    acc[j] = _mm512_fmadd_ps(xe, even[j], acc[j]);
                    acc[j] = _mm512_fmadd_ps(xo, odd[j], acc[j]);
                }
            }
        }
        unsafe { store_tile(&acc, out, stride) };
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod dpbf16 {
    use super::{Activations, PackedBf16};

    pub fn cpu_has() -> bool {
        false
    }

    #[allow(clippy::too_many_arguments)]
    pub unsafe fn product_block(
        _: &Activations,
        _: &PackedBf16,
        _: usize,
        _: usize,
        _: *mut f32,
        _: usize,
        _: usize,
        _: &mut dyn FnMut(usize, usize),
    ) {
        unreachable!("AVX512-BF16 is x86-64's")
    }

    pub unsafe fn expanded_block(
        _: &Activations,
        _: &PackedBf16,
        _: usize,
        _: usize,
        _: *mut f32,
        _: usize,
    ) {
        unreachable!("AVX512-BF16 is x86-64's")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile row the kernels load from the activations is one whole cache line.
    #[test]
    fn activation_tiles_start_on_a_cache_line() {
        let (m, k, n) = (40, 70, 50);
        let x = vec![0.5f32; m * k];
        let packed = PackedBf16::pack(&vec![0.25f32; n * k], n, k);
        for _ in 0..3 {
            let a = Activations::convert_for(Backend::Amx, &x, m, k, &packed);
            assert_eq!(a.tiles().as_ptr() as usize % 64, 0);
        }
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        let back = |x: f32| f32::from_bits((to_bf16(x) as u32) << 16);
        assert_eq!(back(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even one, 1.
        assert_eq!(back(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to 1 + 2^-6.
        assert_eq!(back(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert!(back(f32::NAN).is_nan());
        assert_eq!(back(-2.5), -2.5);
    }

    /// The AMX kernel's rounding in registers gives [`to_bf16`]'s bits: ties, NaNs (quiet and
    /// signalling), infinities, the largest values (rounding up to infinity), subnormals and
    /// zeros of both signs, and a spread of ordinary values.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn rounding_in_registers_matches_to_bf16() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("NOT EXERCISED: rounding sixteen values in registers (no AVX-512 here)");
            return;
        }
        let mut values = vec![
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffc0_1234),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            f32::from_bits(1),
            f32::from_bits(0x8000_8000),
            f32::from_bits(0x0001_8000),
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
        ];
        values.extend((0..4000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))));
        values.resize(values.len().next_multiple_of(16), 3.0);
        for chunk in values.chunks_exact(16) {
            let mut got = [0u16; 16];
            // SAFETY: AVX-512F is present; 16 f32 in, 16 u16 out.
            unsafe {
                use std::arch::x86_64::*;
                let v = amx::sixteen_to_bf16(_mm512_loadu_ps(chunk.as_ptr()));
                _mm256_storeu_si256(got.as_mut_ptr() as *mut __m256i, v);
            }
            let want: Vec<u16> = chunk.iter().map(|&x| to_bf16(x)).collect();
            assert_eq!(got.as_slice(), want.as_slice(), "{chunk:?}");
        }
    }

    /// Each backend the CPU runs, against the same products in f64 on the bf16-rounded
    /// operands, on shapes with every kind of padding (rows, columns and inner dimension not
    /// multiples of the tiles) and an inner dimension over several passes.
    #[test]
    fn products_equal_the_rounded_reference_on_every_backend_here() {
        let backends = backends_here();
        if backends.is_empty() {
            println!("NOT EXERCISED: bf16 products ({})", unavailable_reason());
            return;
        }
        let round = |x: f32| f32::from_bits((to_bf16(x) as u32) << 16) as f64;
        for (backend, (m, k, n)) in backends.iter().flat_map(|b| {
            // The largest first: the others reuse its scratch, whose stale values must not
            // leak into their padding.
            [
                // Three passes of rows (128 at this inner dimension), the last ending in a
                // block of 12.
                (300, 2048, 64),
                (40, 600, 96),
                (1, 8, 3),
                (16, 32, 32),
                (17, 40, 70),
                (50, 96, 64),
            ]
            .map(|shape| (*b, shape))
        }) {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 97) as f32 / 50.0 - 1.0)
                .collect();
            // [n, k], as checkpoints keep it.
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104_729) % 89) as f32 / 40.0 - 1.1)
                .collect();
            let packed = PackedBf16::pack(&w, n, k);
            let a = Activations::convert_for(backend, &x, m, k, &packed);
            let cols = packed.n_padded;
            // m rows and a row that must stay as it is. Every kernel writes every element
            // (NaN shows one it misses).
            let mut out = vec![f32::NAN; (m + 1) * cols];
            out[m * cols..].fill(7.0);
            // The epilogue the linear layers give it, with a residual whose rows are further
            // apart than the output's.
            let bias: Vec<f32> = (0..cols).map(|c| (c % 7) as f32 * 0.25 - 0.5).collect();
            let res_stride = cols + 3;
            let residual: Vec<f32> = (0..m * res_stride)
                .map(|i| (i % 5) as f32 * 0.5 - 1.0)
                .collect();
            let epilogue = Epilogue {
                bias: Some(&bias),
                act: super::super::Activation::GeluErf,
                residual: Some(&residual),
                residual_stride: res_stride,
            };
            // SAFETY: out holds m rows of cols.
            unsafe {
                product_block_on(
                    backend,
                    &a,
                    &packed,
                    0,
                    cols,
                    out.as_mut_ptr(),
                    cols,
                    m,
                    &epilogue,
                )
            };
            assert!(
                out[m * cols..].iter().all(|&v| v == 7.0),
                "{backend:?} {m}x{k}x{n}: wrote past its rows"
            );
            // The epilogue's own GELU (tested against the exact function in math.rs).
            let gelu = |v: f64| super::super::math::gelu_erf(v as f32) as f64;
            for r in 0..m {
                for c in 0..n {
                    let sum: f64 = (0..k)
                        .map(|i| round(x[r * k + i]) * round(w[c * k + i]))
                        .sum();
                    let want = gelu(sum + bias[c] as f64) + residual[r * res_stride + c] as f64;
                    let got = out[r * cols + c] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{backend:?} {m}x{k}x{n} [{r},{c}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
