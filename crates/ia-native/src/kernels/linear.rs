//! Linear layers: `act(x . W + bias) + residual` in one pass over the output.
//!
//! The weight is stored transposed (`[in, out]` row-major) so that gemm reads it without
//! packing it first. The output columns are split between the threads, each running gemm on
//! one thread and then the bias, activation and residual add on its own block while it is
//! still in cache: for the few rows of a short batch (128 x 768 x 3072) gemm's own split makes
//! two threads slower than one; split by columns they are about twice as fast.

use super::math::gelu_erf;
use super::{applies, f32_slice, isa, multiversion, with_f32, SharedOut};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// The activation a linear layer applies to its output, in the same pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// transformers' "gelu": the erf form.
    GeluErf,
}

/// `act(x [.., in] . weight_t [in, out] + bias [out]) + residual [.., out]`, the product over
/// all leading dimensions at once. f32 on the CPU runs the kernel; other types and devices
/// run the same steps through candle.
pub fn linear(
    x: &Tensor,
    weight_t: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let inputs = *dims.last().expect("a tensor with dimensions");
    let outputs = weight_t.dim(1)?;
    *dims.last_mut().expect("a tensor with dimensions") = outputs;
    if ![Some(x), Some(weight_t), bias, residual]
        .into_iter()
        .flatten()
        .all(applies)
    {
        let mut y = x.broadcast_matmul(weight_t)?;
        if let Some(b) = bias {
            y = y.broadcast_add(b)?;
        }
        if act == Activation::GeluErf {
            y = y.gelu_erf()?;
        }
        return match residual {
            Some(r) => y + r,
            None => Ok(y),
        };
    }
    let rows = x.elem_count() / inputs.max(1);
    let x = x.contiguous()?.reshape((rows, inputs))?;
    let weight_t = weight_t.contiguous()?;
    let residual = residual
        .map(|r| r.contiguous()?.reshape((rows, outputs)))
        .transpose()?;
    let apply = |bias: Option<&[f32]>| {
        let op = Linear { bias, act };
        match &residual {
            Some(r) => x.apply_op3_no_bwd(&weight_t, r, &op),
            None => x.apply_op2_no_bwd(&weight_t, &op),
        }
    };
    let y = match bias {
        Some(b) => with_f32("linear", &b.contiguous()?, |b| apply(Some(b)))?,
        None => apply(None)?,
    };
    y.reshape(dims)
}

struct Linear<'a> {
    bias: Option<&'a [f32]>,
    act: Activation,
}

impl Linear<'_> {
    fn run(
        &self,
        x: &[f32],
        lx: &Layout,
        w: &[f32],
        lw: &Layout,
        residual: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = lx.shape().dims2()?;
        let (k2, n) = lw.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("linear: rows of {k} against weights of {k2}")
        }
        if self.bias.is_some_and(|b| b.len() != n) || residual.is_some_and(|r| r.len() != m * n) {
            candle_core::bail!("linear: bias or residual do not match the {m} x {n} output")
        }
        let mut out = vec![0f32; m * n];
        if m == 0 || n == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((m, n))));
        }
        let threads = rayon::current_num_threads().max(1);
        // Blocks of whole 16-column panels (one AVX-512 register), one or more per thread.
        let width = n.div_ceil(threads).div_ceil(16) * 16;
        let dst = SharedOut(out.as_mut_ptr());
        let isa = isa();
        let block = |start: usize| {
            let cols = width.min(n - start);
            // SAFETY: x is m x k row-major, w is k x n row-major and the right-hand side is
            // its columns start..start+cols; dst is m x n row-major and this block reads and
            // writes only those columns, which no other block touches.
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
                );
                for r in 0..m {
                    let row = std::slice::from_raw_parts_mut(dst.at(r * n + start), cols);
                    epilogue(
                        isa,
                        row,
                        self.bias.map(|b| &b[start..start + cols]),
                        self.act == Activation::GeluErf,
                        residual.map(|res| &res[r * n + start..r * n + start + cols]),
                    );
                }
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

#[inline(always)]
fn epilogue_body(row: &mut [f32], bias: Option<&[f32]>, gelu: bool, residual: Option<&[f32]>) {
    if let Some(bias) = bias {
        for (o, &b) in row.iter_mut().zip(bias) {
            *o += b;
        }
    }
    if gelu {
        for o in row.iter_mut() {
            *o = gelu_erf(*o);
        }
    }
    if let Some(residual) = residual {
        for (o, &r) in row.iter_mut().zip(residual) {
            *o += r;
        }
    }
}

multiversion!(fn epilogue(row: &mut [f32], bias: Option<&[f32]>, gelu: bool, residual: Option<&[f32]>) => epilogue_body);

impl CustomOp2 for Linear<'_> {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice("linear", s1, l1)?;
        let w = f32_slice("linear", s2, l2)?;
        self.run(x, l1, w, l2, None)
    }
}

impl CustomOp3 for Linear<'_> {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice("linear", s1, l1)?;
        let w = f32_slice("linear", s2, l2)?;
        let residual = f32_slice("linear", s3, l3)?;
        self.run(x, l1, w, l2, Some(residual))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Every combination of bias, GELU and residual equals candle's steps, on every shape
    /// class (one row, a ragged column count, more columns than one thread's block).
    #[test]
    fn equals_candles_steps() {
        let dev = Device::Cpu;
        for (m, k, n) in [(1, 8, 3), (7, 33, 50), (128, 96, 200)] {
            let x = Tensor::randn(0f32, 1.0, (2, m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (2, m, n), &dev).unwrap();
            let wt = w.t().unwrap().contiguous().unwrap();
            for bias in [None, Some(&b)] {
                for act in [Activation::Identity, Activation::GeluErf] {
                    for residual in [None, Some(&r)] {
                        let ours = linear(&x, &wt, bias, act, residual).unwrap();
                        let mut want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
                        if let Some(b) = bias {
                            want = want.broadcast_add(b).unwrap();
                        }
                        if act == Activation::GeluErf {
                            want = want.gelu_erf().unwrap();
                        }
                        if let Some(r) = residual {
                            want = (want + r).unwrap();
                        }
                        assert_eq!(ours.dims(), &[2, m, n]);
                        let diff = max_diff(&ours, &want);
                        assert!(
                            diff < 1e-4,
                            "{m}x{k}x{n} bias {} {act:?} residual {}: {diff}",
                            bias.is_some(),
                            residual.is_some()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_isa_gives_the_same_epilogue() {
        let row: Vec<f32> = (0..53).map(|i| i as f32 * 0.3 - 8.0).collect();
        let bias: Vec<f32> = (0..53).map(|i| i as f32 * -0.01).collect();
        let residual: Vec<f32> = (0..53).map(|i| (i % 7) as f32).collect();
        let mut want = row.clone();
        epilogue_body(&mut want, Some(&bias), true, Some(&residual));
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            if isa > Isa::detected() {
                continue;
            }
            let mut got = row.clone();
            epilogue(isa, &mut got, Some(&bias), true, Some(&residual));
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                    "{isa:?}: {g} vs {w}"
                );
            }
        }
    }
}
