//! Text generation on ONNX Runtime: the [`DecoderBackend`] of a decoder exported with past key
//! values (conventions in `ia_engine::exported_decoder`). The cache stays in ONNX Runtime
//! values that are fed back unchanged, so a decode step copies nothing but the logits.

use crate::session::rt_err;
use ia_engine::exported_decoder::{DecoderBackend, DecoderGraph, DecoderStep};
use ia_engine::EngineError;
use ort::session::SessionInputValue;
use ort::value::{DynValue, Tensor};

pub struct OrtDecoder {
    session: ort::session::Session,
    /// The cache after the last call, one value per slot.
    cache: Vec<DynValue>,
}

impl OrtDecoder {
    /// The backend and the graph's conventions, read from the session's inputs and outputs.
    pub(crate) fn new(session: ort::session::Session) -> Result<(Self, DecoderGraph), EngineError> {
        let inputs: Vec<(String, Option<Vec<i64>>)> = session
            .inputs()
            .iter()
            .map(|i| {
                let dims = i.dtype().tensor_shape().map(|s| s.to_vec());
                (i.name().to_string(), dims)
            })
            .collect();
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let graph = DecoderGraph::from_io(&inputs, &outputs)?;
        Ok((
            Self {
                session,
                cache: Vec::new(),
            },
            graph,
        ))
    }
}

fn int64(shape: [usize; 2], data: &[i64]) -> Result<SessionInputValue<'static>, EngineError> {
    Ok(Tensor::from_array((shape, data.to_vec()))
        .map_err(rt_err)?
        .into())
}

impl DecoderBackend for OrtDecoder {
    fn run(
        &mut self,
        graph: &DecoderGraph,
        step: &DecoderStep,
    ) -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        let (batch, total) = (step.batch, step.cached + step.new);
        let mut feed: Vec<(String, SessionInputValue<'_>)> = vec![
            (
                "input_ids".into(),
                int64([batch, step.new], &step.input_ids)?,
            ),
            (
                "attention_mask".into(),
                int64([batch, total], &step.attention_mask)?,
            ),
        ];
        if graph.has_position_ids {
            feed.push((
                "position_ids".into(),
                int64([batch, step.new], &step.position_ids)?,
            ));
        }
        if graph.has_cache_branch {
            let branch = Tensor::from_array(([1usize], vec![step.cached > 0])).map_err(rt_err)?;
            feed.push(("use_cache_branch".into(), branch.into()));
        }
        let cache = std::mem::take(&mut self.cache);
        if step.cached == 0 {
            for slot in &graph.slots {
                let empty = Tensor::<f32>::from_array((
                    [batch, slot.heads, 0, slot.head_dim],
                    Vec::<f32>::new(),
                ))
                .map_err(rt_err)?;
                feed.push((slot.input.clone(), empty.into()));
            }
        } else {
            for (slot, value) in graph.slots.iter().zip(cache) {
                feed.push((slot.input.clone(), value.into()));
            }
        }
        let mut outputs = self.session.run(feed).map_err(rt_err)?;
        let mut next = Vec::with_capacity(graph.slots.len());
        for slot in &graph.slots {
            next.push(outputs.remove(&slot.output).ok_or_else(|| {
                EngineError::Runtime(format!("no `{}` in the outputs", slot.output))
            })?);
        }
        let (shape, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(rt_err)?;
        let result = (shape.iter().map(|&d| d as usize).collect(), logits.to_vec());
        drop(outputs);
        self.cache = next;
        Ok(result)
    }

    fn clear(&mut self) {
        self.cache.clear();
    }
}
