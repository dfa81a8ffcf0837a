//! bf16 matrix products on Intel AMX (Sapphire Rapids and later): `--precision bf16` on the
//! CPU. Weights are rounded to bf16 once at load and laid out as AMX reads them; activations
//! are rounded to bf16 per product; products accumulate in f32 and everything around them
//! (bias, GELU, residual, norms, softmax) stays f32 — what oneDNN does for OpenVINO's bf16.
//!
//! The tile instructions have no stable intrinsics, so the kernel is a few lines of inline
//! assembly: one 32 x 32 block of the output (four 16 x 16 f32 tiles) per pass over the inner
//! dimension, two 16 x 32 bf16 tiles of activations and two of weights per step. Linux must
//! grant the process the tile state first (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`available`]
//! asks once.

use std::sync::OnceLock;

/// Whether AMX-BF16 runs here: the CPU has it, Linux grants this process the tile state, and
/// `IA_NATIVE_ISA` does not cap the kernels below AVX-512.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| super::isa() == super::Isa::Avx512 && imp::enable())
}

/// Why [`available`] is false, for refusals.
pub fn unavailable_reason() -> String {
    if super::isa() < super::Isa::Avx512 {
        format!(
            "the kernels are capped to {} (IA_NATIVE_ISA)",
            super::isa().as_str()
        )
    } else if !imp::cpu_has_amx_bf16() {
        "this CPU has no AMX-BF16".into()
    } else {
        "Linux did not grant this process the AMX tile state".into()
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
    data: Vec<u16>,
}

impl PackedBf16 {
    /// `weight_t` [k, n] row-major (a linear layer's weight as [in, out]).
    pub fn pack(weight_t: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(weight_t.len(), k * n, "a [k, n] weight");
        let k_padded = k.div_ceil(STEP) * STEP;
        let n_padded = n.div_ceil(BLOCK) * BLOCK;
        let mut data = vec![0u16; k_padded * n_padded];
        for panel in 0..n_padded / 16 {
            for pair in 0..k_padded / 2 {
                let row = &mut data[(panel * k_padded / 2 + pair) * 32..][..32];
                for c in 0..16 {
                    let col = panel * 16 + c;
                    for p in 0..2 {
                        let kk = 2 * pair + p;
                        if kk < k && col < n {
                            row[c * 2 + p] = to_bf16(weight_t[kk * n + col]);
                        }
                    }
                }
            }
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

    pub fn outputs(&self) -> usize {
        self.n
    }

    /// The output columns with the padding to whole blocks.
    pub(super) fn padded_outputs(&self) -> usize {
        self.n_padded
    }

    /// Columns a thread's block must be a multiple of.
    pub(super) const COLUMN_ALIGN: usize = BLOCK;
}

/// Activations [m, k] f32 as the kernel's first operand: bf16 in tiles (for each block of
/// 16 rows, each step of 32 values of the inner dimension, 16 x 32 contiguous), so that a
/// tile load reads 1 KiB in a row; padded with zeros to whole tiles.
pub(super) struct Activations {
    rows_padded: usize,
    k_padded: usize,
    data: Vec<u16>,
}

impl Activations {
    pub fn rows_padded(&self) -> usize {
        self.rows_padded
    }

    pub fn convert(x: &[f32], m: usize, w: &PackedBf16) -> Self {
        let (k, k_padded) = (w.k, w.k_padded);
        let rows_padded = m.div_ceil(16) * 16;
        let mut data = vec![0u16; rows_padded * k_padded];
        let isa = super::isa();
        if k > 0 {
            use rayon::prelude::*;
            // One block of 16 rows per task.
            data.par_chunks_mut(16 * k_padded)
                .zip(x[..m * k].par_chunks(16 * k))
                .for_each(|(slab, rows)| {
                    for (row, src) in rows.chunks_exact(k).enumerate() {
                        convert_row(isa, src, slab, row);
                    }
                });
        }
        Self {
            rows_padded,
            k_padded,
            data,
        }
    }
}

/// Row `row` (of 16) of a block of tiles: its values at `step * 512 + row * 32 + i`.
#[inline(always)]
fn convert_row_body(src: &[f32], slab: &mut [u16], row: usize) {
    for (step, chunk) in src.chunks(STEP).enumerate() {
        let dst = &mut slab[step * 16 * STEP + row * STEP..][..chunk.len()];
        for (d, &s) in dst.iter_mut().zip(chunk) {
            *d = to_bf16(s);
        }
    }
}

super::multiversion!(fn convert_row(src: &[f32], slab: &mut [u16], row: usize) => convert_row_body);

/// `out[r * stride + c - col0] += sum_k a[r, k] w[k, c]` for every row (padded) and the
/// columns `col0..col0 + cols` (both multiples of 32, within the packed weight); zeros in
/// `out` give the product itself.
///
/// # Safety
/// `out` is valid for reads and writes of `a.rows_padded()` rows of `stride` f32 (`cols` at
/// the start of each), and no other thread touches those elements meanwhile.
pub(super) unsafe fn product_block(
    a: &Activations,
    w: &PackedBf16,
    col0: usize,
    cols: usize,
    out: *mut f32,
    stride: usize,
) {
    assert!(col0.is_multiple_of(BLOCK) && cols.is_multiple_of(BLOCK) && stride >= cols);
    assert!(col0 + cols <= w.n_padded && a.k_padded == w.k_padded);
    assert!(available(), "AMX product without AMX");
    if a.k_padded == 0 {
        return;
    }
    // SAFETY: as the caller promises.
    unsafe { imp::product_block(a, w, col0, cols, out, stride) }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use super::{Activations, PackedBf16, STEP};
    use std::arch::asm;

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

    /// Tile steps of the inner dimension per pass (256 values): the weights' part of a pass
    /// (2 panels x 8 steps x 1 KiB) stays in L1 while every row block runs over it, so only
    /// the activations come from L2.
    const STEPS_PER_PASS: usize = 8;

    /// Activations per pass over the columns: a quarter of a Sapphire Rapids core's 2 MiB L2.
    const ACTIVATION_BYTES_PER_PASS: usize = 512 << 10;

    /// Adds the products to `out` (which the caller zeroed).
    pub unsafe fn product_block(
        a: &Activations,
        w: &PackedBf16,
        col0: usize,
        cols: usize,
        out: *mut f32,
        stride: usize,
    ) {
        let steps = a.k_padded / STEP;
        // A block of 16 rows: `steps` tiles of 16 x 32.
        let a_block = steps * 512;
        // Bytes per output row.
        let c_stride = stride * 4;
        // One panel (16 columns) of packed weights, all pair rows: 512 u16 per step.
        let panel_len = w.k_padded / 2 * 32;
        // Rows per pass over the columns: their activations (k_padded bf16 each) stay in L2
        // while every column pair runs over them, instead of streaming once per column pair.
        let rows_per_pass = (ACTIVATION_BYTES_PER_PASS / (a.k_padded * 2)).max(32) / 32 * 32;
        // SAFETY: the tile state was granted (`available()` is checked by the caller); every
        // tile load reads 1 KiB inside `a.data` (tile `step` of row block r / 16) or inside a
        // panel of `w.data`, and every tile load and store of the output touches 16 rows of 16
        // f32 inside the caller's rows_padded x cols of `out`.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
            for row0 in (0..a.rows_padded).step_by(rows_per_pass) {
                let row_end = (row0 + rows_per_pass).min(a.rows_padded);
                for pair in (col0 / 16..(col0 + cols) / 16).step_by(2) {
                    let c_col = pair * 16 - col0;
                    for first in (0..steps).step_by(STEPS_PER_PASS) {
                        let n = STEPS_PER_PASS.min(steps - first);
                        let b0 = w.data.as_ptr().add(pair * panel_len + first * 512);
                        let b1 = b0.add(panel_len);
                        let mut r = row0;
                        while r + 32 <= row_end {
                            let a0 = a.data.as_ptr().add(r / 16 * a_block + first * 512);
                            let a1 = a0.add(a_block);
                            let c0 = out.add(r * stride + c_col);
                            let c2 = c0.add(16 * stride);
                            asm!(
                                "tileloadd tmm0, [{c0} + {sc}]",
                                "tileloadd tmm1, [{c1} + {sc}]",
                                "tileloadd tmm2, [{c2} + {sc}]",
                                "tileloadd tmm3, [{c3} + {sc}]",
                                "2:",
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
                                "dec {steps}",
                                "jnz 2b",
                                "tilestored [{c0} + {sc}], tmm0",
                                "tilestored [{c1} + {sc}], tmm1",
                                "tilestored [{c2} + {sc}], tmm2",
                                "tilestored [{c3} + {sc}], tmm3",
                                a0 = inout(reg) a0 => _,
                                a1 = inout(reg) a1 => _,
                                b0 = inout(reg) b0 => _,
                                b1 = inout(reg) b1 => _,
                                steps = inout(reg) n => _,
                                s64 = in(reg) 64usize,
                                c0 = in(reg) c0,
                                c1 = in(reg) c0.add(16),
                                c2 = in(reg) c2,
                                c3 = in(reg) c2.add(16),
                                sc = in(reg) c_stride,
                                options(nostack),
                            );
                            r += 32;
                        }
                        if r < row_end {
                            // The last 16 rows alone.
                            let a0 = a.data.as_ptr().add(r / 16 * a_block + first * 512);
                            let c0 = out.add(r * stride + c_col);
                            asm!(
                                "tileloadd tmm0, [{c0} + {sc}]",
                                "tileloadd tmm1, [{c1} + {sc}]",
                                "2:",
                                "tileloadd tmm4, [{a0} + {s64}]",
                                "tileloadd tmm6, [{b0} + {s64}]",
                                "tileloadd tmm7, [{b1} + {s64}]",
                                "tdpbf16ps tmm0, tmm4, tmm6",
                                "tdpbf16ps tmm1, tmm4, tmm7",
                                "add {a0}, 1024",
                                "add {b0}, 1024",
                                "add {b1}, 1024",
                                "dec {steps}",
                                "jnz 2b",
                                "tilestored [{c0} + {sc}], tmm0",
                                "tilestored [{c1} + {sc}], tmm1",
                                a0 = inout(reg) a0 => _,
                                b0 = inout(reg) b0 => _,
                                b1 = inout(reg) b1 => _,
                                steps = inout(reg) n => _,
                                s64 = in(reg) 64usize,
                                c0 = in(reg) c0,
                                c1 = in(reg) c0.add(16),
                                sc = in(reg) c_stride,
                                options(nostack),
                            );
                        }
                    }
                }
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    use super::{Activations, PackedBf16};

    pub fn cpu_has_amx_bf16() -> bool {
        false
    }

    pub fn enable() -> bool {
        false
    }

    pub unsafe fn product_block(
        _: &Activations,
        _: &PackedBf16,
        _: usize,
        _: usize,
        _: *mut f32,
        _: usize,
    ) {
        unreachable!("available() is false off x86-64 Linux")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Against the same products in f64 on the bf16-rounded operands, on shapes with every
    /// kind of padding (rows, columns and inner dimension not multiples of the tiles).
    #[test]
    fn products_equal_the_rounded_reference_where_amx_runs() {
        if !available() {
            println!("NOT EXERCISED: AMX products ({})", unavailable_reason());
            return;
        }
        let round = |x: f32| f32::from_bits((to_bf16(x) as u32) << 16) as f64;
        for (m, k, n) in [(1, 8, 3), (16, 32, 32), (17, 40, 70), (50, 96, 64)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 97) as f32 / 50.0 - 1.0)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104_729) % 89) as f32 / 40.0 - 1.1)
                .collect();
            let packed = PackedBf16::pack(&w, k, n);
            let a = Activations::convert(&x, m, &packed);
            let cols = packed.n_padded;
            let mut out = vec![0f32; a.rows_padded * cols];
            // SAFETY: out holds rows_padded rows of cols.
            unsafe { product_block(&a, &packed, 0, cols, out.as_mut_ptr(), cols) };
            for r in 0..m {
                for c in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| round(x[r * k + i]) * round(w[i * n + c]))
                        .sum();
                    let got = out[r * cols + c] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{m}x{k}x{n} [{r},{c}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
