//! Whisper (transformers' `WhisperForConditionalGeneration`), written against
//! `modeling_whisper.py`: two GELU convolutions and pre-LN encoder layers over log-mel
//! features, a pre-LN decoder with a self-attention KV cache and cached cross-attention keys,
//! logits from the tied token embeddings. Tensor names match the HF checkpoint.
//!
//! candle-transformers has a Whisper too, but its GELU is the tanh approximation (transformers
//! uses the exact erf form) and its decoder recomputes every position at each step.
//!
//! This file computes (encoder over log-mel windows, decoder steps with caches); which tokens
//! are chosen, greedy or beam search, and long-form transcription past 30 s are
//! `ia_engine::whisper`'s, the same for every engine.

use super::attention::{Mlp, MultiHeadAttention};
use super::encoder::{Dense, FrameConv, PreNormLayer, Products, SelfAttention};
use super::LoadContext;
use crate::kernels::LayerNorm;
use crate::rt;
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{embedding, Activation, Embedding, VarBuilder};
use ia_engine::seq2seq::Seq2SeqDecoder;
use ia_engine::whisper::{WhisperModel, WhisperSession};
use ia_engine::EngineError;
use serde::Deserialize;

/// HF `WhisperConfig`, deserialised from config.json as is.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub num_mel_bins: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_layers: usize,
    pub decoder_attention_heads: usize,
    pub decoder_ffn_dim: usize,
    pub max_source_positions: usize,
    pub max_target_positions: usize,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default)]
    pub activation_function: Activation,
    pub decoder_start_token_id: u32,
}

fn ln(dim: usize, vb: VarBuilder) -> Result<LayerNorm> {
    LayerNorm::load(dim, 1e-5, vb)
}

/// transformers' `WhisperEncoderLayer` under `vb` (its k_proj has no bias).
fn load_encoder_layer(cfg: &Config, vb: VarBuilder, products: Products) -> Result<PreNormLayer> {
    let (d, ffn) = (cfg.d_model, cfg.encoder_ffn_dim);
    let attn = vb.pp("self_attn");
    Ok(PreNormLayer {
        norm_before: ln(d, vb.pp("self_attn_layer_norm"))?,
        attention: SelfAttention::load_named(
            d,
            cfg.encoder_attention_heads,
            [("q_proj", true), ("k_proj", false), ("v_proj", true)],
            attn.clone(),
            products,
        )?,
        attention_output: Dense::load(d, d, attn.pp("out_proj"), products)?,
        norm_after: ln(d, vb.pp("final_layer_norm"))?,
        intermediate: Dense::load(d, ffn, vb.pp("fc1"), products)?,
        act: cfg.activation_function.into(),
        output: Dense::load(ffn, d, vb.pp("fc2"), products)?,
    })
}

struct DecoderLayer {
    self_attn: MultiHeadAttention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: MultiHeadAttention,
    encoder_attn_layer_norm: LayerNorm,
    mlp: Mlp,
    final_layer_norm: LayerNorm,
    /// Keys/values of the tokens decoded so far, [batch, heads, past, head_dim].
    self_kv: Option<(Tensor, Tensor)>,
    /// Keys/values of the encoder output, computed once per input.
    cross_kv: Option<(Tensor, Tensor)>,
}

impl DecoderLayer {
    fn load(cfg: &Config, vb: VarBuilder, products: Products) -> Result<Self> {
        let (d, h) = (cfg.d_model, cfg.decoder_attention_heads);
        let attention = |name| MultiHeadAttention::load(d, h, false, vb.pp(name), products);
        Ok(Self {
            self_attn: attention("self_attn")?,
            self_attn_layer_norm: ln(d, vb.pp("self_attn_layer_norm"))?,
            encoder_attn: attention("encoder_attn")?,
            encoder_attn_layer_norm: ln(d, vb.pp("encoder_attn_layer_norm"))?,
            mlp: Mlp::load(
                d,
                cfg.decoder_ffn_dim,
                cfg.activation_function,
                &vb,
                products,
            )?,
            final_layer_norm: ln(d, vb.pp("final_layer_norm"))?,
            self_kv: None,
            cross_kv: None,
        })
    }

    fn forward(&mut self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.self_attn_layer_norm.forward(x)?;
        let (mut k, mut v) = self.self_attn.keys_values(&h)?;
        if let Some((pk, pv)) = &self.self_kv {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        let a = self.self_attn.attend(&h, &k, &v, mask)?;
        self.self_kv = Some((k, v));
        let x = (x + a)?;
        let (ck, cv) = self
            .cross_kv
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("decoder used before start()".into()))?;
        let h = self.encoder_attn_layer_norm.forward(&x)?;
        let x = (&x + self.encoder_attn.attend(&h, ck, cv, None)?)?;
        &x + self.mlp.forward(&self.final_layer_norm.forward(&x)?)?
    }
}

/// The Whisper network with its decoder caches.
pub struct Model {
    /// Over channels-last frames, padded by one.
    conv1: FrameConv,
    conv2: FrameConv,
    act: Activation,
    encoder_positions: Tensor,
    encoder_layers: Vec<PreNormLayer>,
    encoder_layer_norm: LayerNorm,
    embed_tokens: Embedding,
    decoder_positions: Tensor,
    decoder_layers: Vec<DecoderLayer>,
    decoder_layer_norm: LayerNorm,
    lm_head: Dense,
    embed_scale: f64,
    past_len: usize,
    pub config: Config,
}

impl Model {
    /// The network multiplying in the weights' dtype.
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Self::load_with(vb, cfg, Products::AsLoaded)
    }

    /// `products`: how the linear layers, the convolutions, the encoder's attention and the
    /// vocabulary head multiply ([`Products`]; a tied head in bf16 is a copy of the token
    /// table); the decoder's attention in f32.
    /// Bf16 needs [`crate::kernels::bf16::available`].
    pub fn load_with(vb: VarBuilder, cfg: &Config, products: Products) -> Result<Self> {
        let e = vb.pp("model.encoder");
        let d = vb.pp("model.decoder");
        let dm = cfg.d_model;
        let embed_tokens = embedding(cfg.vocab_size, dm, d.pp("embed_tokens"))?;
        // transformers ties proj_out to the token embeddings; a separate head is used if stored.
        let lm_head = if vb.contains_tensor("proj_out.weight") {
            Dense::new(
                vb.get((cfg.vocab_size, dm), "proj_out.weight")?,
                None,
                products,
            )?
        } else {
            Dense::tied(embed_tokens.embeddings(), products)?
        };
        Ok(Self {
            conv1: FrameConv::load(
                (cfg.num_mel_bins, dm, 3),
                true,
                1,
                1,
                e.pp("conv1"),
                products,
            )?,
            conv2: FrameConv::load((dm, dm, 3), true, 2, 1, e.pp("conv2"), products)?,
            act: cfg.activation_function,
            encoder_positions: e.get((cfg.max_source_positions, dm), "embed_positions.weight")?,
            encoder_layers: (0..cfg.encoder_layers)
                .map(|i| load_encoder_layer(cfg, e.pp(format!("layers.{i}")), products))
                .collect::<Result<_>>()?,
            encoder_layer_norm: ln(dm, e.pp("layer_norm"))?,
            embed_tokens,
            decoder_positions: d.get((cfg.max_target_positions, dm), "embed_positions.weight")?,
            decoder_layers: (0..cfg.decoder_layers)
                .map(|i| DecoderLayer::load(cfg, d.pp(format!("layers.{i}")), products))
                .collect::<Result<_>>()?,
            decoder_layer_norm: ln(dm, d.pp("layer_norm"))?,
            lm_head,
            embed_scale: if cfg.scale_embedding {
                (dm as f64).sqrt()
            } else {
                1.0
            },
            past_len: 0,
            config: cfg.clone(),
        })
    }

    /// Encoder output [batch, frames / 2, d_model] for log-mel features [batch, mels, frames].
    pub fn encode(&self, features: &Tensor) -> Result<Tensor> {
        // Each item's mel frames channels-last: [frames, mel bins].
        let x = (0..features.dim(0)?)
            .map(|b| {
                let x = self.conv1.forward(&features.get(b)?.t()?, Some(self.act))?;
                self.conv2.forward(&x, Some(self.act))
            })
            .collect::<Result<Vec<_>>>()?;
        let x = Tensor::stack(&x, 0)?;
        let t = x.dim(1)?;
        let mut x = x.broadcast_add(&self.encoder_positions.narrow(0, 0, t)?)?;
        for layer in &self.encoder_layers {
            x = layer.forward(&x)?;
        }
        self.encoder_layer_norm.forward(&x)
    }

    /// Starts decoding against `encoder_out` (one row per sequence to decode).
    pub fn start(&mut self, encoder_out: &Tensor) -> Result<()> {
        for layer in &mut self.decoder_layers {
            layer.self_kv = None;
            layer.cross_kv = Some(layer.encoder_attn.keys_values(encoder_out)?);
        }
        self.past_len = 0;
        Ok(())
    }

    /// Logits [batch, t, vocab] for the next `t` tokens of every sequence.
    pub fn decode(&mut self, tokens: &Tensor) -> Result<Tensor> {
        let t = tokens.dim(1)?;
        if self.past_len + t > self.config.max_target_positions {
            candle_core::bail!(
                "decoder context of {} tokens exceeded",
                self.config.max_target_positions
            );
        }
        let pos = self.decoder_positions.narrow(0, self.past_len, t)?;
        let mut x = (self.embed_tokens.forward(tokens)? * self.embed_scale)?.broadcast_add(&pos)?;
        let mask = (t > 1)
            .then(|| causal_mask(t, self.past_len, x.device(), x.dtype()))
            .transpose()?;
        for layer in &mut self.decoder_layers {
            x = layer.forward(&x, mask.as_ref())?;
        }
        self.past_len += t;
        self.lm_head.forward(&self.decoder_layer_norm.forward(&x)?)
    }

    /// Keeps, for each new row, the caches of row `rows[i]` (beam search).
    pub fn reorder(&mut self, rows: &[u32]) -> Result<()> {
        let idx = Tensor::new(rows, self.decoder_positions.device())?;
        for layer in &mut self.decoder_layers {
            if let Some((k, v)) = &layer.self_kv {
                layer.self_kv = Some((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?));
            }
        }
        Ok(())
    }
}

fn causal_mask(t: usize, past: usize, device: &Device, dtype: DType) -> Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..past + t).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Tensor::from_vec(m, (t, past + t), device)?.to_dtype(dtype)
}

/// The candle Whisper as [`WhisperModel`]: encodes windows and decodes tokens; every decoding
/// decision is `ia_engine::whisper`'s.
pub struct CandleWhisper {
    model: Model,
    device: Device,
    dtype: DType,
}

impl CandleWhisper {
    fn next_logits(&mut self, tokens: &[u32], rows: usize) -> Result<Vec<Vec<f32>>> {
        let t = Tensor::from_slice(tokens, (rows, tokens.len() / rows.max(1)), &self.device)?;
        let logits = self.model.decode(&t)?;
        let last = logits.dim(1)? - 1;
        logits.i((.., last))?.to_dtype(DType::F32)?.to_vec2()
    }
}

impl Seq2SeqDecoder for CandleWhisper {
    fn decode(
        &mut self,
        tokens: &[u32],
        rows: usize,
    ) -> std::result::Result<Vec<Vec<f32>>, EngineError> {
        self.next_logits(tokens, rows).map_err(rt)
    }

    fn reorder(&mut self, rows: &[u32]) -> std::result::Result<(), EngineError> {
        self.model.reorder(rows).map_err(rt)
    }
}

impl WhisperModel for CandleWhisper {
    fn start(
        &mut self,
        features: &[f32],
        windows: usize,
        copies: usize,
    ) -> std::result::Result<(), EngineError> {
        let cfg = &self.model.config;
        let frames = 2 * cfg.max_source_positions;
        let x = Tensor::from_slice(features, (windows, cfg.num_mel_bins, frames), &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(rt)?;
        let enc = self.model.encode(&x).map_err(rt)?;
        let enc = if copies > 1 {
            enc.repeat((copies, 1, 1)).map_err(rt)?
        } else {
            enc
        };
        self.model.start(&enc).map_err(rt)
    }

    fn max_target_positions(&self) -> usize {
        self.model.config.max_target_positions
    }

    fn max_source_positions(&self) -> usize {
        self.model.config.max_source_positions
    }
}

/// The native Whisper session: the engine-agnostic session over candle's encoder and decoder.
pub fn load(
    ctx: LoadContext<'_>,
) -> std::result::Result<WhisperSession<CandleWhisper>, EngineError> {
    let cfg: Config = super::parse_config(ctx.source, "Whisper")?;
    let products = ctx.products;
    let (model, info) = ctx.build("Whisper", &["sequences"], |vb| {
        Model::load_with(vb, &cfg, products)
    })?;
    WhisperSession::new(
        CandleWhisper {
            model,
            device: ctx.device,
            dtype: ctx.dtype,
        },
        ctx.source,
        info,
    )
}

/// Encoder output and teacher-forced logits (parity tests compare both with transformers).
pub fn teacher_forced_logits(
    model: &mut Model,
    features: &Tensor,
    tokens: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let enc = model.encode(features)?;
    model.start(&enc)?;
    let logits = model.decode(tokens)?;
    Ok((enc, logits))
}
