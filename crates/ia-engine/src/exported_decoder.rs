//! Text generation with a decoder exported as a graph that takes its KV cache as inputs and
//! returns the next cache as outputs: the layout of Optimum's and onnx-community's exports, and
//! of scripts/export_onnx_fixtures.py. Inputs `input_ids`, `attention_mask`, optionally
//! `position_ids` and `use_cache_branch`, and `past_key_values.{i}.key|value`
//! `[batch, kv_heads, past, head_dim]`; outputs `logits` and `present.{i}.key|value`. The first
//! call feeds an empty cache (past = 0), so the one graph does prefill and decode.
//!
//! The conventions and the bookkeeping live here once; a runtime (ONNX Runtime, OpenVINO)
//! only implements [`DecoderBackend`]: run one call and hold the cache between calls.

use crate::generation::{equal_length_batch, TextGenerator};
use crate::{EngineError, SessionInfo};
use ia_models::{Model, ModelClass};

/// The classes whose exports the graph engines (ONNX Runtime, OpenVINO) run: encoders, one
/// call per input, and decoder-only language models through [`ExportedDecoder`].
pub fn check_exported_class(class: ModelClass) -> Result<(), EngineError> {
    match class {
        ModelClass::Bert
        | ModelClass::Vit
        | ModelClass::Clip
        | ModelClass::Clap
        | ModelClass::Wav2vec2
        | ModelClass::Detr
        | ModelClass::Whisper => Ok(()),
        c if is_decoder_only(c) => Ok(()),
        ModelClass::T5 => Err(EngineError::Unsupported(
            "the t5 export generates (`generate`, `bench --new-tokens`); it has no single forward \
             pass"
                .into(),
        )),
        other => Err(EngineError::Unsupported(format!(
            "no ONNX path for {} models yet",
            other.as_str()
        ))),
    }
}

/// What a graph runtime (`runtime`: its engine name) does with exported graphs: forward passes
/// of the classes above, generation with decoder exports, speech recognition with CTC models.
pub fn check_exported(
    class: ModelClass,
    capability: crate::Capability,
    runtime: &str,
) -> Result<(), EngineError> {
    match capability {
        crate::Capability::Run => check_exported_class(class),
        crate::Capability::Generate if is_decoder_only(class) || class == ModelClass::T5 => Ok(()),
        crate::Capability::Generate => Err(EngineError::Unsupported(format!(
            "{} is not a text-generation model; {runtime} generates with decoder and T5 exports",
            class.as_str()
        ))),
        // CTC models transcribe through their forward pass (crate::ctc), Whisper through its
        // export's three graphs (crate::exported_seq2seq).
        crate::Capability::Transcribe
            if matches!(class, ModelClass::Wav2vec2 | ModelClass::Whisper) =>
        {
            Ok(())
        }
        crate::Capability::Transcribe => Err(EngineError::Unsupported(format!(
            "the {runtime} engine transcribes only with Wav2Vec2 and Whisper exports, not {}",
            class.as_str()
        ))),
    }
}

fn is_decoder_only(class: ModelClass) -> bool {
    matches!(class, ModelClass::Llama | ModelClass::Qwen)
}

/// Checks that `model` is a decoder-only language model and returns its context
/// (config.json's `max_position_embeddings`); `runtime` names the engine in the error.
pub fn decoder_context(model: &Model, runtime: &str) -> Result<usize, EngineError> {
    check_exported(model.class, crate::Capability::Generate, runtime)?;
    model
        .config()
        .get("max_position_embeddings")
        .and_then(|v| v.as_u64())
        .map(|n| n as usize)
        .ok_or_else(|| {
            EngineError::InvalidModel("config.json has no max_position_embeddings".into())
        })
}

/// One cache input and the output that carries its next value.
#[derive(Debug, Clone)]
pub struct CacheSlot {
    pub input: String,
    pub output: String,
    /// Key/value heads and head size: the fixed dims of `[batch, heads, past, head_dim]`.
    pub heads: usize,
    pub head_dim: usize,
}

/// Which inputs the exported graph takes.
#[derive(Debug, Clone)]
pub struct DecoderGraph {
    pub slots: Vec<CacheSlot>,
    pub has_position_ids: bool,
    pub has_cache_branch: bool,
}

impl DecoderGraph {
    /// Reads the conventions from the graph's inputs (name, dims; a dynamic dim is <= 0 or
    /// absent) and output names; anything else is an error naming the input.
    pub fn from_io(
        inputs: &[(String, Option<Vec<i64>>)],
        outputs: &[String],
    ) -> Result<Self, EngineError> {
        let bad = |m: String| EngineError::InvalidModel(format!("decoder export: {m}"));
        if !outputs.iter().any(|o| o == "logits") {
            return Err(bad("no `logits` output".into()));
        }
        let mut graph = DecoderGraph {
            slots: Vec::new(),
            has_position_ids: false,
            has_cache_branch: false,
        };
        for (name, dims) in inputs {
            match name.as_str() {
                "input_ids" | "attention_mask" => {}
                "position_ids" => graph.has_position_ids = true,
                "use_cache_branch" => graph.has_cache_branch = true,
                _ if name.starts_with("past_key_values.") => {
                    let output = name.replacen("past_key_values.", "present.", 1);
                    if !outputs.contains(&output) {
                        return Err(bad(format!("input `{name}` has no `{output}` output")));
                    }
                    let (heads, head_dim) = match dims.as_deref() {
                        Some([_, h, _, d]) if *h > 0 && *d > 0 => (*h as usize, *d as usize),
                        _ => {
                            return Err(bad(format!(
                                "`{name}` must be [batch, heads, past, head_dim] with fixed heads and head_dim, not {dims:?}"
                            )))
                        }
                    };
                    graph.slots.push(CacheSlot {
                        input: name.clone(),
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
        if graph.slots.is_empty() {
            return Err(bad(
                "no past_key_values inputs: export the decoder with its cache (scripts/export_onnx_fixtures.py)".into(),
            ));
        }
        Ok(graph)
    }
}

/// The inputs of one call, besides the cache.
#[derive(Debug)]
pub struct DecoderStep {
    pub batch: usize,
    /// New tokens per row.
    pub new: usize,
    /// Tokens already in the cache (0: the backend feeds an empty cache).
    pub cached: usize,
    /// `[batch, new]`
    pub input_ids: Vec<i64>,
    /// `[batch, cached + new]`, all ones (rows are never padded).
    pub attention_mask: Vec<i64>,
    /// `[batch, new]`: cached .. cached + new.
    pub position_ids: Vec<i64>,
}

/// A runtime's half: one call of the graph, with the cache it keeps between calls.
pub trait DecoderBackend: Send {
    /// Runs `step` after the held cache (an empty one when `step.cached` is 0), keeps the
    /// new cache and returns the logits `[batch, new, vocab]` as (shape, data).
    fn run(
        &mut self,
        graph: &DecoderGraph,
        step: &DecoderStep,
    ) -> Result<(Vec<usize>, Vec<f32>), EngineError>;
    /// Drops the held cache.
    fn clear(&mut self);
}

/// A [`TextGenerator`] over any backend.
pub struct ExportedDecoder<B> {
    backend: B,
    graph: DecoderGraph,
    info: SessionInfo,
    batch: usize,
    /// Tokens in the backend's cache; 0 before the first prefill or after a failed call.
    cached: usize,
    max_context: usize,
    eos: Vec<u32>,
}

impl<B: DecoderBackend> ExportedDecoder<B> {
    pub fn new(
        backend: B,
        graph: DecoderGraph,
        info: SessionInfo,
        max_context: usize,
        eos: Vec<u32>,
    ) -> Self {
        Self {
            backend,
            graph,
            info,
            batch: 0,
            cached: 0,
            max_context,
            eos,
        }
    }

    fn forward(&mut self, tokens: &[u32], batch: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        let new = tokens.len() / batch;
        let total = self.cached + new;
        if total > self.max_context {
            return Err(EngineError::InvalidInput(format!(
                "{total} tokens exceed the model's context of {}",
                self.max_context
            )));
        }
        let step = DecoderStep {
            batch,
            new,
            cached: self.cached,
            input_ids: tokens.iter().map(|&t| i64::from(t)).collect(),
            attention_mask: vec![1; batch * total],
            position_ids: (0..batch)
                .flat_map(|_| (self.cached..total).map(|p| p as i64))
                .collect(),
        };
        // A failed call leaves no usable cache: the next call must be a prefill.
        self.cached = 0;
        let (shape, logits) = self.backend.run(&self.graph, &step)?;
        let vocab = shape.last().copied().unwrap_or(0);
        if shape.len() != 3 || shape[0] != batch || shape[1] != new || vocab == 0 {
            self.backend.clear();
            return Err(EngineError::Runtime(format!(
                "logits of shape {shape:?} for {batch} rows of {new} tokens"
            )));
        }
        self.cached = total;
        self.batch = batch;
        Ok((0..batch)
            .map(|b| {
                let last = (b * new + new - 1) * vocab;
                logits[last..last + vocab].to_vec()
            })
            .collect())
    }
}

impl<B: DecoderBackend> TextGenerator for ExportedDecoder<B> {
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
        self.backend.clear();
        self.cached = 0;
        self.forward(&prompts.concat(), prompts.len())
    }

    fn step_batch(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        if self.cached == 0 || tokens.len() != self.batch {
            return Err(EngineError::InvalidInput(format!(
                "a step needs one token per sequence of the prefilled batch ({} given, batch {})",
                tokens.len(),
                self.batch
            )));
        }
        self.forward(tokens, self.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(names: &[&str]) -> Vec<(String, Option<Vec<i64>>)> {
        names
            .iter()
            .map(|n| (n.to_string(), Some(vec![-1, 2, -1, 8])))
            .collect()
    }

    /// Graph runtimes run BERT/ViT/Wav2Vec2/DETR/decoder exports, generate only with decoder
    /// exports and transcribe only with CTC models; each refusal names the runtime or the class.
    #[test]
    fn exported_graphs_are_checked_per_capability() {
        use crate::Capability;
        assert!(check_exported(ModelClass::Bert, Capability::Run, "X").is_ok());
        assert!(check_exported(ModelClass::Qwen, Capability::Generate, "X").is_ok());
        let e = check_exported(ModelClass::Bert, Capability::Generate, "X").unwrap_err();
        assert!(
            e.to_string()
                .contains("bert is not a text-generation model"),
            "{e}"
        );
        assert!(check_exported(ModelClass::Wav2vec2, Capability::Transcribe, "X").is_ok());
        assert!(check_exported(ModelClass::Whisper, Capability::Transcribe, "X").is_ok());
        let e = check_exported(ModelClass::Bert, Capability::Transcribe, "X").unwrap_err();
        assert!(
            e.to_string().contains(
                "the X engine transcribes only with Wav2Vec2 and Whisper exports, not bert"
            ),
            "{e}"
        );
    }

    #[test]
    fn reads_the_cache_slots_and_refuses_what_it_cannot_feed() {
        let outputs: Vec<String> = ["logits", "present.0.key", "present.0.value"]
            .map(String::from)
            .to_vec();
        let g = DecoderGraph::from_io(
            &io(&[
                "input_ids",
                "attention_mask",
                "past_key_values.0.key",
                "past_key_values.0.value",
            ]),
            &outputs,
        )
        .unwrap();
        assert_eq!(g.slots.len(), 2);
        assert_eq!(
            (g.slots[1].output.as_str(), g.slots[1].heads),
            ("present.0.value", 2)
        );
        assert!(!g.has_position_ids);

        let e = DecoderGraph::from_io(&io(&["input_ids", "pixel_values"]), &outputs).unwrap_err();
        assert!(e.to_string().contains("`pixel_values`"), "{e}");
        let e = DecoderGraph::from_io(&io(&["input_ids", "attention_mask"]), &outputs).unwrap_err();
        assert!(e.to_string().contains("no past_key_values"), "{e}");
        let e = DecoderGraph::from_io(&io(&["past_key_values.1.key"]), &outputs).unwrap_err();
        assert!(e.to_string().contains("no `present.1.key` output"), "{e}");
    }
}
