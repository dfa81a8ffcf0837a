//! Text generation on ONNX Runtime: a decoder exported with past key values (the layout of
//! Optimum and onnx-community exports: inputs `input_ids`, `attention_mask`, optionally
//! `position_ids` and `use_cache_branch`, and `past_key_values.{i}.key|value`; outputs
//! `logits` and `present.{i}.key|value`). The cache lives in ONNX Runtime values that are fed
//! back unchanged, so a decode step copies nothing but the logits of the last position.

use crate::session::rt_err;
use ia_engine::generation::{equal_length_batch, TextGenerator};
use ia_engine::{EngineError, SessionInfo};
use ort::value::{DynValue, Tensor};

/// One cache input and the output that carries its next value.
struct CacheSlot {
    input: String,
    output: String,
    /// Key/value heads and head size: the fixed dims of `[batch, heads, past, head_dim]`.
    heads: usize,
    head_dim: usize,
}

pub struct OrtGenerator {
    session: ort::session::Session,
    info: SessionInfo,
    slots: Vec<CacheSlot>,
    has_position_ids: bool,
    has_cache_branch: bool,
    /// The cache after the last call, one value per slot.
    cache: Vec<DynValue>,
    batch: usize,
    /// Tokens in the cache.
    cached: usize,
    max_context: usize,
    eos: Vec<u32>,
}

impl OrtGenerator {
    pub(crate) fn new(
        session: ort::session::Session,
        info: SessionInfo,
        max_context: usize,
        eos: Vec<u32>,
    ) -> Result<Self, EngineError> {
        let bad = |m: String| EngineError::InvalidModel(format!("decoder export: {m}"));
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        if !outputs.iter().any(|o| o == "logits") {
            return Err(bad("no `logits` output".into()));
        }
        let mut slots = Vec::new();
        let (mut has_position_ids, mut has_cache_branch) = (false, false);
        for input in session.inputs() {
            let name = input.name();
            match name {
                "input_ids" | "attention_mask" => {}
                "position_ids" => has_position_ids = true,
                "use_cache_branch" => has_cache_branch = true,
                _ if name.starts_with("past_key_values.") => {
                    let output = name.replacen("past_key_values.", "present.", 1);
                    if !outputs.contains(&output) {
                        return Err(bad(format!("input `{name}` has no `{output}` output")));
                    }
                    let dims = input.dtype().tensor_shape().map(|s| s.to_vec());
                    let (heads, head_dim) = match dims.as_deref() {
                        Some([_, h, _, d]) if *h > 0 && *d > 0 => (*h as usize, *d as usize),
                        _ => {
                            return Err(bad(format!(
                                "`{name}` must be [batch, heads, past, head_dim] with fixed heads and head_dim, not {dims:?}"
                            )))
                        }
                    };
                    slots.push(CacheSlot {
                        input: name.to_string(),
                        output,
                        heads,
                        head_dim,
                    });
                }
                other => {
                    return Err(bad(format!(
                        "input `{other}` is not one a decoder with past key values takes"
                    )))
                }
            }
        }
        if slots.is_empty() {
            return Err(bad(
                "no past_key_values inputs: export the decoder with its cache (scripts/export_onnx_fixtures.py)".into(),
            ));
        }
        Ok(Self {
            session,
            info,
            slots,
            has_position_ids,
            has_cache_branch,
            cache: Vec::new(),
            batch: 0,
            cached: 0,
            max_context,
            eos,
        })
    }

    /// Feeds `tokens` (`batch` rows of equal length) after the cache; returns the logits of
    /// each row's last position and keeps the new cache.
    fn forward(&mut self, tokens: &[u32], batch: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        let new = tokens.len() / batch;
        let total = self.cached + new;
        if total > self.max_context {
            return Err(EngineError::InvalidInput(format!(
                "{total} tokens exceed the model's context of {}",
                self.max_context
            )));
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let mut feed: Vec<(String, ort::session::SessionInputValue<'_>)> = vec![
            (
                "input_ids".into(),
                Tensor::from_array(([batch, new], ids))
                    .map_err(rt_err)?
                    .into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array(([batch, total], vec![1i64; batch * total]))
                    .map_err(rt_err)?
                    .into(),
            ),
        ];
        if self.has_position_ids {
            let positions: Vec<i64> = (0..batch)
                .flat_map(|_| (self.cached..total).map(|p| p as i64))
                .collect();
            feed.push((
                "position_ids".into(),
                Tensor::from_array(([batch, new], positions))
                    .map_err(rt_err)?
                    .into(),
            ));
        }
        if self.has_cache_branch {
            feed.push((
                "use_cache_branch".into(),
                Tensor::from_array(([1usize], vec![self.cached > 0]))
                    .map_err(rt_err)?
                    .into(),
            ));
        }
        let cache = std::mem::take(&mut self.cache);
        if cache.is_empty() {
            for slot in &self.slots {
                let empty = Tensor::<f32>::from_array((
                    [batch, slot.heads, 0, slot.head_dim],
                    Vec::<f32>::new(),
                ))
                .map_err(rt_err)?;
                feed.push((slot.input.clone(), empty.into()));
            }
        } else {
            for (slot, value) in self.slots.iter().zip(cache) {
                feed.push((slot.input.clone(), value.into()));
            }
        }
        let mut outputs = self.session.run(feed).map_err(rt_err)?;
        let mut next_cache = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            next_cache.push(outputs.remove(&slot.output).ok_or_else(|| {
                EngineError::Runtime(format!("no `{}` in the outputs", slot.output))
            })?);
        }
        let (shape, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(rt_err)?;
        let vocab = *shape.last().unwrap_or(&0) as usize;
        if shape.len() != 3 || shape[0] as usize != batch || vocab == 0 {
            return Err(EngineError::Runtime(format!(
                "logits of shape {shape:?} for a batch of {batch}"
            )));
        }
        let rows = (0..batch)
            .map(|b| {
                let last = (b * new + new - 1) * vocab;
                logits[last..last + vocab].to_vec()
            })
            .collect();
        drop(outputs);
        self.cache = next_cache;
        self.cached = total;
        self.batch = batch;
        Ok(rows)
    }
}

impl TextGenerator for OrtGenerator {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        let mut rows = self.prefill_batch(&[prompt.to_vec()])?;
        Ok(rows.remove(0))
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>, EngineError> {
        let mut rows = self.step_batch(&[token])?;
        Ok(rows.remove(0))
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn eos_tokens(&self) -> Vec<u32> {
        self.eos.clone()
    }

    fn prefill_batch(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        equal_length_batch(prompts)?;
        self.cache.clear();
        self.cached = 0;
        let tokens: Vec<u32> = prompts.concat();
        self.forward(&tokens, prompts.len())
    }

    fn step_batch(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        if self.cache.is_empty() || tokens.len() != self.batch {
            return Err(EngineError::InvalidInput(format!(
                "a step needs one token per sequence of the prefilled batch ({} given, batch {})",
                tokens.len(),
                self.batch
            )));
        }
        self.forward(tokens, self.batch)
    }
}
