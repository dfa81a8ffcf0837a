//! Products with Q8_0 weights (GGUF's 8-bit block format) for `--precision q8_0`.
//!
//! Every run of 32 inputs of one output has its own scale: `w = scale * q`, q in -127..=127.
//! The activations are quantised the same way per block of 32 (as llama.cpp does for this
//! format), so each block's product is a sum of 8-bit products in i32, exact, scaled once in
//! f32: `sum += (Σ qx·qw) · (scale_x · scale_w)`.
//!
//! On CPUs with AVX512-VNNI that sum is `vpdpbusd`, 64 multiply-adds per instruction against
//! 16 for an f32 FMA: that is what lets a quantised prefill (a product of many rows) beat the
//! f32 one instead of paying for dequantisation, and a decode step (one row per sequence) read
//! a quarter of the f32 bytes. `vpdpbusd` multiplies unsigned by signed bytes, so the weights
//! are kept as `q + 128` and `128 · Σ qx` is taken off each block's sum. Other CPUs run the
//! same integer arithmetic in plain Rust, compiled by [`multiversion!`].
//!
//! The weights come from candle's Q8_0 quantiser (ggml's own), so a matrix holds the same
//! values as llama.cpp's Q8_0 of it.

use super::{isa, multiversion, Isa, SharedOut};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};
use std::sync::OnceLock;

/// Inputs per block (GGUF's QK8_0).
pub const BLOCK: usize = 32;
/// Output columns per packed group: one AVX-512 register of i32 or f32 lanes.
pub const GROUP: usize = 16;
/// Added to each signed weight so that `vpdpbusd` reads it as unsigned.
const OFFSET: i32 = 128;
/// Bytes of a GGUF Q8_0 block: an f16 scale and 32 values.
const GGUF_BLOCK_BYTES: usize = 2 + BLOCK;

/// A linear layer's weight `[out, in]` in Q8_0, laid out for the kernel: per group of 16
/// outputs, the inputs in fours, each four holding 16 outputs x 4 consecutive inputs (64 bytes:
/// what `vpdpbusd` reads), values stored as `q + 128`; and per group and block the 16 scales.
/// Outputs past the last whole group are padded with zero scales.
pub struct Q8Matrix {
    outputs: usize,
    inputs: usize,
    values: Vec<u8>,
    scales: Vec<f32>,
}

impl Q8Matrix {
    /// Quantises `weight` [out, in] (rows of a multiple of 32) with ggml's Q8_0 quantiser.
    pub fn quantize(weight: &Tensor) -> Result<Self> {
        let (outputs, inputs) = weight.dims2()?;
        if !inputs.is_multiple_of(BLOCK) {
            candle_core::bail!("q8_0 needs rows of a multiple of {BLOCK} values, not {inputs}")
        }
        let q = QTensor::quantize(&weight.to_dtype(candle_core::DType::F32)?, GgmlDType::Q8_0)?;
        Self::from_gguf_blocks(&q.data()?, outputs, inputs)
    }

    /// The matrix from GGUF Q8_0 blocks: `outputs` rows of `inputs / 32` blocks of 34 bytes.
    pub fn from_gguf_blocks(bytes: &[u8], outputs: usize, inputs: usize) -> Result<Self> {
        let blocks = inputs / BLOCK;
        if !inputs.is_multiple_of(BLOCK) || bytes.len() != outputs * blocks * GGUF_BLOCK_BYTES {
            candle_core::bail!(
                "{} bytes are not a {outputs} x {inputs} Q8_0 matrix",
                bytes.len()
            )
        }
        let groups = outputs.div_ceil(GROUP);
        let mut values = vec![OFFSET as u8; groups * inputs * GROUP];
        let mut scales = vec![0f32; groups * blocks * GROUP];
        for (row, row_bytes) in bytes.chunks_exact(blocks * GGUF_BLOCK_BYTES).enumerate() {
            let (g, c) = (row / GROUP, row % GROUP);
            for (b, block) in row_bytes.chunks_exact(GGUF_BLOCK_BYTES).enumerate() {
                scales[(g * blocks + b) * GROUP + c] =
                    half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                for (i, &q) in block[2..].iter().enumerate() {
                    let k = b * BLOCK + i;
                    values[value_index(inputs, g, k / 4, c) + k % 4] =
                        (q as i8 as i32 + OFFSET) as u8;
                }
            }
        }
        Ok(Self {
            outputs,
            inputs,
            values,
            scales,
        })
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Bytes held (values and scales, padding included).
    pub fn bytes(&self) -> u64 {
        (self.values.len() + self.scales.len() * 4) as u64
    }

    /// Outputs rounded up to whole groups.
    pub fn padded_outputs(&self) -> usize {
        self.outputs.div_ceil(GROUP) * GROUP
    }

    fn blocks(&self) -> usize {
        self.inputs / BLOCK
    }

    /// Row `row` of the `[out, in]` matrix, dequantised (a token embedding shares the
    /// head's matrix).
    pub fn row(&self, row: usize) -> Vec<f32> {
        let (g, c) = (row / GROUP, row % GROUP);
        (0..self.inputs)
            .map(|k| {
                let q = self.values[value_index(self.inputs, g, k / 4, c) + k % 4] as i32 - OFFSET;
                q as f32 * self.scales[(g * self.blocks() + k / BLOCK) * GROUP + c]
            })
            .collect()
    }
}

/// Where group `g`'s column `c` keeps inputs `4 * four .. 4 * four + 4`.
fn value_index(inputs: usize, g: usize, four: usize, c: usize) -> usize {
    ((g * inputs / 4 + four) * GROUP + c) * 4
}

/// Activations quantised per block of 32, as the kernel reads them: for each row, the
/// values (signed), and per block the scale and `128 · Σ q` (the offset's share of the sum).
pub struct Q8Rows {
    inputs: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
    offsets: Vec<i32>,
}

impl Q8Rows {
    /// `x`: `rows` x `inputs` row-major (inputs a multiple of 32).
    pub fn quantize(x: &[f32], rows: usize, inputs: usize) -> Self {
        assert!(inputs.is_multiple_of(BLOCK) && x.len() == rows * inputs);
        let blocks = inputs / BLOCK;
        let mut q = Self {
            inputs,
            values: vec![0; rows * inputs],
            scales: vec![0.0; rows * blocks],
            offsets: vec![0; rows * blocks],
        };
        let isa = isa();
        let rows_list: Vec<_> = q
            .values
            .chunks_exact_mut(inputs)
            .zip(q.scales.chunks_exact_mut(blocks))
            .zip(q.offsets.chunks_exact_mut(blocks))
            .zip(x.chunks_exact(inputs))
            .map(|(((v, s), o), x)| (x, v, s, o))
            .collect();
        let parallel = rows > 1 && rows * inputs >= 1 << 16;
        if parallel {
            use rayon::prelude::*;
            rows_list
                .into_par_iter()
                .for_each(|(x, v, s, o)| quantize_row(isa, x, v, s, o));
        } else {
            for (x, v, s, o) in rows_list {
                quantize_row(isa, x, v, s, o);
            }
        }
        q
    }

    fn rows(&self) -> usize {
        self.values.len() / self.inputs.max(1)
    }
}

/// ggml's `quantize_row_q8_0`: scale = max |x| / 127, values rounded (ties to even here;
/// NaN becomes -127 rather than undefined behaviour).
#[inline(always)]
fn quantize_row_body(x: &[f32], values: &mut [i8], scales: &mut [f32], offsets: &mut [i32]) {
    for (((x, q), scale), offset) in x
        .chunks_exact(BLOCK)
        .zip(values.chunks_exact_mut(BLOCK))
        .zip(scales.iter_mut())
        .zip(offsets.iter_mut())
    {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in q.iter_mut().zip(x) {
            // Not clamp: it keeps NaN, which to_int_unchecked must not see.
            #[allow(clippy::manual_clamp)]
            let r = (v * id).round_ties_even().max(-127.0).min(127.0);
            // SAFETY: r is finite and within -127..=127 (max/min turn NaN into -127).
            let i = unsafe { r.to_int_unchecked::<i32>() };
            *q = i as i8;
            sum += i;
        }
        *scale = d;
        *offset = OFFSET * sum;
    }
}

multiversion!(fn quantize_row(x: &[f32], values: &mut [i8], scales: &mut [f32], offsets: &mut [i32]) => quantize_row_body);

/// Whether the VNNI kernel runs here: AVX512-VNNI present and the kernels not capped below
/// AVX-512 (`IA_NATIVE_ISA`).
pub fn vnni() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            isa() == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Rows from which a CPU without VNNI multiplies dequantised f32 panels with gemm rather than
/// 8-bit products in plain Rust (those cannot use the wide multiply-adds gemm has; at one or a
/// few rows, decoding, reading a quarter of the bytes matters more).
const PANEL_ROWS: usize = 4;
/// Output columns of one dequantised panel (k x 64 f32: a few hundred KB for the usual k).
const PANEL_COLUMNS: usize = 64;

/// A product's activations as the chosen path takes them: f32 for dequantised panels, else
/// quantised per block of 32.
pub struct Activations<'a> {
    x: &'a [f32],
    rows: usize,
    quantised: Option<Q8Rows>,
}

impl<'a> Activations<'a> {
    /// `x`: `rows` x `inputs` row-major.
    pub fn new(x: &'a [f32], rows: usize, inputs: usize) -> Self {
        let integer = vnni() || rows < PANEL_ROWS;
        Self {
            x,
            rows,
            quantised: integer.then(|| Q8Rows::quantize(x, rows, inputs)),
        }
    }
}

/// `dst[r][c] = Σ_k x[r][k] · w[start + c][k]` for every row of `x` and the output columns
/// `start..start + cols` (`start` a multiple of [`GROUP`]), into the row-major `dst`
/// (`stride` elements a row) at its column `start`.
///
/// # Safety
/// `dst` covers `x.rows` rows of `stride` elements from its column 0, and no other thread
/// touches these rows' columns `start..start + cols` meanwhile.
pub(super) unsafe fn product_block(
    x: &Activations<'_>,
    w: &Q8Matrix,
    start: usize,
    cols: usize,
    dst: SharedOut,
    stride: usize,
) {
    assert!(start.is_multiple_of(GROUP) && start + cols <= w.outputs);
    assert_eq!(x.x.len(), x.rows * w.inputs);
    let Some(x) = &x.quantised else {
        // SAFETY: as the caller grants.
        return unsafe { panel_products(x.x, x.rows, w, start, cols, dst, stride) };
    };
    let rows = x.rows();
    let first = start / GROUP;
    let groups = cols.div_ceil(GROUP);
    let write = |r: usize, g: usize, tile: &[f32; GROUP]| {
        let col = (first + g) * GROUP;
        let n = GROUP.min(start + cols - col);
        // SAFETY: row r's columns col..col + n lie within start..start + cols, as the caller
        // grants.
        unsafe { std::ptr::copy_nonoverlapping(tile.as_ptr(), dst.at(r * stride + col), n) }
    };
    #[cfg(target_arch = "x86_64")]
    if vnni() {
        let mut g = 0;
        while g < groups {
            let pair = (groups - g).min(2);
            let mut r = 0;
            while r < rows {
                let mr = (rows - r).min(4);
                // SAFETY: vnni() checked the CPU; the tiles are within the matrices.
                unsafe {
                    match (mr, pair) {
                        (4, 2) => {
                            vnni::tile::<4, 2>(x, w, r, first + g, |i, j, t| write(r + i, g + j, t))
                        }
                        (4, _) => {
                            vnni::tile::<4, 1>(x, w, r, first + g, |i, j, t| write(r + i, g + j, t))
                        }
                        (3, 2) => {
                            vnni::tile::<3, 2>(x, w, r, first + g, |i, j, t| write(r + i, g + j, t))
                        }
                        (3, _) => {
                            vnni::tile::<3, 1>(x, w, r, first + g, |i, j, t| write(r + i, g + j, t))
                        }
                        (2, 2) => {
                            vnni::tile::<2, 2>(x, w, r, first + g, |i, j, t| write(r + i, g + j, t))
                        }
                        (2, _) => {
                            vnni::tile::<2, 1>(x, w, r, first + g, |i, j, t| write(r + i, g + j, t))
                        }
                        (_, 2) => {
                            vnni::tile::<1, 2>(x, w, r, first + g, |i, j, t| write(r + i, g + j, t))
                        }
                        _ => {
                            vnni::tile::<1, 1>(x, w, r, first + g, |i, j, t| write(r + i, g + j, t))
                        }
                    }
                }
                r += mr;
            }
            g += pair;
        }
        return;
    }
    let isa = isa();
    let mut tile = [0f32; GROUP];
    for g in 0..groups {
        for r in 0..rows {
            group_row(isa, x, w, r, first + g, &mut tile);
            write(r, g, &tile);
        }
    }
}

/// [`product_block`] through gemm: the weights' columns dequantised into f32 panels of
/// [`PANEL_COLUMNS`], each multiplied by all rows at once.
///
/// # Safety
/// As [`product_block`].
unsafe fn panel_products(
    x: &[f32],
    rows: usize,
    w: &Q8Matrix,
    start: usize,
    cols: usize,
    dst: SharedOut,
    stride: usize,
) {
    let k = w.inputs;
    let mut panel = vec![0f32; k * PANEL_COLUMNS];
    let isa = isa();
    for first in (start..start + cols).step_by(PANEL_COLUMNS) {
        let width = PANEL_COLUMNS.min(start + cols - first);
        let groups = width.div_ceil(GROUP);
        dequantise_panel(isa, w, first / GROUP, groups, &mut panel);
        // SAFETY: x is rows x k; the panel is k x PANEL_COLUMNS and its first `width`
        // columns are filled; dst's columns first..first + width of every row are within
        // the block the caller grants.
        unsafe {
            super::product(
                rows,
                width,
                k,
                super::row_major(dst.at(first), stride),
                super::row_major(x.as_ptr(), k),
                super::row_major(panel.as_ptr(), PANEL_COLUMNS),
            )
        }
    }
}

/// Groups `first..first + groups` as f32 columns of `panel` ([k][PANEL_COLUMNS]).
#[inline(always)]
fn dequantise_panel_body(w: &Q8Matrix, first: usize, groups: usize, panel: &mut [f32]) {
    let (k, blocks) = (w.inputs, w.blocks());
    for g in 0..groups {
        let values = &w.values[value_index(k, first + g, 0, 0)..][..k * GROUP];
        for b in 0..blocks {
            let scales = &w.scales[((first + g) * blocks + b) * GROUP..][..GROUP];
            for four in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
                let v = &values[four * 4 * GROUP..][..4 * GROUP];
                for j in 0..4 {
                    let row = &mut panel[(four * 4 + j) * PANEL_COLUMNS + g * GROUP..][..GROUP];
                    for ((o, s), c) in row.iter_mut().zip(scales).zip(0..GROUP) {
                        *o = (v[c * 4 + j] as i32 - OFFSET) as f32 * s;
                    }
                }
            }
        }
    }
}

multiversion!(fn dequantise_panel(w: &Q8Matrix, first: usize, groups: usize, panel: &mut [f32]) => dequantise_panel_body);

/// One row's products with one group of 16 outputs, in plain Rust.
#[inline(always)]
fn group_row_body(x: &Q8Rows, w: &Q8Matrix, r: usize, g: usize, tile: &mut [f32; GROUP]) {
    let (k, blocks) = (w.inputs, w.blocks());
    let xv = &x.values[r * k..][..k];
    let wv = &w.values[value_index(k, g, 0, 0)..][..k * GROUP];
    *tile = [0.0; GROUP];
    for b in 0..blocks {
        let mut acc = [0i32; GROUP];
        let xb = &xv[b * BLOCK..][..BLOCK];
        let wb = &wv[b * BLOCK * GROUP..][..BLOCK * GROUP];
        for (four, w4) in wb.chunks_exact(4 * GROUP).enumerate() {
            for j in 0..4 {
                let xj = xb[four * 4 + j] as i32;
                for (a, wc) in acc.iter_mut().zip(w4.chunks_exact(4)) {
                    *a += wc[j] as i32 * xj;
                }
            }
        }
        let offset = x.offsets[r * blocks + b];
        let dx = x.scales[r * blocks + b];
        let scales = &w.scales[(g * blocks + b) * GROUP..][..GROUP];
        for ((t, a), s) in tile.iter_mut().zip(acc).zip(scales) {
            *t += (a - offset) as f32 * (s * dx);
        }
    }
}

multiversion!(fn group_row(x: &Q8Rows, w: &Q8Matrix, r: usize, g: usize, tile: &mut [f32; GROUP]) => group_row_body);

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{value_index, Q8Matrix, Q8Rows, BLOCK, GROUP};
    use std::arch::x86_64::*;

    /// `MR` rows by `NG` groups of 16 outputs from row `r` and group `g`; `out(i, j, tile)`
    /// receives row `r + i`'s products with group `g + j`.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512-VNNI; rows `r..r + MR` and groups `g..g + NG` exist.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile<const MR: usize, const NG: usize>(
        x: &Q8Rows,
        w: &Q8Matrix,
        r: usize,
        g: usize,
        mut out: impl FnMut(usize, usize, &[f32; GROUP]),
    ) {
        let (k, blocks) = (w.inputs, w.blocks());
        let xv = x.values.as_ptr();
        let wv: [*const u8; NG] =
            std::array::from_fn(|j| w.values[value_index(k, g + j, 0, 0)..].as_ptr());
        let mut total = [[_mm512_setzero_ps(); NG]; MR];
        for b in 0..blocks {
            let mut acc = [[_mm512_setzero_si512(); NG]; MR];
            for four in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
                // SAFETY: group g + j holds inputs/4 fours of 64 bytes.
                let wq: [__m512i; NG] = std::array::from_fn(|j| unsafe {
                    _mm512_loadu_si512(wv[j].add(four * 4 * GROUP) as *const _)
                });
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row r + i holds k values; four * 4 + 4 <= k.
                    let x4 = unsafe {
                        std::ptr::read_unaligned(xv.add((r + i) * k + four * 4) as *const i32)
                    };
                    let xb = _mm512_set1_epi32(x4);
                    for (a, wq) in acc.iter_mut().zip(wq) {
                        *a = _mm512_dpbusd_epi32(*a, wq, xb);
                    }
                }
            }
            for (i, (acc, total)) in acc.iter().zip(total.iter_mut()).enumerate() {
                let at = (r + i) * blocks + b;
                let offset = _mm512_set1_epi32(x.offsets[at]);
                let dx = _mm512_set1_ps(x.scales[at]);
                for (j, (a, t)) in acc.iter().zip(total.iter_mut()).enumerate() {
                    // SAFETY: 16 scales per group and block.
                    let s = unsafe {
                        _mm512_loadu_ps(w.scales.as_ptr().add(((g + j) * blocks + b) * GROUP))
                    };
                    let sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(*a, offset));
                    *t = _mm512_fmadd_ps(sum, _mm512_mul_ps(s, dx), *t);
                }
            }
        }
        let mut tile = [0f32; GROUP];
        for (i, total) in total.iter().enumerate() {
            for (j, t) in total.iter().enumerate() {
                // SAFETY: tile holds 16 f32.
                unsafe { _mm512_storeu_ps(tile.as_mut_ptr(), *t) };
                out(i, j, &tile);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn pseudo_random(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 12.9898 + seed).sin() * 43758.547).fract() - 0.5)
            .collect()
    }

    /// `x · wᵀ` in f64 for `x` rows of `k` and the dequantised rows of `w`.
    fn reference(x: &[f64], w: &Q8Matrix, m: usize) -> Vec<f64> {
        let (k, n) = (w.inputs, w.outputs);
        let rows: Vec<Vec<f32>> = (0..n).map(|c| w.row(c)).collect();
        (0..m)
            .flat_map(|r| {
                let rows = &rows;
                (0..n).map(move |c| {
                    (0..k)
                        .map(|kk| x[r * k + kk] * rows[c][kk] as f64)
                        .sum::<f64>()
                })
            })
            .collect()
    }

    fn assert_close(what: &str, got: &[f32], expected: &[f64]) {
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!(
                (*g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()),
                "{what} element {i}: {g} against {e}"
            );
        }
    }

    /// Every path against f64 sums of the operands it multiplies (the quantised activations
    /// for the 8-bit products, the f32 ones for the dequantised panels), for shapes with
    /// partial row blocks, partial groups and a partial last group.
    #[test]
    fn products_equal_the_dequantised_sums_on_every_path() {
        for (m, k, n) in [
            (1, 32, 16),
            (5, 64, 40),
            (7, 96, 300),
            (4, 128, 33),
            (9, 64, 130),
        ] {
            let what = format!("{m}x{k}x{n}");
            let x = pseudo_random(m * k, 2.0);
            let w = Q8Matrix::quantize(
                &Tensor::from_vec(pseudo_random(n * k, 1.0), (n, k), &Device::Cpu).unwrap(),
            )
            .unwrap();
            let xq = Q8Rows::quantize(&x, m, k);
            let x_quantised: Vec<f64> = (0..m * k)
                .map(|i| xq.values[i] as f64 * xq.scales[i / BLOCK] as f64)
                .collect();
            let integer = reference(&x_quantised, &w, m);
            let panels = reference(&x.iter().map(|&v| v as f64).collect::<Vec<_>>(), &w, m);
            // product_block with the integer products (VNNI where the CPU has it) and with
            // the panels, in two column blocks as the linear layer splits them.
            for quantised in [true, false] {
                let acts = Activations {
                    x: &x,
                    rows: m,
                    quantised: quantised.then(|| Q8Rows::quantize(&x, m, k)),
                };
                let mut out = vec![f32::NAN; m * n];
                let split = ((n / 2).div_ceil(GROUP) * GROUP).min(n);
                for (start, cols) in [(0, split), (split, n - split)] {
                    if cols > 0 {
                        // SAFETY: out is m x n and each call writes its own columns.
                        unsafe {
                            product_block(&acts, &w, start, cols, SharedOut(out.as_mut_ptr()), n)
                        };
                    }
                }
                let (path, expected) = match quantised {
                    true => ("integer", &integer),
                    false => ("panels", &panels),
                };
                assert_close(&format!("{what} {path}"), &out, expected);
            }
            // The plain-Rust integer products for every instruction set this CPU has.
            for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                if isa > Isa::detected() {
                    continue;
                }
                let mut got = vec![0f32; m * n];
                let mut tile = [0f32; GROUP];
                for r in 0..m {
                    for g in 0..n.div_ceil(GROUP) {
                        group_row(isa, &xq, &w, r, g, &mut tile);
                        let width = GROUP.min(n - g * GROUP);
                        got[r * n + g * GROUP..][..width].copy_from_slice(&tile[..width]);
                    }
                }
                assert_close(&format!("{what} plain {isa:?}"), &got, &integer);
            }
        }
    }

    /// Dequantised rows are within half a step of the original weights.
    #[test]
    fn rows_dequantise_to_the_weights() {
        let (n, k) = (48, 64);
        let w = pseudo_random(n * k, 3.0);
        let q = Q8Matrix::quantize(&Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap())
            .unwrap();
        for r in 0..n {
            for (b, (got, want)) in q
                .row(r)
                .chunks(BLOCK)
                .zip(w[r * k..(r + 1) * k].chunks(BLOCK))
                .enumerate()
            {
                let amax = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (g, v) in got.iter().zip(want) {
                    assert!(
                        (g - v).abs() <= amax / 127.0 * 0.5 + 1e-3,
                        "row {r} block {b}"
                    );
                }
            }
        }
        assert!(q.bytes() < (n * k * 4) as u64 / 3);
    }
}
