//! The differentiable pieces the training models share: linear layers under bf16 autocast,
//! norms, attention, rotary embedding, cross-entropy, and gradient checkpointing.

use super::{Params, RecomputedGradients};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Layout, Module, Result, Shape, Tensor, Var, D};
use candle_nn::{Activation, VarBuilder};
use ia_engine::training::{TrainingOptions, TrainingPrecision};
use std::sync::Arc;

/// How a training forward pass computes, shared by every layer.
#[derive(Clone)]
pub struct Ctx {
    /// Matrix products in bf16 (f32 everywhere else).
    pub bf16: bool,
    /// Layers run through [`checkpoint`].
    pub checkpointing: bool,
    pub(crate) params: Arc<Params>,
    pub(crate) recomputed: Arc<RecomputedGradients>,
}

impl Ctx {
    pub(crate) fn new(options: &TrainingOptions, params: Arc<Params>) -> Self {
        Self {
            bf16: options.precision == TrainingPrecision::Bf16Mixed,
            checkpointing: options.gradient_checkpointing,
            params,
            recomputed: Arc::default(),
        }
    }

    /// Adds what the recomputed layers' backward passes found to the main backward's
    /// gradients.
    pub(crate) fn add_recomputed_gradients(
        &self,
        params: &[(String, Var)],
        grads: &mut GradStore,
    ) -> Result<()> {
        let mut acc = self.recomputed.by_param.lock().expect("gradient lock");
        for (_, v) in params {
            if let Some(extra) = acc.remove(&v.id()) {
                let total = match grads.remove(v) {
                    Some(g) => (g + extra)?,
                    None => extra,
                };
                grads.insert(v, total);
            }
        }
        Ok(())
    }

    /// `a` [.., m, k] times `b` [.., k, n], in bf16 under autocast.
    pub fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if self.bf16 {
            a.to_dtype(DType::BF16)?
                .matmul(&b.to_dtype(DType::BF16)?)?
                .to_dtype(DType::F32)
        } else {
            a.matmul(b)
        }
    }
}

/// `y = x W^T + b`, W as the checkpoint stores it: [out, in].
#[derive(Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(input: usize, output: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((output, input), "weight")?;
        let bias = bias.then(|| vb.get(output, "bias")).transpose()?;
        Ok(Self { weight, bias })
    }

    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, dims[dims.len() - 1]))?;
        let y = ctx.matmul(&x2, &self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().expect("rank >= 1") = self.weight.dim(0)?;
        y.reshape(out)
    }
}

/// LayerNorm over the last axis (mean and variance in f32, as torch computes them).
#[derive(Clone)]
pub struct LayerNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    pub fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: Some(vb.get(size, "weight")?),
            bias: Some(vb.get(size, "bias")?),
            eps,
        })
    }

    /// Without scale and shift (OPT's `layer_norm_elementwise_affine: false`).
    pub fn plain(eps: f64) -> Self {
        Self {
            weight: None,
            bias: None,
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let mut y = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        if let Some(w) = &self.weight {
            y = y.broadcast_mul(w)?;
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        Ok(y)
    }
}

/// RMS norm (LLaMA's and T5's): x / sqrt(mean(x^2) + eps) * weight.
#[derive(Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(ms + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)
    }
}

/// Rows of an embedding table.
pub fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let dims = ids.dims().to_vec();
    let rows = table.index_select(&ids.flatten_all()?, 0)?;
    let mut out = dims;
    out.push(table.dim(1)?);
    rows.reshape(out)
}

/// The activation functions by transformers' names, differentiable.
pub fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    match act {
        Activation::Gelu => x.gelu_erf(),
        Activation::NewGelu | Activation::GeluPytorchTanh => x.gelu(),
        Activation::Relu => x.relu(),
        Activation::Silu => x.silu(),
        other => other.forward(x),
    }
}

/// Splits [b, s, heads * d] into [b, heads, s, d].
pub fn heads(x: &Tensor, n: usize) -> Result<Tensor> {
    let (b, s, hd) = x.dims3()?;
    x.reshape((b, s, n, hd / n))?.transpose(1, 2)?.contiguous()
}

/// Merges [b, heads, s, d] back into [b, s, heads * d].
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, s, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, s, h * d))
}

/// softmax(q k^T * scale + bias) v over [b, heads, s, d]; `bias` broadcasts onto the scores
/// (a causal mask, T5's position bias).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
    ctx: &Ctx,
) -> Result<Tensor> {
    let mut scores = (ctx.matmul(q, &k.t()?)? * scale)?;
    if let Some(b) = bias {
        scores = scores.broadcast_add(b)?;
    }
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    ctx.matmul(&probs, v)
}

/// [seq, seq] additive causal mask: 0 on and below the diagonal, -inf above.
pub fn causal_mask(seq: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (seq, seq), device)
}

/// Rotary embedding as transformers applies it (`rotate_half`): `cos`/`sin` [seq, d].
pub fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// Mean cross-entropy of `logits` [n, classes] against `labels` (n values; -100 ignored).
pub fn cross_entropy(logits: &Tensor, labels: &[i64]) -> Result<Tensor> {
    let classes = logits.dim(1)? as i64;
    let (rows, targets): (Vec<u32>, Vec<u32>) = labels
        .iter()
        .enumerate()
        .filter(|(_, &l)| l != -100)
        .map(|(i, &l)| {
            if (0..classes).contains(&l) {
                Ok((i as u32, l as u32))
            } else {
                Err(candle_core::Error::Msg(format!(
                    "label {l} is outside 0..{classes}"
                )))
            }
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    if rows.is_empty() {
        candle_core::bail!(
            "no position of the batch has a label to learn from (the sequences are too short)"
        );
    }
    let device = logits.device();
    let n = rows.len();
    let picked = logits.index_select(&Tensor::from_vec(rows, n, device)?, 0)?;
    candle_nn::loss::cross_entropy(&picked, &Tensor::from_vec(targets, n, device)?)
}

/// A layer of a training model, as [`checkpoint`] recomputes it. It may read constants and
/// parameters, never another tensor of the graph: those must be inputs.
pub type LayerFn = Arc<dyn Fn(&[Tensor]) -> Result<Tensor> + Send + Sync>;

/// Runs `layer` on `inputs` (one or two tensors of the graph). With checkpointing, the layer's
/// activations are dropped after the forward and recomputed in the backward: only its inputs
/// and output stay alive, as `torch.utils.checkpoint` does.
pub fn checkpoint(layer: LayerFn, inputs: &[&Tensor], ctx: &Ctx) -> Result<Tensor> {
    let owned: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    if !ctx.checkpointing {
        return layer(&owned);
    }
    let detached: Vec<Tensor> = owned.iter().map(Tensor::detach).collect();
    // The graph this builds (the parameters are variables) is dropped with `full`.
    let output = layer(&detached)?.contiguous()?.detach();
    let op = Recompute {
        layer,
        ctx: ctx.clone(),
    };
    match inputs {
        [x] => x.apply_op2(&output, op),
        [x, y] => x.apply_op3(y, &output, op),
        _ => candle_core::bail!("checkpoint takes one or two inputs"),
    }
}

/// The checkpointed layer: forward returns the output computed without a graph (its last
/// argument); backward recomputes the layer from the inputs with a graph, backpropagates the
/// output's gradient through it, hands the parameters' gradients to the session and returns
/// the inputs'.
struct Recompute {
    layer: LayerFn,
    ctx: Ctx,
}

impl Recompute {
    fn backward(&self, inputs: &[&Tensor], grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let vars = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.detach()))
            .collect::<Result<Vec<_>>>()?;
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let output = (self.layer)(&tensors)?;
        let grads = (output * grad.detach())?.sum_all()?.backward()?;
        self.ctx.recomputed.add(&self.ctx.params.vars(), &grads)?;
        Ok(vars.iter().map(|v| grads.get(v).cloned()).collect())
    }
}

/// The forward of the op: a copy of the precomputed output.
fn copy_output(s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("checkpointed layers compute in f32");
    };
    let start = l.start_offset();
    let n = l.shape().elem_count();
    if !l.is_contiguous() {
        candle_core::bail!("checkpointed layer output is not contiguous");
    }
    Ok((
        CpuStorage::F32(v[start..start + n].to_vec()),
        l.shape().clone(),
    ))
}

impl candle_core::CustomOp2 for Recompute {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        out: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        copy_output(out, l)
    }

    fn bwd(
        &self,
        x: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.backward(&[x], grad)?;
        Ok((g.remove(0), None))
    }
}

impl candle_core::CustomOp3 for Recompute {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        out: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        copy_output(out, l)
    }

    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.backward(&[x, y], grad)?;
        let gy = g.remove(1);
        Ok((g.remove(0), gy, None))
    }
}
