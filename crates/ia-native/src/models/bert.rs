//! BERT encoder (embeddings task) on candle-transformers' `BertModel`.
//!
//! Outputs `last_hidden_state` [batch, seq, hidden] as transformers' `BertModel` returns it,
//! and `mean_pooled` [batch, hidden]: the attention-masked mean that sentence-transformers'
//! pooling layer computes.

use super::{parse_config, LoadContext};
use crate::{rt, CandleOutput};
use candle_core::{DType, Tensor};
use candle_transformers::models::bert::{BertModel, Config};
use ia_engine::{EngineError, Inputs, Outputs, Session, SessionInfo};

pub struct BertSession {
    model: BertModel,
    info: SessionInfo,
}

impl BertSession {
    pub fn load(ctx: LoadContext<'_>) -> Result<Box<dyn Session>, EngineError> {
        let cfg: Config = parse_config(ctx.source, "BERT")?;
        let outputs = ["last_hidden_state", "mean_pooled"];
        let (model, info) = ctx.build("BERT", &outputs, |vb| BertModel::load(vb, &cfg))?;
        Ok(Box::new(Self { model, info }))
    }
}

impl Session for BertSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> Result<Outputs, EngineError> {
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
fn mean_pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.to_dtype(DType::F32)?.clamp(1e-9, f32::MAX)?;
    summed.broadcast_div(&counts.to_dtype(hidden.dtype())?)
}
