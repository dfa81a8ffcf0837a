//! BERT encoder (embeddings task), after transformers' `modeling_bert.py`, tensor names as in
//! the checkpoint (`embeddings.*`, `encoder.layer.N.*`, optionally under `bert.`).
//!
//! RoBERTa (CLAP's text tower) is the same network with positions counted after the padding
//! token ([`roberta_positions`]).
//!
//! Outputs `last_hidden_state` [batch, seq, hidden] as transformers' `BertModel` returns it,
//! and `mean_pooled` [batch, hidden]: the attention-masked mean that sentence-transformers'
//! pooling layer computes.
//!
//! The layers are [`super::encoder`]'s (one product per projection over all rows, stacked
//! query/key/value, bias, GELU and residual adds in the product's pass, attention read from the
//! stacked projection in place); a mask with no padding is not added at all.

use super::encoder::{Dense, Products, SelfAttention};
use super::{parse_config, LoadContext};
use crate::kernels::LayerNorm;
use crate::{rt, CandleOutput};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, Activation, Embedding, VarBuilder};
use ia_engine::{EngineError, Inputs, Outputs, Session, SessionInfo};
use serde::Deserialize;

/// transformers' `BertConfig` fields the forward pass reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub model_type: Option<String>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

impl Config {
    /// The padding token's id for the RoBERTa model types, whose positions count from it
    /// ([`roberta_positions`]).
    pub fn roberta_padding_id(&self) -> Option<u32> {
        matches!(
            self.model_type.as_deref(),
            Some("roberta" | "xlm-roberta" | "camembert" | "clap_text_model")
        )
        .then(|| self.pad_token_id.unwrap_or(1))
    }
}

struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    /// RoBERTa's padding id ([`Config::roberta_padding_id`]); None: positions 0, 1, 2, ...
    padding_idx: Option<u32>,
}

impl Embeddings {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            word_embeddings: embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("word_embeddings"))?,
            position_embeddings: embedding(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_type_embeddings: embedding(
                cfg.type_vocab_size,
                cfg.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            layer_norm: LayerNorm::load(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            padding_idx: cfg.roberta_padding_id(),
        })
    }

    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor) -> Result<Tensor> {
        let seq_len = input_ids.dim(1)?;
        // RoBERTa's positions start after the padding id.
        let last = seq_len + self.padding_idx.map_or(0, |pad| pad as usize + 1);
        let table = self.position_embeddings.embeddings().dim(0)?;
        if last > table {
            candle_core::bail!(
                "a sequence of {seq_len} tokens is longer than the model's {} positions",
                table - (last - seq_len)
            )
        }
        let x = (self.word_embeddings.forward(input_ids)?
            + self.token_type_embeddings.forward(token_type_ids)?)?;
        let x = match self.padding_idx {
            None => {
                let positions = Tensor::arange(0u32, seq_len as u32, input_ids.device())?;
                x.broadcast_add(&self.position_embeddings.forward(&positions)?)?
            }
            Some(pad) => {
                let batch = input_ids.dim(0)?;
                let positions = input_ids
                    .to_vec2::<u32>()?
                    .iter()
                    .flat_map(|row| roberta_positions(row, pad))
                    .collect();
                let positions = Tensor::from_vec(positions, (batch, seq_len), input_ids.device())?;
                (x + self.position_embeddings.forward(&positions)?)?
            }
        };
        self.layer_norm.forward(&x)
    }
}

/// transformers' `create_position_ids_from_input_ids`: a token's position is `pad` plus the
/// count of non-padding tokens up to and including it; a padding token's is `pad`.
fn roberta_positions(ids: &[u32], pad: u32) -> Vec<u32> {
    let mut count = 0;
    ids.iter()
        .map(|&id| {
            count += u32::from(id != pad);
            if id == pad {
                pad
            } else {
                pad + count
            }
        })
        .collect()
}

struct Layer {
    attention: SelfAttention,
    attention_output: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    act: Activation,
    output: Dense,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &Config, products: Products) -> Result<Self> {
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            attention: SelfAttention::load(
                h,
                cfg.num_attention_heads,
                true,
                vb.pp("attention.self"),
                products,
            )?,
            attention_output: Dense::load(h, h, vb.pp("attention.output.dense"), products)?,
            attention_norm: LayerNorm::load(h, eps, vb.pp("attention.output.LayerNorm"))?,
            intermediate: Dense::load(
                h,
                cfg.intermediate_size,
                vb.pp("intermediate.dense"),
                products,
            )?,
            act: cfg.hidden_act,
            output: Dense::load(cfg.intermediate_size, h, vb.pp("output.dense"), products)?,
            output_norm: LayerNorm::load(h, eps, vb.pp("output.LayerNorm"))?,
        })
    }

    /// Post-norm: x = norm(x + attention(x)); x = norm(x + ffn(x)).
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let attended = self.attention.forward(x, mask)?;
        let x = self
            .attention_norm
            .forward(&self.attention_output.forward_residual(&attended, x)?)?;
        let ffn = self
            .intermediate
            .feed_forward(&x, self.act, &self.output, Some(&x))?;
        self.output_norm.forward(&ffn)
    }
}

pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pub device: Device,
}

impl BertModel {
    /// `products`: how the linear layers multiply ([`Products`]).
    pub fn load(vb: VarBuilder, cfg: &Config, products: Products) -> Result<Self> {
        // Checkpoints of BertFor* keep the encoder under `bert.` (or the model type).
        let prefix = ["bert", cfg.model_type.as_deref().unwrap_or("bert")]
            .into_iter()
            .find(|p| vb.contains_tensor(&format!("{p}.embeddings.word_embeddings.weight")));
        let vb = match prefix {
            Some(p) => vb.pp(p),
            None => vb,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), cfg, products))
            .collect::<Result<_>>()?;
        Ok(Self {
            embeddings: Embeddings::load(vb.pp("embeddings"), cfg)?,
            layers,
            device: vb.device().clone(),
        })
    }

    /// `attention_mask` [batch, seq] of 0/1; None or all ones attends everywhere.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut x = self.embeddings.forward(input_ids, token_type_ids)?;
        let mask = match attention_mask {
            Some(m) if m.to_dtype(DType::F32)?.min_all()?.to_scalar::<f32>()? < 1.0 => {
                Some(key_mask(m, x.dtype())?)
            }
            _ => None,
        };
        for layer in &self.layers {
            x = layer.forward(&x, mask.as_ref())?;
        }
        Ok(x)
    }
}

/// transformers' extended attention mask, [batch, seq]: 0 where attended, the f32 minimum
/// where not (added to the scores of every query for that key).
fn key_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?;
    mask.affine(-1.0, 1.0)?
        .affine(f32::MIN as f64, 0.0)?
        .to_dtype(dtype)
}

pub struct BertSession {
    model: BertModel,
    info: SessionInfo,
}

impl BertSession {
    pub fn load(ctx: LoadContext<'_>) -> std::result::Result<Box<dyn Session>, EngineError> {
        let cfg: Config = parse_config(ctx.source, "BERT")?;
        let outputs = ["last_hidden_state", "mean_pooled"];
        let (model, info) = ctx.build("BERT", &outputs, |vb| {
            BertModel::load(vb, &cfg, ctx.products)
        })?;
        Ok(Box::new(Self { model, info }))
    }
}

impl Session for BertSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> std::result::Result<Outputs, EngineError> {
        let Inputs::Text {
            batch,
            seq_len,
            input_ids,
            attention_mask,
            token_type_ids,
        } = inputs
        else {
            return Err(EngineError::InvalidInput("BERT takes text inputs".into()));
        };
        let dev = &self.model.device;
        let shape = (*batch, *seq_len);
        let ids = Tensor::from_slice(input_ids, shape, dev).map_err(rt)?;
        let types = Tensor::from_slice(token_type_ids, shape, dev).map_err(rt)?;
        let mask = Tensor::from_slice(attention_mask, shape, dev).map_err(rt)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask)).map_err(rt)?;
        let pooled = mean_pool(&hidden, &mask).map_err(rt)?;
        Ok(Outputs {
            tensors: vec![
                ("last_hidden_state".into(), Box::new(CandleOutput(hidden))),
                ("mean_pooled".into(), Box::new(CandleOutput(pooled))),
            ],
        })
    }
}

/// sum(hidden * mask) / max(sum(mask), 1e-9), as sentence-transformers' mean pooling.
fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.to_dtype(DType::F32)?.clamp(1e-9, f32::MAX)?;
    summed.broadcast_div(&counts.to_dtype(hidden.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::roberta_positions;

    #[test]
    fn roberta_positions_count_after_the_padding_id() {
        // transformers: (cumsum(ids != pad) * (ids != pad)) + pad.
        assert_eq!(
            roberta_positions(&[0, 7, 9, 2, 1, 1], 1),
            [2, 3, 4, 5, 1, 1]
        );
        assert_eq!(roberta_positions(&[1, 1, 0, 7, 2], 1), [1, 1, 2, 3, 4]);
        assert_eq!(roberta_positions(&[], 1), Vec::<u32>::new());
    }
}
