//! LLaMA / Mistral / Qwen2 / Qwen3 causal LMs for training, after transformers'
//! `LlamaForCausalLM` and its relatives: `model.*` and `lm_head.weight` (or the tied
//! embeddings), on [`crate::models::decoder::Config`].

use super::layers::{self, checkpoint, embed, rotate, Ctx, LayerFn, Linear, RmsNorm};
use super::{Batch, TokenRows, TrainingModel};
use crate::models::decoder::Config;
use candle_core::{Device, Result, Tensor};
use candle_nn::{Activation, VarBuilder};
use std::sync::Arc;

struct Layer {
    input_norm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    post_attention_norm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    heads: usize,
    kv_heads: usize,
    act: Activation,
}

/// What every layer of one forward pass reads besides its input: rotary tables and the mask.
struct Positions {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl Layer {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (hidden, heads, kv, d) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.kv_heads(),
            cfg.head_dim(),
        );
        let a = vb.pp("self_attn");
        let m = vb.pp("mlp");
        let norm = |name: &str| -> Result<Option<RmsNorm>> {
            cfg.head_norms()
                .then(|| RmsNorm::load(d, cfg.rms_norm_eps, a.pp(name)))
                .transpose()
        };
        let bias = cfg.qkv_bias();
        Ok(Self {
            input_norm: RmsNorm::load(hidden, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            q_proj: Linear::load(hidden, heads * d, bias, a.pp("q_proj"))?,
            k_proj: Linear::load(hidden, kv * d, bias, a.pp("k_proj"))?,
            v_proj: Linear::load(hidden, kv * d, bias, a.pp("v_proj"))?,
            o_proj: Linear::load(heads * d, hidden, cfg.attention_bias, a.pp("o_proj"))?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            post_attention_norm: RmsNorm::load(
                hidden,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            gate_proj: Linear::load(
                hidden,
                cfg.intermediate_size,
                cfg.mlp_bias,
                m.pp("gate_proj"),
            )?,
            up_proj: Linear::load(hidden, cfg.intermediate_size, cfg.mlp_bias, m.pp("up_proj"))?,
            down_proj: Linear::load(
                cfg.intermediate_size,
                hidden,
                cfg.mlp_bias,
                m.pp("down_proj"),
            )?,
            heads,
            kv_heads: kv,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor, at: &Positions, ctx: &Ctx) -> Result<Tensor> {
        let h = self.input_norm.forward(x)?;
        let mut q = layers::heads(&self.q_proj.forward(&h, ctx)?, self.heads)?;
        let mut k = layers::heads(&self.k_proj.forward(&h, ctx)?, self.kv_heads)?;
        let mut v = layers::heads(&self.v_proj.forward(&h, ctx)?, self.kv_heads)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = rotate(&q, &at.cos, &at.sin)?;
        let mut k = rotate(&k, &at.cos, &at.sin)?;
        // Grouped-query attention: each key/value head serves `group` query heads in turn
        // (transformers' repeat_kv).
        let group = self.heads / self.kv_heads;
        if group > 1 {
            let (b, kvh, s, d) = k.dims4()?;
            let repeat = |t: &Tensor| {
                t.unsqueeze(2)?
                    .broadcast_as((b, kvh, group, s, d))?
                    .reshape((b, kvh * group, s, d))
            };
            k = repeat(&k)?;
            v = repeat(&v)?;
        }
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        let a = layers::merge_heads(&layers::attend(&q, &k, &v, scale, Some(&at.mask), ctx)?)?;
        let x = (self.o_proj.forward(&a, ctx)? + x)?;
        let h = self.post_attention_norm.forward(&x)?;
        let gate = layers::activate(self.act, &self.gate_proj.forward(&h, ctx)?)?;
        let ff = (gate * self.up_proj.forward(&h, ctx)?)?;
        self.down_proj.forward(&ff, ctx)? + x
    }
}

pub(crate) struct DecoderForCausalLm {
    embed_tokens: Tensor,
    layers: Vec<Arc<Layer>>,
    norm: RmsNorm,
    lm_head: Tensor,
    inverse_frequencies: Vec<f32>,
}

impl DecoderForCausalLm {
    pub fn load(vb: VarBuilder, cfg: &Config, _ctx: &Ctx) -> Result<Self> {
        let m = vb.pp("model");
        let embed_tokens = m.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(cfg, m.pp(format!("layers.{i}"))).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if cfg.tied_head() {
            embed_tokens.clone()
        } else {
            vb.get((cfg.vocab_size, cfg.hidden_size), "lm_head.weight")?
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm: RmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?,
            lm_head,
            inverse_frequencies: cfg.inverse_frequencies(),
        })
    }

    fn positions(&self, seq: usize, device: &Device) -> Result<Positions> {
        let pairs = self.inverse_frequencies.len();
        let angles: Vec<f32> = (0..seq)
            .flat_map(|p| {
                let f = &self.inverse_frequencies;
                (0..2 * pairs).map(move |i| p as f32 * f[i % pairs])
            })
            .collect();
        let angles = Tensor::from_vec(angles, (seq, 2 * pairs), device)?;
        Ok(Positions {
            cos: angles.cos()?,
            sin: angles.sin()?,
            mask: layers::causal_mask(seq, device)?,
        })
    }
}

impl TrainingModel for DecoderForCausalLm {
    fn loss(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        let device = self.embed_tokens.device();
        let rows = batch.token_rows(device, "a causal LM")?;
        let at = Arc::new(self.positions(rows.seq_len, device)?);
        let mut x = embed(&self.embed_tokens, &rows.ids)?;
        for layer in &self.layers {
            let (layer, at, c) = (layer.clone(), at.clone(), ctx.clone());
            let f: LayerFn = Arc::new(move |x: &[Tensor]| layer.forward(&x[0], &at, &c));
            x = checkpoint(f, &[&x], ctx)?;
        }
        let x = self.norm.forward(&x)?;
        let logits = Linear::new(self.lm_head.clone(), None).forward(&x, ctx)?;
        causal_lm_loss(&logits, &rows)
    }
}

/// transformers' causal-LM loss: position t predicts label t + 1.
pub(crate) fn causal_lm_loss(logits: &Tensor, rows: &TokenRows) -> Result<Tensor> {
    let (batch, seq, labels) = (rows.batch, rows.seq_len, rows.labels);
    if seq < 2 {
        candle_core::bail!("a causal LM learns from sequences of 2 tokens or more, not {seq}");
    }
    let vocab = logits.dim(2)?;
    let predicting = logits
        .narrow(1, 0, seq - 1)?
        .reshape((batch * (seq - 1), vocab))?;
    let targets: Vec<i64> = labels
        .chunks(seq)
        .flat_map(|row| row[1..].to_vec())
        .collect();
    layers::cross_entropy(&predicting, &targets)
}
