//! f32 products against weights packed once at load, on CPUs with AVX2 or AVX-512.
//!
//! gemm packs both operands on every call. For a linear layer the weight is the large one, so
//! at one sequence (128 rows) the packing is a pass over the whole weight per product: on an
//! AVX2-only EPYC it took 15.7% of bert-base b=1 (`perf`: gemm's `vectorize` against 65% in
//! its `x2x6` micro-kernel), on an AVX-512 Zen 5 16% (against 67% in `x4x6`). Here the weight
//! is stored as gemm would pack it, once: panels of [`PANEL`] output columns, each `inputs`
//! rows of [`PANEL`] values.
//!
//! The AVX2 micro-kernel keeps a tile of up to [`ROWS`] rows x [`PANEL`] columns in twelve
//! registers while it walks the inputs: two loads of the panel and six broadcasts feed twelve
//! FMAs per input. The broadcasts read the activations in place (their rows may be any
//! distance apart, which the convolutions' overlapping windows need). Tiles sweep every row of
//! a block of [`BLOCK_ROWS`] rows for one panel before the next panel, whose rows are
//! prefetched meanwhile. A pass over panels packed at load takes up to [`PACKED_DEPTH`] inputs
//! with the sums in registers; panels dequantised per call, [`DEPTH`] (written where they stay
//! in L1). Capped at AVX2 on a Zen 5 (`IA_NATIVE_ISA=avx2`, `bench` p50, alternating), passes
//! of 256 interleaved inputs -> these: bert-base b=1 f32 102.6 -> 95.7 ms, b=8 741.7 -> 705.5.
//!
//! The AVX-512 kernel ([`wide`]) is the shape of gemm's `x4x6`: see there.

#[cfg(target_arch = "x86_64")]
use super::SharedOut;

/// Output columns per panel: two AVX2 registers.
pub const PANEL: usize = 16;
/// Rows per tile: 6 x 2 accumulators leave registers for the panel's two vectors and a
/// broadcast.
#[cfg(target_arch = "x86_64")]
const ROWS: usize = 6;
/// Inputs per pass of panels written per call (dequantised): a panel's 256 x 16 values are
/// 16 KiB, half of L1.
pub(super) const DEPTH: usize = 256;
/// Inputs per pass of panels packed at load (both kernels): all of bert-base's and
/// ViT-base's, so a tile's sums stay in registers (see [`wide`]).
const PACKED_DEPTH: usize = 1536;
/// Rows per block: their outputs stay in cache between passes (288 ran no faster at
/// bert-base b=8 capped at AVX2).
#[cfg(target_arch = "x86_64")]
const BLOCK_ROWS: usize = 96;

/// A linear layer's `[inputs, outputs]` weight as panels of [`PANEL`] columns (the last one
/// padded with zeros), each `inputs` consecutive rows of [`PANEL`] values, starting on a cache
/// line.
pub struct PackedF32 {
    inputs: usize,
    outputs: usize,
    values: Vec<f32>,
    /// Where the first panel starts in `values` (for the cache-line alignment).
    start: usize,
}

impl PackedF32 {
    /// Packs `weight`, `[n, k]` row-major as checkpoints keep a linear layer's weight ([out,
    /// in]), without a transposed copy first; one panel per task.
    pub fn pack(weight: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(weight.len(), k * n, "a {n} x {k} weight");
        Self::pack_strided(weight, n, k, k, 1)
    }

    /// Packs the `[n, k]` matrix whose element (output c, input i) is at
    /// `data[c * out_stride + i * in_stride]`: an attention head's keys among the stacked
    /// query/key/value rows, or its values transposed.
    pub fn pack_strided(
        data: &[f32],
        n: usize,
        k: usize,
        out_stride: usize,
        in_stride: usize,
    ) -> Self {
        if n > 0 && k > 0 {
            assert!(
                (n - 1) * out_stride + (k - 1) * in_stride < data.len(),
                "a {n} x {k} matrix at strides {out_stride}, {in_stride} in {} values",
                data.len()
            );
        }
        use rayon::prelude::*;
        let panels = n.div_ceil(PANEL);
        // A cache line is 16 f32: the first aligned element is at most 15 in.
        let mut values = vec![0f32; panels * k * PANEL + 15];
        let start = values.as_ptr().align_offset(64).min(15);
        if k > 0 {
            values[start..start + panels * k * PANEL]
                .par_chunks_mut(k * PANEL)
                .enumerate()
                .for_each(|(p, panel)| {
                    let (first, cols) = (p * PANEL, PANEL.min(n - p * PANEL));
                    for (i, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                        for (c, v) in row[..cols].iter_mut().enumerate() {
                            *v = data[(first + c) * out_stride + i * in_stride];
                        }
                    }
                });
        }
        Self {
            inputs: k,
            outputs: n,
            values,
            start,
        }
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Whether this CPU runs [`product_packed`] (the weights are packed only where it does).
    pub fn runs_here() -> bool {
        super::isa() >= super::Isa::Avx2
    }
}

/// [`product_block`] on weights packed at load, on the widest kernel the CPU runs: on
/// AVX-512, [`wide::product_block`].
///
/// # Safety
/// As [`product_block`], with [`PackedF32::runs_here`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product_packed(
    x: &[f32],
    m: usize,
    row_stride: usize,
    w: &PackedF32,
    first: usize,
    cols: usize,
    dst: SharedOut,
    dst_stride: usize,
    finished: impl FnMut(usize, usize),
) {
    // SAFETY: as the caller promises; each kernel runs where the ISA says it does.
    unsafe {
        if super::isa() == super::Isa::Avx512 {
            wide::product_block(x, m, row_stride, w, first, cols, dst, dst_stride, finished)
        } else {
            product_block(x, m, row_stride, w, first, cols, dst, dst_stride, finished)
        }
    }
}

/// Where [`product_block`] reads its panels from: f32 weights packed once at load, or a
/// block-quantised matrix dequantised one panel at a time as the kernel reaches it (so a
/// quantised product runs on the same micro-kernel as an f32 one).
pub(super) trait Panels {
    fn inputs(&self) -> usize;
    fn outputs(&self) -> usize;
    /// Rows `k0..k0 + depth` (at most [`Panels::depth`]) of the panel of columns
    /// `c0..c0 + PANEL`: `depth` rows of [`PANEL`] values, the first on a 32-byte boundary.
    /// `scratch` is this call's buffer for a source that must write the panel somewhere first.
    fn panel(&self, c0: usize, k0: usize, depth: usize, scratch: &mut Vec<f32>) -> *const f32;
    /// The most inputs one pass takes ([`DEPTH`] for a source that writes its panels first).
    fn depth(&self) -> usize {
        DEPTH
    }
    /// Where row `k` of the panel of columns `c0..c0 + PANEL` lies, followed by the panel's
    /// next rows, for a tile to prefetch while it runs; null for a source that writes its
    /// panels when asked.
    fn lines_at(&self, _c0: usize, _k: usize) -> *const f32 {
        std::ptr::null()
    }
}

impl Panels for PackedF32 {
    fn inputs(&self) -> usize {
        self.inputs
    }

    fn outputs(&self) -> usize {
        self.outputs
    }

    fn panel(&self, c0: usize, k0: usize, _depth: usize, _scratch: &mut Vec<f32>) -> *const f32 {
        self.values[self.start + (c0 / PANEL * self.inputs + k0) * PANEL..].as_ptr()
    }

    fn depth(&self) -> usize {
        PACKED_DEPTH
    }

    fn lines_at(&self, c0: usize, k: usize) -> *const f32 {
        self.panel(c0, k, 1, &mut Vec::new())
    }
}

/// A panel's worth of `scratch` (`DEPTH` rows of [`PANEL`] values) starting on a cache line.
pub(super) fn scratch_panel(scratch: &mut Vec<f32>) -> &mut [f32] {
    if scratch.is_empty() {
        scratch.resize(DEPTH * PANEL + 15, 0.0);
    }
    let start = scratch.as_ptr().align_offset(64).min(15);
    &mut scratch[start..start + DEPTH * PANEL]
}

/// `dst[r][c] = sum_i x[r * row_stride + i] * w[i][c]` for the `m` rows and the columns
/// `first..first + cols` (`first` a multiple of [`PANEL`]); dst's rows are `dst_stride` apart.
/// `finished(r0, rows)` runs as soon as rows `r0..r0 + rows` of these columns hold their
/// sums, while they are still in cache (the linear layer's bias, activation and residual).
///
/// # Safety
/// The CPU has AVX2 and FMA ([`PackedF32::runs_here`]); `x` holds `m` rows of the weight's
/// inputs at `row_stride`; dst covers those rows and columns, which no other thread touches
/// meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product_block(
    x: &[f32],
    m: usize,
    row_stride: usize,
    w: &impl Panels,
    first: usize,
    cols: usize,
    dst: SharedOut,
    dst_stride: usize,
    mut finished: impl FnMut(usize, usize),
) {
    let k = w.inputs();
    debug_assert!(first.is_multiple_of(PANEL) && first + cols <= w.outputs());
    debug_assert!(m == 0 || x.len() >= (m - 1) * row_stride + k);
    // A block of rows, tile by tile, against one panel after another; the broadcasts read
    // the activations in place. Every pass over the inputs of one block runs before the next
    // block: its outputs, added to pass after pass, stay in cache (in the other order a block
    // of 1,576 rows waited on memory for them).
    let max_depth = w.depth();
    let mut scratch = Vec::new();
    for r0 in (0..m).step_by(BLOCK_ROWS) {
        let rows = BLOCK_ROWS.min(m - r0);
        let tiles = rows.div_ceil(ROWS);
        for k0 in (0..k).step_by(max_depth) {
            let depth = max_depth.min(k - k0);
            for c0 in (first..first + cols).step_by(PANEL) {
                let width = PANEL.min(first + cols - c0);
                let panel = w.panel(c0, k0, depth, &mut scratch);
                // The next pass's panel: the next one, else the first one further in.
                let next = if c0 + PANEL < first + cols {
                    Some((c0 + PANEL, k0))
                } else if k0 + max_depth < k {
                    Some((first, k0 + max_depth))
                } else {
                    None
                };
                for (j, t0) in (0..rows).step_by(ROWS).enumerate() {
                    // This tile's share of the next pass's panel lines (as the AVX-512
                    // kernel's, see [`wide`]).
                    let (ahead, ahead_lines) = match next {
                        Some((c, kn)) => {
                            let lines = max_depth.min(k - kn);
                            let share = |j: usize| lines * j / tiles;
                            (w.lines_at(c, kn + share(j)), share(j + 1) - share(j))
                        }
                        None => (std::ptr::null(), 0),
                    };
                    let tile_rows = ROWS.min(rows - t0);
                    let t = Tile {
                        a: x[(r0 + t0) * row_stride + k0..].as_ptr(),
                        a_stride: row_stride,
                        panel,
                        depth,
                        c: dst.at((r0 + t0) * dst_stride + c0),
                        c_stride: dst_stride,
                        width,
                        accumulate: k0 > 0,
                        ahead,
                        ahead_lines,
                    };
                    // SAFETY: as the caller promises; the tile's rows, inputs and columns are
                    // within the operands.
                    unsafe {
                        match tile_rows {
                            6 => tile::<6>(t),
                            5 => tile::<5>(t),
                            4 => tile::<4>(t),
                            3 => tile::<3>(t),
                            2 => tile::<2>(t),
                            _ => tile::<1>(t),
                        }
                    }
                }
            }
        }
        finished(r0, rows);
    }
}

/// The AVX-512 kernel: tiles of up to [`ROWS`](wide::ROWS) rows by four panels (64 columns,
/// four registers), so that four loads of the panels and six broadcasts feed 24 FMAs an input,
/// the shape of gemm's `x4x6`. The broadcasts read the activations where they are (no copy).
/// A tile walks up to [`PACKED_DEPTH`] inputs with its sums in registers (all of them for
/// every projection of bert-base and ViT-base; a group's 1,536 rows are 384 KiB, in L2): with
/// passes of 128 inputs, whose partial sums went through memory six times, bert-base b=8 ran
/// 3% slower than on gemm. While the
/// tiles of one group of panels run, the next group's weights are prefetched, because a
/// model's weights come from memory: each tile takes a share of the lines and asks for one
/// line of each panel every so many inputs of its own walk. Asked for all at once before
/// each tile (128 lines for wav2vec2's convolutions), the prefetches had stalled on the line
/// fill buffers: 7.5% of wav2vec2-base's f32 samples, outside the micro-kernel. Spread, in one
/// process alternating the two (the weights from memory, 12 rounds, medians): 128 x 768 x
/// 3072 1.84 against 2.02 ms, 128 x 768 x 768 0.47 against 0.49, 171 x 768 x 3072 2.41
/// against 2.51, a 5,503-frame convolution 12.3 against 13.0, 1024 x 768 x 3072 the same.
///
/// Against gemm with the weight in [in, out] (`bench`, p50 ms, medians of two alternating
/// rounds, Zen 5): bert-base b=1 f32 67.1 -> 54.2, b=8 413.1 -> 398.5; ViT-base b=1 92.4 ->
/// 82.5, b=8 616.8 -> 611.8. `examples/matmul_shapes 128 cold`: 380-440 -> 445-515 GFLOP/s;
/// on warm weights of 1,024 rows, the same as gemm.
#[cfg(target_arch = "x86_64")]
mod wide {
    use super::{PackedF32, SharedOut, Spread, PACKED_DEPTH as DEPTH, PANEL};
    use std::arch::x86_64::*;

    /// Rows per tile: 6 x 4 accumulators, four panel registers and a broadcast.
    pub(super) const ROWS: usize = 6;
    /// Panels per tile.
    const GROUP: usize = 4;
    /// Rows per block: every group of the block's columns runs over them before the next
    /// block (288 was a little faster than 144 at bert-base b=8); a sequence of 128 tokens
    /// is one block.
    pub(super) const BLOCK_ROWS: usize = 288;

    /// As [`super::product_block`], on AVX-512.
    ///
    /// # Safety
    /// As [`super::product_block`], on a CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product_block(
        x: &[f32],
        m: usize,
        row_stride: usize,
        w: &PackedF32,
        first: usize,
        cols: usize,
        dst: SharedOut,
        dst_stride: usize,
        mut finished: impl FnMut(usize, usize),
    ) {
        let k = w.inputs;
        debug_assert!(first.is_multiple_of(PANEL) && first + cols <= w.outputs);
        debug_assert!(m == 0 || x.len() >= (m - 1) * row_stride + k);
        let panel_len = k * PANEL;
        let panel = |c0: usize, k0: usize| {
            w.values[w.start + c0 / PANEL * panel_len + k0 * PANEL..].as_ptr()
        };
        // Groups of panels (the last one may have fewer), by first column.
        let groups: Vec<usize> = (first..first + cols).step_by(GROUP * PANEL).collect();
        for r0 in (0..m).step_by(BLOCK_ROWS) {
            let rows = BLOCK_ROWS.min(m - r0);
            let tiles = rows.div_ceil(ROWS);
            for k0 in (0..k).step_by(DEPTH) {
                let depth = DEPTH.min(k - k0);
                for (p, &c0) in groups.iter().enumerate() {
                    let width = (GROUP * PANEL).min(first + cols - c0);
                    // The next pass's panels: the next group's, else the first group's further in.
                    let next = match groups.get(p + 1) {
                        Some(&c) => Some((c, k0)),
                        None if k0 + DEPTH < k => Some((groups[0], k0 + DEPTH)),
                        None => None,
                    };
                    for (j, t0) in (0..rows).step_by(ROWS).enumerate() {
                        // This tile's share of the next pass's panel lines.
                        let ahead = match next {
                            Some((c, kn)) => {
                                let lines = DEPTH.min(k - kn);
                                let share = |j: usize| lines * j / tiles;
                                Ahead {
                                    first: panel(c, kn + share(j)),
                                    panels: GROUP.min((first + cols - c).div_ceil(PANEL)),
                                    lines: share(j + 1) - share(j),
                                }
                            }
                            None => Ahead::NONE,
                        };
                        let t = Tile {
                            a: x[(r0 + t0) * row_stride + k0..].as_ptr(),
                            a_stride: row_stride,
                            panel: panel(c0, k0),
                            panel_len,
                            depth,
                            c: dst.at((r0 + t0) * dst_stride + c0),
                            c_stride: dst_stride,
                            width,
                            accumulate: k0 > 0,
                            ahead,
                        };
                        let tile_rows = ROWS.min(rows - t0);
                        // SAFETY: as the caller promises; the tile's rows, inputs and columns
                        // are within the operands.
                        unsafe {
                            match width.div_ceil(PANEL) {
                                4 => by_rows::<4>(tile_rows, t),
                                3 => by_rows::<3>(tile_rows, t),
                                2 => by_rows::<2>(tile_rows, t),
                                _ => by_rows::<1>(tile_rows, t),
                            }
                        }
                    }
                }
            }
            finished(r0, rows);
        }
    }

    /// [`tile`] for `rows` rows.
    ///
    /// # Safety
    /// As [`tile`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn by_rows<const P: usize>(rows: usize, t: Tile) {
        // SAFETY: as the caller promises.
        unsafe {
            match rows {
                6 => tile::<6, P>(t),
                5 => tile::<5, P>(t),
                4 => tile::<4, P>(t),
                3 => tile::<3, P>(t),
                2 => tile::<2, P>(t),
                _ => tile::<1, P>(t),
            }
        }
    }

    /// One tile's operands: `depth` inputs of its rows from `a` (`a_stride` apart), against
    /// `depth` rows of the panel at `panel` and of the ones after it (`panel_len` apart), into
    /// the first `width` columns of its rows of `c`, added to what is there when `accumulate`;
    /// and the lines of the next panels it brings into L1 meanwhile.
    #[derive(Clone, Copy)]
    struct Tile {
        a: *const f32,
        a_stride: usize,
        panel: *const f32,
        panel_len: usize,
        depth: usize,
        c: *mut f32,
        c_stride: usize,
        width: usize,
        accumulate: bool,
        ahead: Ahead,
    }

    /// Lines `0..lines` of `panels` panels from `first` (`panel_len` apart, as the tile's).
    #[derive(Clone, Copy)]
    struct Ahead {
        first: *const f32,
        panels: usize,
        lines: usize,
    }

    impl Ahead {
        const NONE: Ahead = Ahead {
            first: std::ptr::null(),
            panels: 0,
            lines: 0,
        };
    }

    /// # Safety
    /// AVX-512F runs here; the tile's pointers cover `depth` x R interleaved inputs, `depth`
    /// rows of P panels (from a cache line) and R rows of `width` outputs.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const P: usize>(t: Tile) {
        // SAFETY: as the caller promises.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); P]; R];
            let rows: [*const f32; R] = std::array::from_fn(|r| t.a.add(r * t.a_stride));
            let mut b = t.panel;
            let mut spread = Spread::new(t.depth, t.ahead.lines);
            let prefetch_line = |line: usize| {
                for q in 0..t.ahead.panels {
                    // A panel row of 16 f32 is one cache line.
                    let at = t.ahead.first.wrapping_add(q * t.panel_len + line * PANEL);
                    _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
                }
            };
            for i in 0..t.depth {
                let w: [__m512; P] =
                    std::array::from_fn(|j| _mm512_load_ps(b.add(j * t.panel_len)));
                for (row, acc) in rows.iter().zip(acc.iter_mut()) {
                    let v = _mm512_set1_ps(*row.add(i));
                    for j in 0..P {
                        acc[j] = _mm512_fmadd_ps(v, w[j], acc[j]);
                    }
                }
                b = b.add(PANEL);
                if let Some(line) = spread.step() {
                    prefetch_line(line);
                }
            }
            spread.rest().for_each(prefetch_line);
            for (r, acc) in acc.iter().enumerate() {
                for (j, v) in acc.iter().enumerate() {
                    let at = t.c.add(r * t.c_stride + j * PANEL);
                    let width = t.width.saturating_sub(j * PANEL).min(PANEL);
                    let mask: __mmask16 = ((1u32 << width) - 1) as u16;
                    let mut v = *v;
                    if t.accumulate {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, at));
                    }
                    _mm512_mask_storeu_ps(at, mask, v);
                }
            }
        }
    }
}

/// When a tile asks for the next panels' lines while it walks its inputs: one line (of each
/// panel) every `depth / lines` inputs, and whatever the walk did not reach after it. Asked
/// for all at once before the tile, they came from memory faster than the line fill buffers
/// freed up, and the prefetches stalled (7.5% of wav2vec2-base's f32 samples sat on them).
#[cfg(target_arch = "x86_64")]
struct Spread {
    every: usize,
    countdown: usize,
    next: usize,
    lines: usize,
}

#[cfg(target_arch = "x86_64")]
impl Spread {
    fn new(depth: usize, lines: usize) -> Self {
        let every = (depth / lines.max(1)).max(1);
        Self {
            every,
            countdown: every,
            next: 0,
            lines,
        }
    }

    /// After each input of the walk: the line to ask for now, if any.
    #[inline(always)]
    fn step(&mut self) -> Option<usize> {
        self.countdown -= 1;
        if self.countdown > 0 {
            return None;
        }
        self.countdown = self.every;
        (self.next < self.lines).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// The lines the walk did not reach.
    fn rest(&self) -> std::ops::Range<usize> {
        self.next..self.lines
    }
}

/// One tile's operands: `depth` inputs of `R` rows from `a` (`a_stride` apart) against
/// `depth` rows of a panel, into the first `width` columns of `R` rows of `c`, added to what
/// is there when `accumulate` (a later pass over the inputs); and `ahead_lines` lines of the
/// next panel from `ahead` (none where null) that it brings into L1 meanwhile.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Tile {
    a: *const f32,
    a_stride: usize,
    panel: *const f32,
    depth: usize,
    c: *mut f32,
    c_stride: usize,
    width: usize,
    accumulate: bool,
    ahead: *const f32,
    ahead_lines: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>(t: Tile) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's pointers cover `depth` x R interleaved inputs, `depth` panel rows
    // and R rows of `width` outputs.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let rows: [*const f32; R] = std::array::from_fn(|r| t.a.add(r * t.a_stride));
        let mut b = t.panel;
        let lines = if t.ahead.is_null() { 0 } else { t.ahead_lines };
        let mut spread = Spread::new(t.depth, lines);
        // A panel row of 16 f32 is one cache line; a prefetch does not fault.
        let prefetch_line =
            |line: usize| _mm_prefetch::<_MM_HINT_T0>(t.ahead.wrapping_add(line * PANEL) as _);
        for i in 0..t.depth {
            let b0 = _mm256_load_ps(b);
            let b1 = _mm256_load_ps(b.add(8));
            for (row, acc) in rows.iter().zip(acc.iter_mut()) {
                let v = _mm256_broadcast_ss(&*row.add(i));
                acc[0] = _mm256_fmadd_ps(v, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(v, b1, acc[1]);
            }
            b = b.add(PANEL);
            if let Some(line) = spread.step() {
                prefetch_line(line);
            }
        }
        spread.rest().for_each(prefetch_line);
        for (r, acc) in acc.iter().enumerate() {
            let row = t.c.add(r * t.c_stride);
            if t.width == PANEL {
                let (mut v0, mut v1) = (acc[0], acc[1]);
                if t.accumulate {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(row));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(row.add(8)));
                }
                _mm256_storeu_ps(row, v0);
                _mm256_storeu_ps(row.add(8), v1);
            } else {
                let mut sums = [0f32; PANEL];
                _mm256_storeu_ps(sums.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(sums.as_mut_ptr().add(8), acc[1]);
                for (j, s) in sums.iter().take(t.width).enumerate() {
                    let o = row.add(j);
                    *o = if t.accumulate { *o + s } else { *s };
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::kernels::{Isa, Output};

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 * 0.618 + seed).fract() - 0.5) * 2.0)
            .collect()
    }

    /// Every tile height, a ragged last panel, more inputs than one pass (the accumulating
    /// passes), more rows than one block, rows further apart than their length and no inputs
    /// at all equal the sums in f64, on each kernel the CPU runs.
    #[test]
    fn products_equal_the_sums() {
        if Isa::detected() < Isa::Avx2 {
            println!("NOT EXERCISED: the panel kernels need AVX2 and FMA");
            return;
        }
        // SAFETY (both): the test runs each kernel where its ISA does; the operands cover
        // the shapes.
        check(
            "avx2",
            |x, m, row_stride, w, first, cols, out, n, finished| unsafe {
                product_block(x, m, row_stride, w, first, cols, out, n, finished)
            },
        );
        if Isa::detected() < Isa::Avx512 {
            println!("NOT EXERCISED: the AVX-512 panel kernel");
            return;
        }
        check(
            "avx512",
            |x, m, row_stride, w, first, cols, out, n, finished| unsafe {
                wide::product_block(x, m, row_stride, w, first, cols, out, n, finished)
            },
        );
    }

    type Finished<'a> = &'a mut dyn FnMut(usize, usize);

    fn check(
        name: &str,
        kernel: impl Fn(&[f32], usize, usize, &PackedF32, usize, usize, SharedOut, usize, Finished),
    ) {
        for (m, k, n, row_stride) in [
            (1, 8, 3, 8),
            (7, 33, 50, 33),
            (13, 600, 40, 600),
            (200, 257, 17, 300),
            (5, 0, 16, 0),
            // Past the AVX-512 kernel's pass and block, with 1-3 panels of a last group.
            (
                wide::BLOCK_ROWS + 7,
                PACKED_DEPTH + 5,
                2 * 64 + 3 * PANEL + 5,
                PACKED_DEPTH + 9,
            ),
        ] {
            let x = values(m.max(1) * row_stride.max(k), 0.1);
            // [n, k], as checkpoints keep it.
            let w = values(k * n, 0.7);
            let packed = PackedF32::pack(&w, n, k);
            let mut out = Output::zeroed(m * n);
            // Two blocks of columns, as two threads would take them.
            let split = (n / 2).div_ceil(PANEL) * PANEL;
            for (first, cols) in [(0, split.min(n)), (split.min(n), n - split.min(n))] {
                let mut finished = Vec::new();
                kernel(
                    &x,
                    m,
                    row_stride,
                    &packed,
                    first,
                    cols,
                    out.ptr(),
                    n,
                    &mut |r0, rows| finished.push((r0, rows)),
                );
                // Every row is reported finished once, in order, after its block.
                let case = format!("{name} {m}x{k}x{n}");
                crate::kernels::assert_finished_in_order(&finished, m, &case);
            }
            // SAFETY: the two blocks wrote every element (or the buffer was zeroed).
            let got = unsafe { out.assume_init() };
            for r in 0..m {
                for c in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| x[r * row_stride + i] as f64 * w[c * k + i] as f64)
                        .sum();
                    let g = got[r * n + c] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt().max(1.0),
                        "{name} {m}x{k}x{n} stride {row_stride} at ({r}, {c}): {g} vs {want}"
                    );
                }
            }
        }
    }
}
