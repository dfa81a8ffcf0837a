//! Quantised decoders (Q8_0, Q4_K) for LLaMA, Qwen2 and Qwen3.
//!
//! On the CPU a safetensors checkpoint is quantised by [`decoder`](super::decoder) itself, and
//! a `.gguf` file in the checkpoint folder whose matrices are Q8_0, Q4_K, f16 or f32 is read
//! here ([`GgufFile::native_weights`]: its blocks as they are, under transformers' names) and
//! runs in the same decoder. Other files, and other devices, go to candle's
//! `quantized_llama`, `quantized_qwen2` and `quantized_qwen3`: a safetensors checkpoint is then
//! quantised in memory into the GGUF layout llama.cpp defines (tensor names, metadata keys,
//! and for LLaMA the Q/K row permutation that its interleaved rotary embedding expects), and
//! `causal_lm::CausalLm` runs the result.
//!
//! Matrices whose row length is not a multiple of the format's block size (256 for Q4_K) use
//! Q8_0 (block 32) or stay f32, as llama.cpp's quantiser does; the mix is recorded.

use super::normalized_config;
use crate::kernels::quant::{Format, QuantMatrix};
use crate::rt;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};
use ia_engine::{EngineError, Precision};
use ia_models::ModelSource;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

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

/// A GGUF file, read and parsed once, for whichever model runs it: the checkpoint's .gguf
/// file, or its safetensors quantised in memory.
pub(crate) struct GgufFile {
    bytes: Vec<u8>,
    content: gguf_file::Content,
    /// `general.architecture`: llama, qwen2 or qwen3.
    arch: String,
}

impl GgufFile {
    /// The checkpoint's .gguf file, which must hold `precision`'s blocks, or its safetensors
    /// quantised to `precision`.
    pub(crate) fn for_precision(
        source: &ModelSource,
        precision: Precision,
    ) -> Result<Self, EngineError> {
        let target = ggml_dtype(precision).ok_or_else(|| {
            EngineError::Unsupported(format!("{precision} is not a quantised precision"))
        })?;
        let bytes = match gguf_file_in(source) {
            Some(path) => {
                let bytes = std::fs::read(&path)
                    .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", path.display())))?;
                let summary = ia_models::gguf::check(&bytes)
                    .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", path.display())))?;
                // The file is what it is: a q4_k file does not become q8_0 because it was
                // asked for.
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
        let content = gguf_file::Content::read(&mut Cursor::new(&bytes)).map_err(|e| {
            EngineError::InvalidModel(format!("invalid GGUF: {}", crate::candle_message(&e)))
        })?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        Ok(Self {
            bytes,
            content,
            arch,
        })
    }

    /// Why the native decoder cannot take this file, if it cannot: a tensor in a block
    /// format that our kernel does not multiply (candle's quantised models run it then).
    pub(crate) fn native_refusal(&self) -> Option<String> {
        let mut others: Vec<String> = self
            .content
            .tensor_infos
            .iter()
            .filter(|(_, t)| {
                !matches!(
                    t.ggml_dtype,
                    GgmlDType::Q8_0
                        | GgmlDType::Q4K
                        | GgmlDType::F32
                        | GgmlDType::F16
                        | GgmlDType::BF16
                )
            })
            .map(|(name, t)| format!("{name} ({:?})", t.ggml_dtype))
            .collect();
        others.sort();
        (!others.is_empty()).then(|| {
            format!(
                "the native quantised kernel multiplies Q8_0 and Q4_K blocks, and {} tensor(s) are in other formats: {}",
                others.len(),
                others.join(", ")
            )
        })
    }

    /// The weights for the native decoder, by their transformers names: Q8_0 and Q4_K
    /// matrices as those very blocks, everything else (norms, biases, f32 and f16 matrices)
    /// in f32. LLaMA files store the query and key rows interleaved for llama.cpp's rotary
    /// embedding (`permute_rotary`); they are put back in transformers' order. `heads` and
    /// `kv_heads` are the model's query and key/value head counts.
    pub(crate) fn native_weights(
        &self,
        heads: usize,
        kv_heads: usize,
    ) -> Result<GgufWeights, EngineError> {
        let mut reader = Cursor::new(&self.bytes);
        let mut weights = GgufWeights {
            blocks: HashMap::new(),
            tensors: HashMap::new(),
            parameter_count: 0,
        };
        let invalid = |name: &str, e: candle_core::Error| {
            EngineError::InvalidModel(format!("GGUF tensor {name}: {}", crate::candle_message(&e)))
        };
        for name in self.content.tensor_infos.keys() {
            let Some(hf) = hf_name(name) else {
                tracing::debug!("GGUF tensor {name} is not one the decoder reads: skipped");
                continue;
            };
            let q = self
                .content
                .tensor(&mut reader, name, &Device::Cpu)
                .map_err(|e| invalid(name, e))?;
            // Rows of interleaved rotary pairs: LLaMA's query and key projections.
            let interleaved = match self.arch.as_str() {
                "llama" if hf.contains("self_attn.q_proj.") => Some(heads),
                "llama" if hf.contains("self_attn.k_proj.") => Some(kv_heads),
                _ => None,
            };
            let dims = q.shape().dims().to_vec();
            let rows = dims.first().copied().unwrap_or(1);
            let format = match q.dtype() {
                GgmlDType::Q8_0 => Some(Format::Q8_0),
                GgmlDType::Q4K => Some(Format::Q4K),
                _ => None,
            };
            weights.parameter_count += q.shape().elem_count() as u64;
            match (format, dims.as_slice()) {
                (Some(format), &[outputs, inputs]) => {
                    let data = q.data().map_err(|e| invalid(name, e))?;
                    let data = match interleaved {
                        Some(n) => transformers_rows(&data, data.len() / rows, n)
                            .map_err(|e| invalid(name, e))?,
                        None => data.into_owned(),
                    };
                    let m = QuantMatrix::from_gguf_blocks(format, &data, outputs, inputs)
                        .map_err(|e| invalid(name, e))?;
                    weights.blocks.insert(hf, Arc::new(m));
                }
                (Some(_), _) => {
                    return Err(EngineError::InvalidModel(format!(
                        "GGUF tensor {name} is quantised but has shape {dims:?}, not a matrix"
                    )))
                }
                (None, _) => {
                    let t = q.dequantize(&Device::Cpu).map_err(|e| invalid(name, e))?;
                    let t = match interleaved {
                        Some(n) => {
                            let values = t
                                .flatten_all()
                                .and_then(|v| v.to_vec1::<f32>())
                                .map_err(|e| invalid(name, e))?;
                            let values = transformers_rows(&values, values.len() / rows, n)
                                .map_err(|e| invalid(name, e))?;
                            Tensor::from_vec(values, dims.as_slice(), &Device::Cpu)
                                .map_err(|e| invalid(name, e))?
                        }
                        None => t,
                    };
                    weights.tensors.insert(hf, t);
                }
            }
        }
        Ok(weights)
    }

    /// Loads the file into candle's quantised LLaMA, Qwen2 or Qwen3 on `dev`.
    pub(crate) fn into_candle(self, dev: &Device) -> Result<Loaded, EngineError> {
        let Self {
            bytes,
            content,
            arch,
        } = self;
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
        let mut reader = Cursor::new(bytes);
        let backbone = match arch.as_str() {
            "llama" => QuantizedBackbone::Llama(
                quantized_llama::ModelWeights::from_gguf(content, &mut reader, dev)
                    .map_err(build)?,
            ),
            "qwen2" => QuantizedBackbone::Qwen2(
                quantized_qwen2::ModelWeights::from_gguf(content, &mut reader, dev)
                    .map_err(build)?,
            ),
            "qwen3" => QuantizedBackbone::Qwen3(
                quantized_qwen3::ModelWeights::from_gguf(content, &mut reader, dev)
                    .map_err(build)?,
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
}

/// A GGUF file's weights as the native decoder takes them ([`GgufFile::native_weights`]).
pub(crate) struct GgufWeights {
    /// Q8_0 and Q4_K matrices, by transformers name.
    pub blocks: HashMap<String, Arc<QuantMatrix>>,
    /// The other tensors in f32, by transformers name.
    pub tensors: HashMap<String, Tensor>,
    /// Elements of all the tensors read.
    pub parameter_count: u64,
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

/// llama.cpp's `permute` for LLaMA Q/K rows (weights and biases): HF stores rotary pairs as
/// (i, i + d/2), GGUF LLaMA expects them interleaved (2i, 2i + 1).
fn permute_rotary(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let cols = w.elem_count() / rows.max(1);
    w.reshape((n_head, 2, rows / n_head / 2, cols))?
        .transpose(1, 2)?
        .reshape(dims)
}

/// The inverse of [`permute_rotary`] over `data`, rows of `row_len` elements (f32 values, or
/// the bytes of a row of quantised blocks: a permutation of whole rows leaves blocks intact).
fn transformers_rows<T: Copy>(
    data: &[T],
    row_len: usize,
    n_head: usize,
) -> candle_core::Result<Vec<T>> {
    let rows = data.len().checked_div(row_len).unwrap_or(0);
    if row_len == 0
        || n_head == 0
        || !rows.is_multiple_of(2 * n_head)
        || rows * row_len != data.len()
    {
        candle_core::bail!("{rows} rows do not hold {n_head} heads of rotary pairs")
    }
    let (per_head, half) = (rows / n_head, rows / n_head / 2);
    let mut out = Vec::with_capacity(data.len());
    for r in 0..rows {
        // transformers' row (head, j, i) is GGUF's row (head, i, j).
        let (head, j, i) = (r / per_head, r % per_head / half, r % half);
        let g = head * per_head + i * 2 + j;
        out.extend_from_slice(&data[g * row_len..(g + 1) * row_len]);
    }
    Ok(out)
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
            if gguf_name.contains(".attn_q.") {
                t = permute_rotary(&t, heads).map_err(rt)?;
            } else if gguf_name.contains(".attn_k.") {
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

/// transformers' names of the LLaMA/Qwen family and llama.cpp's GGUF names for them: outside
/// the layers, and within layer N (`model.layers.N.` and `blk.N.`).
const MODEL_NAMES: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];
const LAYER_NAMES: [(&str, &str); 14] = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

/// Renames `name` by the tables: `from(pair)` is the side `name` is on, `to(pair)` the other.
fn rename(
    name: &str,
    (model_layers, blk): (&str, &str),
    side: impl Fn((&'static str, &'static str)) -> (&'static str, &'static str),
) -> Option<String> {
    if let Some((_, to)) = MODEL_NAMES
        .into_iter()
        .map(&side)
        .find(|(from, _)| *from == name)
    {
        return Some(to.to_string());
    }
    let (layer, tail) = name.strip_prefix(model_layers)?.split_once('.')?;
    let (_, to) = LAYER_NAMES
        .into_iter()
        .map(&side)
        .find(|(from, _)| *from == tail)?;
    Some(format!("{blk}{layer}.{to}"))
}

/// HF tensor name -> llama.cpp GGUF name.
fn gguf_name(hf: &str) -> Option<String> {
    rename(hf, ("model.layers.", "blk."), |p| p)
}

/// llama.cpp GGUF name -> HF tensor name.
fn hf_name(gguf: &str) -> Option<String> {
    rename(gguf, ("blk.", "model.layers."), |(hf, g)| (g, hf))
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
    fn gguf_names_map_back() {
        for hf in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.layers.11.self_attn.k_proj.bias",
            "model.layers.0.post_attention_layernorm.weight",
        ] {
            assert_eq!(hf_name(&gguf_name(hf).unwrap()).unwrap(), hf);
        }
        assert!(hf_name("rope_freqs.weight").is_none());
        assert!(hf_name("blk.0.unknown.weight").is_none());
    }

    #[test]
    fn transformers_rows_undo_the_permutation() {
        // Two heads of dim 6, rows of 3 values; also a bias (rows of 1).
        let w = Tensor::arange(0f32, 36., &Device::Cpu)
            .unwrap()
            .reshape((12, 3))
            .unwrap();
        let p = permute_rotary(&w, 2).unwrap().flatten_all().unwrap();
        let back = transformers_rows(&p.to_vec1::<f32>().unwrap(), 3, 2).unwrap();
        assert_eq!(back, w.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let b = Tensor::arange(0f32, 12., &Device::Cpu).unwrap();
        let p = permute_rotary(&b, 2).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(p[..6], [0., 3., 1., 4., 2., 5.]);
        assert_eq!(
            transformers_rows(&p, 1, 2).unwrap(),
            b.to_vec1::<f32>().unwrap()
        );
        assert!(transformers_rows(&p, 1, 5).is_err());
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
