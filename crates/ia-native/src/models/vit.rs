//! ViT image classification on candle-transformers' `vit::Model`
//! (transformers' `ViTForImageClassification`). Output: `logits` [batch, num_labels].

use super::{parse_config, LoadContext};
use crate::{rt, CandleOutput};
use candle_core::Tensor;
use candle_transformers::models::vit::{Config, Model};
use ia_engine::{EngineError, Inputs, Outputs, Session, SessionInfo};
use serde_json::Value;

pub struct VitSession {
    model: Model,
    device: candle_core::Device,
    dtype: candle_core::DType,
    info: SessionInfo,
}

/// transformers derives num_labels from id2label when it is present.
pub(crate) fn num_labels(config: &Value) -> usize {
    config
        .get("id2label")
        .and_then(Value::as_object)
        .map(|m| m.len())
        .or_else(|| {
            config
                .get("num_labels")
                .and_then(Value::as_u64)
                .map(|n| n as usize)
        })
        .unwrap_or(2)
}

impl VitSession {
    pub fn load(ctx: LoadContext<'_>) -> Result<Box<dyn Session>, EngineError> {
        let cfg: Config = parse_config(ctx.source, "ViT")?;
        let labels = num_labels(ctx.source.config());
        let (model, info) = ctx.build("ViT", &["logits"], |vb| Model::new(&cfg, labels, vb))?;
        Ok(Box::new(Self {
            model,
            device: ctx.device,
            dtype: ctx.dtype,
            info,
        }))
    }
}

impl Session for VitSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> Result<Outputs, EngineError> {
        let Inputs::Image {
            shape,
            pixel_values,
        } = inputs
        else {
            return Err(EngineError::InvalidInput("ViT takes image inputs".into()));
        };
        let xs = Tensor::from_slice(pixel_values, shape.to_vec(), &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(rt)?;
        let logits = self.model.forward(&xs).map_err(rt)?;
        Ok(Outputs {
            tensors: vec![("logits".into(), Box::new(CandleOutput(logits)))],
        })
    }
}
