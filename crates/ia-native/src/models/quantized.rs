//! Quantised decoders (Q8_0, Q4_K) for LLaMA, Qwen2 and Qwen3.
//!
//! A safetensors checkpoint is quantised in memory into the GGUF layout llama.cpp defines
//! (tensor names, metadata keys, and for LLaMA the Q/K row permutation that its interleaved
//! rotary embedding expects), then loaded with candle's `quantized_llama`, `quantized_qwen2`
//! and `quantized_qwen3`. A `.gguf` file in the checkpoint folder is loaded as it is.
//!
//! `causal_lm::CausalLm` runs the result like any other decoder.
//!
//! Matrices whose row length is not a multiple of the format's block size (256 for Q4_K) use
//! Q8_0 (block 32) or stay f32, as llama.cpp's quantiser does; the mix is recorded.

use super::normalized_config;
use crate::rt;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};
use ia_engine::{EngineError, Precision};
use ia_models::ModelSource;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;

/// A quantised candle model; `causal_lm::CausalLm` drives it like the f32 ones.
pub(crate) enum QuantizedBackbone {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Qwen3(quantized_qwen3::ModelWeights),
}

impl QuantizedBackbone {
    /// Last-position logits for `ids` [batch, seq] at position `pos`.
    pub(crate) fn forward(&mut self, ids: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        match self {
            Self::Llama(m) => m.forward(ids, pos),
            Self::Qwen2(m) => m.forward(ids, pos),
            Self::Qwen3(m) => m.forward(ids, pos),
        }
    }

    /// candle 0.11's quantized Qwen3 keeps a single-sequence KV cache on CPU (batch > 1 hits
    /// an unwrap on an absent cache).
    pub(crate) fn supports_batch(&self) -> bool {
        !matches!(self, Self::Qwen3(_))
    }

    /// The LLaMA and Qwen2 models restart their caches when they see position 0; Qwen3's
    /// needs clearing.
    pub(crate) fn clear_kv_cache(&mut self) {
        if let Self::Qwen3(m) = self {
            m.clear_kv_cache();
        }
    }
}

pub(crate) struct Loaded {
    pub backbone: QuantizedBackbone,
    pub max_context: usize,
    /// Bytes of the weights as stored (quantised blocks included).
    pub weight_bytes: u64,
    pub parameter_count: u64,
}

pub fn ggml_dtype(precision: Precision) -> Option<GgmlDType> {
    match precision {
        Precision::Q8_0 => Some(GgmlDType::Q8_0),
        Precision::Q4K => Some(GgmlDType::Q4K),
        _ => None,
    }
}

/// A .gguf file in the checkpoint folder, if there is one.
pub(crate) fn gguf_file_in(source: &ModelSource) -> Option<PathBuf> {
    let ModelSource::Checkpoint(c) = source else {
        return None;
    };
    std::fs::read_dir(&c.dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "gguf"))
}

/// Loads the checkpoint's .gguf file, or quantises its safetensors to `precision`.
pub(crate) fn load(
    source: &ModelSource,
    precision: Precision,
    dev: &Device,
) -> Result<Loaded, EngineError> {
    let target = ggml_dtype(precision).ok_or_else(|| {
        EngineError::Unsupported(format!("{precision} is not a quantised precision"))
    })?;
    let bytes = match gguf_file_in(source) {
        Some(path) => {
            let bytes = std::fs::read(&path)
                .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", path.display())))?;
            let summary = ia_models::gguf::check(&bytes)
                .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", path.display())))?;
            // The file is what it is: a q4_k file does not become q8_0 because it was asked for.
            let holds = summary.dominant_quantised_type().unwrap_or("f32/f16");
            if holds != precision.as_str() {
                return Err(EngineError::InvalidModel(format!(
                    "{} holds {holds} weights; --precision {precision} asks for {precision} \
                     (use --precision {holds}, or remove the file to quantise the safetensors)",
                    path.display()
                )));
            }
            bytes
        }
        None => to_gguf(source, target)?.0,
    };
    let mut reader = Cursor::new(bytes);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| {
        EngineError::InvalidModel(format!("invalid GGUF: {}", crate::candle_message(&e)))
    })?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let max_context = content
        .metadata
        .get(&format!("{arch}.context_length"))
        .and_then(|v| v.to_u32().ok())
        .unwrap_or(2048) as usize;
    let weight_bytes = content
        .tensor_infos
        .values()
        .map(|t| {
            (t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size()) as u64
        })
        .sum();
    let parameter_count = content
        .tensor_infos
        .values()
        .map(|t| t.shape.elem_count() as u64)
        .sum();
    let build = |e: candle_core::Error| {
        EngineError::InvalidModel(format!(
            "cannot build quantised {arch}: {}",
            crate::candle_message(&e)
        ))
    };
    let backbone = match arch.as_str() {
        "llama" => QuantizedBackbone::Llama(
            quantized_llama::ModelWeights::from_gguf(content, &mut reader, dev).map_err(build)?,
        ),
        "qwen2" => QuantizedBackbone::Qwen2(
            quantized_qwen2::ModelWeights::from_gguf(content, &mut reader, dev).map_err(build)?,
        ),
        "qwen3" => QuantizedBackbone::Qwen3(
            quantized_qwen3::ModelWeights::from_gguf(content, &mut reader, dev).map_err(build)?,
        ),
        other => {
            return Err(EngineError::Unsupported(format!(
                "no quantised native model for architecture '{other}' (llama, qwen2, qwen3 are)"
            )))
        }
    };
    Ok(Loaded {
        backbone,
        max_context,
        weight_bytes,
        parameter_count,
    })
}

/// Quantises `src` to `target` where the row length allows, else Q8_0, else keeps f32.
fn quantize(
    src: &Tensor,
    target: GgmlDType,
    formats: &mut BTreeMap<String, usize>,
) -> candle_core::Result<QTensor> {
    let cols = *src.dims().last().unwrap_or(&1);
    let dtype = if src.rank() < 2 {
        GgmlDType::F32
    } else if cols.is_multiple_of(target.block_size()) {
        target
    } else if cols.is_multiple_of(GgmlDType::Q8_0.block_size()) {
        GgmlDType::Q8_0
    } else {
        GgmlDType::F32
    };
    *formats
        .entry(format!("{dtype:?}").to_lowercase())
        .or_default() += 1;
    QTensor::quantize(&src.to_dtype(DType::F32)?, dtype)
}

/// llama.cpp's `permute` for LLaMA Q/K: HF stores rotary pairs as (i, i + d/2), GGUF LLaMA
/// expects them interleaved (2i, 2i + 1).
fn permute_rotary(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((n_head, 2, rows / n_head / 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))
}

/// Builds an in-memory GGUF file from a safetensors checkpoint.
fn to_gguf(
    source: &ModelSource,
    target: GgmlDType,
) -> Result<(Vec<u8>, BTreeMap<String, usize>), EngineError> {
    let ModelSource::Checkpoint(ckpt) = source else {
        return Err(EngineError::Unsupported(
            "quantised precisions need a checkpoint's weights (not --random-weights)".into(),
        ));
    };
    let cfg = normalized_config(&ckpt.config);
    let arch = cfg
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !matches!(arch.as_str(), "llama" | "qwen2" | "qwen3") {
        return Err(EngineError::Unsupported(format!(
            "quantised precisions (q8_0, q4_k) are available for llama, qwen2 and qwen3, not '{arch}'"
        )));
    }
    let num = |k: &str| cfg.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let need = |k: &str| {
        num(k).ok_or_else(|| EngineError::InvalidModel(format!("config.json has no {k}")))
    };
    let hidden = need("hidden_size")?;
    let heads = need("num_attention_heads")?;
    let kv_heads = num("num_key_value_heads").unwrap_or(heads);
    let head_dim = num("head_dim").unwrap_or(hidden / heads);
    let layers = need("num_hidden_layers")?;
    let context = num("max_position_embeddings").unwrap_or(2048);
    let eps = cfg
        .get("rms_norm_eps")
        .and_then(Value::as_f64)
        .unwrap_or(1e-6) as f32;
    let theta = cfg
        .get("rope_theta")
        .and_then(Value::as_f64)
        .unwrap_or(10_000.0) as f32;

    let st = crate::weights::open_safetensors(ckpt)?;
    let mut formats = BTreeMap::new();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, _) in st.tensors() {
        let gguf_name = match gguf_name(&name) {
            Some(n) => n,
            None => continue, // buffers such as rotary inv_freq
        };
        let mut t = st.load(&name, &Device::Cpu).map_err(rt)?;
        if arch == "llama" {
            if gguf_name.ends_with("attn_q.weight") {
                t = permute_rotary(&t, heads).map_err(rt)?;
            } else if gguf_name.ends_with("attn_k.weight") {
                t = permute_rotary(&t, kv_heads).map_err(rt)?;
            }
        }
        tensors.push((gguf_name, quantize(&t, target, &mut formats).map_err(rt)?));
    }
    use gguf_file::Value as V;
    let a = |k: &str| format!("{arch}.{k}");
    let metadata: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch.clone())),
        // quantized_qwen3 builds its rotary tables in this dtype: 0 = f32.
        ("general.dtype".into(), V::U32(0)),
        (a("attention.head_count"), V::U32(heads as u32)),
        (a("attention.head_count_kv"), V::U32(kv_heads as u32)),
        (a("attention.key_length"), V::U32(head_dim as u32)),
        (a("block_count"), V::U32(layers as u32)),
        (a("embedding_length"), V::U32(hidden as u32)),
        (a("context_length"), V::U32(context as u32)),
        (a("rope.dimension_count"), V::U32(head_dim as u32)),
        (a("rope.freq_base"), V::F32(theta)),
        (a("attention.layer_norm_rms_epsilon"), V::F32(eps)),
    ];
    let md: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &md, &ts).map_err(rt)?;
    Ok((buf.into_inner(), formats))
}

/// Writes the quantised GGUF of a safetensors checkpoint to `path` (llama, qwen2, qwen3).
pub fn write_gguf(
    source: &ModelSource,
    precision: Precision,
    path: &std::path::Path,
) -> Result<BTreeMap<String, usize>, EngineError> {
    let target = ggml_dtype(precision).ok_or_else(|| {
        EngineError::Unsupported(format!("{precision} is not a quantised precision"))
    })?;
    let (bytes, formats) = to_gguf(source, target)?;
    std::fs::write(path, bytes)
        .map_err(|e| EngineError::Runtime(format!("{}: {e}", path.display())))?;
    Ok(formats)
}

/// HF tensor name -> llama.cpp GGUF name, for the LLaMA/Qwen family layout.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let mapped = match tail {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{mapped}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.weight").unwrap(),
            "blk.3.attn_q.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.down_proj.weight").unwrap(),
            "blk.0.ffn_down.weight"
        );
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        assert!(gguf_name("model.rotary_emb.inv_freq").is_none());
    }

    #[test]
    fn rotary_permutation_interleaves_pairs() {
        // One head of dim 4: rows (r0, r1 | r2, r3) pair (0,2) and (1,3) in HF order;
        // interleaved order is r0, r2, r1, r3.
        let w = Tensor::new(&[[0f32], [1.], [2.], [3.]], &Device::Cpu).unwrap();
        let p = permute_rotary(&w, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(p, vec![0., 2., 1., 3.]);
    }
}
