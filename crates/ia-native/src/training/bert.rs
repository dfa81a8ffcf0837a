//! BERT with its masked-LM head for training, after transformers' `BertForMaskedLM`: `bert.*`
//! (or a `BertModel` checkpoint's unprefixed names) and `cls.predictions.*`, the decoder tied
//! to the word embeddings.

use super::layers::{self, activate, checkpoint, embed, Ctx, LayerFn, LayerNorm, Linear};
use super::{Batch, TrainingModel};
use crate::models::bert::Config;
use candle_core::{Result, Tensor};
use candle_nn::{Activation, VarBuilder};
use std::sync::Arc;

/// A transformer encoder layer as BERT (post-norm) and ViT (pre-norm) have it.
pub(crate) struct EncoderLayer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attention_output: Linear,
    pub attention_norm: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub output_norm: LayerNorm,
    pub heads: usize,
    pub act: Activation,
    /// ViT normalises before each block, BERT after the residual add.
    pub pre_norm: bool,
}

impl EncoderLayer {
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let attn_in = if self.pre_norm {
            self.attention_norm.forward(x)?
        } else {
            x.clone()
        };
        let q = layers::heads(&self.query.forward(&attn_in, ctx)?, self.heads)?;
        let k = layers::heads(&self.key.forward(&attn_in, ctx)?, self.heads)?;
        let v = layers::heads(&self.value.forward(&attn_in, ctx)?, self.heads)?;
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        let a = layers::merge_heads(&layers::attend(&q, &k, &v, scale, None, ctx)?)?;
        let mut h = (self.attention_output.forward(&a, ctx)? + x)?;
        if !self.pre_norm {
            h = self.attention_norm.forward(&h)?;
        }
        let ff_in = if self.pre_norm {
            self.output_norm.forward(&h)?
        } else {
            h.clone()
        };
        let ff = activate(self.act, &self.intermediate.forward(&ff_in, ctx)?)?;
        let out = (self.output.forward(&ff, ctx)? + h)?;
        if self.pre_norm {
            Ok(out)
        } else {
            self.output_norm.forward(&out)
        }
    }

    /// The layer as [`checkpoint`] runs it.
    pub fn as_fn(self: &Arc<Self>, ctx: &Ctx) -> LayerFn {
        let (layer, ctx) = (self.clone(), ctx.clone());
        Arc::new(move |x: &[Tensor]| layer.forward(&x[0], &ctx))
    }
}

pub(crate) struct BertForMaskedLm {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<LayerFn>,
    transform: Linear,
    transform_norm: LayerNorm,
    decoder_bias: Tensor,
    act: Activation,
}

impl BertForMaskedLm {
    pub fn load(vb: VarBuilder, cfg: &Config, ctx: &Ctx) -> Result<Self> {
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let e = vb.pp("bert.embeddings");
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("bert.encoder.layer.{i}"));
            let layer = Arc::new(EncoderLayer {
                query: Linear::load(h, h, true, l.pp("attention.self.query"))?,
                key: Linear::load(h, h, true, l.pp("attention.self.key"))?,
                value: Linear::load(h, h, true, l.pp("attention.self.value"))?,
                attention_output: Linear::load(h, h, true, l.pp("attention.output.dense"))?,
                attention_norm: LayerNorm::load(h, eps, l.pp("attention.output.LayerNorm"))?,
                intermediate: Linear::load(
                    h,
                    cfg.intermediate_size,
                    true,
                    l.pp("intermediate.dense"),
                )?,
                output: Linear::load(cfg.intermediate_size, h, true, l.pp("output.dense"))?,
                output_norm: LayerNorm::load(h, eps, l.pp("output.LayerNorm"))?,
                heads: cfg.num_attention_heads,
                act: cfg.hidden_act,
                pre_norm: false,
            });
            layers.push(layer.as_fn(ctx));
        }
        let p = vb.pp("cls.predictions");
        Ok(Self {
            word_embeddings: e.get((cfg.vocab_size, h), "word_embeddings.weight")?,
            position_embeddings: e.get(
                (cfg.max_position_embeddings, h),
                "position_embeddings.weight",
            )?,
            token_type_embeddings: e
                .get((cfg.type_vocab_size, h), "token_type_embeddings.weight")?,
            embeddings_norm: LayerNorm::load(h, eps, e.pp("LayerNorm"))?,
            layers,
            transform: Linear::load(h, h, true, p.pp("transform.dense"))?,
            transform_norm: LayerNorm::load(h, eps, p.pp("transform.LayerNorm"))?,
            decoder_bias: p.get(cfg.vocab_size, "bias")?,
            act: cfg.hidden_act,
        })
    }
}

impl TrainingModel for BertForMaskedLm {
    fn loss(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        let Batch::Tokens {
            batch,
            seq_len,
            input_ids,
            labels,
        } = batch
        else {
            candle_core::bail!("BERT trains on token batches");
        };
        let device = self.word_embeddings.device();
        let ids = Tensor::from_slice(input_ids, (*batch, *seq_len), device)?;
        let positions = Tensor::arange(0u32, *seq_len as u32, device)?;
        let token_types = Tensor::zeros((*batch, *seq_len), candle_core::DType::U32, device)?;
        let x = (embed(&self.word_embeddings, &ids)?
            + embed(&self.token_type_embeddings, &token_types)?)?
        .broadcast_add(&embed(&self.position_embeddings, &positions)?)?;
        let mut x = self.embeddings_norm.forward(&x)?;
        for layer in &self.layers {
            x = checkpoint(layer.clone(), &[&x], ctx)?;
        }
        let t = activate(self.act, &self.transform.forward(&x, ctx)?)?;
        let t = self.transform_norm.forward(&t)?;
        let logits = Linear::new(
            self.word_embeddings.clone(),
            Some(self.decoder_bias.clone()),
        )
        .forward(&t, ctx)?;
        layers::cross_entropy(&logits.flatten_to(1)?, labels)
    }
}
