//! Linear layers: `act(x . W + bias) + residual` in one pass over the output.
//!
//! The weight is packed once at load: for [`super::panels`] on CPUs with AVX2 or AVX-512, in
//! bf16 for `--precision bf16`, in quantised blocks; elsewhere it is stored transposed
//! (`[in, out]` row-major) for gemm, which packs its operands on every call. A tied head's
//! token table is used as it lies ([`Weight::Rows`]). The output columns are split between
//! the threads, each running the product on one thread and then the bias, activation and
//! residual add on its own block while it is still in cache: for the few rows of a short
//! batch (128 x 768 x 3072) gemm's own split makes two threads slower than one; split by
//! columns they are about twice as fast.

use super::bf16::{self, Activations, PackedBf16};
use super::math;
use super::panels::{self, PackedF32};
use super::quant::{self, QuantMatrix};
use super::{
    applies, f32_slice, isa, multiversion, product, row_major, with_f32, Isa, Output, Strided,
};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// The activation a linear layer applies to its output, in the same pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// transformers' "gelu": the erf form.
    GeluErf,
    /// CLIP's "quick_gelu": x * sigmoid(1.702 x).
    QuickGelu,
}

/// A linear layer's weight as the kernel takes it.
pub enum Weight {
    /// [in, out] (the checkpoint's [out, in] transposed once), in the model's dtype, for gemm.
    Transposed(Tensor),
    /// f32 packed once for the AVX2 kernel ([`PackedF32`]), on CPUs where it runs.
    Panels(PackedF32),
    /// bf16 laid out for AMX and AVX512-BF16 ([`PackedBf16`]); the activations stay f32
    /// around the product.
    Bf16(PackedBf16),
    /// Q8_0 or Q4_K blocks laid out for the quantised kernel ([`QuantMatrix`]); the
    /// activations are quantised per block of 32 around the product.
    Quant(std::sync::Arc<QuantMatrix>),
    /// f32 [out, in] as the checkpoint keeps it, shared with another user: a tied head's
    /// token table, which the embeddings look up. No packed copy of a vocabulary-sized matrix
    /// (Qwen2-0.5B's is 545 MB); a decode step's few rows take dot products with its rows
    /// where they lie ([`DOT_ROWS`]), more rows go through gemm.
    Rows(Tensor),
}

impl Weight {
    /// `weight` [out, in] as checkpoints keep it; `bf16` packs it for the bf16 products (f32
    /// CPU tensors).
    pub fn new(weight: &Tensor, bf16: bool) -> Result<Self> {
        let panels = applies(weight) && PackedF32::runs_here();
        if !bf16 && !panels {
            return Ok(Weight::Transposed(weight.t()?.contiguous()?));
        }
        // Both packings read the [out, in] rows as they are: a transposed copy through
        // candle's strided copy had been most of a bf16 model's load.
        let (n, k) = weight.dims2()?;
        let data = weight
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(if bf16 {
            Weight::Bf16(PackedBf16::pack(&data, n, k))
        } else {
            Weight::Panels(PackedF32::pack(&data, n, k))
        })
    }

    /// A language model's head tied to the token embeddings' `table` [vocab, hidden]: the f32
    /// table itself ([`Weight::Rows`]), or with `bf16` a bf16 copy packed for the products,
    /// the table staying f32 for the lookups (bf16 halves what a decode step reads, and the
    /// head is its largest product).
    pub fn tied(table: &Tensor, bf16: bool) -> Result<Self> {
        if bf16 {
            Weight::new(table, true)
        } else {
            Ok(Weight::Rows(table.clone()))
        }
    }

    /// (inputs, outputs).
    fn dims(&self) -> Result<(usize, usize)> {
        match self {
            Weight::Transposed(t) => t.dims2(),
            Weight::Panels(p) => Ok((p.inputs(), p.outputs())),
            Weight::Bf16(p) => Ok((p.inputs(), p.outputs())),
            Weight::Quant(q) => Ok((q.inputs(), q.outputs())),
            Weight::Rows(t) => {
                let (outputs, inputs) = t.dims2()?;
                Ok((inputs, outputs))
            }
        }
    }
}

/// `act(x [.., in] . weight [in, out] + bias [out]) + residual [.., out]`, the product over
/// all leading dimensions at once. f32 on the CPU runs the kernel; other types and devices
/// run the same steps through candle (bf16 weights need f32 on the CPU).
pub fn linear(
    x: &Tensor,
    weight: &Weight,
    bias: Option<&Tensor>,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (_, outputs) = weight.dims()?;
    let (dims, inputs, rows) = rows_of(x, outputs);
    let on_kernels = [Some(x), bias, residual].into_iter().flatten().all(applies);
    match weight {
        Weight::Transposed(w) if !(on_kernels && applies(w)) => {
            return with_candle(x, w, bias, act, residual)
        }
        Weight::Rows(w) if !(on_kernels && applies(w)) => {
            return with_candle(x, &w.t()?, bias, act, residual)
        }
        Weight::Panels(_) | Weight::Bf16(_) | Weight::Quant(_) if !on_kernels => {
            candle_core::bail!(
                "linear: packed f32, bf16 and quantised weights take f32 activations on the CPU"
            )
        }
        _ => {}
    }
    let x = x.contiguous()?.reshape((rows, inputs))?;
    let residual = residual
        .map(|r| r.contiguous()?.reshape((rows, outputs)))
        .transpose()?;
    let with_weight = |weight: Weights<'_>| {
        let apply = |bias: Option<&[f32]>| {
            let op = Linear { weight, bias, act };
            match &residual {
                Some(r) => x.apply_op2_no_bwd(r, &op),
                None => x.apply_op1_no_bwd(&op),
            }
        };
        with_optional_f32(
            "linear",
            bias.map(Tensor::contiguous).transpose()?.as_ref(),
            apply,
        )
    };
    let y = match weight {
        Weight::Panels(p) => with_weight(Weights::Panels(p))?,
        Weight::Bf16(p) => with_weight(Weights::Bf16(p))?,
        Weight::Quant(q) => with_weight(Weights::Quant(q))?,
        Weight::Transposed(w) => {
            let w = w.contiguous()?;
            with_f32("linear", &w, |data| {
                with_weight(Weights::F32 {
                    data,
                    inputs: w.dim(0)?,
                    outputs,
                })
            })?
        }
        Weight::Rows(w) => {
            let w = w.contiguous()?;
            with_f32("linear", &w, |data| {
                with_weight(Weights::Rows {
                    data,
                    inputs,
                    outputs,
                })
            })?
        }
    };
    y.reshape(dims)
}

/// A feed-forward block, `second(act(first(x))) + residual` with each layer's bias: two
/// [`linear`] layers. Where both weights are bf16 and the AMX kernel runs
/// ([`bf16::writes_tiles`]), the first product rounds its finished values to bf16 straight
/// into the second's input tiles: the inner rows (four times as wide as the block's input in
/// BERT and ViT) are neither written in f32 nor read back and converted by the second
/// product. The values are the same: the second [`linear`] rounds the same f32 values the
/// same way.
pub fn feed_forward(
    x: &Tensor,
    first: (&Weight, Option<&Tensor>),
    act: Activation,
    second: (&Weight, Option<&Tensor>),
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    if let (Weight::Bf16(p1), Weight::Bf16(p2)) = (first.0, second.0) {
        let tensors = [Some(x), first.1, second.1, residual];
        if bf16::writes_tiles()
            && p1.outputs() == p2.inputs()
            && p1.outputs().is_multiple_of(PackedBf16::COLUMN_ALIGN)
            && p1.inputs() > 0
            && tensors.into_iter().flatten().all(applies)
        {
            return feed_forward_in_tiles(x, (p1, first.1), act, (p2, second.1), residual);
        }
    }
    let inner = linear(x, first.0, first.1, act, None)?;
    linear(&inner, second.0, second.1, Activation::Identity, residual)
}

/// [`feed_forward`] with the inner rows in bf16 tiles (its conditions hold).
fn feed_forward_in_tiles(
    x: &Tensor,
    first: (&PackedBf16, Option<&Tensor>),
    act: Activation,
    second: (&PackedBf16, Option<&Tensor>),
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (dims, inputs, m) = rows_of(x, second.0.outputs());
    let contiguous = |t: Option<&Tensor>| t.map(|t| t.contiguous()).transpose();
    let (x, residual) = (x.contiguous()?, contiguous(residual)?);
    let (b1, b2) = (contiguous(first.1)?, contiguous(second.1)?);
    let y = with_f32("feed_forward", &x, |x| {
        with_optional_f32("feed_forward", b1.as_ref(), |b1| {
            with_optional_f32("feed_forward", b2.as_ref(), |b2| {
                with_optional_f32("feed_forward", residual.as_ref(), |residual| {
                    let inner = Linear {
                        weight: Weights::Bf16(first.0),
                        bias: b1,
                        act,
                    };
                    let outer = Linear {
                        weight: Weights::Bf16(second.0),
                        bias: b2,
                        act: Activation::Identity,
                    };
                    inner.check(m, inputs, None)?;
                    outer.check(m, first.0.outputs(), residual)?;
                    let mut rows = Activations::to_be_written(m, second.0);
                    if m > 0 {
                        let a = Activations::convert(x, m, inputs, first.0);
                        inner.run_into_tiles(&a, m, &mut rows);
                    }
                    let (y, _) =
                        outer.run_with(&[], m, first.0.outputs(), 0, Some(&rows), residual)?;
                    let CpuStorage::F32(y) = y else {
                        unreachable!("the kernels write f32")
                    };
                    Ok(y)
                })
            })
        })
    })?;
    Tensor::from_vec(y, dims, x.device())
}

/// `f` of `t`'s f32 values, where there is a `t` ([`with_f32`], for `op`).
fn with_optional_f32<R>(
    op: &str,
    t: Option<&Tensor>,
    f: impl FnOnce(Option<&[f32]>) -> Result<R>,
) -> Result<R> {
    match t {
        Some(t) => with_f32(op, t, |v| f(Some(v))),
        None => f(None),
    }
}

/// The shape of `x [.., inputs]` with `outputs` as its last dimension, the inputs, and the
/// rows (every leading dimension together) a product over it takes.
fn rows_of(x: &Tensor, outputs: usize) -> (Vec<usize>, usize, usize) {
    let mut dims = x.dims().to_vec();
    let inputs = *dims.last().expect("a tensor with dimensions");
    *dims.last_mut().expect("a tensor with dimensions") = outputs;
    (dims, inputs, x.elem_count() / inputs.max(1))
}

/// The same function in candle's operations.
fn with_candle(
    x: &Tensor,
    weight_t: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    finish_with_candle(x.broadcast_matmul(weight_t)?, bias, act, residual)
}

/// `act(y)` in candle's operations (the fallbacks' activation).
pub(super) fn activate_with_candle(y: Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Identity => Ok(y),
        Activation::GeluErf => y.gelu_erf(),
        Activation::QuickGelu => &y * candle_nn::ops::sigmoid(&(&y * 1.702)?)?,
    }
}

/// The kernels' epilogue in candle's operations: `act(y + bias) + residual`.
fn finish_with_candle(
    mut y: Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    y = activate_with_candle(y, act)?;
    match residual {
        Some(r) => y + r,
        None => Ok(y),
    }
}

#[derive(Clone, Copy)]
enum Weights<'a> {
    F32 {
        data: &'a [f32],
        inputs: usize,
        outputs: usize,
    },
    Panels(&'a PackedF32),
    Bf16(&'a PackedBf16),
    Quant(&'a QuantMatrix),
    /// [outputs, inputs] row-major ([`Weight::Rows`]).
    Rows {
        data: &'a [f32],
        inputs: usize,
        outputs: usize,
    },
}

impl Weights<'_> {
    /// (inputs, outputs).
    fn dims(&self) -> (usize, usize) {
        match *self {
            Weights::F32 {
                inputs, outputs, ..
            }
            | Weights::Rows {
                inputs, outputs, ..
            } => (inputs, outputs),
            Weights::Panels(p) => (p.inputs(), p.outputs()),
            Weights::Bf16(p) => (p.inputs(), p.outputs()),
            Weights::Quant(q) => (q.inputs(), q.outputs()),
        }
    }
}

struct Linear<'a> {
    weight: Weights<'a>,
    bias: Option<&'a [f32]>,
    act: Activation,
}

impl Linear<'_> {
    fn run(&self, x: &[f32], lx: &Layout, residual: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let (m, k) = lx.shape().dims2()?;
        self.run_rows(x, m, k, k, residual)
    }

    /// The product over `m` rows of `k` inputs, row r starting at `x[r * row_stride]` (rows
    /// may overlap: the windows of a convolution).
    fn run_rows(
        &self,
        x: &[f32],
        m: usize,
        k: usize,
        row_stride: usize,
        residual: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        if row_stride != k && matches!(self.weight, Weights::Quant(_)) {
            candle_core::bail!("linear: overlapping rows need f32 or bf16 weights")
        }
        if m > 0 && x.len() < (m - 1) * row_stride + k {
            candle_core::bail!("linear: {} values do not hold {m} rows of {k}", x.len())
        }
        self.check(m, k, residual)?;
        let activations = match self.weight {
            Weights::Bf16(p) if m > 0 && p.outputs() > 0 => {
                Some(Activations::convert(x, m, row_stride, p))
            }
            Weights::Bf16(_)
            | Weights::F32 { .. }
            | Weights::Panels(_)
            | Weights::Quant(_)
            | Weights::Rows { .. } => None,
        };
        self.run_with(x, m, k, row_stride, activations.as_ref(), residual)
    }

    /// The bias, activation and residual of the block of columns from `start` of the `n`
    /// outputs.
    fn epilogue_from<'e>(
        &'e self,
        start: usize,
        n: usize,
        residual: Option<&'e [f32]>,
    ) -> Epilogue<'e> {
        Epilogue {
            bias: self.bias.map(|b| &b[start..]),
            act: self.act,
            residual: residual.map(|res| &res[start..]),
            residual_stride: n,
        }
    }

    /// Checks the weight against `m` rows of `k` inputs, the bias and the residual, and that
    /// bf16 products run here.
    fn check(&self, m: usize, k: usize, residual: Option<&[f32]>) -> Result<()> {
        let (k2, n) = self.weight.dims();
        if k != k2 {
            candle_core::bail!("linear: rows of {k} against weights of {k2}")
        }
        if matches!(self.weight, Weights::Bf16(_)) && !bf16::available() {
            candle_core::bail!(
                "linear: bf16 weights need AMX-BF16 or AVX512-BF16: {}",
                bf16::unavailable_reason()
            )
        }
        if self.bias.is_some_and(|b| b.len() != n) || residual.is_some_and(|r| r.len() != m * n) {
            candle_core::bail!("linear: bias or residual do not match the {m} x {n} output")
        }
        Ok(())
    }

    /// [`Self::run_rows`] once checked, with bf16 weights' activations already in their
    /// layout (`activations`, from `x` or written by a product; `x` is not read then).
    fn run_with(
        &self,
        x: &[f32],
        m: usize,
        k: usize,
        row_stride: usize,
        activations: Option<&Activations>,
        residual: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, n) = self.weight.dims();
        let align = match self.weight {
            Weights::F32 { .. } | Weights::Rows { .. } => 16,
            Weights::Panels(_) => panels::PANEL,
            Weights::Bf16(_) => PackedBf16::COLUMN_ALIGN,
            Weights::Quant(_) => quant::GROUP,
        };
        if m == 0 || n == 0 {
            return Ok((CpuStorage::F32(vec![]), Shape::from((m, n))));
        }
        // Every block below covers all m rows of its columns, and the blocks cover all n.
        // Every kernel overwrites them, and none writes anything over k = 0 inputs.
        let mut out = if k == 0 {
            Output::zeroed(m * n)
        } else {
            Output::new(m * n)
        };
        let (width, starts) = column_blocks(n, align);
        let dst = out.ptr();
        let isa = isa();
        let quantised = match self.weight {
            Weights::Quant(_) => Some(quant::Activations::new(x, m, k)),
            Weights::F32 { .. } | Weights::Panels(_) | Weights::Bf16(_) | Weights::Rows { .. } => {
                None
            }
        };
        let block = |start: usize| {
            let cols = width.min(n - start);
            // The bias, activation and residual of this block's columns.
            let epilogue = self.epilogue_from(start, n, residual);
            // ... applied to rows r0..r0 + rows of them in the output.
            // SAFETY: as below, this block's columns of those rows.
            let finish = |r0: usize, rows: usize| unsafe {
                epilogue.apply(isa, dst.at(r0 * n + start), n, r0, rows, cols)
            };
            match (self.weight, activations) {
                (Weights::Quant(q), _) => {
                    let x = quantised.as_ref().expect("quantised above");
                    // SAFETY: dst is m x n row-major; this block writes only its columns.
                    unsafe { quant::product_block(x, q, start, cols, dst, n) }
                }
                (Weights::Panels(w), _) => {
                    #[cfg(target_arch = "x86_64")]
                    {
                        // SAFETY: the weights were packed because the CPU runs the kernel; x
                        // holds m rows at row_stride (checked above); dst is m x n row-major
                        // and this block writes only its columns. It finishes its rows block
                        // by block.
                        unsafe {
                            panels::product_packed(x, m, row_stride, w, start, cols, dst, n, finish)
                        };
                        return;
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("packed only on x86_64: {}", w.outputs())
                }
                // SAFETY: x is m x k row-major, w is k x n row-major and the right-hand side
                // is its columns start..start+cols; dst is m x n row-major and this block
                // writes only those columns, which no other block touches.
                (Weights::F32 { data: w, .. }, _) => unsafe {
                    product(
                        m,
                        cols,
                        k,
                        row_major(dst.at(start), n),
                        row_major(x.as_ptr(), row_stride),
                        row_major(w.as_ptr().add(start), n),
                    )
                },
                (Weights::Rows { data: w, .. }, _) => {
                    let w = &w[start * k..(start + cols) * k];
                    if m <= DOT_ROWS {
                        let mut block = vec![0f32; m * cols];
                        row_dots(isa, x, m, row_stride, w, k, &mut block);
                        for (r, row) in block.chunks_exact(cols).enumerate() {
                            // SAFETY: row r's columns start..start+cols of the m x n output,
                            // written by this block only.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    row.as_ptr(),
                                    dst.at(r * n + start),
                                    cols,
                                )
                            }
                        }
                    } else {
                        // SAFETY: x is m rows of k at row_stride; w's rows are the columns
                        // of a k x cols right-hand side (row stride 1, column stride k);
                        // dst is m x n row-major and this block writes only its columns.
                        unsafe {
                            product(
                                m,
                                cols,
                                k,
                                row_major(dst.at(start), n),
                                row_major(x.as_ptr(), row_stride),
                                Strided {
                                    ptr: w.as_ptr(),
                                    row_stride: 1,
                                    col_stride: k,
                                },
                            )
                        }
                    }
                }
                (Weights::Bf16(p), Some(a)) => {
                    let padded = width.min(p.padded_outputs() - start);
                    if start + padded <= n {
                        // SAFETY: this block's columns of the m x n output, written by this
                        // block only, epilogue included.
                        unsafe {
                            bf16::product_block(a, p, start, padded, dst.at(start), n, m, &epilogue)
                        };
                        return;
                    }
                    // Columns padded past the output's would reach into the next row:
                    // through a buffer.
                    let mut block = vec![0f32; m * padded];
                    // SAFETY: block holds m rows of `padded`.
                    unsafe {
                        bf16::product_block(
                            a,
                            p,
                            start,
                            padded,
                            block.as_mut_ptr(),
                            padded,
                            m,
                            &Epilogue::NONE,
                        )
                    };
                    for (r, row) in block.chunks_exact(padded).enumerate() {
                        // SAFETY: row r's columns start..start+cols of the m x n output,
                        // written by this block only.
                        unsafe {
                            std::ptr::copy_nonoverlapping(row.as_ptr(), dst.at(r * n + start), cols)
                        }
                    }
                }
                (Weights::Bf16(_), None) => unreachable!("converted above"),
            }
            finish(0, m);
        };
        run_blocks(starts, block);
        // SAFETY: every element was written above.
        let out = unsafe { out.assume_init() };
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    /// The product of bf16 weights over `m` rows of `a`, written in bf16 into `to` as the
    /// inputs of the next product ([`bf16::product_block_to_tiles`]); the weight's outputs are
    /// whole blocks of [`PackedBf16::COLUMN_ALIGN`] columns.
    fn run_into_tiles(&self, a: &Activations, m: usize, to: &mut Activations) {
        let Weights::Bf16(p) = self.weight else {
            unreachable!("written into tiles by bf16 weights only")
        };
        let n = p.outputs();
        assert!(bf16::writes_tiles() && n.is_multiple_of(PackedBf16::COLUMN_ALIGN));
        let (width, starts) = column_blocks(n, PackedBf16::COLUMN_ALIGN);
        let to = to.written_by();
        run_blocks(starts, |start| {
            let epilogue = self.epilogue_from(start, n, None);
            // SAFETY: `to` is borrowed for the call (product_block_to_tiles checks that it
            // holds these rows and columns); this block writes only its columns, whole steps
            // of 32.
            unsafe {
                bf16::product_block_to_tiles(a, p, start, width.min(n - start), m, &epilogue, to)
            }
        });
    }
}

/// The output's `n` columns split between the threads in blocks of whole `align`s (16
/// columns: one AVX-512 register; 32 for the bf16 kernels' two panels): the blocks' width and
/// each block's first column.
fn column_blocks(n: usize, align: usize) -> (usize, Vec<usize>) {
    let threads = rayon::current_num_threads().max(1);
    let width = n.div_ceil(threads).div_ceil(align) * align;
    (width, (0..n).step_by(width.max(1)).collect())
}

/// `block` of each first column, on the threads where there are several.
fn run_blocks(starts: Vec<usize>, block: impl Fn(usize) + Send + Sync) {
    if starts.len() <= 1 {
        starts.into_iter().for_each(block);
    } else {
        use rayon::prelude::*;
        starts.into_par_iter().for_each(block);
    }
}

/// The most rows [`Weight::Rows`] multiplies by dot products; more go through gemm, whose
/// packing of the whole table per call costs less than the dot products' lower arithmetic
/// rate once there are that many rows to share it.
const DOT_ROWS: usize = 16;

/// `dst[r][c] = x_r . w_c` for the `m` rows of `x` (`k` values, `row_stride` apart) and the
/// rows of `w` (`k` values each); dst is `m x (w.len() / k)` row-major. Four rows of `w` at a
/// time against every row of `x`, so each is read from memory once (a decode step reads a
/// vocabulary-sized table for a handful of rows).
#[inline(always)]
fn row_dots_body(x: &[f32], m: usize, row_stride: usize, w: &[f32], k: usize, dst: &mut [f32]) {
    let cols = w.len() / k.max(1);
    let mut c0 = 0;
    while c0 < cols {
        let group = (cols - c0).min(4);
        // A partial group repeats its last row (computed, not stored).
        let row = |q: usize| &w[(c0 + q.min(group - 1)) * k..][..k];
        let rows = [row(0), row(1), row(2), row(3)];
        for r in 0..m {
            let sums = dot4(&x[r * row_stride..][..k], rows);
            dst[r * cols + c0..][..group].copy_from_slice(&sums[..group]);
        }
        c0 += group;
    }
}

/// The dot products of `x` with four rows of its length, each in 16 partial sums (one
/// AVX-512 register; LLVM keeps float sums in order, so one sum would not vectorise).
#[inline(always)]
fn dot4(x: &[f32], rows: [&[f32]; 4]) -> [f32; 4] {
    const LANES: usize = 16;
    let (mut a0, mut a1, mut a2, mut a3) =
        ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
    let [w0, w1, w2, w3] = rows.map(|r| r.chunks_exact(LANES));
    for ((((xs, c0), c1), c2), c3) in x.chunks_exact(LANES).zip(w0).zip(w1).zip(w2).zip(w3) {
        for l in 0..LANES {
            a0[l] += xs[l] * c0[l];
            a1[l] += xs[l] * c1[l];
            a2[l] += xs[l] * c2[l];
            a3[l] += xs[l] * c3[l];
        }
    }
    let whole = x.len() / LANES * LANES;
    let mut sums = [0f32; 4];
    for (q, acc) in [a0, a1, a2, a3].iter().enumerate() {
        let tail: f32 = x[whole..]
            .iter()
            .zip(&rows[q][whole..])
            .map(|(a, b)| a * b)
            .sum();
        sums[q] = acc.iter().sum::<f32>() + tail;
    }
    sums
}

multiversion!(fn row_dots(x: &[f32], m: usize, row_stride: usize, w: &[f32], k: usize, dst: &mut [f32]) => row_dots_body);

/// `act(row + bias) + residual`, element by element in one pass: in three passes (bias, then
/// the activation, then the residual) the rows that had left L2 were read three times, and
/// the loads were the hot spots of the epilogue at 5.7% of ViT-base b=8 in bf16 (`perf`).
#[inline(always)]
fn epilogue_body(row: &mut [f32], bias: Option<&[f32]>, act: Activation, residual: Option<&[f32]>) {
    match act {
        Activation::Identity => epilogue_with(row, bias, residual, |v| v),
        Activation::GeluErf => epilogue_with(row, bias, residual, math::gelu_erf),
        Activation::QuickGelu => epilogue_with(row, bias, residual, math::quick_gelu),
    }
}

#[inline(always)]
fn epilogue_with(
    row: &mut [f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: impl Fn(f32) -> f32,
) {
    match (bias, residual) {
        (Some(bias), Some(residual)) => {
            for ((o, &b), &r) in row.iter_mut().zip(bias).zip(residual) {
                *o = act(*o + b) + r;
            }
        }
        (Some(bias), None) => {
            for (o, &b) in row.iter_mut().zip(bias) {
                *o = act(*o + b);
            }
        }
        (None, Some(residual)) => {
            for (o, &r) in row.iter_mut().zip(residual) {
                *o = act(*o) + r;
            }
        }
        (None, None) => row.iter_mut().for_each(|o| *o = act(*o)),
    }
}

multiversion!(fn epilogue(row: &mut [f32], bias: Option<&[f32]>, act: Activation, residual: Option<&[f32]>) => epilogue_body);

/// What a product's sums become before anything reads them, for one block of its columns:
/// `act(sum + bias[c]) + residual[r * residual_stride + c]` at row r and the block's column c.
#[derive(Clone, Copy)]
pub(super) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub act: Activation,
    pub residual: Option<&'a [f32]>,
    pub residual_stride: usize,
}

impl Epilogue<'_> {
    /// Nothing: the sums as they are.
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        act: Activation::Identity,
        residual: None,
        residual_stride: 0,
    };

    /// Applies it to rows `r0..r0 + rows` of the block's first `cols` columns, held at `at`
    /// (row r0's first column) with rows `stride` apart, in place.
    ///
    /// # Safety
    /// `at` is valid for reads and writes of `rows` rows of `cols` f32 `stride` apart, and no
    /// other thread touches them meanwhile.
    pub unsafe fn apply(
        &self,
        isa: Isa,
        at: *mut f32,
        stride: usize,
        r0: usize,
        rows: usize,
        cols: usize,
    ) {
        if self.bias.is_none() && self.residual.is_none() && self.act == Activation::Identity {
            return;
        }
        for i in 0..rows {
            // SAFETY: as the caller promises.
            let row = unsafe { std::slice::from_raw_parts_mut(at.add(i * stride), cols) };
            let (bias, residual) = self.at(r0 + i, 0, cols);
            epilogue(isa, row, bias, self.act, residual);
        }
    }

    /// The bias and residual of row `r`, columns `c..c + cols` of the block.
    #[inline(always)]
    fn at(&self, r: usize, c: usize, cols: usize) -> (Option<&[f32]>, Option<&[f32]>) {
        (
            self.bias.map(|b| &b[c..c + cols]),
            self.residual
                .map(|res| &res[r * self.residual_stride + c..][..cols]),
        )
    }

    /// Asks for the residual of rows `r0..r0 + rows`, columns `c..c + 32` of the block to be
    /// brought into L1 (a block's residual comes from memory; the AMX kernel asks before its
    /// block's products, which outlast the fetch).
    #[inline(always)]
    pub fn prefetch_residual(&self, r0: usize, rows: usize, c: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(res) = self.residual {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            for r in r0..r0 + rows {
                let at = res.as_ptr().wrapping_add(r * self.residual_stride + c) as *const i8;
                // SAFETY: a prefetch does not fault, wherever it points.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(at);
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(127));
                }
            }
        }
    }

    /// Applies it to 16 sums of row `r`, columns `c..c + 16` of the block, with `act` the
    /// activation's element function: the AMX kernel's epilogue, inlined into its copy out.
    #[inline(always)]
    pub fn sixteen(&self, act: impl Fn(f32) -> f32, r: usize, c: usize, sums: &[f32]) -> [f32; 16] {
        let mut v: [f32; 16] = std::array::from_fn(|i| sums[i]);
        let (bias, residual) = self.at(r, c, 16);
        epilogue_with(&mut v, bias, residual, act);
        v
    }
}

/// `act` of every element, inlined into the kernels' passes: the epilogue without bias or
/// residual (nothing at all for the identity, not even a pass that stores what it loaded).
#[inline(always)]
pub(super) fn activate_body(row: &mut [f32], act: Activation) {
    if act != Activation::Identity {
        epilogue_body(row, None, act, None)
    }
}

/// transformers' "gelu" (the erf form) of every element, vectorised (candle's calls libm's
/// erf per element); other dtypes and devices through candle.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !applies(x) {
        return x.gelu_erf();
    }
    let mut values = x.flatten_all()?.to_vec1::<f32>()?;
    let isa = isa();
    use rayon::prelude::*;
    values
        .par_chunks_mut(1 << 14)
        .for_each(|chunk| epilogue(isa, chunk, None, Activation::GeluErf, None));
    Tensor::from_vec(values, x.shape(), x.device())
}

/// SwiGLU, `silu(gate) * up`, of a stacked gate/up product [rows, 2 x n] (the gate in the
/// first n columns of each row, up in the last n): [rows, n] in one vectorised pass (candle's
/// silu calls libm's exp per element, and the product is a second pass); other dtypes and
/// devices through candle.
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    let (rows, both) = gate_up.dims2()?;
    if both % 2 != 0 {
        candle_core::bail!("swiglu: rows of {both} do not split into gate and up halves")
    }
    let n = both / 2;
    if !applies(gate_up) {
        return gate_up.narrow(1, 0, n)?.silu()? * gate_up.narrow(1, n, n)?;
    }
    let isa = isa();
    let mut out = vec![0f32; rows * n];
    with_f32("swiglu", &gate_up.contiguous()?, |gate_up| {
        use rayon::prelude::*;
        if n > 0 {
            out.par_chunks_mut(n)
                .zip(gate_up.par_chunks(both))
                .for_each(|(out, row)| {
                    let (gate, up) = row.split_at(n);
                    swiglu_row(isa, out, gate, up)
                });
        }
        Ok(())
    })?;
    Tensor::from_vec(out, (rows, n), gate_up.device())
}

#[inline(always)]
fn swiglu_row_body(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = math::silu(g) * u;
    }
}

multiversion!(fn swiglu_row(out: &mut [f32], gate: &[f32], up: &[f32]) => swiglu_row_body);

/// A 1-D convolution over channels-last frames, as a linear layer whose rows are the
/// overlapping windows of `kernel` frames, `stride` frames apart: in `[frames, channels]` a
/// window is `kernel * channels` consecutive values, so the product reads the frames in place
/// (no im2col copy) and the bias and activation are applied in its pass. `weight` is the
/// convolution's `[out, in, kernel]` laid out by [`conv_weight`] (f32 or bf16). No padding.
pub fn conv1d_frames(
    x: &Tensor,
    weight: &Weight,
    bias: Option<&Tensor>,
    kernel: usize,
    stride: usize,
    act: Activation,
) -> Result<Tensor> {
    let (frames, channels) = x.dims2()?;
    if matches!(weight, Weight::Quant(_) | Weight::Rows(_)) {
        candle_core::bail!("conv1d_frames: f32 or bf16 weights from conv_weight")
    }
    let (inputs, outputs) = weight.dims()?;
    if kernel == 0 || stride == 0 || frames < kernel || inputs != kernel * channels {
        candle_core::bail!(
            "conv1d_frames: {frames} frames of {channels} against a kernel of {kernel} x {}",
            inputs / kernel.max(1)
        )
    }
    let out_frames = (frames - kernel) / stride + 1;
    let on_kernels = [Some(x), bias].into_iter().flatten().all(applies);
    match weight {
        Weight::Transposed(w) if !(on_kernels && applies(w)) => {
            // The same convolution in candle's operations (other devices and dtypes).
            let w = w
                .t()?
                .reshape((outputs, kernel, channels))?
                .permute((0, 2, 1))?;
            let c = x
                .t()?
                .unsqueeze(0)?
                .conv1d(&w.contiguous()?, 0, stride, 1, 1)?;
            return finish_with_candle(c.squeeze(0)?.t()?, bias, act, None);
        }
        Weight::Panels(_) | Weight::Bf16(_) if !on_kernels => {
            candle_core::bail!("conv1d_frames: packed weights take f32 frames on the CPU")
        }
        _ => {}
    }
    let x = x.contiguous()?;
    let run = |weight: Weights<'_>| {
        let op = |bias: Option<&[f32]>| {
            x.apply_op1_no_bwd(&Windows {
                linear: Linear { weight, bias, act },
                rows: out_frames,
                stride: stride * channels,
            })
        };
        match bias {
            Some(b) => with_f32("conv1d_frames", &b.contiguous()?, |b| op(Some(b))),
            None => op(None),
        }
    };
    match weight {
        Weight::Panels(p) => run(Weights::Panels(p)),
        Weight::Bf16(p) => run(Weights::Bf16(p)),
        Weight::Transposed(w) => {
            let w = w.contiguous()?;
            with_f32("conv1d_frames", &w, |data| {
                run(Weights::F32 {
                    data,
                    inputs,
                    outputs,
                })
            })
        }
        Weight::Quant(_) | Weight::Rows(_) => unreachable!("refused above"),
    }
}

/// A convolution's weight `[out, in, kernel]` as [`conv1d_frames`] takes it: `[out, kernel *
/// in]` (a window's frames one after another), packed as a linear weight ([`Weight::new`]:
/// bf16 with `bf16`).
pub fn conv_weight(weight: &Tensor, bf16: bool) -> Result<Weight> {
    Weight::new(&window_rows(weight)?, bf16)
}

/// A convolution's weight `[out, in, kernel]` as rows over its windows: `[out, kernel * in]`,
/// a window's frames one after another (unpacked [`conv_weight`]).
pub fn window_rows(weight: &Tensor) -> Result<Tensor> {
    let (outputs, inputs, kernel) = weight.dims3()?;
    weight
        .permute((0, 2, 1))?
        .contiguous()?
        .reshape((outputs, kernel * inputs))
}

/// [`conv1d_frames`]'s op: `rows` windows, `stride` values apart.
struct Windows<'a> {
    linear: Linear<'a>,
    rows: usize,
    stride: usize,
}

impl CustomOp1 for Windows<'_> {
    fn name(&self) -> &'static str {
        "conv1d_frames"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        if matches!(self.linear.weight, Weights::Quant(_) | Weights::Rows { .. }) {
            candle_core::bail!("conv1d_frames takes f32 or bf16 weights")
        }
        let (inputs, _) = self.linear.weight.dims();
        let x = f32_slice("conv1d_frames", s1, l1)?;
        self.linear
            .run_rows(x, self.rows, inputs, self.stride, None)
    }
}

impl CustomOp1 for Linear<'_> {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(f32_slice("linear", s1, l1)?, l1, None)
    }
}

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
        let residual = f32_slice("linear", s2, l2)?;
        self.run(f32_slice("linear", s1, l1)?, l1, Some(residual))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use candle_core::Device;

    /// SwiGLU of a stacked gate/up product equals candle's silu(gate) * up, on the kernel (f32)
    /// and on the fallback (f64).
    #[test]
    fn swiglu_equals_candles_silu_times_up() {
        let dev = Device::Cpu;
        // Largest difference relative to 1 + |want| (silu is accurate to 1e-6 of that).
        let relative = |got: &Tensor, want: &Tensor| {
            let (g, w) = (got.flatten_all().unwrap(), want.flatten_all().unwrap());
            let (g, w) = (g.to_vec1::<f32>().unwrap(), w.to_vec1::<f32>().unwrap());
            g.iter()
                .zip(&w)
                .map(|(g, w)| (g - w).abs() / (1.0 + w.abs()))
                .fold(0f32, f32::max)
        };
        for (rows, n) in [(1, 37), (5, 64), (3, 1000)] {
            let gate_up = (Tensor::randn(0f32, 1.0, (rows, 2 * n), &dev).unwrap() * 4.0).unwrap();
            let want = (gate_up.narrow(1, 0, n).unwrap().silu().unwrap()
                * gate_up.narrow(1, n, n).unwrap())
            .unwrap();
            let got = swiglu(&gate_up).unwrap();
            assert_eq!(got.dims(), [rows, n]);
            let d = relative(&got, &want);
            assert!(d <= 1e-5, "rows {rows} n {n}: relative difference {d}");
            let on_f64 = swiglu(&gate_up.to_dtype(candle_core::DType::F64).unwrap()).unwrap();
            let d = relative(&on_f64.to_dtype(candle_core::DType::F32).unwrap(), &want);
            assert!(d <= 1e-5, "f64 rows {rows} n {n}: relative difference {d}");
        }
    }

    /// Convolutions over channels-last frames equal candle's conv1d on channels-first ones,
    /// with and without bias and GELU, on the kernel (f32) and on the fallback (f64).
    #[test]
    fn frame_convolutions_equal_candles_conv1d() {
        let dev = Device::Cpu;
        for (frames, channels, outputs, kernel, stride) in [(20, 3, 4, 5, 2), (57, 1, 40, 10, 5)] {
            let x = Tensor::randn(0f32, 1.0, (frames, channels), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (outputs, channels, kernel), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, outputs, &dev).unwrap();
            let want = x
                .t()
                .unwrap()
                .unsqueeze(0)
                .unwrap()
                .conv1d(&w, 0, stride, 1, 1)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .t()
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
                let (x, w, b) = (
                    x.to_dtype(dtype).unwrap(),
                    w.to_dtype(dtype).unwrap(),
                    b.to_dtype(dtype).unwrap(),
                );
                let weight = conv_weight(&w, false).unwrap();
                for act in [Activation::Identity, Activation::GeluErf] {
                    let got = conv1d_frames(&x, &weight, Some(&b), kernel, stride, act)
                        .unwrap()
                        .to_dtype(candle_core::DType::F32)
                        .unwrap();
                    let want = activate_with_candle(want.clone(), act).unwrap();
                    assert_eq!(got.dims(), want.dims());
                    let d = crate::kernels::max_abs_diff(&got, &want);
                    assert!(d < 1e-4, "{dtype:?} {act:?} {frames}x{channels}: {d}");
                }
            }
        }
    }

    /// One row, a ragged column count, more columns than one thread's block.
    const SHAPES: [(usize, usize, usize); 3] = [(1, 8, 3), (7, 33, 50), (128, 96, 200)];

    /// Two batches of `m` rows of `k` inputs, a weight [n, k], a bias and a residual.
    fn operands(m: usize, k: usize, n: usize) -> (Tensor, Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, m, n), &dev).unwrap();
        (x, w, b, r)
    }

    /// Every combination of bias, activation and residual equals candle's steps, on every shape
    /// class (one row, a ragged column count, more columns than one thread's block), with the
    /// weight packed and with its rows as they lie (dot products for the first two shapes'
    /// rows, gemm for the third's).
    #[test]
    fn equals_candles_steps() {
        for ((m, k, n), rows) in SHAPES.into_iter().flat_map(|s| [(s, false), (s, true)]) {
            let (x, w, b, r) = operands(m, k, n);
            let wt = if rows {
                Weight::Rows(w.clone())
            } else {
                Weight::new(&w, false).unwrap()
            };
            for bias in [None, Some(&b)] {
                for act in [
                    Activation::Identity,
                    Activation::GeluErf,
                    Activation::QuickGelu,
                ] {
                    for residual in [None, Some(&r)] {
                        let ours = linear(&x, &wt, bias, act, residual).unwrap();
                        let mut want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
                        if let Some(b) = bias {
                            want = want.broadcast_add(b).unwrap();
                        }
                        want = finish_with_candle(want, None, act, None).unwrap();
                        if let Some(r) = residual {
                            want = (want + r).unwrap();
                        }
                        assert_eq!(ours.dims(), &[2, m, n]);
                        let diff = crate::kernels::max_abs_diff(&ours, &want);
                        assert!(
                            diff < 1e-4,
                            "{m}x{k}x{n} rows {rows} bias {} {act:?} residual {}: {diff}",
                            bias.is_some(),
                            residual.is_some()
                        );
                    }
                }
            }
        }
    }

    /// bf16 weights on the bf16 backend here stay within bf16's rounding of the f32 layer, with
    /// the same bias, GELU and residual: each operand rounds by up to 2^-9 relative, so a sum of k unit
    /// products errs by about 0.003 sqrt(k); the bound is 10 of those (the exact check of the
    /// products is bf16.rs's test).
    #[test]
    fn bf16_weights_track_f32_where_bf16_runs() {
        if !bf16::available() {
            println!(
                "NOT EXERCISED: bf16 linear layers ({})",
                bf16::unavailable_reason()
            );
            let w = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
            let x = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
            // Packing works anywhere; the product needs a bf16 backend and says so.
            let packed = Weight::new(&w, true).unwrap();
            let err = linear(&x, &packed, None, Activation::Identity, None).unwrap_err();
            assert!(err.to_string().contains("AVX512-BF16"), "{err}");
            return;
        }
        for (m, k, n) in SHAPES {
            let (x, w, b, r) = operands(m, k, n);
            let f32_layer = Weight::new(&w, false).unwrap();
            let bf16_layer = Weight::new(&w, true).unwrap();
            for act in [Activation::Identity, Activation::GeluErf] {
                let want = linear(&x, &f32_layer, Some(&b), act, Some(&r)).unwrap();
                let got = linear(&x, &bf16_layer, Some(&b), act, Some(&r)).unwrap();
                let scale = (k as f32).sqrt();
                let diff = crate::kernels::max_abs_diff(&got, &want);
                assert!(diff < 3e-2 * scale, "{m}x{k}x{n} {act:?}: {diff}");
            }
        }
    }

    /// A feed-forward block equals its two layers one after the other, to the bit: in bf16
    /// on AMX its inner rows go to the second product in bf16 tiles directly (row counts that
    /// leave padding rows in the last tile, inner widths of whole and partial blocks of 32,
    /// with and without biases and a residual); elsewhere, and in f32, it is those layers.
    #[test]
    fn feed_forward_equals_its_two_layers() {
        let bf16_runs = bf16::available();
        if !bf16_runs {
            println!(
                "NOT EXERCISED: bf16 feed-forward blocks ({})",
                bf16::unavailable_reason()
            );
        }
        for (m, k, inner) in [(1, 40, 64), (37, 96, 96), (70, 33, 50), (2 * 128, 64, 256)] {
            let (x, w1, b1, _) = operands(m, k, inner);
            let (_, w2, b2, r) = operands(m, inner, k);
            for bf16 in [false, true].into_iter().filter(|&b| !b || bf16_runs) {
                let first = Weight::new(&w1, bf16).unwrap();
                let second = Weight::new(&w2, bf16).unwrap();
                for (b1, b2, r) in [(Some(&b1), Some(&b2), Some(&r)), (None, None, None)] {
                    let act = Activation::GeluErf;
                    let inner_rows = linear(&x, &first, b1, act, None).unwrap();
                    let want = linear(&inner_rows, &second, b2, Activation::Identity, r).unwrap();
                    let got = feed_forward(&x, (&first, b1), act, (&second, b2), r).unwrap();
                    assert_eq!(got.dims(), want.dims());
                    let diff = crate::kernels::max_abs_diff(&got, &want);
                    assert!(diff == 0.0, "{m}x{k}x{inner} bf16 {bf16}: {diff}");
                }
            }
        }
        let (x, w1, _, _) = operands(3, 8, 32);
        let (_, w2, _, _) = operands(3, 16, 8);
        let (first, second) = (
            Weight::new(&w1, false).unwrap(),
            Weight::new(&w2, false).unwrap(),
        );
        let err = feed_forward(
            &x,
            (&first, None),
            Activation::Identity,
            (&second, None),
            None,
        );
        assert!(
            err.is_err(),
            "32 inner values against a second layer of 16 inputs"
        );
    }

    /// In bf16, a convolution reading its overlapping windows in place equals the same
    /// packed weight over the windows copied out one per row (the rounding of the rows read
    /// at a stride is that of contiguous ones), and stays near the f32 convolution.
    #[test]
    fn bf16_frame_convolutions_read_their_windows_in_place() {
        if !bf16::available() {
            println!(
                "NOT EXERCISED: bf16 convolutions ({})",
                bf16::unavailable_reason()
            );
            return;
        }
        let dev = Device::Cpu;
        for (frames, channels, outputs, kernel, stride) in [(57, 3, 40, 5, 2), (300, 48, 48, 3, 1)]
        {
            let x = Tensor::randn(0f32, 1.0, (frames, channels), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (outputs, channels, kernel), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, outputs, &dev).unwrap();
            let packed = conv_weight(&w, true).unwrap();
            let got =
                conv1d_frames(&x, &packed, Some(&b), kernel, stride, Activation::Identity).unwrap();
            let out_frames = (frames - kernel) / stride + 1;
            let windows = (0..out_frames)
                .map(|f| {
                    x.narrow(0, f * stride, kernel)
                        .unwrap()
                        .reshape((1, ()))
                        .unwrap()
                })
                .collect::<Vec<_>>();
            let windows = Tensor::cat(&windows, 0).unwrap();
            let want = linear(&windows, &packed, Some(&b), Activation::Identity, None).unwrap();
            assert_eq!(crate::kernels::max_abs_diff(&got, &want), 0.0);
            let f32_conv = conv1d_frames(
                &x,
                &conv_weight(&w, false).unwrap(),
                Some(&b),
                kernel,
                stride,
                Activation::Identity,
            )
            .unwrap();
            let d = crate::kernels::max_abs_diff(&got, &f32_conv);
            assert!(d < 3e-2 * ((kernel * channels) as f32).sqrt(), "{d}");
        }
    }

    /// The dot products of a tied head give the same sums on every instruction set, for a
    /// row count and widths that leave partial groups and partial lanes.
    #[test]
    fn every_isa_gives_the_same_row_dots() {
        let (m, k, cols, stride) = (3, 37, 10, 41);
        let x: Vec<f32> = (0..(m - 1) * stride + k)
            .map(|i| (i % 13) as f32 * 0.25 - 1.5)
            .collect();
        let w: Vec<f32> = (0..cols * k)
            .map(|i| (i % 11) as f32 * -0.125 + 0.6)
            .collect();
        let want: Vec<f32> = (0..m)
            .flat_map(|r| {
                let (x, w) = (&x, &w);
                (0..cols).map(move |c| {
                    (0..k)
                        .map(|i| x[r * stride + i] as f64 * w[c * k + i] as f64)
                        .sum::<f64>() as f32
                })
            })
            .collect();
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            if isa > Isa::detected() {
                continue;
            }
            let mut got = vec![f32::NAN; m * cols];
            row_dots(isa, &x, m, stride, &w, k, &mut got);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{isa:?}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn every_isa_gives_the_same_epilogue() {
        let row: Vec<f32> = (0..53).map(|i| i as f32 * 0.3 - 8.0).collect();
        let bias: Vec<f32> = (0..53).map(|i| i as f32 * -0.01).collect();
        let residual: Vec<f32> = (0..53).map(|i| (i % 7) as f32).collect();
        for (act, isa) in [Activation::GeluErf, Activation::QuickGelu]
            .into_iter()
            .flat_map(|a| [Isa::Portable, Isa::Avx2, Isa::Avx512].map(|i| (a, i)))
        {
            if isa > Isa::detected() {
                continue;
            }
            let mut want = row.clone();
            epilogue_body(&mut want, Some(&bias), act, Some(&residual));
            let mut got = row.clone();
            epilogue(isa, &mut got, Some(&bias), act, Some(&residual));
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                    "{act:?} {isa:?}: {g} vs {w}"
                );
            }
        }
    }
}
