//! Decoder-only text generation behind `TextGenerator`: LLaMA, Mistral, Qwen2 and Qwen3 go to
//! [`decoder`](super::decoder) (a KV cache per sequence), in f32, bf16, q8_0 or q4_k (from a
//! safetensors checkpoint or a .gguf file of Q8_0/Q4_K blocks); OPT, other .gguf files and
//! quantised models off the CPU are here, each with one KV cache for the batch: the prompt is
//! run once (prefill), then one token per step.

use super::{decoder, opt, parse_config, quantized, LoadContext};
use crate::rt;
use candle_core::{DType, Device, Tensor};
use ia_engine::{EngineError, SessionInfo, TextGenerator};
use serde_json::Value;
use std::sync::atomic::Ordering;

enum Backbone {
    Opt(opt::Model),
    Quantized(quantized::QuantizedBackbone),
}

pub struct CausalLm {
    backbone: Backbone,
    info: SessionInfo,
    eos: Vec<u32>,
    max_context: usize,
    /// Tokens in the KV cache.
    position: usize,
    device: Device,
    /// Bytes of the weights as loaded (quantised blocks included).
    weight_bytes: u64,
}

impl CausalLm {
    pub fn load(ctx: LoadContext<'_>) -> Result<Box<dyn TextGenerator>, EngineError> {
        let model_type = ctx
            .source
            .config()
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let llama_family = decoder::runs(ctx.source.config());
        // q8_0 and q4_k run in our decoder, on our quantised kernel (a batched prefill,
        // continuous batching): a safetensors checkpoint quantised at load, or a .gguf file
        // of Q8_0 and Q4_K blocks. Other .gguf files, and other devices, go to candle's
        // quantised models.
        if quantized::ggml_dtype(ctx.info.precision).is_some() {
            let native = llama_family && ctx.device.is_cpu();
            if native && quantized::gguf_file_in(ctx.source).is_none() {
                return decoder::Decoder::load(ctx);
            }
            let file = quantized::GgufFile::for_precision(ctx.source, ctx.info.precision)?;
            if native {
                match file.native_refusal() {
                    None => return decoder::Decoder::load_gguf(ctx, &file),
                    Some(why) => tracing::info!("{why}: the file runs in candle's model"),
                }
            }
            let q = file.into_candle(&ctx.device)?;
            let mut info = ctx.info;
            info.parameter_count = q.parameter_count;
            info.output_names = vec!["logits".into()];
            return Ok(Box::new(Self {
                backbone: Backbone::Quantized(q.backbone),
                info,
                eos: ctx.source.eos_tokens(),
                max_context: q.max_context,
                position: 0,
                device: ctx.device,
                weight_bytes: q.weight_bytes,
            }));
        }
        if llama_family {
            return decoder::Decoder::load(ctx);
        }
        let (vb, params) = crate::load_var_builder(ctx.source, ctx.dtype, &ctx.device)?;
        let build = |e: candle_core::Error| {
            EngineError::InvalidModel(format!(
                "cannot build {model_type}: {}",
                crate::candle_message(&e)
            ))
        };
        let (backbone, max_context) = match model_type.as_str() {
            "opt" => {
                let cfg: opt::Config = parse_config(ctx.source, "OPT")?;
                let model = opt::Model::load(vb, &cfg, ctx.products).map_err(build)?;
                let max = model.max_positions();
                (Backbone::Opt(model), max)
            }
            other => {
                return Err(EngineError::Unsupported(format!(
                    "no native decoder for model_type '{other}'"
                )))
            }
        };
        let mut info = ctx.info;
        info.parameter_count = params.load(Ordering::Relaxed);
        info.output_names = vec!["logits".into()];
        let (packed_parameters, packed_bytes) = match &backbone {
            Backbone::Opt(m) => m.packed_bf16(),
            Backbone::Quantized(_) => (0, 0),
        };
        let weight_bytes = (info.parameter_count - packed_parameters)
            * ctx.dtype.size_in_bytes() as u64
            + packed_bytes;
        Ok(Box::new(Self {
            backbone,
            info,
            eos: ctx.source.eos_tokens(),
            max_context,
            position: 0,
            device: ctx.device,
            weight_bytes,
        }))
    }

    fn clear(&mut self) -> Result<(), EngineError> {
        self.position = 0;
        match &mut self.backbone {
            Backbone::Opt(m) => m.clear_kv_cache(),
            Backbone::Quantized(m) => m.clear_kv_cache(),
        }
        Ok(())
    }

    /// Runs `rows` (one token list per sequence, equal lengths) after the cached tokens;
    /// returns each sequence's last-position logits.
    fn forward(&mut self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let len = ia_engine::generation::equal_length_batch(rows)?;
        if self.position + len > self.max_context {
            return Err(EngineError::InvalidInput(format!(
                "{} tokens exceed the model's context of {}",
                self.position + len,
                self.max_context
            )));
        }
        let flat: Vec<u32> = rows.concat();
        let ids = Tensor::from_vec(flat, (rows.len(), len), &self.device).map_err(rt)?;
        let pos = self.position;
        let logits = match &mut self.backbone {
            Backbone::Opt(m) => m.forward(&ids).and_then(|l| opt::last_logits(&l)),
            Backbone::Quantized(m) => m.forward(&ids, pos),
        }
        .map_err(rt)?;
        self.position += len;
        logits_rows(&logits, rows.len())
    }
}

/// [batch, vocab] or [batch, 1, vocab] logits -> one f32 row per sequence.
pub(crate) fn logits_rows(logits: &Tensor, batch: usize) -> Result<Vec<Vec<f32>>, EngineError> {
    let flat = logits
        .to_dtype(DType::F32)
        .and_then(|l| l.flatten_all())
        .and_then(|l| l.to_vec1::<f32>())
        .map_err(rt)?;
    let vocab = flat.len() / batch;
    Ok(flat.chunks(vocab).map(<[f32]>::to_vec).collect())
}

impl TextGenerator for CausalLm {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        Ok(self.prefill_batch(&[prompt.to_vec()])?.remove(0))
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>, EngineError> {
        Ok(self.step_batch(&[token])?.remove(0))
    }

    fn prefill_batch(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        if let Backbone::Quantized(q) = &self.backbone {
            if prompts.len() > 1 && !q.supports_batch() {
                return Err(EngineError::Unsupported(format!(
                    "batched generation (batch {}) of quantised Qwen3 is not supported by candle 0.11 (single-sequence KV cache on CPU)",
                    prompts.len()
                )));
            }
        }
        self.clear()?;
        let quantised = matches!(self.backbone, Backbone::Quantized(_));
        if quantised && prompts.len() > 1 {
            // candle 0.11's quantized_llama/qwen2/qwen3 hand the last position's slice of a
            // [batch, seq, hidden] tensor to QMatMul without making it contiguous, which
            // fails when batch > 1 and seq > 1. One position at a time keeps it contiguous:
            // same logits, a slower prefill (measured as such in TTFT).
            let len = ia_engine::generation::equal_length_batch(prompts)?;
            let mut logits = Vec::new();
            for t in 0..len {
                let column: Vec<Vec<u32>> = prompts.iter().map(|p| vec![p[t]]).collect();
                logits = self.forward(&column)?;
            }
            return Ok(logits);
        }
        self.forward(prompts)
    }

    fn step_batch(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        let rows: Vec<Vec<u32>> = tokens.iter().map(|&t| vec![t]).collect();
        self.forward(&rows)
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn eos_tokens(&self) -> Vec<u32> {
        self.eos.clone()
    }

    fn weight_bytes(&self) -> Option<u64> {
        Some(self.weight_bytes)
    }
}
