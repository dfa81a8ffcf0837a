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

/// The sizes of an encoder layer.
pub(crate) struct EncoderShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub act: Activation,
    pub eps: f64,
}

/// Where an encoder layer's tensors sit under its prefix: BERT and ViT name them differently.
pub(crate) struct EncoderNames {
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_norm: &'static str,
    pub output_norm: &'static str,
    pub qkv_bias: bool,
    pub pre_norm: bool,
}

const BERT: EncoderNames = EncoderNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_norm: "attention.output.LayerNorm",
    output_norm: "output.LayerNorm",
    qkv_bias: true,
    pre_norm: false,
};

impl EncoderLayer {
    pub fn load(shape: &EncoderShape, names: &EncoderNames, vb: VarBuilder) -> Result<Self> {
        let (h, i, eps, b) = (shape.hidden, shape.intermediate, shape.eps, names.qkv_bias);
        Ok(Self {
            query: Linear::load(h, h, b, vb.pp(names.query))?,
            key: Linear::load(h, h, b, vb.pp(names.key))?,
            value: Linear::load(h, h, b, vb.pp(names.value))?,
            attention_output: Linear::load(h, h, true, vb.pp("attention.output.dense"))?,
            attention_norm: LayerNorm::load(h, eps, vb.pp(names.attention_norm))?,
            intermediate: Linear::load(h, i, true, vb.pp("intermediate.dense"))?,
            output: Linear::load(i, h, true, vb.pp("output.dense"))?,
            output_norm: LayerNorm::load(h, eps, vb.pp(names.output_norm))?,
            heads: shape.heads,
            act: shape.act,
            pre_norm: names.pre_norm,
        })
    }

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
        let shape = EncoderShape {
            hidden: h,
            intermediate: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            act: cfg.hidden_act,
            eps,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                EncoderLayer::load(&shape, &BERT, vb.pp(format!("bert.encoder.layer.{i}")))
                    .map(|l| Arc::new(l).as_fn(ctx))
            })
            .collect::<Result<_>>()?;
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
        let device = self.word_embeddings.device();
        let rows = batch.token_rows(device, "BERT")?;
        let positions = Tensor::arange(0u32, rows.seq_len as u32, device)?;
        let token_types = rows.ids.zeros_like()?;
        let x = (embed(&self.word_embeddings, &rows.ids)?
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
        layers::cross_entropy(&logits.flatten_to(1)?, rows.labels)
    }
}
