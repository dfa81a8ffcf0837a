//! Products with block-quantised weights, GGUF's Q8_0 and Q4_K, for `--precision q8_0|q4_k`.
//!
//! Every run of 32 inputs of one output (a block) has its own scale: `w = scale · (v - 128)`
//! in Q8_0, with v = q + 128 for q in -128..=127; `w = scale · v - min` in Q4_K, v in 0..=15
//! (the scale and min being the super-block's d and dmin times the block's 6-bit factors,
//! multiplied out once at load, in ggml's f32 arithmetic). The activations are quantised per
//! block of 32 too (to Q8_0, as llama.cpp quantises them for its integer dot products), so each
//! block's product is a sum of 8-bit products in i32, exact, scaled once in f32:
//! `sum += scale_x · (scale · (Σ v·qx - 128 · Σ qx))` or `scale_x · (scale · Σ v·qx - min · Σ qx)`.
//!
//! On CPUs with AVX512-VNNI that sum is `vpdpbusd` (unsigned weights by signed activations),
//! 64 multiply-adds per instruction against 16 for an f32 FMA: that is what lets a quantised
//! prefill (a product of many rows) beat the f32 one instead of paying for dequantisation, and
//! a decode step (one row per sequence) read a quarter of the f32 bytes or less. Without VNNI
//! the same integer sums run on `vpmaddubsw` (AVX2) or in plain Rust (compiled by
//! [`multiversion!`]); products of many rows may instead multiply dequantised f32 panels: on
//! AVX2 one panel at a time on the f32 linear layer's micro-kernel ([`super::panels`]),
//! elsewhere with gemm. Which one, see [`Activations::new`].
//!
//! The weights come from candle's quantisers (ggml's own), so a matrix holds the same values as
//! llama.cpp's Q8_0 or Q4_K of it.

#[cfg(target_arch = "x86_64")]
use super::panels;
use super::{isa, multiversion, Isa, SharedOut};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};
use std::sync::OnceLock;

/// Inputs per block (GGUF's QK8_0, and Q4_K's sub-block).
pub const BLOCK: usize = 32;
/// Inputs per Q4_K super-block (GGUF's QK_K).
const SUPER_BLOCK: usize = 256;
/// Output columns per packed group: one AVX-512 register of i32 or f32 lanes.
pub const GROUP: usize = 16;
/// Added to each signed Q8_0 weight so that `vpdpbusd` reads it as unsigned.
const OFFSET: i32 = 128;

/// A block format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q8_0,
    Q4K,
}

impl Format {
    /// The block format of `--precision q8_0|q4_k`; None for any other precision.
    pub fn of(precision: ia_engine::Precision) -> Option<Self> {
        match precision {
            ia_engine::Precision::Q8_0 => Some(Format::Q8_0),
            ia_engine::Precision::Q4K => Some(Format::Q4K),
            _ => None,
        }
    }

    /// Inputs a row must be a multiple of.
    pub fn row_multiple(self) -> usize {
        match self {
            Format::Q8_0 => BLOCK,
            Format::Q4K => SUPER_BLOCK,
        }
    }

    fn ggml(self) -> GgmlDType {
        match self {
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::Q4K => GgmlDType::Q4K,
        }
    }

    /// Bytes of one GGUF block (of `row_multiple` inputs).
    fn gguf_block_bytes(self) -> usize {
        match self {
            Format::Q8_0 => 2 + BLOCK,
            Format::Q4K => 4 + 12 + SUPER_BLOCK / 2,
        }
    }

    /// Bytes of packed values per input of a group.
    fn group_bytes_per_input(self) -> usize {
        match self {
            Format::Q8_0 => GROUP,
            Format::Q4K => GROUP / 2,
        }
    }
}

/// A linear layer's weight `[out, in]`, laid out for the kernel. Per group of 16 outputs the
/// values come in runs of 64 bytes, what one `vpdpbusd` reads: 16 outputs x 4 consecutive
/// inputs (Q8_0, one byte each); or 16 outputs x 4 consecutive inputs in the low nibbles and
/// the next 4 inputs in the high ones (Q4_K). Per group and block, the 16 scales (and Q4_K's
/// 16 mins). Outputs past the last whole group are padded with zero scales.
pub struct QuantMatrix {
    format: Format,
    outputs: usize,
    inputs: usize,
    values: Vec<u8>,
    /// [group][block][16].
    scales: Vec<f32>,
    /// [group][block][16]; Q4_K only.
    mins: Vec<f32>,
}

impl QuantMatrix {
    /// Quantises `weight` [out, in] (rows a multiple of [`Format::row_multiple`]) with ggml's
    /// quantiser.
    pub fn quantize(weight: &Tensor, format: Format) -> Result<Self> {
        let (outputs, inputs) = weight.dims2()?;
        if !inputs.is_multiple_of(format.row_multiple()) {
            candle_core::bail!(
                "{format:?} needs rows of a multiple of {} values, not {inputs}",
                format.row_multiple()
            )
        }
        let q = QTensor::quantize(&weight.to_dtype(candle_core::DType::F32)?, format.ggml())?;
        Self::from_gguf_blocks(format, &q.data()?, outputs, inputs)
    }

    /// The matrix from GGUF blocks: `outputs` rows of `inputs / row_multiple` blocks.
    pub fn from_gguf_blocks(
        format: Format,
        bytes: &[u8],
        outputs: usize,
        inputs: usize,
    ) -> Result<Self> {
        let per_row = inputs / format.row_multiple();
        if !inputs.is_multiple_of(format.row_multiple())
            || bytes.len() != outputs * per_row * format.gguf_block_bytes()
        {
            candle_core::bail!(
                "{} bytes are not a {outputs} x {inputs} {format:?} matrix",
                bytes.len()
            )
        }
        let groups = outputs.div_ceil(GROUP);
        let blocks = inputs / BLOCK;
        let filler = match format {
            Format::Q8_0 => OFFSET as u8,
            Format::Q4K => 0,
        };
        let mut m = Self {
            format,
            outputs,
            inputs,
            values: vec![filler; groups * inputs * format.group_bytes_per_input()],
            scales: vec![0.0; groups * blocks * GROUP],
            mins: match format {
                Format::Q8_0 => Vec::new(),
                Format::Q4K => vec![0.0; groups * blocks * GROUP],
            },
        };
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let row_bytes = per_row * format.gguf_block_bytes();
        for (row, row_data) in bytes.chunks_exact(row_bytes).enumerate() {
            let (g, c) = (row / GROUP, row % GROUP);
            for (s, block) in row_data.chunks_exact(format.gguf_block_bytes()).enumerate() {
                match format {
                    Format::Q8_0 => {
                        m.scales[(g * blocks + s) * GROUP + c] = f16(block);
                        for (i, &q) in block[2..].iter().enumerate() {
                            m.set_value(g, c, s * BLOCK + i, (q as i8 as i32 + OFFSET) as u8);
                        }
                    }
                    Format::Q4K => {
                        let (d, dmin) = (f16(block), f16(&block[2..]));
                        let (factors, qs) = (&block[4..16], &block[16..]);
                        for j in 0..SUPER_BLOCK / BLOCK {
                            let (sc, mn) = scale_min_k4(j, factors);
                            let b = s * SUPER_BLOCK / BLOCK + j;
                            // ggml's dequantize_row_q4_K: y = (d * sc) * q - dmin * m.
                            m.scales[(g * blocks + b) * GROUP + c] = d * sc as f32;
                            m.mins[(g * blocks + b) * GROUP + c] = dmin * mn as f32;
                            // Bytes 32·(j/2).. hold block j in the low nibbles for even j,
                            // block j in the high ones for odd j.
                            for l in 0..BLOCK {
                                let byte = qs[(j / 2) * BLOCK + l];
                                let v = if j % 2 == 0 { byte & 0xF } else { byte >> 4 };
                                m.set_value(g, c, b * BLOCK + l, v);
                            }
                        }
                    }
                }
            }
        }
        Ok(m)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Bytes held (values, scales and mins, padding included).
    pub fn bytes(&self) -> u64 {
        (self.values.len() + (self.scales.len() + self.mins.len()) * 4) as u64
    }

    fn blocks(&self) -> usize {
        self.inputs / BLOCK
    }

    /// Group `g`'s packed values.
    fn group_values(&self, g: usize) -> &[u8] {
        let len = self.inputs * self.format.group_bytes_per_input();
        &self.values[g * len..][..len]
    }

    /// Where group `g`'s column `c` keeps input `k`: the byte, and for Q4_K whether it is the
    /// high nibble.
    fn value_at(&self, g: usize, c: usize, k: usize) -> (usize, bool) {
        let start = g * self.inputs * self.format.group_bytes_per_input();
        match self.format {
            Format::Q8_0 => (start + ((k / 4) * GROUP + c) * 4 + k % 4, false),
            Format::Q4K => (start + ((k / 8) * GROUP + c) * 4 + k % 4, k % 8 >= 4),
        }
    }

    fn set_value(&mut self, g: usize, c: usize, k: usize, v: u8) {
        match self.value_at(g, c, k) {
            (at, false) if self.format == Format::Q8_0 => self.values[at] = v,
            (at, high) => {
                let shift = if high { 4 } else { 0 };
                self.values[at] = (self.values[at] & !(0xF << shift)) | (v << shift);
            }
        }
    }

    fn value(&self, g: usize, c: usize, k: usize) -> i32 {
        match self.value_at(g, c, k) {
            (at, _) if self.format == Format::Q8_0 => self.values[at] as i32 - OFFSET,
            (at, high) => ((self.values[at] >> if high { 4 } else { 0 }) & 0xF) as i32,
        }
    }

    /// Row `row` of the `[out, in]` matrix, dequantised (token embeddings share the head's
    /// matrix), in ggml's arithmetic.
    pub fn row(&self, row: usize) -> Vec<f32> {
        let (g, c) = (row / GROUP, row % GROUP);
        (0..self.inputs)
            .map(|k| {
                let at = (g * self.blocks() + k / BLOCK) * GROUP + c;
                let v = self.value(g, c, k) as f32 * self.scales[at];
                match self.format {
                    Format::Q8_0 => v,
                    Format::Q4K => v - self.mins[at],
                }
            })
            .collect()
    }
}

/// ggml's `get_scale_min_k4`: block j's 6-bit scale and min from a Q4_K super-block's 12 bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Activations quantised per block of 32, as the kernel reads them: for each row, the values,
/// and per block the scale and `Σ q`.
pub struct Q8Rows {
    inputs: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
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
            sums: vec![0; rows * blocks],
        };
        let isa = isa();
        let rows_list: Vec<_> = q
            .values
            .chunks_exact_mut(inputs)
            .zip(q.scales.chunks_exact_mut(blocks))
            .zip(q.sums.chunks_exact_mut(blocks))
            .zip(x.chunks_exact(inputs))
            .map(|(((v, s), o), x)| (x, v, s, o))
            .collect();
        if rows > 1 && rows * inputs >= 1 << 16 {
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
fn quantize_row_body(x: &[f32], values: &mut [i8], scales: &mut [f32], sums: &mut [i32]) {
    for (((x, q), scale), total) in x
        .chunks_exact(BLOCK)
        .zip(values.chunks_exact_mut(BLOCK))
        .zip(scales.iter_mut())
        .zip(sums.iter_mut())
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
        *total = sum;
    }
}

multiversion!(fn quantize_row(x: &[f32], values: &mut [i8], scales: &mut [f32], sums: &mut [i32]) => quantize_row_body);

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

/// Rows from which a CPU without AVX2 multiplies dequantised f32 panels with gemm rather than
/// 8-bit products in plain Rust (those cannot use the wide multiply-adds gemm has; at one or a
/// few rows, decoding, reading a quarter of the bytes matters more).
const PANEL_ROWS: usize = 4;
/// Rows below which a CPU with AVX2 (and no VNNI) always takes the `vpmaddubsw` sums: a
/// dequantised panel is written for every block of rows, and at a few rows that costs as
/// much as the products. On a Zen 5 EPYC capped at AVX2 (`IA_NATIVE_ISA=avx2`), Qwen2-0.5B
/// q8_0 decoding at 4 / 8 / 16 / 32 sequences ran 2.1x / 1.8x / 1.5x / 1.3x faster
/// than on the panels.
const INTEGER_ROWS: usize = 64;
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
    /// `x`: `rows` x `inputs` row-major. Integer sums with VNNI; without it, with AVX2,
    /// below [`INTEGER_ROWS`] rows, and from there on whichever of the two
    /// [`many_rows_path`] timed faster on this CPU; on other CPUs below [`PANEL_ROWS`].
    pub fn new(x: &'a [f32], rows: usize, inputs: usize) -> Self {
        let integer = vnni()
            || if isa() >= Isa::Avx2 {
                rows < INTEGER_ROWS || many_rows_path() == ManyRows::Integer
            } else {
                rows < PANEL_ROWS
            };
        Self {
            x,
            rows,
            quantised: integer.then(|| Q8Rows::quantize(x, rows, inputs)),
        }
    }
}

/// How a CPU with AVX2 and no VNNI multiplies many rows: 8-bit sums or dequantised f32 panels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ManyRows {
    Integer,
    Panels,
}

/// The path for products of [`INTEGER_ROWS`] rows or more on a CPU with AVX2 and no VNNI:
/// `IA_NATIVE_QUANT=integer|panels` forces one, else the faster here of the two on a 96 x 512
/// x 64 Q8_0 product (40-55 microseconds each on a Zen 5; [`super::faster_of`]). Timed rather than fixed because they trade places between
/// CPUs: their costs rest on different units (8-bit multiply-adds against f32 FMAs plus the
/// dequantisation). On a Zen 5 EPYC capped at AVX2 the integer sums made a Qwen2-0.5B q8_0
/// prefill of 128 / 512 rows 1.18x / 1.29x and, in a second run, 1.43x / 1.15x faster than
/// the panels.
fn many_rows_path() -> ManyRows {
    static CHOSEN: OnceLock<ManyRows> = OnceLock::new();
    *CHOSEN.get_or_init(|| match std::env::var("IA_NATIVE_QUANT").ok().as_deref() {
        Some("integer") => ManyRows::Integer,
        Some("panels") => ManyRows::Panels,
        other => {
            if let Some(other) = other {
                tracing::warn!("IA_NATIVE_QUANT={other} is not integer or panels: ignored");
            }
            faster_many_rows_path()
        }
    })
}

fn faster_many_rows_path() -> ManyRows {
    let (m, k, n) = (96, 512, 64);
    let weights: Vec<f32> = (0..n * k).map(|i| (i % 11) as f32 / 11.0 - 0.5).collect();
    let Ok(w) = Tensor::from_vec(weights, (n, k), &candle_core::Device::Cpu)
        .and_then(|t| QuantMatrix::quantize(&t, Format::Q8_0))
    else {
        return ManyRows::Integer;
    };
    let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
    let paths = [ManyRows::Integer, ManyRows::Panels];
    let activations = paths.map(|path| Activations {
        x: &x,
        rows: m,
        quantised: (path == ManyRows::Integer).then(|| Q8Rows::quantize(&x, m, k)),
    });
    let mut out = vec![0f32; m * n];
    let dst = SharedOut(out.as_mut_ptr());
    // SAFETY: out is m x n and only this thread writes it.
    let run = |a: &Activations<'_>| unsafe { product_block(a, &w, 0, n, dst, n) };
    let (won, best) =
        super::faster_of([&mut || run(&activations[0]), &mut || run(&activations[1])]);
    tracing::debug!(
        "quantised products of many rows: {:?} ({:.1} us) against {:?} ({:.1} us)",
        paths[won],
        best[won] * 1e6,
        paths[1 - won],
        best[1 - won] * 1e6,
    );
    paths[won]
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
    w: &QuantMatrix,
    start: usize,
    cols: usize,
    dst: SharedOut,
    stride: usize,
) {
    assert!(start.is_multiple_of(GROUP) && start + cols <= w.outputs);
    assert_eq!(x.x.len(), x.rows * w.inputs);
    let Some(x) = &x.quantised else {
        // SAFETY: as the caller grants.
        return unsafe { float_products(isa(), x.x, x.rows, w, start, cols, dst, stride) };
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
                let out = |i: usize, j: usize, t: &[f32; GROUP]| write(r + i, g + j, t);
                let at = first + g;
                // SAFETY: vnni() checked the CPU; the tiles are within the matrices.
                unsafe {
                    match w.format {
                        Format::Q8_0 => vnni::tiles::<false>(x, w, r, at, mr, pair, out),
                        Format::Q4K => vnni::tiles::<true>(x, w, r, at, mr, pair, out),
                    }
                }
                r += mr;
            }
            g += pair;
        }
        return;
    }
    let isa = isa();
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        let mut tiles = [[0f32; GROUP]; 4];
        for g in 0..groups {
            for r in (0..rows).step_by(4) {
                let mr = (rows - r).min(4);
                // SAFETY: isa() hands out AVX2 only where the CPU has it; rows r..r + mr
                // and the group exist.
                unsafe { avx2::group_tile(x, w, r, first + g, mr, &mut tiles) };
                for (i, tile) in tiles[..mr].iter().enumerate() {
                    write(r + i, g, tile);
                }
            }
        }
        return;
    }
    let mut tile = [0f32; GROUP];
    for g in 0..groups {
        for r in 0..rows {
            group_row(isa, x, w, r, first + g, &mut tile);
            write(r, g, &tile);
        }
    }
}

/// [`product_block`] with f32 activations: on AVX2 (without AVX-512) each panel of 16
/// outputs is dequantised as the f32 linear layer's micro-kernel reaches it, so the weights
/// are written out once, into L1, and never packed again; elsewhere through gemm
/// ([`panel_products`]). On an AVX2-only EPYC the gemm route made a q8_0 Qwen2-0.5B prefill
/// (b=1, 128 tokens) 1.47x the f32 one's time and its batch-4 decode 0.65x f32's speed.
///
/// # Safety
/// As [`product_block`]; `isa` is one the CPU has.
#[allow(clippy::too_many_arguments)]
unsafe fn float_products(
    isa: Isa,
    x: &[f32],
    rows: usize,
    w: &QuantMatrix,
    start: usize,
    cols: usize,
    dst: SharedOut,
    stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA; x is rows x inputs; dst as the caller grants.
        return unsafe {
            panels::product_block(x, rows, w.inputs, w, start, cols, dst, stride, |_, _| {})
        };
    }
    let _ = isa;
    // SAFETY: as the caller grants.
    unsafe { panel_products(x, rows, w, start, cols, dst, stride) }
}

/// [`product_block`] through gemm: the weights' columns dequantised into f32 panels of
/// [`PANEL_COLUMNS`], each multiplied by all rows at once.
///
/// # Safety
/// As [`product_block`].
unsafe fn panel_products(
    x: &[f32],
    rows: usize,
    w: &QuantMatrix,
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

/// Group `g`'s values of the four inputs from `4 · four`, as `[column][input]` (unsigned:
/// Q8_0's still carry the offset).
#[inline(always)]
fn fours(format: Format, values: &[u8], four: usize) -> [u8; 4 * GROUP] {
    let mut out = [0u8; 4 * GROUP];
    match format {
        Format::Q8_0 => out.copy_from_slice(&values[four * 4 * GROUP..][..4 * GROUP]),
        Format::Q4K => {
            let (bytes, shift) = (&values[(four / 2) * 4 * GROUP..][..4 * GROUP], four % 2 * 4);
            for (o, b) in out.iter_mut().zip(bytes) {
                *o = (b >> shift) & 0xF;
            }
        }
    }
    out
}

/// Groups `first..first + groups` as f32 columns of `panel` ([k][PANEL_COLUMNS]).
#[inline(always)]
fn dequantise_panel_body(w: &QuantMatrix, first: usize, groups: usize, panel: &mut [f32]) {
    for g in 0..groups {
        dequantise_group_body(
            w,
            first + g,
            0,
            w.inputs,
            &mut panel[g * GROUP..],
            PANEL_COLUMNS,
        );
    }
}

/// Group `g`'s inputs `k0..k0 + depth` (whole blocks) as rows of 16 f32 in `out`, `stride`
/// apart, in ggml's arithmetic.
#[inline(always)]
fn dequantise_group_body(
    w: &QuantMatrix,
    g: usize,
    k0: usize,
    depth: usize,
    out: &mut [f32],
    stride: usize,
) {
    let blocks = w.blocks();
    let offset = match w.format {
        Format::Q8_0 => OFFSET,
        Format::Q4K => 0,
    };
    let zeros = [0f32; GROUP];
    let values = w.group_values(g);
    for b in k0 / BLOCK..(k0 + depth) / BLOCK {
        let at = (g * blocks + b) * GROUP;
        let scales = &w.scales[at..][..GROUP];
        let mins = w.mins.get(at..at + GROUP).unwrap_or(&zeros);
        for four in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
            let v = fours(w.format, values, four);
            for j in 0..4 {
                let row = &mut out[(four * 4 + j - k0) * stride..][..GROUP];
                for (c, o) in row.iter_mut().enumerate() {
                    *o = (v[c * 4 + j] as i32 - offset) as f32 * scales[c] - mins[c];
                }
            }
        }
    }
}

multiversion!(fn dequantise_panel(w: &QuantMatrix, first: usize, groups: usize, panel: &mut [f32]) => dequantise_panel_body);

/// The AVX2 micro-kernel reads a quantised matrix one dequantised panel (a group of 16
/// outputs, [`panels::DEPTH`] inputs deep) at a time, written where it stays in L1.
#[cfg(target_arch = "x86_64")]
impl panels::Panels for QuantMatrix {
    fn inputs(&self) -> usize {
        self.inputs
    }

    fn outputs(&self) -> usize {
        self.outputs
    }

    fn panel(&self, c0: usize, k0: usize, depth: usize, scratch: &mut Vec<f32>) -> *const f32 {
        let out = panels::scratch_panel(scratch);
        // SAFETY: the AVX2 kernel calls this only on CPUs with AVX2 and FMA.
        unsafe { avx2::dequantise_group(self, c0 / GROUP, k0, depth, out) };
        out.as_ptr()
    }
}

/// One row's products with one group of 16 outputs, in plain Rust.
#[inline(always)]
fn group_row_body(x: &Q8Rows, w: &QuantMatrix, r: usize, g: usize, tile: &mut [f32; GROUP]) {
    let (k, blocks) = (w.inputs, w.blocks());
    let xv = &x.values[r * k..][..k];
    let values = w.group_values(g);
    *tile = [0.0; GROUP];
    for b in 0..blocks {
        let mut acc = [0i32; GROUP];
        for four in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
            let v = fours(w.format, values, four);
            for j in 0..4 {
                let xj = xv[four * 4 + j] as i32;
                for (a, vc) in acc.iter_mut().zip(v.chunks_exact(4)) {
                    *a += vc[j] as i32 * xj;
                }
            }
        }
        let (sum, dx) = (x.sums[r * blocks + b], x.scales[r * blocks + b]);
        let at = (g * blocks + b) * GROUP;
        let scales = &w.scales[at..][..GROUP];
        match w.format {
            Format::Q8_0 => {
                for ((t, a), s) in tile.iter_mut().zip(acc).zip(scales) {
                    *t += (a - OFFSET * sum) as f32 * (s * dx);
                }
            }
            Format::Q4K => {
                let mins = &w.mins[at..][..GROUP];
                for (((t, a), s), m) in tile.iter_mut().zip(acc).zip(scales).zip(mins) {
                    *t += a as f32 * (s * dx) - m * (dx * sum as f32);
                }
            }
        }
    }
}

multiversion!(fn group_row(x: &Q8Rows, w: &QuantMatrix, r: usize, g: usize, tile: &mut [f32; GROUP]) => group_row_body);

/// The integer sums on AVX2 without VNNI, one row at a time (decoding): `vpmaddubsw` multiplies
/// unsigned by signed bytes into pairs of i16, `vpmaddwd` adds the pairs to i32. Q8_0's
/// products are taken as |qx| times the weight with qx's sign, which keeps a pair within i16
/// (llama.cpp's trick); Q4_K's 4-bit weights fit as they are.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Format, Q8Rows, QuantMatrix, BLOCK, GROUP, OFFSET};
    use std::arch::x86_64::*;

    /// [`super::dequantise_group_body`] with a stride of 16, eight columns a register: each
    /// column's four inputs of a run are one i32 lane, so input j is that lane shifted right
    /// by 8·j (and a Q4_K nibble 4 further for the high half), masked. Same arithmetic, same
    /// values: `(v - offset) · scale - min` in f32.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; group `g` exists, `k0` and `depth` are whole blocks within
    /// the inputs, and `out` holds `depth` x 16 values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dequantise_group(
        w: &QuantMatrix,
        g: usize,
        k0: usize,
        depth: usize,
        out: &mut [f32],
    ) {
        assert!(out.len() >= depth * GROUP && (k0 + depth) <= w.inputs);
        let blocks = w.blocks();
        let q4 = w.format == Format::Q4K;
        let wv = w.group_values(g).as_ptr();
        let (mask, offset) = if q4 {
            (_mm256_set1_epi32(0xF), _mm256_setzero_si256())
        } else {
            (_mm256_set1_epi32(0xFF), _mm256_set1_epi32(OFFSET))
        };
        let o = out.as_mut_ptr();
        // SAFETY: the group holds inputs x 16 values (runs of 64 bytes: 4 inputs of Q8_0, 8
        // of Q4_K), 16 scales (and mins) per block; rows four·4 + j - k0 < depth of out.
        unsafe {
            for b in k0 / BLOCK..(k0 + depth) / BLOCK {
                let at = (g * blocks + b) * GROUP;
                let scales = w.scales.as_ptr().add(at);
                let s = [_mm256_loadu_ps(scales), _mm256_loadu_ps(scales.add(8))];
                let m = if q4 {
                    let mins = w.mins.as_ptr().add(at);
                    [_mm256_loadu_ps(mins), _mm256_loadu_ps(mins.add(8))]
                } else {
                    [_mm256_setzero_ps(); 2]
                };
                for four in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
                    let (run, shift) = if q4 {
                        (wv.add((four / 2) * 4 * GROUP), four % 2 * 4)
                    } else {
                        (wv.add(four * 4 * GROUP), 0)
                    };
                    let v = [
                        _mm256_loadu_si256(run as *const _),
                        _mm256_loadu_si256(run.add(32) as *const _),
                    ];
                    for j in 0..4 {
                        let count = _mm_cvtsi32_si128((8 * j + shift) as i32);
                        let row = o.add((four * 4 + j - k0) * GROUP);
                        for h in 0..2 {
                            let t = _mm256_and_si256(_mm256_srl_epi32(v[h], count), mask);
                            let t = _mm256_cvtepi32_ps(_mm256_sub_epi32(t, offset));
                            let y = _mm256_sub_ps(_mm256_mul_ps(t, s[h]), m[h]);
                            _mm256_storeu_ps(row.add(8 * h), y);
                        }
                    }
                }
            }
        }
    }

    /// Rows `r..r + mr` (1 to 4) with group `g`, [`group_rows`] chosen at run time.
    ///
    /// # Safety
    /// The CPU has AVX2; the rows and group `g` exist; `tiles` holds `mr` tiles.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn group_tile(
        x: &Q8Rows,
        w: &QuantMatrix,
        r: usize,
        g: usize,
        mr: usize,
        tiles: &mut [[f32; GROUP]; 4],
    ) {
        // SAFETY: as the caller grants; each arm writes the first mr tiles.
        unsafe {
            match mr {
                1 => group_rows::<1>(x, w, r, g, (&mut tiles[..1]).try_into().unwrap()),
                2 => group_rows::<2>(x, w, r, g, (&mut tiles[..2]).try_into().unwrap()),
                3 => group_rows::<3>(x, w, r, g, (&mut tiles[..3]).try_into().unwrap()),
                _ => group_rows::<4>(x, w, r, g, tiles),
            }
        }
    }

    /// Rows `r..r + R`'s products with group `g`, each run of weights loaded once for all
    /// `R` rows. Q4_K's pair sums (at most 2 · 15 · 127) add up in 16 bits over a block's
    /// eight runs (at most 30,480) and widen once a block; Q8_0's (up to 2 · 128 · 127)
    /// widen at every run.
    ///
    /// # Safety
    /// The CPU has AVX2; rows `r..r + R` and group `g` exist.
    #[target_feature(enable = "avx2,fma")]
    // Row i and half h index the activations, the sums and the totals together.
    #[allow(clippy::needless_range_loop)]
    unsafe fn group_rows<const R: usize>(
        x: &Q8Rows,
        w: &QuantMatrix,
        r: usize,
        g: usize,
        tiles: &mut [[f32; GROUP]; R],
    ) {
        let (k, blocks) = (w.inputs, w.blocks());
        let q4 = w.format == Format::Q4K;
        let xv = x.values[r * k..(r + R) * k].as_ptr();
        let wv = w.group_values(g).as_ptr();
        let (ones, nibble, flip) = (
            _mm256_set1_epi16(1),
            _mm256_set1_epi8(0xF),
            _mm256_set1_epi8(-128),
        );
        let mut total = [[_mm256_setzero_ps(); 2]; R];
        for b in 0..blocks {
            let mut acc = [[_mm256_setzero_si256(); 2]; R];
            for four in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
                let mut xb = [_mm256_setzero_si256(); R];
                for (i, xb) in xb.iter_mut().enumerate() {
                    // SAFETY: four * 4 + 4 <= k, within row r + i.
                    let x4 =
                        unsafe { std::ptr::read_unaligned(xv.add(i * k + four * 4) as *const i32) };
                    *xb = _mm256_set1_epi32(x4);
                }
                for half in 0..2 {
                    if q4 {
                        // SAFETY: the group holds inputs/8 runs of 64 bytes.
                        let v = unsafe {
                            _mm256_loadu_si256(
                                wv.add((four / 2) * 4 * GROUP + half * 32) as *const _
                            )
                        };
                        let v = if four % 2 == 0 {
                            v
                        } else {
                            _mm256_srli_epi16::<4>(v)
                        };
                        let v = _mm256_and_si256(v, nibble);
                        for i in 0..R {
                            let pairs = _mm256_maddubs_epi16(v, xb[i]);
                            acc[i][half] = _mm256_add_epi16(acc[i][half], pairs);
                        }
                    } else {
                        // SAFETY: the group holds inputs/4 runs of 64 bytes.
                        let v = unsafe {
                            _mm256_loadu_si256(wv.add(four * 4 * GROUP + half * 32) as *const _)
                        };
                        // v - 128 as signed bytes, given qx's sign, times |qx|.
                        let q = _mm256_xor_si256(v, flip);
                        for i in 0..R {
                            let pairs = _mm256_maddubs_epi16(
                                _mm256_sign_epi8(xb[i], xb[i]),
                                _mm256_sign_epi8(q, xb[i]),
                            );
                            let sums = _mm256_madd_epi16(pairs, ones);
                            acc[i][half] = _mm256_add_epi32(acc[i][half], sums);
                        }
                    }
                }
            }
            for i in 0..R {
                let at = (r + i) * blocks + b;
                let dx = _mm256_set1_ps(x.scales[at]);
                let sx = _mm256_set1_ps(x.scales[at] * x.sums[at] as f32);
                for half in 0..2 {
                    let a = if q4 {
                        _mm256_madd_epi16(acc[i][half], ones)
                    } else {
                        acc[i][half]
                    };
                    let wat = (g * blocks + b) * GROUP + half * 8;
                    // SAFETY: 16 scales (and mins) per group and block.
                    let s = unsafe { _mm256_loadu_ps(w.scales.as_ptr().add(wat)) };
                    let t = &mut total[i][half];
                    *t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_mul_ps(s, dx), *t);
                    if q4 {
                        // SAFETY: as the scales.
                        let m = unsafe { _mm256_loadu_ps(w.mins.as_ptr().add(wat)) };
                        *t = _mm256_fnmadd_ps(m, sx, *t);
                    }
                }
            }
        }
        for (tile, total) in tiles.iter_mut().zip(&total) {
            // SAFETY: a tile holds 16 f32.
            unsafe {
                _mm256_storeu_ps(tile.as_mut_ptr(), total[0]);
                _mm256_storeu_ps(tile.as_mut_ptr().add(8), total[1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{Q8Rows, QuantMatrix, BLOCK, GROUP, OFFSET};
    use std::arch::x86_64::*;

    /// [`tile`] for `rows` (1 to 4) and `groups` (1 or 2), chosen at run time.
    ///
    /// # Safety
    /// As [`tile`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tiles<const Q4: bool>(
        x: &Q8Rows,
        w: &QuantMatrix,
        r: usize,
        g: usize,
        rows: usize,
        groups: usize,
        out: impl FnMut(usize, usize, &[f32; GROUP]),
    ) {
        // SAFETY: as the caller grants, for these rows and groups.
        unsafe {
            match (rows, groups) {
                (4, 2) => tile::<4, 2, Q4>(x, w, r, g, out),
                (4, _) => tile::<4, 1, Q4>(x, w, r, g, out),
                (3, 2) => tile::<3, 2, Q4>(x, w, r, g, out),
                (3, _) => tile::<3, 1, Q4>(x, w, r, g, out),
                (2, 2) => tile::<2, 2, Q4>(x, w, r, g, out),
                (2, _) => tile::<2, 1, Q4>(x, w, r, g, out),
                (_, 2) => tile::<1, 2, Q4>(x, w, r, g, out),
                _ => tile::<1, 1, Q4>(x, w, r, g, out),
            }
        }
    }

    /// `MR` rows by `NG` groups of 16 outputs from row `r` and group `g` (Q4_K's nibbles if
    /// `Q4`, else Q8_0); `out(i, j, tile)` receives row `r + i`'s products with group `g + j`.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512-VNNI; rows `r..r + MR` and groups `g..g + NG` exist,
    /// and the matrix is in the format `Q4` names.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile<const MR: usize, const NG: usize, const Q4: bool>(
        x: &Q8Rows,
        w: &QuantMatrix,
        r: usize,
        g: usize,
        mut out: impl FnMut(usize, usize, &[f32; GROUP]),
    ) {
        let (k, blocks) = (w.inputs, w.blocks());
        let xv = x.values.as_ptr();
        let wv: [*const u8; NG] = std::array::from_fn(|j| w.group_values(g + j).as_ptr());
        let nibble = _mm512_set1_epi8(0xF);
        let mut total = [[_mm512_setzero_ps(); NG]; MR];
        for b in 0..blocks {
            let mut acc = [[_mm512_setzero_si512(); NG]; MR];
            // One step: the weights of four inputs, times each row's four activations.
            let mut step = |four: usize, wq: [__m512i; NG]| {
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
            };
            if Q4 {
                for eight in b * BLOCK / 8..(b + 1) * BLOCK / 8 {
                    // SAFETY: group g + j holds inputs/8 runs of 64 bytes.
                    let v: [__m512i; NG] = std::array::from_fn(|j| unsafe {
                        _mm512_loadu_si512(wv[j].add(eight * 4 * GROUP) as *const _)
                    });
                    step(
                        eight * 2,
                        std::array::from_fn(|j| _mm512_and_si512(v[j], nibble)),
                    );
                    step(
                        eight * 2 + 1,
                        std::array::from_fn(|j| {
                            _mm512_and_si512(_mm512_srli_epi16::<4>(v[j]), nibble)
                        }),
                    );
                }
            } else {
                for four in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
                    // SAFETY: group g + j holds inputs/4 runs of 64 bytes.
                    step(
                        four,
                        std::array::from_fn(|j| unsafe {
                            _mm512_loadu_si512(wv[j].add(four * 4 * GROUP) as *const _)
                        }),
                    );
                }
            }
            for (i, (acc, total)) in acc.iter().zip(total.iter_mut()).enumerate() {
                let at = (r + i) * blocks + b;
                let dx = _mm512_set1_ps(x.scales[at]);
                for (j, (a, t)) in acc.iter().zip(total.iter_mut()).enumerate() {
                    let wat = ((g + j) * blocks + b) * GROUP;
                    // SAFETY: 16 scales (and mins) per group and block.
                    let s = unsafe { _mm512_loadu_ps(w.scales.as_ptr().add(wat)) };
                    if Q4 {
                        let m = unsafe { _mm512_loadu_ps(w.mins.as_ptr().add(wat)) };
                        let sx = _mm512_set1_ps(x.scales[at] * x.sums[at] as f32);
                        *t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*a), _mm512_mul_ps(s, dx), *t);
                        *t = _mm512_fnmadd_ps(m, sx, *t);
                    } else {
                        let offset = _mm512_set1_epi32(OFFSET * x.sums[at]);
                        let sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(*a, offset));
                        *t = _mm512_fmadd_ps(sum, _mm512_mul_ps(s, dx), *t);
                    }
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

    fn matrix(n: usize, k: usize, format: Format) -> (Tensor, QuantMatrix) {
        let t = Tensor::from_vec(pseudo_random(n * k, 1.0), (n, k), &Device::Cpu).unwrap();
        let q = QuantMatrix::quantize(&t, format).unwrap();
        (t, q)
    }

    /// `x · wᵀ` in f64 for `x` rows of `k` and the dequantised rows of `w`.
    fn reference(x: &[f64], w: &QuantMatrix, m: usize) -> Vec<f64> {
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
    /// for the 8-bit products, the f32 ones for the dequantised panels), in both formats, for
    /// shapes with partial row blocks, partial groups and a partial last group.
    #[test]
    fn products_equal_the_dequantised_sums_on_every_path() {
        let shapes: [(usize, usize, usize); 7] = [
            (1, 256, 16),
            (5, 512, 40),
            (7, 256, 300),
            (4, 256, 33),
            (9, 512, 130),
            (3, 96, 24),
            // More rows than the AVX2 panel kernel's block, inputs past its depth.
            (101, 288, 40),
        ];
        for format in [Format::Q8_0, Format::Q4K] {
            for (m, k, n) in shapes {
                if !k.is_multiple_of(format.row_multiple()) {
                    continue;
                }
                let what = format!("{format:?} {m}x{k}x{n}");
                let x = pseudo_random(m * k, 2.0);
                let (_, w) = matrix(n, k, format);
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
                            let dst = SharedOut(out.as_mut_ptr());
                            // SAFETY: out is m x n and each call writes its own columns.
                            unsafe { product_block(&acts, &w, start, cols, dst, n) };
                        }
                    }
                    let (path, expected) = match quantised {
                        true => ("integer", &integer),
                        false => ("panels", &panels),
                    };
                    assert_close(&format!("{what} {path}"), &out, expected);
                }
                // The f32 products against dequantised panels for every instruction set this
                // CPU has (the AVX2 panel kernel, gemm elsewhere).
                for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                    if isa > Isa::detected() {
                        continue;
                    }
                    let mut out = vec![f32::NAN; m * n];
                    let split = ((n / 2).div_ceil(GROUP) * GROUP).min(n);
                    for (start, cols) in [(0, split), (split, n - split)] {
                        if cols > 0 {
                            let dst = SharedOut(out.as_mut_ptr());
                            // SAFETY: the CPU has `isa`; out is m x n and each call writes its
                            // own columns.
                            unsafe { float_products(isa, &x, m, &w, start, cols, dst, n) };
                        }
                    }
                    assert_close(&format!("{what} panels {isa:?}"), &out, &panels);
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
                #[cfg(target_arch = "x86_64")]
                if Isa::detected() >= Isa::Avx2 {
                    // Tiles of one to four rows.
                    let mut got = vec![0f32; m * n];
                    let mut tiles = [[0f32; GROUP]; 4];
                    for g in 0..n.div_ceil(GROUP) {
                        for r in (0..m).step_by(4) {
                            let mr = (m - r).min(4);
                            // SAFETY: the CPU has AVX2; rows r..r + mr exist.
                            unsafe { avx2::group_tile(&xq, &w, r, g, mr, &mut tiles) };
                            let width = GROUP.min(n - g * GROUP);
                            for (i, tile) in tiles[..mr].iter().enumerate() {
                                got[(r + i) * n + g * GROUP..][..width]
                                    .copy_from_slice(&tile[..width]);
                            }
                        }
                    }
                    assert_close(&format!("{what} avx2 tiles"), &got, &integer);
                }
            }
        }
    }

    /// The AVX2 dequantisation of a panel gives the plain one's values to the bit, at every
    /// depth offset the panel kernel asks for.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_panels_hold_the_plain_dequantisation() {
        if Isa::detected() < Isa::Avx2 {
            println!("NOT EXERCISED: needs AVX2");
            return;
        }
        for format in [Format::Q8_0, Format::Q4K] {
            let (_, w) = matrix(40, 512, format);
            for (g, k0, depth) in [(0, 0, 256), (1, 256, 256), (2, 64, 96)] {
                let mut want = vec![f32::NAN; depth * GROUP];
                dequantise_group_body(&w, g, k0, depth, &mut want, GROUP);
                let mut got = vec![f32::NAN; depth * GROUP];
                // SAFETY: the CPU has AVX2; the group, blocks and buffer exist.
                unsafe { avx2::dequantise_group(&w, g, k0, depth, &mut got) };
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{format:?} group {g} from {k0}");
            }
        }
    }

    /// The packed matrix holds exactly ggml's values: its rows equal candle's dequantisation
    /// of the same blocks, and it takes a fraction of the f32 bytes.
    #[test]
    fn rows_are_ggml_dequantisation() {
        let (n, k) = (48, 512);
        for (format, bytes_per_weight) in [(Format::Q8_0, 1.13), (Format::Q4K, 0.76)] {
            let (t, q) = matrix(n, k, format);
            let ggml = QTensor::quantize(&t, format.ggml())
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (r, want) in ggml.iter().enumerate() {
                assert_eq!(&q.row(r), want, "{format:?} row {r}");
            }
            assert!(
                q.bytes() as f64 <= bytes_per_weight * (n * k) as f64,
                "{format:?}"
            );
        }
    }
}
