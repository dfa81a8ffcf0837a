//! Attention's two products in bf16 for `--precision bf16`, on `vdpbf16ps` or AMX tiles: the
//! scores q . k^T and the weighted sum p . v of each (sequence, head) of
//! [`super::attention`].
//!
//! In f32 (gemm, with the softmax between) attention was 11% of ViT-base b=8's bf16 time,
//! the largest share after the linear layers. Here the query, key and value rows are rounded
//! to bf16 (to nearest even, as the linear layers' activations), and so are the softmax's
//! exponentials e^(score - max); both products accumulate in f32, and the output rows are
//! divided by the f32 sum of the exponentials. The key and value rows are laid out per task
//! as the instruction reads its second operand (16 columns x a pair of inputs in a 64-byte
//! line, [`super::bf16::PackedBf16`]'s layout); the queries and the exponentials are read as
//! pairs of one row's values, broadcast. Each 8 queries' scores, exponentials and outputs
//! are done in turn, while they stay in L1.
//!
//! `perf` samples over 16 forwards of ViT-base b=8 bf16 on a Zen 5 EPYC: attention 1,430-1,600
//! (gemm and softmax) -> 1,220-1,240.
//!
//! On AMX the same layouts are the tiles' operands as they are: 16 queries (or their
//! exponentials) a tile of the first operand, rows a whole head apart; 16 lines of keys or
//! values a 1 KiB tile of the second. Keys are padded to 32 (a step of p . v), and each 16
//! queries' products run on tiles while the rest stays as above. On a 2-core AMX Xeon,
//! `examples/matmul_shapes attention` ran BERT-base's and ViT-base's heads at 191-287 GFLOP/s
//! against 111-179 for f32 (three runs, the f32 and bf16 calls interleaved by shape), where
//! `vdpbf16ps` had been slower than f32 (99-141 against 131-205).

use super::bf16::{backend, Backend};

/// Whether the heads of `head_size` run here in bf16: where the bf16 linear layers run on
/// `vdpbf16ps` (the timed choice of [`backend`]; on CPUs where the widened kernel won,
/// attention stays f32) or on AMX (the products on tiles, the conversions on AVX512-BF16),
/// and a head is whole pairs of 16-column panels (up to 512 values).
pub(super) fn runs(head_size: usize) -> bool {
    (32..=512).contains(&head_size)
        && head_size.is_multiple_of(32)
        && match backend() {
            Some(Backend::Avx512Bf16) => true,
            Some(Backend::Amx) => super::bf16::has_avx512_bf16(),
            Some(Backend::Expanded) | None => false,
        }
}

/// The shape of one call: `b` sequences of `s` rows of `3 * h` (query, key and value
/// projections side by side), `heads` heads of `d` values.
#[derive(Clone, Copy)]
pub(super) struct Shape {
    pub b: usize,
    pub s: usize,
    pub h: usize,
    pub heads: usize,
    pub d: usize,
}

/// The attention of every (sequence, head) into `out` [b, s, h] ([`super::attention`]), one
/// task each: it keeps only 8 queries' scores at a time, and each task packs its head's keys
/// and values anew, so the queries are not split into blocks as in f32.
///
/// # Safety
/// [`runs`] for `shape.d`; `qkv` holds `b * s` rows of `3 * h`; `key_mask`, where given,
/// `b * s` values; `out` is valid for writes of `b * s * h` f32 that no other thread touches
/// meanwhile.
pub(super) unsafe fn attention(
    qkv: &[f32],
    shape: Shape,
    key_mask: Option<&[f32]>,
    causal: bool,
    out: super::SharedOut,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as the caller promises; `runs` means the CPU has AVX512-BF16.
    unsafe {
        x86::attention(qkv, shape, key_mask, causal, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (qkv, shape, key_mask, causal, out);
        unreachable!("runs() is false off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Shape;
    use crate::kernels::bf16::{amx, backend, Backend};
    use crate::kernels::math::{EXP_POLY, LN2_HI, LN2_LO, ROUND_AND_BIAS};
    use crate::kernels::{lines, lines_as, CacheLine, SharedOut};
    use rayon::prelude::*;
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    /// Rows of the output one tile holds (one or two 16-column panels each).
    const ROWS: usize = 8;

    /// Rows of an AMX tile: the queries (and weights) of each block on AMX.
    const AMX_ROWS: usize = 16;

    /// How many rows ahead of the one converted the query, key and value rows are prefetched.
    const AHEAD: usize = 8;

    /// A thread's buffers, kept between tasks (each task overwrites what it reads). The
    /// queries, scores and weights are AMX tiles' rows too, so they start on a cache line; a
    /// line of the keys or values holds 16 pairs of bf16 (16 columns x 2 inputs).
    #[derive(Default)]
    struct Scratch {
        queries: Vec<CacheLine>,
        keys: Vec<CacheLine>,
        values: Vec<CacheLine>,
        scores: Vec<CacheLine>,
        weights: Vec<CacheLine>,
    }

    /// 16 rows of 32 f32 (an AMX pair of tiles) on whole cache lines.
    #[repr(C, align(64))]
    struct TileRows([f32; AMX_ROWS * 32]);

    thread_local! {
        static SCRATCH: RefCell<Scratch> = RefCell::default();
    }

    /// How many of 16 lanes from `from` lie inside `len` values, and the mask of them.
    fn lanes_from(len: usize, from: usize) -> (usize, u16) {
        let n = len.saturating_sub(from).min(16);
        (n, ((1u32 << n) - 1) as u16)
    }

    /// 16 f32 of `src` from `from` (zeros past its end) without reading past it.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load_part(src: &[f32], from: usize) -> __m512 {
        let (_, mask) = lanes_from(src.len(), from);
        // SAFETY: masked-off lanes are not read (and do not fault); the others are inside src.
        unsafe { _mm512_maskz_loadu_ps(mask, src.as_ptr().wrapping_add(from)) }
    }

    /// Every cache line of the `d` values from `row` toward L1 (`_MM_HINT_T0`) or L2
    /// (`_MM_HINT_T1`).
    #[inline(always)]
    fn prefetch<const HINT: i32>(row: *const f32, d: usize) {
        for at in (0..d).step_by(16) {
            // SAFETY: a prefetch does not fault, wherever it points.
            unsafe { _mm_prefetch::<HINT>(row.wrapping_add(at) as *const i8) };
        }
    }

    /// `dst[p]` = the pair (`src[2p]`, `src[2p + 1]`) in bf16, the even one in the low half;
    /// zeros past `src`'s end. `dst.len()` is a multiple of 16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn pairs_of(src: &[f32], dst: &mut [u32]) {
        for (c, chunk) in dst.chunks_exact_mut(16).enumerate() {
            let (lo, hi) = (load_part(src, c * 32), load_part(src, c * 32 + 16));
            let bf: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo)) };
            // SAFETY: chunk is 16 u32.
            unsafe { _mm512_storeu_si512(chunk.as_mut_ptr() as *mut _, bf) };
        }
    }

    /// 16 f32 rounded to bf16, each in the low half of a 32-bit lane.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn low_halves(x: __m512) -> __m512i {
        let bf: __m256i = unsafe { std::mem::transmute(_mm512_cvtneps_pbh(x)) };
        _mm512_cvtepu16_epi32(bf)
    }

    /// `dst[p]` = the pair (e^(`x[2p]` - max), e^(`x[2p + 1]` - max)) in bf16, x the row plus
    /// `mask` where given (max: x's largest), zeros past the row's end; returns 1 / the sum of
    /// the exponentials (in f32). `dst.len()` is a multiple of 16, the row not empty, the mask
    /// at least as long.
    ///
    /// In intrinsics, 16 values a register: written as a loop over lanes (the kernels' other
    /// element loops), the compiler split the exponential into halves and built each lane's
    /// bound from 64-bit index compares, about three instructions a value where this takes
    /// one.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn exp_pairs(row: &[f32], mask: Option<&[f32]>, dst: &mut [u32]) -> f32 {
        // x's 16 values from `from` (lanes past the row: -inf).
        let load = |from: usize| -> (__m512, u16) {
            let (_, lanes) = lanes_from(row.len(), from);
            let minus_inf = _mm512_set1_ps(f32::NEG_INFINITY);
            // SAFETY: masked-off lanes are not read; the others are inside the row and mask.
            let x =
                unsafe { _mm512_mask_loadu_ps(minus_inf, lanes, row.as_ptr().wrapping_add(from)) };
            let x = match mask {
                Some(m) => _mm512_mask_add_ps(x, lanes, x, load_part(&m[..row.len()], from)),
                None => x,
            };
            (x, lanes)
        };
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for from in (0..row.len()).step_by(16) {
            max = _mm512_max_ps(max, load(from).0);
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let mut sum = _mm512_setzero_ps();
        let mut exps = |from: usize| -> __m512 {
            let (x, lanes) = load(from);
            let e = _mm512_maskz_mov_ps(lanes, exp16(_mm512_sub_ps(x, max)));
            sum = _mm512_add_ps(sum, e);
            e
        };
        for (c, chunk) in dst.chunks_exact_mut(16).enumerate() {
            let (lo, hi) = (exps(c * 32), exps(c * 32 + 16));
            let bf: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo)) };
            // SAFETY: chunk is 16 u32.
            unsafe { _mm512_storeu_si512(chunk.as_mut_ptr() as *mut _, bf) };
        }
        1.0 / _mm512_reduce_add_ps(sum)
    }

    /// `math::exp_nonpositive` of 16 lanes (the same operations in the same order: the same
    /// bits).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let c = |v: f32| _mm512_set1_ps(v);
        let kept = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, c(-87.0));
        let x = _mm512_max_ps(x, c(-87.0));
        let biased = _mm512_fmadd_ps(x, c(std::f32::consts::LOG2_E), c(ROUND_AND_BIAS));
        let n = _mm512_sub_ps(biased, c(ROUND_AND_BIAS));
        let r = _mm512_fnmadd_ps(n, c(LN2_LO), _mm512_fnmadd_ps(n, c(LN2_HI), x));
        let mut p = c(EXP_POLY[0]);
        for &k in &EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, c(k));
        }
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_castps_si512(biased)));
        _mm512_maskz_mul_ps(kept, p, scale)
    }

    /// The 16 x 16 32-bit lanes of `r` transposed: lane `i` of the result's `c` is lane `c`
    /// of `r[i]` (pairs within 128-bit lanes, then quads, then 128-bit lanes twice).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose(r: [__m512i; 16]) -> [__m512i; 16] {
        // t[2k], t[2k + 1]: lane L of rows 2k and 2k + 1 interleaved, columns 4L, 4L + 1 and
        // 4L + 2, 4L + 3.
        let t: [__m512i; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_epi32(a, b)
            } else {
                _mm512_unpackhi_epi32(a, b)
            }
        });
        // u[4k + m]: lane L holds column 4L + m of rows 4k..4k + 4.
        let u: [__m512i; 16] = std::array::from_fn(|i| {
            let (k, m) = (i / 4, i % 4);
            let (a, b) = (t[4 * k + m / 2], t[4 * k + 2 + m / 2]);
            if m % 2 == 0 {
                _mm512_unpacklo_epi64(a, b)
            } else {
                _mm512_unpackhi_epi64(a, b)
            }
        });
        // Column m + 4L: lane L of u[m], u[4 + m], u[8 + m], u[12 + m].
        let mut out = [_mm512_setzero_si512(); 16];
        for m in 0..4 {
            let v0 = _mm512_shuffle_i32x4::<0x88>(u[m], u[4 + m]);
            let v1 = _mm512_shuffle_i32x4::<0xdd>(u[m], u[4 + m]);
            let w0 = _mm512_shuffle_i32x4::<0x88>(u[8 + m], u[12 + m]);
            let w1 = _mm512_shuffle_i32x4::<0xdd>(u[8 + m], u[12 + m]);
            out[m] = _mm512_shuffle_i32x4::<0x88>(v0, w0);
            out[m + 8] = _mm512_shuffle_i32x4::<0xdd>(v0, w0);
            out[m + 4] = _mm512_shuffle_i32x4::<0x88>(v1, w1);
            out[m + 12] = _mm512_shuffle_i32x4::<0xdd>(v1, w1);
        }
        out
    }

    /// Rows `0..8` of `a` (pairs, `a_stride` apart) times the `P` panels `b` over `pairs`
    /// pairs, into the 8 x 16P f32 at `out` (rows `stride` apart).
    ///
    /// # Safety
    /// `a` holds 8 rows of `pairs` pairs; each of `b` holds `pairs` lines; `out` is valid for
    /// 8 rows of 16P f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const P: usize>(
        a: *const u32,
        a_stride: usize,
        b: [*const CacheLine; P],
        pairs: usize,
        scale: Option<&[f32; ROWS]>,
        out: *mut f32,
        stride: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); P]; ROWS];
        // SAFETY (every load and store): as the caller promises.
        for p in 0..pairs {
            let w: [__m512bh; P] = std::array::from_fn(|j| unsafe {
                std::mem::transmute(_mm512_load_si512(b[j].add(p) as *const _))
            });
            for (i, acc) in acc.iter_mut().enumerate() {
                let pair = unsafe { *a.add(i * a_stride + p) } as i32;
                let x: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(pair)) };
                for (acc, w) in acc.iter_mut().zip(w) {
                    *acc = _mm512_dpbf16_ps(*acc, x, w);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (j, v) in acc.iter().enumerate() {
                let v = match scale {
                    Some(scale) => _mm512_mul_ps(*v, _mm512_set1_ps(scale[i])),
                    None => *v,
                };
                unsafe { _mm512_storeu_ps(out.add(i * stride + j * 16), v) };
            }
        }
    }

    /// [`super::attention`]: one task per (sequence, head).
    ///
    /// # Safety
    /// As [`super::attention`].
    pub(super) unsafe fn attention(
        qkv: &[f32],
        shape: Shape,
        key_mask: Option<&[f32]>,
        causal: bool,
        out: SharedOut,
    ) {
        let Shape { b, s, h, heads, d } = shape;
        let tasks = b * heads;
        let amx = backend() == Some(Backend::Amx);
        let split = |index: usize| (index / heads, index % heads);
        let rows_of = |seq: usize| &qkv[seq * s * 3 * h..(seq + 1) * s * 3 * h];
        (0..tasks).into_par_iter().for_each(|index| {
            let (seq, head) = split(index);
            let next = (index + 1 < tasks).then(|| {
                let (seq, head) = split(index + 1);
                (rows_of(seq), head)
            });
            let task = Task {
                rows: rows_of(seq),
                next,
                shape,
                head,
                causal,
                key_mask: key_mask.map(|m| &m[seq * s..(seq + 1) * s]),
                amx,
            };
            SCRATCH.with_borrow_mut(|scratch| {
                // SAFETY: `runs(d)`; the output block is this sequence's rows (stride h) at this
                // head's d columns, which no other task writes; on AMX the tile state was
                // granted (the backend runs).
                unsafe {
                    if amx {
                        amx::configure();
                    }
                    head_block(&task, out.at(seq * s * h + head * d), scratch);
                    if amx {
                        amx::release();
                    }
                }
            })
        });
    }

    /// One sequence's head.
    struct Task<'a> {
        /// The sequence's `s` rows of query, key and value projections.
        rows: &'a [f32],
        /// The rows and head of the task likely to run next on this thread (rayon hands each
        /// thread a run of consecutive tasks), prefetched while this one multiplies.
        next: Option<(&'a [f32], usize)>,
        shape: Shape,
        head: usize,
        causal: bool,
        /// Added to every query's score of each key.
        key_mask: Option<&'a [f32]>,
        /// The products on AMX tiles (configured by the caller), 16 queries at a time.
        amx: bool,
    }

    /// Writes the sequence's `s` rows of the head's `d` values, `h` apart, from `out`.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16 (and, where `t.amx`, the tiles are configured); `d` is a
    /// multiple of 32, at most 512; `out` is valid for the task's rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,avx512bf16")]
    unsafe fn head_block(t: &Task, out: *mut f32, scratch: &mut Scratch) {
        let Shape { s, h, d, .. } = t.shape;
        let (h3, half) = (3 * h, d / 2);
        // Keys padded to whole panels (zeros; on AMX to whole tiles of 32 keys, the inputs of
        // a step of p . v); queries to whole tiles.
        let block = if t.amx { AMX_ROWS } else { ROWS };
        let keys = s.next_multiple_of(if t.amx { 32 } else { 16 });
        let rows = s.next_multiple_of(block);
        let column = |kind: usize, j: usize| &t.rows[j * h3 + kind * h + t.head * d..][..d];
        // The rows are 3 * h apart (9 KiB in a base model), too far for the hardware's
        // prefetchers: loading the keys waited on memory for a sixth of the kernel's time.
        let ahead = |kind: usize, j: usize, end: usize| {
            if j + AHEAD < end {
                prefetch::<_MM_HINT_T0>(column(kind, j + AHEAD).as_ptr(), d);
            }
        };

        // Queries: a row of d / 2 pairs each; the padding rows zero.
        let queries = lines_as::<u32>(&mut scratch.queries, rows * half);
        for (i, dst) in queries.chunks_exact_mut(half).enumerate() {
            ahead(0, i, s);
            let src: &[f32] = if i < s { column(0, i) } else { &[] };
            pairs_of(src, dst);
        }

        // Keys: for each panel of 16 keys, d / 2 lines of (16 keys x a pair of the head's
        // values), as [`tile`]'s second operand; the padding keys zero. Each 16 keys x 16
        // pairs are transposed in registers (storing the pairs one by one had been compiled
        // to scatters, slow on AMD).
        let key_lines = lines(&mut scratch.keys, keys / 16 * half);
        for panel in 0..keys / 16 {
            for i in 0..16 {
                ahead(1, panel * 16 + i, s);
            }
            for chunk in 0..half / 16 {
                let rows: [__m512i; 16] = std::array::from_fn(|i| {
                    let j = panel * 16 + i;
                    let row = if j < s { column(1, j) } else { &[] };
                    let (lo, hi) = (load_part(row, chunk * 32), load_part(row, chunk * 32 + 16));
                    // SAFETY: a conversion of two registers to one.
                    unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo)) }
                });
                let lines = transpose(rows);
                for (c, line) in lines.into_iter().enumerate() {
                    // SAFETY: the line is inside key_lines, 64-byte aligned.
                    unsafe {
                        _mm512_store_si512(
                            key_lines.as_mut_ptr().add(panel * half + chunk * 16 + c) as *mut _,
                            line,
                        )
                    };
                }
            }
        }

        // Values: for each panel of 16 of the head's columns, `keys / 2` lines of (16 columns
        // x a pair of keys).
        let value_lines = lines(&mut scratch.values, d / 16 * keys / 2);
        for p in 0..keys / 2 {
            ahead(2, 2 * p, s);
            ahead(2, 2 * p + 1, s);
            let row = |j: usize| if j < s { column(2, j) } else { &[] };
            let (even, odd) = (row(2 * p), row(2 * p + 1));
            for c in 0..d / 16 {
                let line = _mm512_or_si512(
                    low_halves(load_part(even, c * 16)),
                    _mm512_slli_epi32::<16>(low_halves(load_part(odd, c * 16))),
                );
                // SAFETY: the line is inside value_lines, 64-byte aligned.
                unsafe {
                    _mm512_store_si512(
                        value_lines.as_mut_ptr().add(c * keys / 2 + p) as *mut _,
                        line,
                    )
                };
            }
        }

        // Then for each 8 queries (16 on AMX), while their scores and weights stay in L1: the
        // scores q . k^T, the softmax, the output p . v.
        let width = keys.next_multiple_of(32) / 2;
        let scores = lines_as::<f32>(&mut scratch.scores, block * keys);
        let weights = lines_as::<u32>(&mut scratch.weights, block * width);
        // The next task's query, key and value rows, into L2 a share before each block: they
        // come from memory (a model's qkv is larger than L2), and the hardware's prefetchers
        // do not follow rows 3 * h apart.
        let prefetch_next = |r: usize| {
            if let Some((rows_next, head)) = t.next {
                let share = |r: usize| 3 * s * r / rows;
                for item in share(r)..share(r + block) {
                    let at = item / 3 * h3 + item % 3 * h + head * d;
                    prefetch::<_MM_HINT_T1>(rows_next[at..].as_ptr(), d);
                }
            }
        };
        let mut tail = TileRows([0f32; AMX_ROWS * 32]);
        let tail = &mut tail.0;
        for r in (0..rows).step_by(block) {
            prefetch_next(r);
            // Scores, rows `keys` apart: pairs of panels, the last alone when the panels are
            // odd (never on AMX).
            if t.amx {
                for panel in (0..keys / 16).step_by(2) {
                    // SAFETY: 16 query rows of d values from r (rows d values apart); the two
                    // panels' d / 32 tiles of 1 KiB; the scores' 16 rows x 32 keys from
                    // panel * 16.
                    unsafe {
                        let b0 = key_lines.as_ptr().add(panel * half) as *const u16;
                        amx::pair_product(
                            (queries.as_ptr() as *const u16).add(r * d),
                            2 * d,
                            b0,
                            b0.add(half * 32),
                            d / 32,
                            scores.as_mut_ptr().add(panel * 16),
                            4 * keys,
                        )
                    };
                }
            }
            for panel in (0..keys / 16).step_by(2).filter(|_| !t.amx) {
                // SAFETY: 8 query rows of d / 2 pairs from r; the panels' d / 2 lines; the
                // scores' 8 rows x 16 or 32 keys from panel * 16.
                unsafe {
                    let (a, b0) = (
                        queries.as_ptr().add(r * half),
                        key_lines.as_ptr().add(panel * half),
                    );
                    let c = scores.as_mut_ptr().add(panel * 16);
                    if panel + 1 < keys / 16 {
                        tile(a, half, [b0, b0.add(half)], half, None, c, keys);
                    } else {
                        tile(a, half, [b0], half, None, c, keys);
                    }
                };
            }

            // Softmax over the keys each query sees (causally, those up to its own): e^(score
            // - max) rounded to pairs straight away, the other keys' weights (and the padding
            // queries') zero; the division by the sum waits for the output rows, d values
            // each instead of s.
            let mut inverse = [0f32; AMX_ROWS];
            for (i, (row, dst)) in scores
                .chunks_exact_mut(keys)
                .zip(weights.chunks_exact_mut(width))
                .enumerate()
            {
                let query = r + i;
                if query >= s {
                    dst.fill(0);
                    continue;
                }
                let seen = if t.causal { query + 1 } else { s };
                inverse[i] = exp_pairs(&row[..seen], t.key_mask, dst);
            }

            // On AMX: output p . v over every 32 keys into the buffer, then its rows scaled
            // into `out`.
            for c in (0..d / 16).step_by(2).filter(|_| t.amx) {
                // SAFETY: 16 weight rows of keys / 2 pairs; both panels' keys / 32 tiles; the
                // buffer's 16 rows of 32; rows r + i < s of the task's output at 32 of the
                // head's columns.
                unsafe {
                    let b0 = value_lines.as_ptr().add(c * keys / 2) as *const u16;
                    amx::pair_product(
                        weights.as_ptr() as *const u16,
                        4 * width,
                        b0,
                        b0.add(keys / 2 * 32),
                        keys / 32,
                        tail.as_mut_ptr(),
                        4 * 32,
                    );
                    for (i, row) in tail.chunks_exact(32).take(s - r).enumerate() {
                        let dst = std::slice::from_raw_parts_mut(out.add((r + i) * h + c * 16), 32);
                        for (d, v) in dst.iter_mut().zip(row) {
                            *d = v * inverse[i];
                        }
                    }
                }
            }
            // Output p . v over the pairs of keys up to s: whole tiles straight to `out`, the
            // last partial one through a buffer.
            let whole = r + ROWS <= s;
            for c in (0..d / 16).step_by(2).filter(|_| !t.amx) {
                let (dst, stride) = if whole {
                    (out.wrapping_add(r * h + c * 16), h)
                } else {
                    (tail.as_mut_ptr(), 32)
                };
                // SAFETY: 8 weight rows of s / 2 pairs (at least); both panels of keys / 2
                // lines; dst is 8 of this task's rows (or the buffer) at 32 of the head's
                // columns.
                unsafe {
                    let b0 = value_lines.as_ptr().add(c * keys / 2);
                    tile(
                        weights.as_ptr(),
                        width,
                        [b0, b0.add(keys / 2)],
                        s.div_ceil(2),
                        Some(inverse[..ROWS].try_into().expect("a tile's rows")),
                        dst,
                        stride,
                    )
                };
                if !whole {
                    for (i, row) in tail.chunks_exact(32).take(s - r).enumerate() {
                        // SAFETY: row r + i < s of the task's output.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                row.as_ptr(),
                                out.add((r + i) * h + c * 16),
                                32,
                            )
                        };
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::kernels::math::exp_nonpositive;

        /// The vectorised exponential gives the scalar one's bits, over [-100, 0] and at
        /// the edges (the underflow bound, -inf, the most negative float).
        #[test]
        fn exp16_equals_exp_nonpositive() {
            if !is_x86_feature_detected!("avx512f") {
                eprintln!("skipped: no AVX-512 here");
                return;
            }
            let mut xs: Vec<f32> = (0..=100_000).map(|i| -(i as f32) * 1e-3).collect();
            xs.extend([
                -87.0,
                -87.000_01,
                -86.999_99,
                f32::NEG_INFINITY,
                f32::MIN,
                -0.0,
            ]);
            while !xs.len().is_multiple_of(16) {
                xs.push(0.0);
            }
            for chunk in xs.chunks_exact(16) {
                // SAFETY: AVX-512F is present; 16 f32 in and out.
                let got: [f32; 16] =
                    unsafe { std::mem::transmute(exp16(_mm512_loadu_ps(chunk.as_ptr()))) };
                for (x, g) in chunk.iter().zip(got) {
                    assert_eq!(g.to_bits(), exp_nonpositive(*x).to_bits(), "e^{x}");
                }
            }
        }
    }
}
