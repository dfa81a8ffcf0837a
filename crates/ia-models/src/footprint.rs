//! The memory a model and a workload need, estimated before anything is allocated: weights
//! (exact element counts from the safetensors headers, or from the config for random
//! weights), the transient activations of one forward pass, the KV cache of a generation and
//! the rotary tables some decoders precompute for every position. A combination whose
//! estimate exceeds the memory the process can still get ([`ia_hardware::memory::available`])
//! fails up front with the estimate, instead of being killed by the OS.
//!
//! The estimates are upper-bound-ish, not exact: they decide "cannot possibly fit", not how
//! much will be used (the harness measures that).

use crate::checkpoint::{CheckpointError, ModelSource};
use serde_json::Value;
use std::io::Read;
use std::path::Path;

/// What one load and one step of work need, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub weights: u64,
    pub activations: u64,
    pub kv_cache: u64,
    /// Tables sized by the config alone (rotary cos/sin for every position).
    pub tables: u64,
}

impl Footprint {
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.activations)
            .saturating_add(self.kv_cache)
            .saturating_add(self.tables)
    }

    /// What must be free for the estimate to be run safely: a quarter more (allocator slack,
    /// transient copies the estimate does not itemise) and 256 MiB for the program itself.
    pub fn required(&self) -> u64 {
        let t = self.total();
        t.saturating_add(t / 4).saturating_add(256 << 20)
    }

    /// Ok when the estimate, with its margin ([`Footprint::required`]), fits in `available`
    /// bytes; else the one-line reason.
    pub fn check_fits(&self, available: &ia_hardware::memory::Available) -> Result<(), String> {
        use ia_hardware::memory::gib;
        if self.required() <= available.bytes {
            return Ok(());
        }
        let mut parts = vec![format!("weights {}", gib(self.weights))];
        for (name, b) in [
            ("activations", self.activations),
            ("KV cache", self.kv_cache),
            ("rotary tables", self.tables),
        ] {
            if b > 0 {
                parts.push(format!("{name} {}", gib(b)));
            }
        }
        Err(format!(
            "needs about {} ({}; {} with margin) but {} can be allocated ({})",
            gib(self.total()),
            parts.join(", "),
            gib(self.required()),
            gib(available.bytes),
            available.limited_by
        ))
    }
}

/// The work a footprint is estimated for.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub batch: usize,
    /// Positions one forward pass attends over (tokens, patches, audio frames).
    pub positions: usize,
    /// Positions a generation keeps in its KV cache (0 for single forward passes).
    pub cached_positions: usize,
    /// Hypotheses decoded side by side per batch row (beam search), at least 1.
    pub beams: usize,
}

/// Weights plus the workload's activations, cache and tables, with `bytes_per_element` for the
/// weights and the cache (activations are counted in f32, as the engines compute them).
pub fn estimate(
    source: &ModelSource,
    bytes_per_element: u64,
    work: Workload,
) -> Result<Footprint, CheckpointError> {
    let config = source.config();
    let weights = weight_elements(source)?.saturating_mul(bytes_per_element);
    let dims = Dims::of(config);
    let rows = (work.batch.max(1) as u64).saturating_mul(work.beams.max(1) as u64);
    let t = work.positions as u64;
    // One layer's transient tensors: attention scores and their softmax, the MLP's expansion,
    // a few hidden-state copies; plus the logits over the vocabulary where the model scores
    // positions with a language-model head.
    let per_position = dims
        .inter
        .max(4 * dims.hidden)
        .saturating_mul(2)
        .saturating_add(dims.hidden.saturating_mul(4));
    let logits = logit_positions(config, t).saturating_mul(dims.vocab);
    let activations = rows.saturating_mul(4).saturating_mul(
        dims.heads
            .saturating_mul(t.saturating_mul(t))
            .saturating_mul(2)
            .saturating_add(t.saturating_mul(per_position))
            .saturating_add(logits),
    );
    let kv_cache = rows
        .saturating_mul(work.cached_positions as u64)
        .saturating_mul(2)
        .saturating_mul(dims.decoder_layers)
        .saturating_mul(dims.kv_heads.saturating_mul(dims.head_dim))
        .saturating_mul(bytes_per_element);
    let tables = if dims.rotary {
        dims.positions
            .saturating_mul(dims.head_dim)
            .saturating_mul(2 * 4)
    } else {
        0
    };
    Ok(Footprint {
        weights,
        activations,
        kv_cache,
        tables,
    })
}

/// Positions an encoder-decoder's decoder takes at once: its prompt (Whisper's start of
/// transcript, language, task and no-timestamps tokens; T5's start token, counted alike).
pub const DECODER_PROMPT: usize = 4;

/// How many of a forward pass's `positions` one call scores over the vocabulary. A decoder
/// scores its prompt, a masked LM every token, and an unknown config is assumed to. An
/// encoder-decoder's positions are its encoder's (Whisper's 1,500 frames), which have no
/// vocabulary head: its decoder scores its prompt in the first step and one position in each
/// step after ([`DECODER_PROMPT`]). Counted at every position the decoder can hold (448 for
/// Whisper), the logits alone were 93 MB an input, and whisper-tiny.en at a batch of 8 was
/// predicted at 2162 MiB with the native engine held out, against 653-662 MiB measured.
/// Encoders read for features, labels or boxes score none: a vocabulary in their config
/// sizes only the token embeddings (BERT's, CLIP's text tower's).
fn logit_positions(config: &Value, positions: u64) -> u64 {
    use crate::ModelClass as C;
    let Ok(c) = crate::classify::classify_config(config) else {
        return positions;
    };
    match c.class {
        C::Llama | C::Qwen | C::Llava | C::LlavaNext => positions,
        C::Whisper | C::T5 => DECODER_PROMPT as u64,
        // CTC logits over its characters at every frame.
        C::Wav2vec2 if c.task == "automatic-speech-recognition" => positions,
        C::Bert if c.task == "fill-mask" => positions,
        _ => 0,
    }
}

/// Elements of the weights: counted from the safetensors headers of a checkpoint with
/// weights, estimated from the config otherwise (random weights).
pub fn weight_elements(source: &ModelSource) -> Result<u64, CheckpointError> {
    match source {
        ModelSource::Checkpoint(c) if !c.safetensors.is_empty() => {
            safetensors_elements(&c.safetensors)
        }
        _ => Ok(estimate_parameters(source.config())),
    }
}

/// Elements of every tensor the safetensors `files` declare (their headers only are read).
pub fn safetensors_elements(files: &[std::path::PathBuf]) -> Result<u64, CheckpointError> {
    let mut total = 0u64;
    for f in files {
        total = total.saturating_add(
            read_safetensors_header(f)?
                .iter()
                .map(|t| t.elements)
                .fold(0u64, u64::saturating_add),
        );
    }
    Ok(total)
}

/// Sizes read from a config (and its sub-configs), the largest of each across towers.
#[derive(Debug, Default)]
struct Dims {
    hidden: u64,
    inter: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    vocab: u64,
    positions: u64,
    decoder_layers: u64,
    rotary: bool,
}

impl Dims {
    fn of(config: &Value) -> Self {
        let mut d = Dims::default();
        for c in configs(config) {
            let hidden = first(c, &["hidden_size", "d_model", "n_embd"]);
            let heads = first(
                c,
                &[
                    "num_attention_heads",
                    "num_heads",
                    "encoder_attention_heads",
                    "decoder_attention_heads",
                ],
            )
            .max(1);
            d.hidden = d.hidden.max(hidden);
            d.heads = d.heads.max(heads);
            d.inter = d.inter.max(first(
                c,
                &[
                    "intermediate_size",
                    "d_ff",
                    "ffn_dim",
                    "encoder_ffn_dim",
                    "decoder_ffn_dim",
                ],
            ));
            d.vocab = d.vocab.max(first(c, &["vocab_size"]));
            d.positions = d.positions.max(first(
                c,
                &[
                    "max_position_embeddings",
                    "n_positions",
                    "max_target_positions",
                ],
            ));
            let head_dim = first(c, &["head_dim", "d_kv"]).max(hidden / heads);
            d.head_dim = d.head_dim.max(head_dim);
            let kv = first(c, &["num_key_value_heads"]);
            d.kv_heads = d.kv_heads.max(if kv > 0 { kv } else { heads });
            d.decoder_layers = d.decoder_layers.max(first(
                c,
                &["num_decoder_layers", "decoder_layers", "num_hidden_layers"],
            ));
            if matches!(
                c.get("model_type").and_then(Value::as_str),
                Some("llama" | "mistral" | "qwen2" | "qwen3")
            ) {
                d.rotary = true;
            }
        }
        d
    }
}

/// A config and its sub-configs (`text_config`, `vision_config`, ...).
fn configs(config: &Value) -> Vec<&Value> {
    let mut out = vec![config];
    if let Some(obj) = config.as_object() {
        for (k, v) in obj {
            if k.ends_with("_config") && v.is_object() {
                out.extend(configs(v));
            }
        }
    }
    out
}

/// The first of `keys` that holds an integer (a list gives its largest), else 0.
fn first(c: &Value, keys: &[&str]) -> u64 {
    keys.iter()
        .find_map(|k| match c.get(*k)? {
            Value::Array(a) => a.iter().filter_map(Value::as_u64).max(),
            v => v.as_u64(),
        })
        .unwrap_or(0)
}

/// Parameters of a transformer from its config: embeddings (vocabulary and positions) and,
/// per layer, attention (4 h^2) and the MLP (3 h i, gated or not), encoder and decoder; summed
/// over the towers of multi-tower models. An estimate for random-weight models, whose only
/// description is the config.
pub fn estimate_parameters(config: &Value) -> u64 {
    configs(config)
        .into_iter()
        .map(|c| {
            let h = first(c, &["hidden_size", "d_model", "n_embd"]);
            if h == 0 {
                return 0;
            }
            let i = match first(
                c,
                &["intermediate_size", "d_ff", "ffn_dim", "encoder_ffn_dim"],
            ) {
                0 => 4 * h,
                i => i,
            };
            let layers = |keys: &[&str]| -> u64 {
                keys.iter()
                    .find_map(|k| match c.get(*k)? {
                        Value::Array(a) => Some(
                            a.iter()
                                .filter_map(Value::as_u64)
                                .fold(0, u64::saturating_add),
                        ),
                        v => v.as_u64(),
                    })
                    .unwrap_or(0)
            };
            let encoder = layers(&[
                "num_hidden_layers",
                "num_layers",
                "encoder_layers",
                "depths",
            ]);
            let decoder = layers(&["num_decoder_layers", "decoder_layers"]);
            let vocab = first(c, &["vocab_size"]);
            let positions = first(
                c,
                &[
                    "max_position_embeddings",
                    "n_positions",
                    "max_source_positions",
                ],
            )
            .saturating_add(first(c, &["max_target_positions"]));
            let hh = h.saturating_mul(h);
            let layer = hh
                .saturating_mul(4)
                .saturating_add(h.saturating_mul(i).saturating_mul(3));
            vocab
                .saturating_add(positions)
                .saturating_mul(h)
                .saturating_add(encoder.saturating_mul(layer))
                .saturating_add(decoder.saturating_mul(layer.saturating_add(hh.saturating_mul(4))))
        })
        .fold(0u64, u64::saturating_add)
}

/// One tensor of a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub elements: u64,
    /// Where its bytes start in the file.
    pub file_offset: u64,
}

/// The largest safetensors header read (the format's own reference limit is 100 MB).
pub const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

/// Reads and checks a safetensors file's header: every tensor's dtype is known, its byte range
/// lies inside the file and matches its shape. The error names the file and the tensor.
pub fn read_safetensors_header(path: &Path) -> Result<Vec<TensorInfo>, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| CheckpointError::Invalid {
        path: path.to_path_buf(),
        message: format!("a safetensors file starts with an 8-byte header length; this one has {file_len} bytes"),
    })?;
    let n = u64::from_le_bytes(len);
    check_header_len(n, file_len).map_err(|message| CheckpointError::Invalid {
        path: path.to_path_buf(),
        message,
    })?;
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let mut tensors = parse_safetensors_header(&header, file_len - 8 - n).map_err(|message| {
        CheckpointError::Invalid {
            path: path.to_path_buf(),
            message,
        }
    })?;
    for t in &mut tensors {
        t.file_offset += 8 + n;
    }
    Ok(tensors)
}

/// A one-element f32 tensor of a checkpoint (CLIP's `logit_scale`), read from whichever of
/// `files` holds it; `None` when none does.
pub fn read_f32_scalar(
    files: &[std::path::PathBuf],
    name: &str,
) -> Result<Option<f32>, CheckpointError> {
    use std::io::{Seek, SeekFrom};
    for path in files {
        let Some(t) = read_safetensors_header(path)?
            .into_iter()
            .find(|t| t.name == name)
        else {
            continue;
        };
        if t.dtype != "F32" || t.elements != 1 {
            return Err(CheckpointError::Invalid {
                path: path.clone(),
                message: format!("tensor '{name}' is {} {:?}, not one f32", t.dtype, t.shape),
            });
        }
        let io = |source| CheckpointError::Io {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        f.seek(SeekFrom::Start(t.file_offset)).map_err(io)?;
        let mut bytes = [0u8; 4];
        f.read_exact(&mut bytes).map_err(io)?;
        return Ok(Some(f32::from_le_bytes(bytes)));
    }
    Ok(None)
}

/// Checks a whole safetensors file held in memory (its header against its data).
pub fn parse_safetensors_file(bytes: &[u8]) -> Result<Vec<TensorInfo>, String> {
    let len: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("a safetensors file starts with an 8-byte header length")?;
    let n = u64::from_le_bytes(len);
    check_header_len(n, bytes.len() as u64)?;
    let header = &bytes[8..8 + n as usize];
    parse_safetensors_header(header, bytes.len() as u64 - 8 - n)
}

fn check_header_len(n: u64, file_len: u64) -> Result<(), String> {
    if n > MAX_SAFETENSORS_HEADER || n > file_len.saturating_sub(8) {
        return Err(format!(
            "safetensors header length {n} does not fit the file ({file_len} bytes, header at most {MAX_SAFETENSORS_HEADER})"
        ));
    }
    Ok(())
}

/// Parses a safetensors JSON header; `data_len` is the size of the byte buffer after it.
pub fn parse_safetensors_header(header: &[u8], data_len: u64) -> Result<Vec<TensorInfo>, String> {
    let v: Value = serde_json::from_slice(header)
        .map_err(|e| format!("safetensors header is not JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("safetensors header is not a JSON object")?;
    let mut out = Vec::with_capacity(obj.len());
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = |m: &str| format!("tensor '{name}': {m}");
        let dtype = t
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no dtype"))?;
        let bits: u64 = match dtype {
            "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 8,
            "U16" | "I16" | "F16" | "BF16" => 16,
            "U32" | "I32" | "F32" => 32,
            "U64" | "I64" | "F64" => 64,
            other => return Err(bad(&format!("unknown dtype {other}"))),
        };
        let shape: Vec<u64> = t
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| bad(&format!("dimension {d} is not a size")))
            })
            .collect::<Result<_, _>>()?;
        let elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("shape overflows"))?;
        let offsets = t
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .ok_or_else(|| bad("data_offsets is not [begin, end]"))?;
        let (begin, end) = (
            offsets[0].as_u64().ok_or_else(|| bad("bad begin offset"))?,
            offsets[1].as_u64().ok_or_else(|| bad("bad end offset"))?,
        );
        if begin > end || end > data_len {
            return Err(bad(&format!(
                "bytes {begin}..{end} are outside the {data_len} bytes of data (truncated file?)"
            )));
        }
        if elements.checked_mul(bits).map(|b| b.div_ceil(8)) != Some(end - begin) {
            return Err(bad(&format!(
                "shape {shape:?} of {dtype} does not match its {} bytes",
                end - begin
            )));
        }
        out.push(TensorInfo {
            name: name.clone(),
            dtype: dtype.to_string(),
            shape,
            elements,
            file_offset: begin,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bert_base_estimate_is_near_110m() {
        let bert_base = json!({"model_type": "bert", "hidden_size": 768, "intermediate_size": 3072,
            "num_hidden_layers": 12, "num_attention_heads": 12, "vocab_size": 30522,
            "max_position_embeddings": 512});
        let p = estimate_parameters(&bert_base) as f64;
        // 12 x (4 h^2 + 3 h i) counts a third MLP matrix BERT does not have: an upper bound.
        assert!((100e6..=150e6).contains(&p), "{p}");
    }

    /// The activations of one item at `positions`, in bytes, for `config` with random weights.
    fn activations(config: serde_json::Value, positions: usize) -> u64 {
        let src = ModelSource::RandomInit { config, seed: 0 };
        let work = Workload {
            batch: 1,
            positions,
            cached_positions: 0,
            beams: 1,
        };
        estimate(&src, 4, work).unwrap().activations
    }

    /// Vocabulary logits are counted where a language-model head scores positions: not at
    /// Whisper's 1,500 encoder frames (only at its decoder's prompt), nor for a BERT read for
    /// features; at every token of a masked LM and of a decoder's prompt.
    #[test]
    fn vocabulary_logits_only_where_a_head_scores_positions() {
        let whisper = json!({"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"],
            "d_model": 384, "encoder_attention_heads": 6, "decoder_attention_heads": 6,
            "encoder_ffn_dim": 1536, "decoder_ffn_dim": 1536, "encoder_layers": 4,
            "decoder_layers": 4, "vocab_size": 51864, "num_mel_bins": 80,
            "max_source_positions": 1500, "max_target_positions": 448});
        let logits = 4 * 51864 * 4;
        let layer = (6 * 1500 * 1500 * 2 + 1500 * (1536 * 2 + 384 * 4)) * 4;
        assert_eq!(activations(whisper, 1500), layer + logits);

        let bert = |arch: &str| {
            json!({"model_type": "bert", "architectures": [arch], "hidden_size": 384,
                "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 12,
                "vocab_size": 30522, "max_position_embeddings": 512})
        };
        let layer = (12 * 64 * 64 * 2 + 64 * (1536 * 2 + 384 * 4)) * 4;
        assert_eq!(activations(bert("BertModel"), 64), layer);
        assert_eq!(
            activations(bert("BertForMaskedLM"), 64),
            layer + 64 * 30522 * 4
        );

        let llama = json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "vocab_size": 1000, "max_position_embeddings": 128});
        let layer = (4 * 16 * 16 * 2 + 16 * (256 * 2 + 64 * 4)) * 4;
        assert_eq!(activations(llama, 16), layer + 16 * 1000 * 4);
    }

    #[test]
    fn huge_configs_saturate_instead_of_overflowing() {
        let c =
            json!({"hidden_size": u64::MAX, "num_hidden_layers": u64::MAX, "vocab_size": u64::MAX});
        assert_eq!(estimate_parameters(&c), u64::MAX);
        let src = ModelSource::RandomInit {
            config: json!({"model_type": "llama", "hidden_size": 262144, "num_hidden_layers": 4096,
                           "num_attention_heads": 1, "max_position_embeddings": 16777216}),
            seed: 0,
        };
        let f = estimate(
            &src,
            4,
            Workload {
                batch: 1,
                positions: 1 << 20,
                cached_positions: 1 << 20,
                beams: 1,
            },
        )
        .unwrap();
        let small = ia_hardware::memory::Available {
            bytes: 1 << 30,
            limited_by: "test".into(),
        };
        let e = f.check_fits(&small).unwrap_err();
        assert!(
            e.contains("weights") && e.contains("1.0 GiB can be allocated"),
            "{e}"
        );
    }

    #[test]
    fn safetensors_headers_are_checked() {
        let h = json!({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                       "__metadata__": {"format": "pt"}})
        .to_string();
        let t = parse_safetensors_header(h.as_bytes(), 24).unwrap();
        assert_eq!(t[0].elements, 6);
        // Truncated data, wrong size, overflow, unknown dtype.
        assert!(parse_safetensors_header(h.as_bytes(), 23)
            .unwrap_err()
            .contains("truncated"));
        let h =
            json!({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 24]}}).to_string();
        assert!(parse_safetensors_header(h.as_bytes(), 24)
            .unwrap_err()
            .contains("does not match"));
        let h = json!({"w": {"dtype": "F32", "shape": [u64::MAX, 2], "data_offsets": [0, 8]}})
            .to_string();
        assert!(parse_safetensors_header(h.as_bytes(), 8)
            .unwrap_err()
            .contains("overflows"));
        let h = json!({"w": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}).to_string();
        assert!(parse_safetensors_header(h.as_bytes(), 1)
            .unwrap_err()
            .contains("Q4"));
        assert!(check_header_len(1 << 40, 100).is_err());
    }
}
