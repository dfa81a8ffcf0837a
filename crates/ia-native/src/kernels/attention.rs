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
use super::panels::{self, PackedF32};
use super::{
    applies, f32_slice, isa, multiversion, product, row_major, with_f32, Output, SharedOut, Strided,
};
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
        return with_candle(qkv, heads, key_mask, causal, None);
    }
    let qkv = qkv.contiguous()?;
    match key_mask {
        Some(mask) => with_f32("attention", &mask.contiguous()?, |mask| {
            qkv.apply_op1_no_bwd(&Attention {
                heads,
                key_mask: Some(mask),
                score_bias: None,
                causal,
                bf16,
            })
        }),
        None => qkv.apply_op1_no_bwd(&Attention {
            heads,
            key_mask: None,
            score_bias: None,
            causal,
            bf16,
        }),
    }
}

/// [`attention`] with `bias` [groups, heads, seq, seq] added to the scores of every head,
/// sequence i taking group i % groups (the batch a multiple of the groups): Swin's windows,
/// each head with its relative position bias plus each window's shift mask. The products run
/// in f32.
pub fn biased_attention(qkv: &Tensor, heads: usize, bias: &Tensor) -> Result<Tensor> {
    let (b, s, h3) = qkv.dims3()?;
    if heads == 0 || h3 % 3 != 0 || (h3 / 3) % heads != 0 {
        candle_core::bail!("attention: rows of {h3} do not split into 3 x {heads} heads")
    }
    let (groups, bias_heads, q, k) = bias.dims4()?;
    if groups == 0 || b % groups != 0 || (bias_heads, q, k) != (heads, s, s) {
        candle_core::bail!(
            "attention: a score bias {:?} for {b} sequences of {s} tokens, {heads} heads",
            bias.dims()
        )
    }
    if !applies(qkv) || !applies(bias) {
        return with_candle(qkv, heads, None, false, Some(bias));
    }
    let qkv = qkv.contiguous()?;
    with_f32("attention", &bias.contiguous()?, |bias| {
        qkv.apply_op1_no_bwd(&Attention {
            heads,
            key_mask: None,
            score_bias: Some(bias),
            causal: false,
            bf16: false,
        })
    })
}

/// The same function in candle's operations (other devices and types).
fn with_candle(
    qkv: &Tensor,
    heads: usize,
    key_mask: Option<&Tensor>,
    causal: bool,
    score_bias: Option<&Tensor>,
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
    if let Some(bias) = score_bias {
        let groups = bias.dim(0)?;
        scores = scores
            .reshape((b / groups, groups, heads, s, s))?
            .broadcast_add(&bias.to_dtype(scores.dtype())?)?
            .reshape((b, heads, s, s))?;
    }
    candle_nn::ops::softmax_last_dim(&scores)?
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, s, h))
}

/// Queries per task: all of them while a head's scores (queries x keys) fit in 512 KiB (the
/// L2 cache of a core of the AMD EPYCs this was measured on), else blocks of rows whose scores
/// do, so the scores are written, normalised and read again in cache rather than through
/// memory (Whisper's 1,500 positions: 9 MB of scores per head).
fn query_block(queries: usize, keys: usize) -> usize {
    const SCORES_IN_CACHE: usize = 128 * 1024;
    if queries * keys <= SCORES_IN_CACHE {
        queries
    } else {
        // A multiple of 16 rows: gemm's AVX2 micro-kernel covers 16 rows at a time.
        (SCORES_IN_CACHE / keys.max(1)).next_multiple_of(16).max(16)
    }
}

/// One head's attention for a block of queries, every operand read in place by its row
/// stride: `queries` rows of `q` (already scaled), `keys` rows of `k` and `v`, `d` values each;
/// the output rows written at `out`.
struct HeadBlock {
    q: (*const f32, usize),
    k: (*const f32, usize),
    v: (*const f32, usize),
    out: (*mut f32, usize),
    queries: usize,
    keys: usize,
    d: usize,
    /// Causal: query i sees keys 0..=`first + i` only.
    causal_from: Option<usize>,
}

/// One head's keys and values packed for [`panels::product_packed`] (`keys` as a linear
/// layer's [keys, d] weight, `values` transposed as a [d, keys] one), once for all of the
/// head's blocks of queries: gemm packed both again for every block (16 blocks a head at
/// Whisper's 1,500 positions), 7% of whisper-tiny.en's transcription (`perf`).
struct PackedHead {
    keys: PackedF32,
    values: PackedF32,
}

impl PackedHead {
    /// The head whose keys and values start at `k` and `v` (rows `stride` apart, `d` values
    /// each, `s` rows).
    fn pack(k: &[f32], v: &[f32], s: usize, d: usize, stride: usize) -> Self {
        Self {
            keys: PackedF32::pack_strided(k, s, d, stride, 1),
            values: PackedF32::pack_strided(v, d, s, 1, stride),
        }
    }
}

/// scores = q . k^T, plus `key_mask` (one value per key) or `score_bias` (one per score,
/// queries x keys), softmax, out = scores . v, on the head's `packed` keys and values where
/// they are given, else on gemm. A causal block computes scores only for the keys its last
/// query sees.
///
/// # Safety
/// The pointers cover the rows and strides `block` names, and no other thread writes the
/// output rows' `d` columns; `packed` is this head's ([`PackedHead::pack`]) and only where
/// [`PackedF32::runs_here`].
unsafe fn head_block(
    isa: super::Isa,
    block: HeadBlock,
    key_mask: Option<&[f32]>,
    score_bias: Option<&[f32]>,
    packed: Option<&PackedHead>,
) {
    let HeadBlock {
        q,
        k,
        v,
        out,
        queries,
        d,
        causal_from,
        ..
    } = block;
    let keys = match causal_from {
        Some(first) => block.keys.min(first + queries),
        None => block.keys,
    };
    let mut scores = vec![0f32; queries * keys];
    #[cfg(target_arch = "x86_64")]
    if let Some(head) = packed.filter(|head| head.values.inputs() == keys) {
        // SAFETY: q holds `queries` rows of d at stride q.1; scores is queries x keys and
        // out's rows are out.1 apart, written by this task only; the packing ran here.
        unsafe {
            let q_rows = std::slice::from_raw_parts(q.0, (queries - 1) * q.1 + d);
            let scores_out = SharedOut(scores.as_mut_ptr());
            panels::product_packed(
                q_rows,
                queries,
                q.1,
                &head.keys,
                0,
                keys,
                scores_out,
                keys,
                |_, _| {},
            );
            softmax_block(isa, &mut scores, keys, causal_from, key_mask, score_bias);
            panels::product_packed(
                &scores,
                queries,
                keys,
                &head.values,
                0,
                d,
                SharedOut(out.0),
                out.1,
                |_, _| {},
            );
        }
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = packed;
    // scores = q . k^T: k^T (d x keys) has element (c, j) at j * k.1 + c.
    product(
        queries,
        keys,
        d,
        row_major(scores.as_mut_ptr(), keys),
        row_major(q.0, q.1),
        Strided {
            ptr: k.0,
            row_stride: 1,
            col_stride: k.1,
        },
    );
    softmax_block(isa, &mut scores, keys, causal_from, key_mask, score_bias);
    product(
        queries,
        d,
        keys,
        row_major(out.0, out.1),
        row_major(scores.as_ptr(), keys),
        row_major(v.0, v.1),
    );
}

/// A block's causal mask (query i sees keys up to `first + i`), key mask or score bias, and
/// softmax, on its scores (rows of `keys`).
fn softmax_block(
    isa: super::Isa,
    scores: &mut [f32],
    keys: usize,
    causal_from: Option<usize>,
    key_mask: Option<&[f32]>,
    score_bias: Option<&[f32]>,
) {
    if let Some(first) = causal_from {
        for (i, row) in scores.chunks_exact_mut(keys).enumerate() {
            row[(first + i + 1).min(keys)..].fill(f32::MIN);
        }
    }
    masked_softmax(isa, scores, keys, key_mask.map(|m| &m[..keys]), score_bias);
}

/// Attention of `m` new queries over one sequence's cache, causally: `q` [m, heads, d]
/// (already scaled), `keys` and `values` [n, kv_heads, d] with the m new positions last, each
/// query head reading the key/value head of its group (heads / kv_heads query heads each, as
/// transformers' `repeat_kv`, without repeating anything). Returns [m, heads * d]. f32 on the
/// CPU runs the kernel, one task per (head, block of queries); elsewhere candle's operations.
pub fn cached_attention(q: &Tensor, keys: &Tensor, values: &Tensor) -> Result<Tensor> {
    let (m, heads, d) = q.dims3()?;
    let (n, kv_heads, kd) = keys.dims3()?;
    if kv_heads == 0 || heads % kv_heads != 0 || kd != d || values.dims() != keys.dims() || m > n {
        candle_core::bail!(
            "cached attention: {m} queries of {heads} x {d} over keys {:?} and values {:?}",
            keys.dims(),
            values.dims()
        )
    }
    if ![q, keys, values].into_iter().all(applies) {
        return cached_with_candle(q, keys, values);
    }
    let (q, keys, values) = (q.contiguous()?, keys.contiguous()?, values.contiguous()?);
    let group = heads / kv_heads;
    let past = n - m;
    let block = query_block(m, n);
    let blocks = m.div_ceil(block.max(1));
    let mut out = Output::new(m * heads * d);
    let dst = out.ptr();
    let isa = isa();
    with_f32("cached attention", &q, |q| {
        with_f32("cached attention", &keys, |k| {
            with_f32("cached attention", &values, |v| {
                let task = |index: usize| {
                    let (head, first) = (index / blocks, index % blocks * block);
                    let kv = head / group;
                    // SAFETY: q is m rows of heads * d, k and v n rows of kv_heads * d, out m
                    // rows of heads * d; this task alone writes its head's columns of its
                    // block's rows.
                    unsafe {
                        head_block(
                            isa,
                            HeadBlock {
                                q: (q[first * heads * d + head * d..].as_ptr(), heads * d),
                                k: (k[kv * d..].as_ptr(), kv_heads * d),
                                v: (v[kv * d..].as_ptr(), kv_heads * d),
                                out: (dst.at(first * heads * d + head * d), heads * d),
                                queries: block.min(m - first),
                                keys: n,
                                d,
                                causal_from: Some(past + first),
                            },
                            None,
                            None,
                            // Causal blocks read different numbers of keys: on gemm.
                            None,
                        )
                    }
                };
                use rayon::prelude::*;
                (0..heads * blocks).into_par_iter().for_each(task);
                Ok(())
            })
        })
    })?;
    // SAFETY: the tasks wrote every element (m * heads * d is 0 when there are no tasks).
    let out = unsafe { out.assume_init() };
    Tensor::from_vec(out, (m, heads * d), q.device())
}

/// [`cached_attention`] in candle's operations (other devices and types): softmax in f32, as
/// transformers computes it for half precisions.
fn cached_with_candle(q: &Tensor, keys: &Tensor, values: &Tensor) -> Result<Tensor> {
    let (m, heads, d) = q.dims3()?;
    let (n, kv, _) = keys.dims3()?;
    let group = heads / kv;
    let q = q
        .reshape((m, kv, group, d))?
        .permute((1, 2, 0, 3))?
        .contiguous()?
        .reshape((kv, group * m, d))?;
    let scores = q.matmul(&keys.transpose(0, 1)?.transpose(1, 2)?)?;
    // Causal: new token i (at position past + i) sees keys 0..=past + i.
    let past = n - m;
    let mask: Vec<f32> = (0..m)
        .flat_map(|i| (0..n).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (m, n), q.device())?.to_dtype(scores.dtype())?;
    let scores = scores
        .reshape((kv, group, m, n))?
        .broadcast_add(&mask)?
        .reshape((kv, group * m, n))?;
    let dtype = scores.dtype();
    candle_nn::ops::softmax_last_dim(&scores.to_dtype(candle_core::DType::F32)?)?
        .to_dtype(dtype)?
        .matmul(&values.transpose(0, 1)?.contiguous()?)?
        .reshape((kv, group, m, d))?
        .permute((2, 0, 1, 3))?
        .contiguous()?
        .reshape((m, heads * d))
}

struct Attention<'a> {
    heads: usize,
    key_mask: Option<&'a [f32]>,
    /// [groups, heads, seq, seq] ([`biased_attention`]).
    score_bias: Option<&'a [f32]>,
    causal: bool,
    bf16: bool,
}

/// Softmax of each row of `width` scores after adding `mask` (the same for every row) and
/// `bias` (rows of `width`, one per score row).
#[inline(always)]
fn masked_softmax_body(
    scores: &mut [f32],
    width: usize,
    mask: Option<&[f32]>,
    bias: Option<&[f32]>,
) {
    for (i, row) in scores.chunks_exact_mut(width).enumerate() {
        for add in [mask, bias.map(|b| &b[i * width..(i + 1) * width])]
            .into_iter()
            .flatten()
        {
            for (v, &m) in row.iter_mut().zip(add) {
                *v += m;
            }
        }
        softmax_body(row);
    }
}

multiversion!(fn masked_softmax(scores: &mut [f32], width: usize, mask: Option<&[f32]>, bias: Option<&[f32]>) => masked_softmax_body);

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
        let block = query_block(s, s);
        let blocks = s.div_ceil(block);
        let mut out = Output::new(b * s * h);
        let dst = out.ptr();
        let isa = isa();
        if self.bf16 && self.score_bias.is_none() && bf16_attention::runs(d) {
            let shape = bf16_attention::Shape { b, s, h, heads, d };
            // SAFETY: `runs(d)`; qkv is b * s rows of h3, the mask b * s values; out holds
            // b * s * h f32.
            unsafe { bf16_attention::attention(qkv, shape, self.key_mask, self.causal, dst) };
            // SAFETY: the tasks wrote every element.
            let out = unsafe { out.assume_init() };
            return Ok((CpuStorage::F32(out), Shape::from((b, s, h))));
        }
        use rayon::prelude::*;
        // Heads of several blocks get their keys and values packed once for all their blocks
        // (not causal ones: each block reads a different number of keys).
        let packed: Vec<PackedHead> = if blocks > 1 && !self.causal && PackedF32::runs_here() {
            (0..b * heads)
                .into_par_iter()
                .map(|i| {
                    let rows = &qkv[i / heads * s * h3..(i / heads + 1) * s * h3];
                    let at = i % heads * d;
                    PackedHead::pack(&rows[h + at..], &rows[2 * h + at..], s, d, h3)
                })
                .collect()
        } else {
            Vec::new()
        };
        let task = |index: usize| {
            let (seq, head, first) = (
                index / (heads * blocks),
                index / blocks % heads,
                index % blocks * block,
            );
            let rows = &qkv[seq * s * h3..(seq + 1) * s * h3];
            // SAFETY: q, k and v are rows of d values at a stride of h3 within `rows`; the
            // output block is this sequence's rows first.. (stride h) at this head's d
            // columns, which no other task writes.
            unsafe {
                head_block(
                    isa,
                    HeadBlock {
                        q: (rows[first * h3 + head * d..].as_ptr(), h3),
                        k: (rows[h + head * d..].as_ptr(), h3),
                        v: (rows[2 * h + head * d..].as_ptr(), h3),
                        out: (dst.at((seq * s + first) * h + head * d), h),
                        queries: block.min(s - first),
                        keys: s,
                        d,
                        causal_from: self.causal.then_some(first),
                    },
                    self.key_mask.map(|m| &m[seq * s..(seq + 1) * s]),
                    self.score_bias.map(|bias| {
                        let groups = bias.len() / (heads * s * s);
                        let at = ((seq % groups * heads + head) * s + first) * s;
                        &bias[at..at + block.min(s - first) * s]
                    }),
                    packed.get(seq * heads + head),
                )
            }
        };
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
        assert_eq!(query_block(362, 362), 362);
        assert_eq!(query_block(400, 400), 336);
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
                let want = with_candle(&qkv, heads, key_mask, causal, None).unwrap();
                assert_eq!(ours.dims(), &[b, s, h]);
                let diff = crate::kernels::max_abs_diff(&ours, &want);
                assert!(
                    diff < 1e-5,
                    "b {b} s {s} heads {heads} causal {causal}: {diff}"
                );
            }
        }
    }

    /// With a score bias of one or several groups, in queries of one block or two (400), the
    /// kernel equals candle's steps; a bias that does not fit is an error.
    #[test]
    fn biased_scores_equal_candles_steps() {
        let dev = Device::Cpu;
        for (b, s, heads, d, groups) in [(1, 5, 1, 4, 1), (6, 16, 3, 8, 3), (2, 400, 2, 8, 2)] {
            let h = heads * d;
            let qkv = Tensor::randn(0f32, 1.0, (b, s, 3 * h), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, (groups, heads, s, s), &dev).unwrap();
            let ours = biased_attention(&qkv, heads, &bias).unwrap();
            let want = with_candle(&qkv, heads, None, false, Some(&bias)).unwrap();
            let diff = crate::kernels::max_abs_diff(&ours, &want);
            assert!(
                diff < 1e-5,
                "b {b} s {s} heads {heads} groups {groups}: {diff}"
            );
        }
        let qkv = Tensor::zeros((3, 4, 12), candle_core::DType::F32, &dev).unwrap();
        let two_groups = Tensor::zeros((2, 2, 4, 4), candle_core::DType::F32, &dev).unwrap();
        assert!(biased_attention(&qkv, 2, &two_groups).is_err());
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

    /// Attention over a cache equals candle's steps (run in f64) for new queries after a past
    /// and without one, one query (a decode step), grouped heads, and blocks of queries
    /// (300 over 500 keys: blocks of 272 and 28).
    #[test]
    fn cached_attention_equals_candles_steps() {
        let dev = Device::Cpu;
        assert_eq!(query_block(300, 500), 272);
        for (m, n, heads, kv, d) in [
            (1, 1, 1, 1, 4),
            (1, 9, 4, 2, 8),
            (5, 5, 2, 2, 16),
            (3, 11, 6, 2, 8),
            (300, 500, 2, 1, 8),
        ] {
            let q = Tensor::randn(0f32, 1.0, (m, heads, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (n, kv, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (n, kv, d), &dev).unwrap();
            let ours = cached_attention(&q, &k, &v).unwrap();
            assert_eq!(ours.dims(), &[m, heads * d]);
            let f64 = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
            let want = cached_attention(&f64(&q), &f64(&k), &f64(&v))
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap();
            let diff = crate::kernels::max_abs_diff(&ours, &want);
            assert!(diff < 1e-5, "m {m} n {n} heads {heads} kv {kv}: {diff}");
        }
        let q = Tensor::zeros((2, 3, 4), candle_core::DType::F32, &dev).unwrap();
        let k = Tensor::zeros((2, 2, 4), candle_core::DType::F32, &dev).unwrap();
        assert!(
            cached_attention(&q, &k, &k).is_err(),
            "3 heads over 2 groups"
        );
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
        let bias: Vec<f32> = (0..6 * 11).map(|i| (i % 7) as f32 * 0.3).collect();
        masked_softmax_body(&mut want, 11, Some(&mask), Some(&bias));
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            if isa > Isa::detected() {
                continue;
            }
            let mut got = scores.clone();
            masked_softmax(isa, &mut got, 11, Some(&mask), Some(&bias));
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
