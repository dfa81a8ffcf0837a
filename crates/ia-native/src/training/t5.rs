//! T5 for training, after transformers' `T5ForConditionalGeneration`: `shared`, `encoder.*`,
//! `decoder.*` and `lm_head` (or the tied embeddings, rescaled by d_model^-0.5).

use super::layers::{self, activate, checkpoint, embed, Ctx, LayerFn, Linear, RmsNorm};
use super::{Batch, TrainingModel};
use crate::models::t5::{relative_position_bucket, Config};
use candle_core::{Device, Result, Tensor};
use candle_nn::{Activation, VarBuilder};
use std::sync::Arc;

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
}

impl Attention {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let inner = cfg.n_heads_dim();
        Ok(Self {
            q: Linear::load(cfg.d_model, inner, false, vb.pp("q"))?,
            k: Linear::load(cfg.d_model, inner, false, vb.pp("k"))?,
            v: Linear::load(cfg.d_model, inner, false, vb.pp("v"))?,
            o: Linear::load(inner, cfg.d_model, false, vb.pp("o"))?,
            heads: cfg.num_heads,
        })
    }

    /// T5 does not scale the scores.
    fn forward(&self, x: &Tensor, kv: &Tensor, bias: Option<&Tensor>, ctx: &Ctx) -> Result<Tensor> {
        let q = layers::heads(&self.q.forward(x, ctx)?, self.heads)?;
        let k = layers::heads(&self.k.forward(kv, ctx)?, self.heads)?;
        let v = layers::heads(&self.v.forward(kv, ctx)?, self.heads)?;
        let a = layers::merge_heads(&layers::attend(&q, &k, &v, 1.0, bias, ctx)?)?;
        self.o.forward(&a, ctx)
    }
}

struct FeedForward {
    /// `wi`, or `wi_0` and `wi_1` when gated.
    wi: Vec<Linear>,
    wo: Linear,
    act: Activation,
}

impl FeedForward {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (gated, act) = cfg.feed_forward();
        let names: &[&str] = if gated { &["wi_0", "wi_1"] } else { &["wi"] };
        Ok(Self {
            wi: names
                .iter()
                .map(|n| Linear::load(cfg.d_model, cfg.d_ff, false, vb.pp(*n)))
                .collect::<Result<_>>()?,
            wo: Linear::load(cfg.d_ff, cfg.d_model, false, vb.pp("wo"))?,
            act,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut h = activate(self.act, &self.wi[0].forward(x, ctx)?)?;
        if let Some(up) = self.wi.get(1) {
            h = (h * up.forward(x, ctx)?)?;
        }
        self.wo.forward(&h, ctx)
    }
}

/// The relative-position bias of a stack: its first layer's table read at fixed buckets (plus
/// the causal mask in the decoder), shared by every layer.
struct PositionBias {
    table: Tensor,
    /// [q, k] bucket of each query/key pair.
    buckets: Tensor,
    mask: Option<Tensor>,
}

impl PositionBias {
    fn new(table: Tensor, cfg: &Config, seq: usize, decoder: bool, dev: &Device) -> Result<Self> {
        let buckets: Vec<u32> = (0..seq)
            .flat_map(|i| {
                (0..seq).map(move |j| {
                    relative_position_bucket(
                        j as i64 - i as i64,
                        !decoder,
                        cfg.relative_attention_num_buckets,
                        cfg.relative_attention_max_distance,
                    )
                })
            })
            .collect();
        Ok(Self {
            table,
            buckets: Tensor::from_vec(buckets, (seq, seq), dev)?,
            mask: decoder.then(|| layers::causal_mask(seq, dev)).transpose()?,
        })
    }

    /// [1, heads, q, k].
    fn bias(&self) -> Result<Tensor> {
        let b = embed(&self.table, &self.buckets)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?;
        match &self.mask {
            Some(m) => b.broadcast_add(m),
            None => Ok(b),
        }
    }
}

struct Block {
    self_attn: Attention,
    self_attn_norm: RmsNorm,
    cross_attn: Option<(Attention, RmsNorm)>,
    ff: FeedForward,
    ff_norm: RmsNorm,
}

impl Block {
    fn load(decoder: bool, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.d_model, cfg.layer_norm_epsilon);
        let l0 = vb.pp("layer.0");
        let cross_attn = decoder
            .then(|| -> Result<_> {
                let l1 = vb.pp("layer.1");
                Ok((
                    Attention::load(cfg, l1.pp("EncDecAttention"))?,
                    RmsNorm::load(d, eps, l1.pp("layer_norm"))?,
                ))
            })
            .transpose()?;
        let lf = vb.pp(format!("layer.{}", if decoder { 2 } else { 1 }));
        Ok(Self {
            self_attn: Attention::load(cfg, l0.pp("SelfAttention"))?,
            self_attn_norm: RmsNorm::load(d, eps, l0.pp("layer_norm"))?,
            cross_attn,
            ff: FeedForward::load(cfg, lf.pp("DenseReluDense"))?,
            ff_norm: RmsNorm::load(d, eps, lf.pp("layer_norm"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        encoder: Option<&Tensor>,
        bias: &PositionBias,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let h = self.self_attn_norm.forward(x)?;
        let mut x = (x + self.self_attn.forward(&h, &h, Some(&bias.bias()?), ctx)?)?;
        if let (Some((attn, norm)), Some(enc)) = (&self.cross_attn, encoder) {
            x = (&x + attn.forward(&norm.forward(&x)?, enc, None, ctx)?)?;
        }
        &x + self.ff.forward(&self.ff_norm.forward(&x)?, ctx)?
    }
}

struct Stack {
    blocks: Vec<Arc<Block>>,
    /// block.0's relative_attention_bias table.
    bias_table: Tensor,
    final_norm: RmsNorm,
    decoder: bool,
}

impl Stack {
    fn load(decoder: bool, layers: usize, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            blocks: (0..layers)
                .map(|i| Block::load(decoder, cfg, vb.pp(format!("block.{i}"))).map(Arc::new))
                .collect::<Result<_>>()?,
            bias_table: vb.get(
                (cfg.relative_attention_num_buckets, cfg.num_heads),
                "block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            )?,
            final_norm: RmsNorm::load(
                cfg.d_model,
                cfg.layer_norm_epsilon,
                vb.pp("final_layer_norm"),
            )?,
            decoder,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        encoder: Option<&Tensor>,
        cfg: &Config,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let bias = Arc::new(PositionBias::new(
            self.bias_table.clone(),
            cfg,
            x.dim(1)?,
            self.decoder,
            x.device(),
        )?);
        let mut x = x.clone();
        for block in &self.blocks {
            let (block, bias, c) = (block.clone(), bias.clone(), ctx.clone());
            let f: LayerFn =
                Arc::new(move |t: &[Tensor]| block.forward(&t[0], t.get(1), &bias, &c));
            x = match encoder {
                Some(enc) => checkpoint(f, &[&x, enc], ctx)?,
                None => checkpoint(f, &[&x], ctx)?,
            };
        }
        self.final_norm.forward(&x)
    }
}

pub(crate) struct T5ForConditionalGeneration {
    shared: Tensor,
    encoder: Stack,
    decoder: Stack,
    lm_head: Tensor,
    output_scale: f64,
    decoder_start: u32,
    pad: u32,
    cfg: Config,
}

impl T5ForConditionalGeneration {
    pub fn load(vb: VarBuilder, cfg: &Config, _ctx: &Ctx) -> Result<Self> {
        let shared = vb.get((cfg.vocab_size, cfg.d_model), "shared.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            shared.clone()
        } else {
            vb.get((cfg.vocab_size, cfg.d_model), "lm_head.weight")?
        };
        let scale = cfg.scale_decoder_outputs.unwrap_or(cfg.tie_word_embeddings);
        Ok(Self {
            encoder: Stack::load(false, cfg.num_layers, cfg, vb.pp("encoder"))?,
            decoder: Stack::load(
                true,
                cfg.num_decoder_layers.unwrap_or(cfg.num_layers),
                cfg,
                vb.pp("decoder"),
            )?,
            shared,
            lm_head,
            output_scale: if scale {
                (cfg.d_model as f64).powf(-0.5)
            } else {
                1.0
            },
            decoder_start: cfg.decoder_start_token_id.unwrap_or(cfg.pad_token_id),
            pad: cfg.pad_token_id,
            cfg: cfg.clone(),
        })
    }
}

impl TrainingModel for T5ForConditionalGeneration {
    fn loss(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        let Batch::Seq2Seq {
            batch,
            seq_len,
            input_ids,
            target_len,
            labels,
        } = batch
        else {
            candle_core::bail!("T5 trains on input/target batches");
        };
        let device = self.shared.device();
        let ids = Tensor::from_slice(input_ids, (*batch, *seq_len), device)?;
        // transformers' _shift_right: the decoder reads the start token, then the labels
        // (ignored ones as padding).
        let decoder_ids: Vec<u32> =
            labels
                .chunks(*target_len)
                .flat_map(|row| {
                    std::iter::once(self.decoder_start).chain(
                        row[..row.len() - 1]
                            .iter()
                            .map(|&l| if l < 0 { self.pad } else { l as u32 }),
                    )
                })
                .collect();
        let decoder_ids = Tensor::from_vec(decoder_ids, (*batch, *target_len), device)?;
        let encoded = self
            .encoder
            .forward(&embed(&self.shared, &ids)?, None, &self.cfg, ctx)?;
        let h = self.decoder.forward(
            &embed(&self.shared, &decoder_ids)?,
            Some(&encoded),
            &self.cfg,
            ctx,
        )?;
        let logits =
            Linear::new(self.lm_head.clone(), None).forward(&(h * self.output_scale)?, ctx)?;
        layers::cross_entropy(&logits.flatten_to(1)?, labels)
    }
}
