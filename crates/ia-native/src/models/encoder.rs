//! The pieces BERT-style encoders share (BERT, ViT), written for CPU speed without changing
//! the function: every projection is one matrix product over all `batch x seq` rows,
//! query/key/value are one product (weights stacked at load, the 1/sqrt(head) scale folded
//! into the query's), and the intermediate bias and GELU are one pass
//! ([`crate::kernels::bias_gelu`]).

use crate::kernels;
use candle_core::{Module, Result, Tensor};
use candle_nn::{Activation, VarBuilder};

/// A linear layer applied to rows: `x [.., in] -> [.., out]` as one matrix product over all
/// leading dimensions (candle's `Linear` multiplies per batch item), [`kernels::linear_t`].
pub(crate) struct Dense {
    /// [in, out]: the checkpoint's [out, in] transposed once at load, so that no product
    /// repacks it.
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    /// `weight` [out, in] as checkpoints keep it.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    /// `weight` [outputs, inputs] and `bias` [outputs] under `vb`.
    pub fn load(inputs: usize, outputs: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(
            vb.get((outputs, inputs), "weight")?,
            Some(vb.get(outputs, "bias")?),
        )
    }

    /// The product without the bias.
    fn product(&self, x: &Tensor) -> Result<Tensor> {
        kernels::linear_t(x, &self.weight_t)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.product(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `act` of the output; for GELU (transformers' erf form, "gelu") the bias is added in
    /// the same pass.
    pub fn forward_activated(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        match (act, &self.bias) {
            (Activation::Gelu, Some(b)) => kernels::bias_gelu(&self.product(x)?, b),
            (act, _) => act.forward(&self.forward(x)?),
        }
    }
}

/// Multi-head self-attention with query, key and value projected by one product.
pub(crate) struct SelfAttention {
    qkv: Dense,
    heads: usize,
}

impl SelfAttention {
    /// `query`, `key`, `value` (each `weight` [hidden, hidden] and, with `bias`, `bias`) under
    /// `vb`, as transformers' BertSelfAttention / ViTSelfAttention keep them.
    pub fn load(hidden: usize, heads: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let scale = 1.0 / ((hidden / heads) as f64).sqrt();
        let mut weights = vec![];
        let mut biases = vec![];
        for (name, factor) in [("query", scale), ("key", 1.0), ("value", 1.0)] {
            let p = vb.pp(name);
            weights.push((p.get((hidden, hidden), "weight")? * factor)?);
            if bias {
                biases.push((p.get(hidden, "bias")? * factor)?);
            }
        }
        let bias = if bias {
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Ok(Self {
            qkv: Dense::new(Tensor::cat(&weights, 0)?, bias)?,
            heads,
        })
    }

    /// `x` [batch, seq, hidden]; `mask` broadcasts to [batch, heads, seq, seq] and is added
    /// to the scores (None: every position attends everywhere).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let d = h / self.heads;
        // [b, s, 3, heads, d] -> [3, b, heads, s, d]: one copy gives q, k and v contiguous.
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, s, 3, self.heads, d))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        candle_nn::ops::softmax_last_dim(&scores)?
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, s, h))
    }
}
