//! The blocks BART-style encoders and decoders share (Whisper's decoder, DETR, X-CLIP):
//! multi-head attention (`q_proj`, `k_proj`, `v_proj`, `out_proj`, queries scaled by
//! head_dim^-0.5) and the `fc1` -> activation -> `fc2` feed-forward, their linear layers on
//! [`Dense`] (our kernels; bf16 products where `products` says so).

use super::encoder::{Dense, FeedForwardAct, Products};
use candle_core::{Result, Tensor};
use candle_nn::{Linear, VarBuilder};

/// GELU (erf form) and CLIP's quick GELU are applied in the first product's pass, other
/// activations by candle after it ([`FeedForwardAct`]).
pub(crate) struct Mlp {
    fc1: Dense,
    fc2: Dense,
    act: FeedForwardAct,
}

impl Mlp {
    pub fn load(
        dim: usize,
        ffn: usize,
        act: impl Into<FeedForwardAct>,
        vb: &VarBuilder,
        products: Products,
    ) -> Result<Self> {
        Ok(Self {
            fc1: Dense::load(dim, ffn, vb.pp("fc1"), products)?,
            fc2: Dense::load(ffn, dim, vb.pp("fc2"), products)?,
            act: act.into(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc1.feed_forward(x, self.act, &self.fc2, None)
    }
}

pub(crate) struct MultiHeadAttention {
    q_proj: Dense,
    k_proj: Dense,
    v_proj: Dense,
    out_proj: Dense,
    heads: usize,
    head_dim: usize,
}

impl MultiHeadAttention {
    /// Whisper's `k_proj` has no bias; everything else does.
    pub fn load(
        dim: usize,
        heads: usize,
        k_bias: bool,
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        Self::load_named(dim, heads, k_bias, "out_proj", vb, products)
    }

    /// transformers 5 names some output projections `o_proj` (DETR).
    pub fn load_named(
        dim: usize,
        heads: usize,
        k_bias: bool,
        out_name: &str,
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        let dense = |name| Dense::load(dim, dim, vb.pp(name), products);
        Ok(Self {
            q_proj: dense("q_proj")?,
            k_proj: Dense::load_b(dim, dim, k_bias, vb.pp("k_proj"), products)?,
            v_proj: dense("v_proj")?,
            out_proj: dense(out_name)?,
            heads,
            head_dim: dim / heads,
        })
    }

    /// From projections already loaded (X-CLIP's prompt generator has no q/k/v biases and
    /// calls its output `proj`), multiplied as loaded.
    pub fn from_parts(parts: [Linear; 4], dim: usize, heads: usize) -> Result<Self> {
        let [q_proj, k_proj, v_proj, out_proj] =
            parts.map(|l| Dense::new(l.weight().clone(), l.bias().cloned(), Products::AsLoaded));
        Ok(Self {
            q_proj: q_proj?,
            k_proj: k_proj?,
            v_proj: v_proj?,
            out_proj: out_proj?,
            heads,
            head_dim: dim / heads,
        })
    }

    /// Attention whose queries, keys and values come from different inputs (DETR adds
    /// position embeddings to queries and keys only).
    pub fn attend_inputs(
        &self,
        q_in: &Tensor,
        k_in: &Tensor,
        v_in: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let k = self.split_heads(&self.k_proj.forward(k_in)?)?;
        let v = self.split_heads(&self.v_proj.forward(v_in)?)?;
        self.attend(q_in, &k, &v, mask)
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys and values of `x`, split into heads: [batch, heads, time, head_dim].
    pub fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.split_heads(&self.k_proj.forward(x)?)?,
            self.split_heads(&self.v_proj.forward(x)?)?,
        ))
    }

    /// Attends the queries of `x` over `k`/`v` (from [`Self::keys_values`]); `mask` is added to
    /// the scores (0 or -inf), broadcast over batch and heads.
    pub fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let q =
            self.split_heads(&(self.q_proj.forward(x)? * (self.head_dim as f64).powf(-0.5))?)?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(v)?
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))?;
        self.out_proj.forward(&out)
    }

    /// Self-attention without a cache.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (k, v) = self.keys_values(x)?;
        self.attend(x, &k, &v, mask)
    }
}
