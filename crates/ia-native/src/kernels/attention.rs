//! Multi-head self-attention read straight from the stacked query/key/value rows.
//!
//! candle's path copies q, k and v out of the stacked projection, runs one threaded gemm per
//! (sequence, head) pair for the scores and another for the weighted values, and copies the
//! heads back together: for MiniLM's 16-token sequences that is thousands of tiny threaded
//! products. Here each (sequence, head) pair is one task on rayon's threads: gemm reads q, k
//! and v where they are (by strides), the mask and softmax run on the scores in cache, and
//! the second product writes the head's columns of the output rows in place.

use super::bf16_attention;
use super::math::softmax_body;
use super::{applies, f32_slice, isa, multiversion, product, row_major, with_f32, Output, Strided};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// Attention over `qkv` [batch, seq, 3 * hidden]: each row holds the query, key and value
/// projections side by side, each `heads` x `hidden / heads`, the query already scaled by
/// 1/sqrt(head size). `key_mask` [batch, seq] is added to every query's score for that key
/// (0 attends; a large negative value, as transformers' extended mask, masks); `causal` also
/// masks every key after the query (CLIP's text tower). Returns [batch, seq, hidden]. f32 on
/// the CPU runs the kernel; elsewhere candle's operations. With `bf16` (a model run at
/// `--precision bf16`), the two products run in bf16 where [`bf16_attention::runs`].
pub fn attention(
    qkv: &Tensor,
    heads: usize,
    key_mask: Option<&Tensor>,
    causal: bool,
    bf16: bool,
) -> Result<Tensor> {
    let (b, s, h3) = qkv.dims3()?;
    let h = h3 / 3;
    if heads == 0 || h3 % 3 != 0 || h % heads != 0 {
        candle_core::bail!("attention: rows of {h3} do not split into 3 x {heads} heads")
    }
    if let Some(mask) = key_mask {
        if mask.dims() != [b, s] {
            candle_core::bail!("attention: mask {:?} for {b} x {s} tokens", mask.dims())
        }
    }
    if !applies(qkv) || !key_mask.is_none_or(applies) {
        return with_candle(qkv, heads, key_mask, causal);
    }
    let qkv = qkv.contiguous()?;
    match key_mask {
        Some(mask) => with_f32("attention", &mask.contiguous()?, |mask| {
            qkv.apply_op1_no_bwd(&Attention {
                heads,
                key_mask: Some(mask),
                causal,
                bf16,
            })
        }),
        None => qkv.apply_op1_no_bwd(&Attention {
            heads,
            key_mask: None,
            causal,
            bf16,
        }),
    }
}

/// The same function in candle's operations (other devices and types).
fn with_candle(
    qkv: &Tensor,
    heads: usize,
    key_mask: Option<&Tensor>,
    causal: bool,
) -> Result<Tensor> {
    let (b, s, h3) = qkv.dims3()?;
    let (h, d) = (h3 / 3, h3 / 3 / heads);
    // [b, s, 3, heads, d] -> [3, b, heads, s, d]: one copy gives q, k and v contiguous.
    let qkv = qkv
        .reshape((b, s, 3, heads, d))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
    let mut scores = q.matmul(&k.t()?)?;
    if let Some(mask) = key_mask {
        scores = scores.broadcast_add(&mask.reshape((b, 1, 1, s))?.to_dtype(scores.dtype())?)?;
    }
    if causal {
        let later: Vec<f32> = (0..s * s)
            .map(|i| if i % s > i / s { f32::MIN } else { 0.0 })
            .collect();
        let later = Tensor::from_vec(later, (s, s), scores.device())?.to_dtype(scores.dtype())?;
        scores = scores.broadcast_add(&later)?;
    }
    candle_nn::ops::softmax_last_dim(&scores)?
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, s, h))
}

/// Queries per task: all of them while a head's scores (s x s) fit in 512 KiB (the L2 cache of
/// a core of the AMD EPYCs this was measured on), else blocks of rows whose scores do, so the
/// scores are written, normalised and read again in cache rather than through memory
/// (Whisper's 1,500 positions: 9 MB of scores per head).
fn query_block(s: usize) -> usize {
    const SCORES_IN_CACHE: usize = 128 * 1024;
    if s * s <= SCORES_IN_CACHE {
        s
    } else {
        // A multiple of 16 rows: gemm's AVX2 micro-kernel covers 16 rows at a time.
        (SCORES_IN_CACHE / s).next_multiple_of(16).max(16)
    }
}

struct Attention<'a> {
    heads: usize,
    key_mask: Option<&'a [f32]>,
    causal: bool,
    bf16: bool,
}

#[inline(always)]
fn masked_softmax_body(scores: &mut [f32], width: usize, mask: Option<&[f32]>) {
    for row in scores.chunks_exact_mut(width) {
        if let Some(mask) = mask {
            for (v, &m) in row.iter_mut().zip(mask) {
                *v += m;
            }
        }
        softmax_body(row);
    }
}

multiversion!(fn masked_softmax(scores: &mut [f32], width: usize, mask: Option<&[f32]>) => masked_softmax_body);

impl CustomOp1 for Attention<'_> {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(self.name(), storage, layout)?;
        let (b, s, h3) = layout.shape().dims3()?;
        let (h, heads) = (h3 / 3, self.heads);
        let d = h / heads;
        if b * s * h == 0 {
            return Ok((CpuStorage::F32(vec![]), Shape::from((b, s, h))));
        }
        // Each (sequence, head, block of queries) task writes its head's columns of its
        // queries' rows.
        let block = query_block(s);
        let blocks = s.div_ceil(block);
        let mut out = Output::new(b * s * h);
        let dst = out.ptr();
        let isa = isa();
        if self.bf16 && bf16_attention::runs(d) {
            let shape = bf16_attention::Shape { b, s, h, heads, d };
            // SAFETY: `runs(d)`; qkv is b * s rows of h3, the mask b * s values; out holds
            // b * s * h f32.
            unsafe { bf16_attention::attention(qkv, shape, self.key_mask, self.causal, dst) };
            // SAFETY: the tasks wrote every element.
            let out = unsafe { out.assume_init() };
            return Ok((CpuStorage::F32(out), Shape::from((b, s, h))));
        }
        let task = |index: usize| {
            let (seq, head, first) = (
                index / (heads * blocks),
                index / blocks % heads,
                index % blocks * block,
            );
            let queries = block.min(s - first);
            let rows = &qkv[seq * s * h3..(seq + 1) * s * h3];
            let key_mask = self.key_mask.map(|m| &m[seq * s..(seq + 1) * s]);
            let (q, k, v) = (
                &rows[first * h3 + head * d..],
                &rows[h + head * d..],
                &rows[2 * h + head * d..],
            );
            let mut scores = vec![0f32; queries * s];
            // SAFETY: q is `queries` rows and k, v are s rows of d values at a stride of h3
            // within `rows`; scores is queries x s row-major; the output block is this
            // sequence's rows first.. first + queries (stride h) at this head's d columns,
            // which no other task writes.
            unsafe {
                // scores = q . k^T: k^T (d x s) has element (c, j) at j * h3 + c.
                product(
                    queries,
                    s,
                    d,
                    row_major(scores.as_mut_ptr(), s),
                    row_major(q.as_ptr(), h3),
                    Strided {
                        ptr: k.as_ptr(),
                        row_stride: 1,
                        col_stride: h3,
                    },
                );
                if self.causal {
                    for (i, row) in scores.chunks_exact_mut(s).enumerate() {
                        row[first + i + 1..].fill(f32::MIN);
                    }
                }
                masked_softmax(isa, &mut scores, s, key_mask);
                product(
                    queries,
                    d,
                    s,
                    row_major(dst.at((seq * s + first) * h + head * d), h),
                    row_major(scores.as_ptr(), s),
                    row_major(v.as_ptr(), h3),
                );
            }
        };
        use rayon::prelude::*;
        (0..b * heads * blocks).into_par_iter().for_each(task);
        // SAFETY: the tasks wrote every element.
        let out = unsafe { out.assume_init() };
        Ok((CpuStorage::F32(out), Shape::from((b, s, h))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use candle_core::Device;

    /// The kernel equals candle's steps, with and without a mask, for one and several heads
    /// and sequences, and for sequences long enough to take their queries in blocks (400:
    /// one block of 336 and one of 64).
    #[test]
    fn equals_candles_steps() {
        let dev = Device::Cpu;
        assert_eq!(query_block(362), 362);
        assert_eq!(query_block(400), 336);
        for (b, s, heads, d) in [(1, 1, 1, 4), (2, 5, 3, 8), (3, 17, 4, 16), (2, 400, 2, 8)] {
            let h = heads * d;
            let qkv = Tensor::randn(0f32, 1.0, (b, s, 3 * h), &dev).unwrap();
            // The last sequence has its last two tokens masked (when it has more than two).
            let mask: Vec<f32> = (0..b * s)
                .map(|i| {
                    if i / s == b - 1 && i % s >= s.saturating_sub(2) && s > 2 {
                        f32::MIN
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, (b, s), &dev).unwrap();
            for (key_mask, causal) in [(None, false), (Some(&mask), false), (None, true)] {
                let ours = attention(&qkv, heads, key_mask, causal, false).unwrap();
                let want = with_candle(&qkv, heads, key_mask, causal).unwrap();
                assert_eq!(ours.dims(), &[b, s, h]);
                let diff = crate::kernels::max_abs_diff(&ours, &want);
                assert!(
                    diff < 1e-5,
                    "b {b} s {s} heads {heads} causal {causal}: {diff}"
                );
            }
        }
    }

    /// In bf16 (where it runs), the kernel equals the same steps in f64 on bf16-rounded
    /// queries, keys, values and exponentials of the scores, for heads of 32 and 64 values,
    /// sequences of one to many tiles of 8 queries and 16 keys (the last partial), with a
    /// mask and causally.
    #[test]
    fn bf16_heads_equal_their_rounded_steps() {
        if !bf16_attention::runs(32) {
            eprintln!("skipped: bf16 attention does not run on this CPU");
            return;
        }
        let round = |x: f32| f32::from_bits((crate::kernels::bf16::to_bf16(x) as u32) << 16);
        let dev = Device::Cpu;
        for (b, s, heads, d) in [
            (1, 1, 1, 32),
            (2, 13, 2, 64),
            (1, 70, 3, 32),
            (2, 400, 1, 64),
        ] {
            let h = heads * d;
            let qkv = Tensor::randn(0f32, 1.0, (b, s, 3 * h), &dev).unwrap();
            let mask: Vec<f32> = (0..b * s)
                .map(|i| {
                    if i % s == s / 2 && s > 2 {
                        f32::MIN
                    } else {
                        0.0
                    }
                })
                .collect();
            let x: Vec<f32> = qkv.flatten_all().unwrap().to_vec1().unwrap();
            let mask_t = Tensor::from_vec(mask.clone(), (b, s), &dev).unwrap();
            for (masked, causal) in [(false, false), (true, false), (false, true)] {
                let ours = attention(&qkv, heads, masked.then_some(&mask_t), causal, true)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let at = |seq: usize, j: usize, part: usize, head: usize, c: usize| {
                    round(x[(seq * s + j) * 3 * h + part * h + head * d + c]) as f64
                };
                let (mut worst, mut total, mut count) = (0f64, 0f64, 0usize);
                for seq in 0..b {
                    for head in 0..heads {
                        for i in 0..s {
                            let mut w: Vec<f64> = (0..s)
                                .map(|j| {
                                    let dot: f64 = (0..d)
                                        .map(|c| at(seq, i, 0, head, c) * at(seq, j, 1, head, c))
                                        .sum();
                                    let m = if masked {
                                        mask[seq * s + j] as f64
                                    } else {
                                        0.0
                                    };
                                    if causal && j > i {
                                        f64::NEG_INFINITY
                                    } else {
                                        dot + m
                                    }
                                })
                                .collect();
                            let max = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let sum: f64 = w.iter().map(|v| (v - max).exp()).sum();
                            // The kernel rounds e^(score - max) and divides the output by
                            // the sum of the unrounded ones.
                            for v in w.iter_mut() {
                                *v = round((*v - max).exp() as f32) as f64 / sum;
                            }
                            for c in 0..d {
                                let want: f64 = (0..s).map(|j| w[j] * at(seq, j, 2, head, c)).sum();
                                let got = ours[(seq * s + i) * h + head * d + c] as f64;
                                worst = worst.max((got - want).abs());
                                total += (got - want).abs();
                                count += 1;
                            }
                        }
                    }
                }
                // The exponentials are rounded from f32 values that differ from f64's in the
                // last bits, so one next to a rounding tie may round the other way
                // (up to 2^-8 of it): rare, and the only difference above f32 accumulation's
                // (about 1e-6 on these sizes).
                let mean = total / count as f64;
                assert!(
                    mean < 2e-5 && worst < 2e-2,
                    "b {b} s {s} heads {heads} d {d} masked {masked} causal {causal}: \
                     mean {mean}, worst {worst}"
                );
            }
        }
    }

    #[test]
    fn every_isa_gives_the_same_softmax() {
        let scores: Vec<f32> = (0..6 * 11)
            .map(|i| ((i * 13) % 17) as f32 * 0.4 - 3.0)
            .collect();
        let mask: Vec<f32> = (0..11)
            .map(|i| if i == 4 { f32::MIN } else { 0.0 })
            .collect();
        let mut want = scores.clone();
        masked_softmax_body(&mut want, 11, Some(&mask));
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            if isa > Isa::detected() {
                continue;
            }
            let mut got = scores.clone();
            masked_softmax(isa, &mut got, 11, Some(&mask));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-7, "{isa:?}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn a_bad_mask_or_head_count_is_an_error() {
        let qkv = Tensor::zeros((2, 3, 12), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(attention(&qkv, 3, None, false, false).is_err());
        let mask = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(attention(&qkv, 2, Some(&mask), false, false).is_err());
        assert!(attention(&qkv, 2, None, false, false).is_ok());
    }
}
