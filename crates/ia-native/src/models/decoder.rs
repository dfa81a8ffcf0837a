//! LLaMA-family decoders (LLaMA, Mistral, Qwen2, Qwen3) with one KV cache per sequence.
//!
//! transformers' `modeling_llama`, `modeling_qwen2` and `modeling_qwen3` differ only in their
//! biases (Qwen2's q/k/v projections, LLaMA's `attention_bias` and `mlp_bias`) and in Qwen3's
//! per-head RMSNorm of queries and keys, so one file holds the four, with the checkpoints'
//! tensor names. Every forward takes a ragged batch: the new tokens of several sequences, each
//! with its own length and position, flattened into one `[tokens, hidden]` matrix that goes
//! through the projections and the MLP together; only attention runs per sequence, over that
//! sequence's own cache. That is what lets a server start and stop sequences between decode
//! steps (continuous batching, [`SequencePool`]) without padding or recomputing anything.
//!
//! With `--precision q8_0` or `q4_k` on the CPU every projection, the token embeddings and the
//! head are quantised blocks multiplied by [`kernels::quant`](crate::kernels::quant); norms,
//! biases and attention stay f32. The same ragged batch therefore runs a quantised prefill as
//! one product per projection, as the f32 one does.

use super::{quantized, LoadContext};
use crate::kernels::RmsNorm;
use crate::kernels::{
    self,
    quant::{Format, QuantMatrix},
};
use crate::rt;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{kv_cache::KvCache, Activation, Embedding, VarBuilder};
use ia_engine::generation::{SequenceId, SequencePool};
use ia_engine::{EngineError, SessionInfo, TextGenerator};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// config.json of LLaMA, Mistral, Qwen2 and Qwen3 checkpoints, as transformers writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Qwen3 and recent LLaMA configs name it; otherwise hidden_size / heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// transformers < 5 name it `rope_scaling`, 5 `rope_parameters`.
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub sliding_window: Option<usize>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_act() -> Activation {
    Activation::Silu
}

/// Rotary frequency scaling; only LLaMA 3's is implemented.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type", default)]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// Qwen2-VL's multimodal rotary embedding: how many frequency pairs follow the temporal,
    /// height and width position of a token.
    #[serde(default)]
    pub mrope_section: Option<Vec<usize>>,
    /// Qwen3-VL's layout of those pairs: the axes take turns instead of following each other.
    #[serde(default)]
    pub mrope_interleaved: Option<bool>,
}

impl Config {
    /// Reads config.json (bridging transformers versions) and refuses what is not implemented.
    pub fn from_json(config: &Value) -> Result<Self, EngineError> {
        let mut json = super::normalized_config(config);
        if let Some(obj) = json.as_object_mut() {
            if obj.get("rope_scaling").is_none_or(Value::is_null) {
                if let Some(p) = obj.get("rope_parameters").cloned() {
                    obj.insert("rope_scaling".into(), p);
                }
            }
        }
        let cfg: Config = serde_json::from_value(json).map_err(|e| {
            EngineError::InvalidModel(format!(
                "config.json does not describe a LLaMA-family decoder: {e}"
            ))
        })?;
        if cfg.use_sliding_window {
            return Err(EngineError::Unsupported(
                "sliding-window attention (use_sliding_window: true) is not implemented".into(),
            ));
        }
        let heads = cfg.num_attention_heads;
        let kv_heads = cfg.kv_heads();
        if heads == 0
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || !cfg.head_dim().is_multiple_of(2)
        {
            return Err(EngineError::InvalidModel(format!(
                "{heads} attention heads, {kv_heads} key/value heads and head size {} do not make grouped-query attention",
                cfg.head_dim()
            )));
        }
        match cfg
            .rope_scaling
            .as_ref()
            .and_then(|r| r.rope_type.as_deref())
        {
            None | Some("default") | Some("llama3") | Some("mrope") => {}
            Some(other) => {
                return Err(EngineError::Unsupported(format!(
                    "rope scaling '{other}' is not implemented (default, llama3 and mrope are)"
                )))
            }
        }
        cfg.mrope()?;
        Ok(cfg)
    }

    /// The M-RoPE sections (temporal, height, width), which must cover the head's frequency
    /// pairs; None for a one-dimensional rotary embedding.
    pub(crate) fn mrope(&self) -> Result<Option<[usize; 3]>, EngineError> {
        let Some(section) = self
            .rope_scaling
            .as_ref()
            .and_then(|r| r.mrope_section.as_ref())
        else {
            return Ok(None);
        };
        match section[..] {
            [t, h, w] if t + h + w == self.head_dim() / 2 => Ok(Some([t, h, w])),
            _ => Err(EngineError::InvalidModel(format!(
                "mrope_section {section:?} must be three parts adding up to head size / 2 = {}",
                self.head_dim() / 2
            ))),
        }
    }

    /// Which position (0 temporal, 1 height, 2 width) turns each frequency pair under M-RoPE:
    /// consecutive sections (Qwen2-VL's `recomposition_frequencies`), or interleaved, pair
    /// 3i + 1 following the height and 3i + 2 the width while their sections last (Qwen3-VL's,
    /// whose text model always interleaves).
    pub(crate) fn mrope_axes(&self) -> Result<Option<Vec<u8>>, EngineError> {
        let Some([t, h, w]) = self.mrope()? else {
            return Ok(None);
        };
        let interleaved = self
            .rope_scaling
            .as_ref()
            .and_then(|r| r.mrope_interleaved)
            .unwrap_or(self.model_type.starts_with("qwen3_vl"));
        let axes = (0..t + h + w)
            .map(|j| match interleaved {
                true if j % 3 == 1 && j < 3 * h => 1,
                true if j % 3 == 2 && j < 3 * w => 2,
                true => 0,
                false if j < t => 0,
                false if j < t + h => 1,
                false => 2,
            })
            .collect();
        Ok(Some(axes))
    }

    pub(crate) fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub(crate) fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Qwen2's and Qwen2-VL's (qwen2_vl, qwen2_vl_text) q/k/v projections have biases.
    pub(crate) fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type.starts_with("qwen2")
    }

    /// Qwen3's and Qwen3-VL's (qwen3_vl_text) heads are RMS-normalised.
    pub(crate) fn head_norms(&self) -> bool {
        self.model_type.starts_with("qwen3")
    }

    /// Tokens a sequence may hold: Mistral's window bounds it, so that attention over the
    /// whole cache is exactly what the checkpoint computes.
    pub fn max_context(&self) -> usize {
        match (self.model_type.as_str(), self.sliding_window) {
            ("mistral", Some(w)) if w > 0 => self.max_position_embeddings.min(w),
            _ => self.max_position_embeddings,
        }
    }

    /// Untied unless the config says otherwise, except Qwen's (transformers' defaults for the
    /// checkpoints that omit the key).
    pub(crate) fn tied_head(&self) -> bool {
        self.tie_word_embeddings
            .unwrap_or(!matches!(self.model_type.as_str(), "llama" | "mistral"))
    }

    /// Per-pair inverse frequencies of the rotary embedding (LLaMA 3 scaling applied).
    pub(crate) fn inverse_frequencies(&self) -> Vec<f32> {
        let dim = self.head_dim();
        let base: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / self.rope_theta.powf(i as f64 / dim as f64) as f32)
            .collect();
        let Some(s) = self
            .rope_scaling
            .as_ref()
            .filter(|r| r.rope_type.as_deref() == Some("llama3"))
        else {
            return base;
        };
        let factor = s.factor.unwrap_or(8.0) as f32;
        let low = s.low_freq_factor.unwrap_or(1.0) as f32;
        let high = s.high_freq_factor.unwrap_or(4.0) as f32;
        let original = s.original_max_position_embeddings.unwrap_or(8192) as f32;
        let (low_wavelen, high_wavelen) = (original / low, original / high);
        base.into_iter()
            .map(|freq| {
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_wavelen {
                    freq
                } else if wavelen > low_wavelen {
                    freq / factor
                } else {
                    let smooth = (original / wavelen - low) / (high - low);
                    (1.0 - smooth) * freq / factor + smooth * freq
                }
            })
            .collect()
    }
}

/// Whether this decoder runs the checkpoint: its `model_type` is LLaMA's, Mistral's, Qwen2's
/// or Qwen3's.
pub(crate) fn runs(config: &Value) -> bool {
    matches!(
        config.get("model_type").and_then(Value::as_str),
        Some("llama" | "mistral" | "qwen2" | "qwen3")
    )
}

/// How the projections hold their weights.
#[derive(Clone)]
pub(crate) enum Storage {
    /// As loaded (the session's dtype): f32 on the CPU packed for our kernel
    /// ([`kernels::Weight::new`]), else multiplied by candle.
    AsLoaded,
    /// f32 as loaded, rounded to bf16 and packed for the bf16 products (`--precision bf16` on
    /// a CPU with AMX or AVX512-BF16); activations, norms and attention stay f32.
    Bf16,
    /// Blocks of this format, multiplied by our quantised kernel (CPU, f32 activations).
    Quantised(Format),
    /// A .gguf file's Q8_0 and Q4_K matrices by tensor name, multiplied by our quantised
    /// kernel; the file's other matrices are f32 in the VarBuilder.
    Blocks(Arc<HashMap<String, Arc<QuantMatrix>>>),
}

impl Storage {
    /// Packed bf16 where the model's products are, else as loaded: a decoder inside a model
    /// that is never quantised (LLaVA's, Qwen-VL's).
    pub(crate) fn for_products(products: super::encoder::Products) -> Self {
        match products {
            super::encoder::Products::Bf16 => Storage::Bf16,
            super::encoder::Products::AsLoaded => Storage::AsLoaded,
        }
    }

    /// The format a matrix with rows of `inputs` takes: llama.cpp's choice for rows that are
    /// not whole Q4_K super-blocks is Q8_0, and f32 for rows that are not whole Q8_0 blocks.
    fn format_for(&self, inputs: usize) -> Option<Format> {
        let Storage::Quantised(format) = *self else {
            return None;
        };
        [format, Format::Q8_0]
            .into_iter()
            .find(|f| inputs.is_multiple_of(f.row_multiple()))
    }

    /// `weight` [outputs, inputs] as this storage multiplies it: quantised in the format its
    /// rows take ([`Storage::format_for`]), else packed as loaded or in bf16.
    fn pack(&self, weight: &Tensor) -> candle_core::Result<kernels::Weight> {
        let (_, inputs) = weight.dims2()?;
        Ok(match self.format_for(inputs) {
            Some(format) => {
                kernels::Weight::Quant(Arc::new(QuantMatrix::quantize(weight, format)?))
            }
            None => kernels::Weight::new(weight, matches!(self, Storage::Bf16))?,
        })
    }

    /// The quantised matrix `outputs x inputs` named `weight` under `vb`: quantised here from
    /// the VarBuilder's values, or a .gguf file's blocks; None where the matrix stays as
    /// loaded.
    fn matrix(
        &self,
        inputs: usize,
        outputs: usize,
        vb: &VarBuilder,
    ) -> candle_core::Result<Option<Arc<QuantMatrix>>> {
        let m = match self {
            Storage::AsLoaded | Storage::Bf16 => return Ok(None),
            Storage::Quantised(_) => match self.format_for(inputs) {
                Some(format) => {
                    let w = vb.get((outputs, inputs), "weight")?;
                    Arc::new(QuantMatrix::quantize(&w, format)?)
                }
                None => return Ok(None),
            },
            Storage::Blocks(blocks) => {
                let name = format!("{}.weight", vb.prefix());
                match blocks.get(&name) {
                    Some(m) => m.clone(),
                    None => return Ok(None),
                }
            }
        };
        if (m.outputs(), m.inputs()) != (outputs, inputs) {
            candle_core::bail!(
                "{}.weight is {} x {}, the config makes it {outputs} x {inputs}",
                vb.prefix(),
                m.outputs(),
                m.inputs()
            )
        }
        Ok(Some(m))
    }
}

/// A projection on our kernel: weights packed (f32 panels, bf16 or quantised blocks), or a
/// tied head's f32 embedding table itself ([`kernels::Weight::Rows`]: a packed copy would
/// hold the vocabulary's table twice).
struct Proj {
    weight: kernels::Weight,
    bias: Option<Tensor>,
}

impl Proj {
    /// `x . W + bias`, plus `residual` in the kernel's pass where there is one.
    fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        kernels::linear(
            x,
            &self.weight,
            self.bias.as_ref(),
            kernels::Activation::Identity,
            residual,
        )
    }

    /// The quantised matrix, if this projection has one.
    fn quantised(&self) -> Option<&QuantMatrix> {
        match &self.weight {
            kernels::Weight::Quant(q) => Some(q),
            _ => None,
        }
    }
}

fn linear(
    input: usize,
    output: usize,
    bias: bool,
    vb: VarBuilder,
    storage: &Storage,
) -> candle_core::Result<Proj> {
    let bias_of = |vb: &VarBuilder| bias.then(|| vb.get(output, "bias")).transpose();
    let weight = match storage.matrix(input, output, &vb)? {
        Some(m) => kernels::Weight::Quant(m),
        None => storage.pack(&vb.get((output, input), "weight")?)?,
    };
    Ok(Proj {
        weight,
        bias: bias_of(&vb)?,
    })
}

/// Projections of one input (query, key and value; gate and up): one product over their
/// weights stacked at load, the parts side by side in its output columns, or one product each
/// where a .gguf file holds them as separate block matrices.
enum Stacked {
    One(Proj),
    Apart(Vec<Proj>),
}

impl Stacked {
    /// `parts`: each projection's name under `vb` and its outputs.
    fn load(
        input: usize,
        parts: &[(&str, usize)],
        bias: bool,
        vb: &VarBuilder,
        storage: &Storage,
    ) -> candle_core::Result<Self> {
        if matches!(storage, Storage::Blocks(_)) {
            return Ok(Stacked::Apart(
                parts
                    .iter()
                    .map(|&(name, output)| linear(input, output, bias, vb.pp(name), storage))
                    .collect::<candle_core::Result<_>>()?,
            ));
        }
        let cat = |leaf: &str, shape: &dyn Fn(usize) -> candle_core::Shape| {
            let tensors = parts
                .iter()
                .map(|&(name, output)| vb.pp(name).get(shape(output), leaf))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&tensors, 0)
        };
        let weight = storage.pack(&cat("weight", &|output| (output, input).into())?)?;
        let bias = bias
            .then(|| cat("bias", &|output| output.into()))
            .transpose()?;
        Ok(Stacked::One(Proj { weight, bias }))
    }

    /// [tokens, the parts' outputs side by side].
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Stacked::One(p) => p.forward(x, None),
            Stacked::Apart(parts) => Tensor::cat(
                &parts
                    .iter()
                    .map(|p| p.forward(x, None))
                    .collect::<candle_core::Result<Vec<_>>>()?,
                1,
            ),
        }
    }

    fn projections(&self) -> &[Proj] {
        match self {
            Stacked::One(p) => std::slice::from_ref(p),
            Stacked::Apart(parts) => parts,
        }
    }
}

/// The token embeddings: a table, or the rows of a quantised matrix (shared with a tied head).
enum TokenEmbeddings {
    Table(Embedding),
    Quantised(Arc<QuantMatrix>),
}

impl TokenEmbeddings {
    fn hidden_size(&self) -> usize {
        match self {
            TokenEmbeddings::Table(e) => e.hidden_size(),
            TokenEmbeddings::Quantised(q) => q.inputs(),
        }
    }

    /// [ids, hidden].
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            TokenEmbeddings::Table(e) => e.forward(ids),
            TokenEmbeddings::Quantised(q) => {
                let device = ids.device().clone();
                let ids = ids.to_vec1::<u32>()?;
                let mut rows = Vec::with_capacity(ids.len() * q.inputs());
                for &id in &ids {
                    if id as usize >= q.outputs() {
                        candle_core::bail!("token id {id} is outside the vocabulary")
                    }
                    rows.extend(q.row(id as usize));
                }
                Tensor::from_vec(rows, (ids.len(), q.inputs()), &device)
            }
        }
    }
}

struct Attention {
    /// `q_proj`, `k_proj` and `v_proj`.
    qkv: Stacked,
    o_proj: Proj,
    /// Qwen3 only.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(cfg: &Config, vb: VarBuilder, storage: &Storage) -> candle_core::Result<Self> {
        let (h, kv, d) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let qkv_bias = cfg.qkv_bias();
        let qwen3 = cfg.head_norms();
        let norm = |name: &str| -> candle_core::Result<Option<RmsNorm>> {
            qwen3
                .then(|| RmsNorm::load(d, cfg.rms_norm_eps, vb.pp(name)))
                .transpose()
        };
        Ok(Self {
            qkv: Stacked::load(
                cfg.hidden_size,
                &[("q_proj", h * d), ("k_proj", kv * d), ("v_proj", kv * d)],
                qkv_bias,
                &vb,
                storage,
            )?,
            o_proj: linear(
                h * d,
                cfg.hidden_size,
                cfg.attention_bias,
                vb.pp("o_proj"),
                storage,
            )?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            heads: h,
            kv_heads: kv,
            head_dim: d,
        })
    }

    /// `x`: [tokens, hidden] of the ragged batch `rows`; each row's keys and values join its
    /// cache of this layer, and its queries attend to that cache. Returns `residual` plus the
    /// attention's output.
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        rows: &[Row],
        caches: &mut [&mut KvCache],
        residual: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let tokens = x.dim(0)?;
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let qkv = self.qkv.forward(x)?;
        let mut q = qkv.narrow(1, 0, h * d)?.reshape((tokens, h, d))?;
        let mut k = qkv.narrow(1, h * d, kv * d)?.reshape((tokens, kv, d))?;
        let v = qkv
            .narrow(1, (h + kv) * d, kv * d)?
            .reshape((tokens, kv, d))?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = rope.apply(&q)?;
        let k = rope.apply(&k)?;
        let mut outputs = Vec::with_capacity(rows.len());
        for (row, cache) in rows.iter().zip(caches.iter_mut()) {
            let (keys, values) = cache.append(
                &k.narrow(0, row.offset, row.len)?,
                &v.narrow(0, row.offset, row.len)?,
            )?;
            outputs.push(self.attend(&q.narrow(0, row.offset, row.len)?, &keys, &values)?);
        }
        let out = if outputs.len() == 1 {
            outputs.remove(0)
        } else {
            Tensor::cat(&outputs, 0)?
        };
        self.o_proj.forward(&out, Some(residual))
    }

    /// One sequence: `q` [new, heads, d]; `keys`, `values` [cached + new, kv_heads, d].
    /// Query heads are grouped under their key/value head, so keys are never repeated.
    fn attend(&self, q: &Tensor, keys: &Tensor, values: &Tensor) -> candle_core::Result<Tensor> {
        let q = (q * (1.0 / (self.head_dim as f64).sqrt()))?;
        kernels::cached_attention(&q, keys, values)
    }
}

struct Mlp {
    /// `gate_proj` and `up_proj`.
    gate_up: Stacked,
    down_proj: Proj,
    act: Activation,
}

impl Mlp {
    fn load(cfg: &Config, vb: VarBuilder, storage: &Storage) -> candle_core::Result<Self> {
        let (w, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_up: Stacked::load(w, &[("gate_proj", i), ("up_proj", i)], b, &vb, storage)?,
            down_proj: linear(i, w, b, vb.pp("down_proj"), storage)?,
            act: cfg.hidden_act,
        })
    }

    /// `residual` plus the MLP of `x`.
    fn forward(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        let gate_up = self.gate_up.forward(x)?;
        let hidden = if self.act == Activation::Silu {
            kernels::swiglu(&gate_up)?
        } else {
            let i = gate_up.dim(1)? / 2;
            (gate_up.narrow(1, 0, i)?.apply(&self.act)? * gate_up.narrow(1, i, i)?)?
        };
        self.down_proj.forward(&hidden, Some(residual))
    }
}

struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// The rotary tables gathered at the ragged batch's positions: [tokens, 1, d/2].
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// x: [tokens, heads, d]; each token is rotated by its own position.
    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (t, h, d) = x.dims3()?;
        candle_nn::rotary_emb::rope(
            &x.reshape((t, h, 1, d))?.contiguous()?,
            &self.cos,
            &self.sin,
        )?
        .reshape((t, h, d))
    }
}

/// One sequence's part of a ragged batch: rows `offset..offset + len` of the flattened tokens.
struct Row {
    offset: usize,
    len: usize,
}

/// A sequence's caches, one per layer.
struct SequenceCache {
    layers: Vec<KvCache>,
    /// M-RoPE: a token's rotary position minus its place in the sequence (negative after an
    /// image, whose tokens share positions), transformers' `rope_deltas`.
    rope_delta: i64,
}

impl SequenceCache {
    /// Tokens the caches hold.
    fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::current_seq_len)
    }
}

pub struct Decoder {
    embed_tokens: TokenEmbeddings,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Proj,
    /// [max positions, d/2] cos and sin of every position.
    cos: Tensor,
    sin: Tensor,
    /// M-RoPE (Qwen2-VL): the position that turns each frequency pair, see
    /// [`Config::mrope_axes`].
    mrope: Option<Vec<u8>>,
    sequences: HashMap<SequenceId, SequenceCache>,
    next_id: u64,
    /// The sequences of the `TextGenerator` interface's current batch, in order.
    batch: Vec<SequenceId>,
    max_context: usize,
    eos: Vec<u32>,
    info: SessionInfo,
    device: Device,
    weight_bytes: u64,
}

/// Prompts that enter the decoder as embeddings rather than tokens (a multimodal model's
/// image features in place of its image tokens).
pub(crate) struct Embedded {
    /// [all prompts' tokens, hidden], in order.
    pub(crate) embeds: Tensor,
    /// Qwen3-VL's DeepStack: features added to the outputs of the first layers.
    pub(crate) deepstack: Option<Deepstack>,
}

/// `_deepstack_process`: after layer i, `layers[i]` ([rows, hidden]) is added at `rows`
/// (the image tokens' places among all the prompts' tokens).
pub(crate) struct Deepstack {
    pub(crate) rows: Tensor,
    pub(crate) layers: Vec<Tensor>,
}

/// First cache size of a sequence (positions); it grows by this much when full.
const CACHE_CHUNK: usize = 256;

/// A LLaMA-family decoder's weights: `model` is the prefix of the embeddings, layers and final
/// norm, `head` that of the untied `lm_head` (`model.` and `lm_head` in a causal LM; under
/// `language_model` in LLaVA).
pub(crate) struct Weights {
    embed_tokens: TokenEmbeddings,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Proj,
    /// The head multiplies by the embedding table (`tie_word_embeddings`).
    head_is_tied: bool,
}

impl Weights {
    pub(crate) fn load(
        cfg: &Config,
        m: VarBuilder,
        head: VarBuilder,
        storage: &Storage,
    ) -> candle_core::Result<Self> {
        let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = m.pp(format!("layers.{i}"));
                Ok(Layer {
                    input_layernorm: RmsNorm::load(
                        hidden,
                        cfg.rms_norm_eps,
                        l.pp("input_layernorm"),
                    )?,
                    self_attn: Attention::load(cfg, l.pp("self_attn"), storage)?,
                    post_attention_layernorm: RmsNorm::load(
                        hidden,
                        cfg.rms_norm_eps,
                        l.pp("post_attention_layernorm"),
                    )?,
                    mlp: Mlp::load(cfg, l.pp("mlp"), storage)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = RmsNorm::load(hidden, cfg.rms_norm_eps, m.pp("norm"))?;
        // As llama.cpp's quantised files do, the embeddings are quantised too; a tied head
        // multiplies by the very same blocks.
        let embed = m.pp("embed_tokens");
        let embed_tokens = match storage.matrix(hidden, vocab, &embed)? {
            Some(q) => TokenEmbeddings::Quantised(q),
            None => TokenEmbeddings::Table(candle_nn::embedding(vocab, hidden, embed)?),
        };
        // A .gguf file's own `output.weight` is the head even where config.json says tied.
        let file_has_head = matches!(storage, Storage::Blocks(_))
            && (storage.matrix(hidden, vocab, &head)?.is_some() || head.contains_tensor("weight"));
        let head_is_tied = cfg.tied_head() && !file_has_head;
        let lm_head = match (&embed_tokens, head_is_tied) {
            (TokenEmbeddings::Quantised(q), true) => Proj {
                weight: kernels::Weight::Quant(q.clone()),
                bias: None,
            },
            (TokenEmbeddings::Table(t), true) => Proj {
                weight: kernels::Weight::tied(t.embeddings(), matches!(storage, Storage::Bf16))?,
                bias: None,
            },
            (_, false) => linear(hidden, vocab, false, head, storage)?,
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            head_is_tied,
        })
    }

    /// The projections of every layer.
    fn projections(&self) -> impl Iterator<Item = &Proj> {
        self.layers.iter().flat_map(|l| {
            let (a, m) = (&l.self_attn, &l.mlp);
            a.qkv
                .projections()
                .iter()
                .chain([&a.o_proj])
                .chain(m.gate_up.projections())
                .chain([&m.down_proj])
        })
    }

    /// Parameters held as quantised blocks or packed bf16 instead of the session's dtype, and
    /// the bytes those take (a matrix shared by the embeddings and a tied head counted once;
    /// a tied head packed in bf16 beside the f32 table the embeddings look up adds its bytes
    /// and replaces no parameter).
    fn packed(&self) -> (u64, u64) {
        let mut seen: Vec<*const QuantMatrix> = Vec::new();
        let embeddings = match &self.embed_tokens {
            TokenEmbeddings::Quantised(q) => Some(q.as_ref()),
            TokenEmbeddings::Table(_) => None,
        };
        let mut totals = (0, 0);
        for q in embeddings.into_iter().chain(
            self.projections()
                .chain([&self.lm_head])
                .filter_map(Proj::quantised),
        ) {
            if !seen.contains(&(q as *const _)) {
                seen.push(q);
                totals.0 += (q.outputs() * q.inputs()) as u64;
                totals.1 += q.bytes();
            }
        }
        let head_copies_table =
            matches!(self.embed_tokens, TokenEmbeddings::Table(_)) && self.head_is_tied;
        for (proj, replaces) in self
            .projections()
            .map(|p| (p, true))
            .chain([(&self.lm_head, !head_copies_table)])
        {
            if let kernels::Weight::Bf16(p) = &proj.weight {
                if replaces {
                    totals.0 += (p.outputs() * p.inputs()) as u64;
                }
                totals.1 += p.bytes();
            }
        }
        totals
    }
}

impl Decoder {
    pub fn load(ctx: LoadContext<'_>) -> Result<Box<dyn TextGenerator>, EngineError> {
        let cfg = Config::from_json(ctx.source.config())?;
        let storage = Self::storage(&ctx)?;
        let (weights, info) = ctx.build(&cfg.model_type, &["logits"], |vb| {
            Weights::load(&cfg, vb.pp("model"), vb.pp("lm_head"), &storage)
        })?;
        Ok(Box::new(Self::new(&cfg, weights, info, &ctx)?))
    }

    /// The decoder over a .gguf file's weights ([`quantized::GgufFile::native_weights`]):
    /// the architecture from the checkpoint's config.json, the weights from the file.
    pub(crate) fn load_gguf(
        ctx: LoadContext<'_>,
        file: &quantized::GgufFile,
    ) -> Result<Box<dyn TextGenerator>, EngineError> {
        let cfg = Config::from_json(ctx.source.config())?;
        let file = file.native_weights(cfg.num_attention_heads, cfg.kv_heads())?;
        let vb = VarBuilder::from_tensors(file.tensors, ctx.dtype, &ctx.device);
        let storage = Storage::Blocks(Arc::new(file.blocks));
        let (weights, mut info) = ctx.build_from(vb, &cfg.model_type, &["logits"], |vb| {
            Weights::load(&cfg, vb.pp("model"), vb.pp("lm_head"), &storage)
        })?;
        info.parameter_count = file.parameter_count;
        Ok(Box::new(Self::new(&cfg, weights, info, &ctx)?))
    }

    /// Quantised blocks for `--precision q8_0|q4_k` (on the CPU, where their kernel runs),
    /// packed bf16 for the bf16 products; else as loaded.
    pub(crate) fn storage(ctx: &LoadContext<'_>) -> Result<Storage, EngineError> {
        if ctx.products == super::encoder::Products::Bf16 {
            return Ok(Storage::Bf16);
        }
        let Some(format) = Format::of(ctx.info.precision) else {
            return Ok(Storage::AsLoaded);
        };
        if !ctx.device.is_cpu() {
            return Err(EngineError::Unsupported(format!(
                "the native decoder runs {} on the CPU",
                ctx.info.precision
            )));
        }
        Ok(Storage::Quantised(format))
    }

    /// The decoder over loaded weights; `info` describes the whole model it serves.
    pub(crate) fn new(
        cfg: &Config,
        weights: Weights,
        info: SessionInfo,
        ctx: &LoadContext<'_>,
    ) -> Result<Self, EngineError> {
        let max_context = cfg.max_context();
        let inv = cfg.inverse_frequencies();
        let half = inv.len();
        let angles: Vec<f32> = (0..max_context)
            .flat_map(|p| inv.iter().map(move |f| p as f32 * f))
            .collect();
        let angles = Tensor::from_vec(angles, (max_context, half), &ctx.device).map_err(rt)?;
        let cos = angles
            .cos()
            .and_then(|t| t.to_dtype(ctx.dtype))
            .map_err(rt)?;
        let sin = angles
            .sin()
            .and_then(|t| t.to_dtype(ctx.dtype))
            .map_err(rt)?;
        let (packed_parameters, packed_bytes) = weights.packed();
        let weight_bytes = (info.parameter_count - packed_parameters)
            * ctx.dtype.size_in_bytes() as u64
            + packed_bytes;
        let Weights {
            embed_tokens,
            layers,
            norm,
            lm_head,
            ..
        } = weights;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            mrope: cfg.mrope_axes()?,
            sequences: HashMap::new(),
            next_id: 0,
            batch: Vec::new(),
            max_context,
            eos: ctx.source.eos_tokens(),
            info,
            device: ctx.device.clone(),
            weight_bytes,
        })
    }

    /// The token embeddings of `ids`: [ids, hidden].
    pub(crate) fn embed(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let ids = Tensor::from_slice(ids, ids.len(), &self.device)?;
        self.embed_tokens.forward(&ids)
    }

    /// Starts a new batch (replacing the previous one) whose prompts enter as `inputs_embeds`
    /// ([all prompts' tokens, hidden], in order) instead of their tokens' embeddings: LLaVA's
    /// image features in place of its image tokens.
    pub(crate) fn prefill_embedded(
        &mut self,
        prompts: &[Vec<u32>],
        inputs_embeds: Tensor,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let embedded = Embedded {
            embeds: inputs_embeds,
            deepstack: None,
        };
        self.start_batch(prompts, Some(embedded), None)
    }

    /// [`Self::prefill_embedded`] with each prompt token's (temporal, height, width) rotary
    /// position (Qwen2-VL's `get_rope_index`); the steps after continue from the largest.
    pub(crate) fn prefill_embedded_at(
        &mut self,
        prompts: &[Vec<u32>],
        inputs_embeds: Embedded,
        positions: &[Vec<[u32; 3]>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        if self.mrope.is_none() {
            return Err(EngineError::InvalidModel(
                "three-part rotary positions for a model without mrope_section".into(),
            ));
        }
        self.start_batch(prompts, Some(inputs_embeds), Some(positions))
    }

    fn start_batch(
        &mut self,
        prompts: &[Vec<u32>],
        inputs_embeds: Option<Embedded>,
        positions: Option<&[Vec<[u32; 3]>]>,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        for id in std::mem::take(&mut self.batch) {
            self.sequences.remove(&id);
        }
        let prompts: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let (started, _) = self.run_with(&prompts, &[], inputs_embeds, positions)?;
        let (ids, logits) = started.into_iter().unzip();
        self.batch = ids;
        Ok(logits)
    }

    /// [`SequencePool::run`], the started prompts entering as `inputs_embeds` when given.
    #[allow(clippy::type_complexity)]
    fn run_with(
        &mut self,
        start: &[&[u32]],
        steps: &[(SequenceId, u32)],
        inputs_embeds: Option<Embedded>,
        start_positions: Option<&[Vec<[u32; 3]>]>,
    ) -> Result<(Vec<(SequenceId, Vec<f32>)>, Vec<Vec<f32>>), EngineError> {
        let ids: Vec<SequenceId> = start.iter().map(|_| self.new_sequence()).collect();
        let tokens: Vec<[u32; 1]> = steps.iter().map(|(_, t)| [*t]).collect();
        let work: Vec<(SequenceId, &[u32])> = ids
            .iter()
            .copied()
            .zip(start.iter().copied())
            .chain(
                steps
                    .iter()
                    .zip(&tokens)
                    .map(|((id, _), t)| (*id, t.as_slice())),
            )
            .collect();
        match self.forward(&work, inputs_embeds, start_positions) {
            Ok(mut logits) => {
                let stepped = logits.split_off(ids.len());
                Ok((ids.into_iter().zip(logits).collect(), stepped))
            }
            Err(e) => {
                for id in ids {
                    self.sequences.remove(&id);
                }
                Err(e)
            }
        }
    }

    /// Runs the new tokens of each listed sequence together; returns each one's logits after
    /// its last new token. A failure while computing drops the listed sequences, whose caches
    /// may be half written; a request refused beforehand leaves them as they were.
    /// `start_positions`, when given, are the rotary positions of the first work items' tokens
    /// (new sequences); every other token sits at its place in its sequence plus the
    /// sequence's rope delta.
    fn forward(
        &mut self,
        work: &[(SequenceId, &[u32])],
        inputs_embeds: Option<Embedded>,
        start_positions: Option<&[Vec<[u32; 3]>]>,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut rows = Vec::with_capacity(work.len());
        let mut positions: Vec<[u32; 3]> = Vec::new();
        let mut offset = 0;
        for (i, (id, tokens)) in work.iter().enumerate() {
            let cache = self.sequences.get(id).ok_or_else(|| {
                EngineError::InvalidInput(format!("sequence {} is not running", id.0))
            })?;
            if tokens.is_empty() {
                return Err(EngineError::InvalidInput(
                    "a sequence step has no tokens".into(),
                ));
            }
            let held = cache.len();
            if held + tokens.len() > self.max_context {
                return Err(EngineError::InvalidInput(format!(
                    "{} tokens exceed the model's context of {}",
                    held + tokens.len(),
                    self.max_context
                )));
            }
            match start_positions.and_then(|p| p.get(i)) {
                Some(given) if given.len() != tokens.len() => {
                    return Err(EngineError::InvalidInput(format!(
                        "{} rotary positions for {} tokens",
                        given.len(),
                        tokens.len()
                    )))
                }
                Some(given) => {
                    let last = given.iter().flatten().max().copied().unwrap_or(0) as usize;
                    if last >= self.max_context {
                        return Err(EngineError::InvalidInput(format!(
                            "rotary position {last} is beyond the model's context of {}",
                            self.max_context
                        )));
                    }
                    positions.extend_from_slice(given);
                }
                None => positions.extend((held..held + tokens.len()).map(|p| {
                    let p = (p as i64 + cache.rope_delta).max(0) as u32;
                    [p, p, p]
                })),
            }
            rows.push(Row {
                offset,
                len: tokens.len(),
            });
            offset += tokens.len();
        }
        let deltas: Vec<(SequenceId, i64)> = start_positions
            .unwrap_or(&[])
            .iter()
            .zip(work)
            .map(|(given, (id, tokens))| {
                let last = given.iter().flatten().max().copied().unwrap_or(0) as i64;
                (*id, last + 1 - tokens.len() as i64)
            })
            .collect();
        let logits = self
            .compute(work, &rows, &positions, inputs_embeds)
            .map_err(|e| {
                for (id, _) in work {
                    self.sequences.remove(id);
                }
                rt(e)
            })?;
        for (id, delta) in deltas {
            if let Some(cache) = self.sequences.get_mut(&id) {
                cache.rope_delta = delta;
            }
        }
        Ok(logits)
    }

    /// The cos and sin rows of each token's rotary position: [tokens, d/2]. With M-RoPE,
    /// each frequency pair turns with the position of its axis (`recomposition_frequencies`).
    fn rotary_rows(&self, positions: &[[u32; 3]]) -> candle_core::Result<(Tensor, Tensor)> {
        let count = positions.len();
        let gather = |part: usize| -> candle_core::Result<(Tensor, Tensor)> {
            let at: Vec<u32> = positions.iter().map(|p| p[part]).collect();
            let at = Tensor::from_vec(at, count, &self.device)?;
            Ok((
                self.cos.index_select(&at, 0)?,
                self.sin.index_select(&at, 0)?,
            ))
        };
        let uniform = positions.iter().all(|p| p[0] == p[1] && p[1] == p[2]);
        let Some(axes) = self.mrope.as_ref().filter(|_| !uniform) else {
            return gather(0);
        };
        // One column gather from the three axes' tables side by side.
        let half = axes.len();
        let columns: Vec<u32> = axes
            .iter()
            .enumerate()
            .map(|(j, &axis)| (axis as usize * half + j) as u32)
            .collect();
        let columns = Tensor::from_vec(columns, half, &self.device)?;
        let parts = [gather(0)?, gather(1)?, gather(2)?];
        let pick = |tables: [&Tensor; 3]| Tensor::cat(&tables, 1)?.index_select(&columns, 1);
        Ok((
            pick([&parts[0].0, &parts[1].0, &parts[2].0])?,
            pick([&parts[0].1, &parts[1].1, &parts[2].1])?,
        ))
    }

    fn compute(
        &mut self,
        work: &[(SequenceId, &[u32])],
        rows: &[Row],
        positions: &[[u32; 3]],
        inputs_embeds: Option<Embedded>,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let tokens: Vec<u32> = work.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        let count = tokens.len();
        let ids = Tensor::from_vec(tokens, count, &self.device)?;
        let half = self.cos.dim(1)?;
        let (cos, sin) = self.rotary_rows(positions)?;
        let rope = Rope {
            cos: cos.reshape((count, 1, half))?,
            sin: sin.reshape((count, 1, half))?,
        };
        let (mut x, deepstack) = match inputs_embeds {
            Some(e) if e.embeds.dims() == [count, self.embed_tokens.hidden_size()] => {
                (e.embeds, e.deepstack)
            }
            Some(e) => {
                return Err(candle_core::Error::Msg(format!(
                    "input embeddings of shape {:?} for {count} tokens",
                    e.embeds.dims()
                )))
            }
            None => (self.embed_tokens.forward(&ids)?, None),
        };
        // Each sequence's cache, in the order of `work` (ids are distinct: checked by callers).
        let mut caches: Vec<&mut SequenceCache> = Vec::with_capacity(work.len());
        {
            let mut by_id: HashMap<SequenceId, &mut SequenceCache> =
                self.sequences.iter_mut().map(|(id, c)| (*id, c)).collect();
            for (id, _) in work {
                caches.push(by_id.remove(id).ok_or_else(|| {
                    candle_core::Error::Msg(format!("sequence {} listed twice", id.0))
                })?);
            }
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let mut layer_caches: Vec<&mut KvCache> =
                caches.iter_mut().map(|c| &mut c.layers[l]).collect();
            let h = layer.input_layernorm.forward(&x)?;
            x = layer
                .self_attn
                .forward(&h, &rope, rows, &mut layer_caches, &x)?;
            x = layer
                .mlp
                .forward(&layer.post_attention_layernorm.forward(&x)?, &x)?;
            if let Some(add) = deepstack
                .as_ref()
                .and_then(|d| Some((&d.rows, d.layers.get(l)?)))
            {
                x = x.index_add(add.0, &add.1.to_dtype(x.dtype())?, 0)?;
            }
        }
        // Only each sequence's last token needs logits.
        let last: Vec<u32> = rows.iter().map(|r| (r.offset + r.len - 1) as u32).collect();
        let last = Tensor::from_vec(last, rows.len(), &self.device)?;
        let x = self.norm.forward(&x.index_select(&last, 0)?)?;
        let logits = self.lm_head.forward(&x, None)?.to_dtype(DType::F32)?;
        logits.to_vec2::<f32>()
    }

    fn new_sequence(&mut self) -> SequenceId {
        let id = SequenceId(self.next_id);
        self.next_id += 1;
        let cache = SequenceCache {
            layers: (0..self.layers.len())
                .map(|_| KvCache::new(0, CACHE_CHUNK.min(self.max_context)))
                .collect(),
            rope_delta: 0,
        };
        self.sequences.insert(id, cache);
        id
    }
}

impl SequencePool for Decoder {
    fn run(
        &mut self,
        start: &[&[u32]],
        steps: &[(SequenceId, u32)],
    ) -> Result<(Vec<(SequenceId, Vec<f32>)>, Vec<Vec<f32>>), EngineError> {
        self.run_with(start, steps, None, None)
    }

    fn end(&mut self, id: SequenceId) {
        self.sequences.remove(&id);
    }
}

impl TextGenerator for Decoder {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        Ok(self.prefill_batch(&[prompt.to_vec()])?.remove(0))
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>, EngineError> {
        Ok(self.step_batch(&[token])?.remove(0))
    }

    /// A new batch replaces the previous one (prompts of any lengths).
    fn prefill_batch(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.start_batch(prompts, None, None)
    }

    fn step_batch(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        if tokens.len() != self.batch.len() {
            return Err(EngineError::InvalidInput(format!(
                "{} tokens for a batch of {} sequences",
                tokens.len(),
                self.batch.len()
            )));
        }
        let steps: Vec<(SequenceId, u32)> = self
            .batch
            .iter()
            .copied()
            .zip(tokens.iter().copied())
            .collect();
        SequencePool::step(self, &steps)
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

    fn sequence_pool(&mut self) -> Option<&mut dyn SequencePool> {
        Some(self)
    }
}
