//! CPU kernels of our own where candle's are slow, chosen at run time by what the CPU has.
//!
//! Each kernel is one plain-Rust body compiled three times: for AVX-512, for AVX2 + FMA, and
//! for the target's baseline (`portable`). The body is written so LLVM vectorises it (no
//! branches in the inner loop, a polynomial `exp` instead of libm), so the wide versions need
//! no intrinsics. [`isa`] picks the widest the CPU supports; `IA_NATIVE_ISA=portable|avx2`
//! caps it, so every path can be tested on a machine that has the wider ones.
//!
//! Matrix products use the `gemm` crate (built with its AVX-512 micro-kernels, which it
//! selects at run time itself), as candle does; [`linear_t`] only splits the work between
//! threads differently (see there).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};
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

// ---- exp and erf that vectorise ------------------------------------------------------------

/// e^x for x <= 0 (Cody-Waite range reduction, degree-6 polynomial; relative error < 3e-7;
/// below -87 it returns e^-87, which is 0 for every use here).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.max(-87.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p = 1.0 / 720.0f32;
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // 2^n through the exponent bits; n >= -126 here.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// erf(x), Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7).
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / P.mul_add(a, 1.0);
    let mut poly = A[4];
    poly = poly.mul_add(t, A[3]);
    poly = poly.mul_add(t, A[2]);
    poly = poly.mul_add(t, A[1]);
    poly = poly.mul_add(t, A[0]);
    let y = 1.0 - poly * t * exp_nonpositive(-a * a);
    y.copysign(x)
}

/// GELU as transformers' "gelu" (the erf form): x/2 * (1 + erf(x / sqrt 2)).
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

// ---- bias + GELU ---------------------------------------------------------------------------

#[inline(always)]
fn bias_gelu_body(x: &[f32], bias: &[f32], out: &mut [f32]) {
    for (row, out) in x
        .chunks_exact(bias.len())
        .zip(out.chunks_exact_mut(bias.len()))
    {
        for ((o, &v), &b) in out.iter_mut().zip(row).zip(bias) {
            *o = gelu_erf(v + b);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn bias_gelu_avx512(x: &[f32], bias: &[f32], out: &mut [f32]) {
    bias_gelu_body(x, bias, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bias_gelu_avx2(x: &[f32], bias: &[f32], out: &mut [f32]) {
    bias_gelu_body(x, bias, out)
}

/// `out = gelu_erf(x + bias)` row by row (`x` holds whole rows of `bias.len()`), on `isa`.
pub fn bias_gelu_on(isa: Isa, x: &[f32], bias: &[f32], out: &mut [f32]) {
    assert!(!bias.is_empty() && x.len().is_multiple_of(bias.len()) && out.len() == x.len());
    match isa {
        // SAFETY: `isa()` and the tests hand out a set only when the CPU has it.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { bias_gelu_avx512(x, bias, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { bias_gelu_avx2(x, bias, out) },
        _ => bias_gelu_body(x, bias, out),
    }
}

/// `gelu_erf(x + bias)` over the last dimension of `x`, in one pass (candle: an add, then a
/// scalar erf per element). f32 on the CPU; other types and devices go through candle.
pub fn bias_gelu(
    x: &candle_core::Tensor,
    bias: &candle_core::Tensor,
) -> Result<candle_core::Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && bias.dtype() == x.dtype() {
        let x = x.contiguous()?;
        x.apply_op2_no_bwd(&bias.contiguous()?, &BiasGelu)
    } else {
        x.broadcast_add(bias)?.gelu_erf()
    }
}

struct BiasGelu;

/// The f32 elements of both operands of a two-input op, which takes only contiguous f32.
fn f32_slices<'a>(
    op: &str,
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> Result<(&'a [f32], &'a [f32])> {
    let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
        candle_core::bail!("{op} takes f32")
    };
    let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
    else {
        candle_core::bail!("{op} takes contiguous tensors")
    };
    Ok((&a[a0..a1], &b[b0..b1]))
}

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, bias) = f32_slices(self.name(), s1, l1, s2, l2)?;
        let width = l1.dims().last().copied().unwrap_or(0);
        if bias.len() != width || width == 0 {
            candle_core::bail!("bias-gelu-erf: bias of {} for rows of {width}", bias.len())
        }
        let mut out = vec![0f32; x.len()];
        bias_gelu_on(isa(), x, bias, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---- linear layers ------------------------------------------------------------------------

/// `x [.., in] . weight_t [in, out]`: a linear layer's product (no bias), the weight stored
/// transposed (`[in, out]` row-major) so that gemm reads it without packing it first. On the
/// CPU in f32 the output columns are split between the threads, each running gemm on one
/// thread: for the few rows of a short batch (128 x 768 x 3072) gemm's own split makes two
/// threads slower than one; split by columns they are about twice as fast. Elsewhere
/// candle's matmul.
pub fn linear_t(
    x: &candle_core::Tensor,
    weight_t: &candle_core::Tensor,
) -> Result<candle_core::Tensor> {
    let f32_cpu =
        |t: &candle_core::Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !(f32_cpu(x) && f32_cpu(weight_t)) {
        return x.broadcast_matmul(weight_t);
    }
    let dims = x.dims().to_vec();
    let inputs = *dims.last().expect("a tensor with dimensions");
    let rows = x.elem_count() / inputs.max(1);
    let y = x
        .contiguous()?
        .reshape((rows, inputs))?
        .apply_op2_no_bwd(&weight_t.contiguous()?, &LinearT)?;
    let mut shape = dims;
    *shape.last_mut().expect("a tensor with dimensions") = weight_t.dim(1)?;
    y.reshape(shape)
}

struct LinearT;

/// A raw pointer that may cross to the worker threads: each writes its own columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the column blocks the threads write are disjoint.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer `offset` elements on (a method, so closures capture the whole `Out`).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

impl CustomOp2 for LinearT {
    fn name(&self) -> &'static str {
        "linear-by-columns"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = f32_slices(self.name(), s1, l1, s2, l2)?;
        let (m, k) = l1.shape().dims2()?;
        let (k2, n) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("linear-by-columns: rows of {k} against weights of {k2}")
        }
        let mut out = vec![0f32; m * n];
        let threads = rayon::current_num_threads().max(1);
        // Blocks of whole 16-column panels (one AVX-512 register), one or more per thread.
        let width = n.div_ceil(threads).div_ceil(16) * 16;
        let dst = Out(out.as_mut_ptr());
        let block = |start: usize| {
            let cols = width.min(n - start);
            // SAFETY: x is m x k row-major, w is k x n row-major and the right-hand side is
            // its columns start..start+cols; dst is m x n row-major and this block writes
            // only those columns.
            unsafe {
                gemm::gemm(
                    m,
                    cols,
                    k,
                    dst.at(start),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr().add(start),
                    1,
                    n as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        };
        let starts: Vec<usize> = (0..n).step_by(width.max(1)).collect();
        if starts.len() <= 1 {
            starts.into_iter().for_each(block);
        } else {
            use rayon::prelude::*;
            starts.into_par_iter().for_each(block);
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_gelu(x: f64) -> f64 {
        // erf from its series / continued fraction is in libm as f64.
        0.5 * x * (1.0 + libm_erf(x / std::f64::consts::SQRT_2))
    }

    fn libm_erf(x: f64) -> f64 {
        // candle's own f64 erf, a reference independent of our approximation.
        candle_core::cpu::erf::erf_f64(x)
    }

    /// Every ISA this CPU has gives the same GELU within 3e-7 of the f64 reference.
    #[test]
    fn bias_gelu_matches_the_exact_function_on_every_isa() {
        let xs: Vec<f32> = (0..4000).map(|i| -12.0 + i as f32 * 0.006).collect();
        let bias: Vec<f32> = (0..40).map(|i| (i as f32 - 20.0) * 0.01).collect();
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            if isa > Isa::detected() {
                continue;
            }
            let mut out = vec![0f32; xs.len()];
            bias_gelu_on(isa, &xs, &bias, &mut out);
            for (i, (&x, &y)) in xs.iter().zip(&out).enumerate() {
                let v = x as f64 + bias[i % bias.len()] as f64;
                let want = exact_gelu(v);
                let err = (y as f64 - want).abs();
                assert!(
                    err <= 3e-7 * (1.0 + want.abs()),
                    "{isa:?}: gelu({v}) = {y}, want {want}"
                );
            }
        }
    }

    #[test]
    fn linear_equals_candles_matmul() {
        let dev = candle_core::Device::Cpu;
        for (m, k, n) in [(1, 8, 3), (7, 33, 50), (128, 96, 200)] {
            let x = candle_core::Tensor::randn(0f32, 1.0, (2, m, k), &dev).unwrap();
            let w = candle_core::Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let wt = w.t().unwrap().contiguous().unwrap();
            let ours = linear_t(&x, &wt).unwrap();
            let theirs = x.broadcast_matmul(&w.t().unwrap()).unwrap();
            assert_eq!(ours.dims(), &[2, m, n]);
            let diff = (ours - theirs)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "{m}x{k}x{n}: {diff}");
        }
    }

    #[test]
    fn exp_is_accurate_where_gelu_uses_it() {
        // Down to -87, where the clamp starts.
        for i in 0..=1000 {
            let x = -(i as f32) * 0.087;
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            assert!(
                (got - want).abs() <= 3e-7 * want + 1e-38,
                "exp({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn the_op_equals_candles_add_then_gelu() {
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Tensor::randn(0f32, 2.0, (3, 5, 64), &dev).unwrap();
        let b = candle_core::Tensor::randn(0f32, 1.0, 64, &dev).unwrap();
        let fused = bias_gelu(&x, &b).unwrap();
        let plain = x.broadcast_add(&b).unwrap().gelu_erf().unwrap();
        let diff = (fused - plain)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{diff}");
    }
}
