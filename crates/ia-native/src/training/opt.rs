//! OPT causal LMs for training, after transformers' `OPTForCausalLM`: `model.decoder.*`, the
//! head tied to the token embeddings.

use super::decoder::causal_lm_loss;
use super::layers::{self, checkpoint, embed, Ctx, LayerFn, LayerNorm, Linear};
use super::{Batch, TrainingModel};
use crate::models::opt::{Config, POSITION_OFFSET};
use candle_core::{Result, Tensor};
use candle_nn::{Activation, VarBuilder};
use std::sync::Arc;

const EPS: f64 = 1e-5;

fn norm(cfg: &Config, vb: VarBuilder) -> Result<LayerNorm> {
    if cfg.layer_norm_elementwise_affine {
        LayerNorm::load(cfg.hidden_size, EPS, vb)
    } else {
        Ok(LayerNorm::plain(EPS))
    }
}

struct Layer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    self_attn_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_norm: LayerNorm,
    heads: usize,
    act: Activation,
    pre_norm: bool,
}

impl Layer {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, b) = (cfg.hidden_size, cfg.enable_bias);
        let a = vb.pp("self_attn");
        Ok(Self {
            q_proj: Linear::load(h, h, b, a.pp("q_proj"))?,
            k_proj: Linear::load(h, h, b, a.pp("k_proj"))?,
            v_proj: Linear::load(h, h, b, a.pp("v_proj"))?,
            out_proj: Linear::load(h, h, b, a.pp("out_proj"))?,
            self_attn_norm: norm(cfg, vb.pp("self_attn_layer_norm"))?,
            fc1: Linear::load(h, cfg.ffn_dim, b, vb.pp("fc1"))?,
            fc2: Linear::load(cfg.ffn_dim, h, b, vb.pp("fc2"))?,
            final_norm: norm(cfg, vb.pp("final_layer_norm"))?,
            heads: cfg.num_attention_heads,
            act: cfg.activation_function,
            pre_norm: cfg.do_layer_norm_before,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let h = if self.pre_norm {
            self.self_attn_norm.forward(x)?
        } else {
            x.clone()
        };
        let q = layers::heads(&self.q_proj.forward(&h, ctx)?, self.heads)?;
        let k = layers::heads(&self.k_proj.forward(&h, ctx)?, self.heads)?;
        let v = layers::heads(&self.v_proj.forward(&h, ctx)?, self.heads)?;
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        let a = layers::merge_heads(&layers::attend(&q, &k, &v, scale, Some(mask), ctx)?)?;
        let mut x = (self.out_proj.forward(&a, ctx)? + x)?;
        if !self.pre_norm {
            x = self.self_attn_norm.forward(&x)?;
        }
        let h = if self.pre_norm {
            self.final_norm.forward(&x)?
        } else {
            x.clone()
        };
        let ff = layers::activate(self.act, &self.fc1.forward(&h, ctx)?)?;
        let out = (self.fc2.forward(&ff, ctx)? + x)?;
        if self.pre_norm {
            Ok(out)
        } else {
            self.final_norm.forward(&out)
        }
    }
}

pub(crate) struct OptForCausalLm {
    embed_tokens: Tensor,
    embed_positions: Tensor,
    project_in: Option<Linear>,
    project_out: Option<Linear>,
    layers: Vec<Arc<Layer>>,
    final_norm: Option<LayerNorm>,
}

impl OptForCausalLm {
    pub fn load(vb: VarBuilder, cfg: &Config, _ctx: &Ctx) -> Result<Self> {
        let d = vb.pp("model.decoder");
        let h = cfg.hidden_size;
        let proj = cfg.word_embed_proj_dim.unwrap_or(h);
        let (project_in, project_out) = if proj != h {
            (
                Some(Linear::load(proj, h, false, d.pp("project_in"))?),
                Some(Linear::load(h, proj, false, d.pp("project_out"))?),
            )
        } else {
            (None, None)
        };
        let final_norm = (cfg.do_layer_norm_before && !cfg.remove_final_layer_norm)
            .then(|| norm(cfg, d.pp("final_layer_norm")))
            .transpose()?;
        Ok(Self {
            embed_tokens: d.get((cfg.vocab_size, proj), "embed_tokens.weight")?,
            embed_positions: d.get(
                (cfg.max_position_embeddings + POSITION_OFFSET, h),
                "embed_positions.weight",
            )?,
            project_in,
            project_out,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::load(cfg, d.pp(format!("layers.{i}"))).map(Arc::new))
                .collect::<Result<Vec<_>>>()?,
            final_norm,
        })
    }
}

impl TrainingModel for OptForCausalLm {
    fn loss(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        let device = self.embed_tokens.device();
        let rows = batch.token_rows(device, "a causal LM")?;
        let seq_len = rows.seq_len;
        let mut x = embed(&self.embed_tokens, &rows.ids)?;
        if let Some(p) = &self.project_in {
            x = p.forward(&x, ctx)?;
        }
        let positions = Tensor::arange(
            POSITION_OFFSET as u32,
            (POSITION_OFFSET + seq_len) as u32,
            device,
        )?;
        let mut x = x.broadcast_add(&embed(&self.embed_positions, &positions)?)?;
        let mask = Arc::new(layers::causal_mask(seq_len, device)?);
        for layer in &self.layers {
            let (layer, mask, c) = (layer.clone(), mask.clone(), ctx.clone());
            let f: LayerFn = Arc::new(move |x: &[Tensor]| layer.forward(&x[0], &mask, &c));
            x = checkpoint(f, &[&x], ctx)?;
        }
        if let Some(n) = &self.final_norm {
            x = n.forward(&x)?;
        }
        if let Some(p) = &self.project_out {
            x = p.forward(&x, ctx)?;
        }
        let logits = Linear::new(self.embed_tokens.clone(), None).forward(&x, ctx)?;
        causal_lm_loss(&logits, &rows)
    }
}
