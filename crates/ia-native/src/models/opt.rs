//! OPT (facebook/opt-*), written against transformers' `modeling_opt.py`: a decoder with learned
//! positional embeddings (offset by 2), pre- or post-LayerNorm blocks (`do_layer_norm_before`),
//! optional input/output projections when `word_embed_proj_dim != hidden_size`, and an LM head
//! tied to the token embeddings. Tensor names match the HF checkpoint (`model.decoder.*`).

use super::encoder::{Dense, Products};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{
    embedding, layer_norm, Activation, Embedding, LayerNorm, LayerNormConfig, VarBuilder,
};
use serde::Deserialize;

/// Whether this file's model runs the checkpoint: its `model_type` is OPT's.
pub(crate) fn runs(config: &serde_json::Value) -> bool {
    config.get("model_type").and_then(serde_json::Value::as_str) == Some("opt")
}

/// HF `OPTConfig`, deserialised from config.json as is.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub ffn_dim: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    #[serde(default = "yes")]
    pub do_layer_norm_before: bool,
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    #[serde(default = "relu")]
    pub activation_function: Activation,
    #[serde(default = "yes")]
    pub enable_bias: bool,
    #[serde(default = "yes")]
    pub layer_norm_elementwise_affine: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

fn yes() -> bool {
    true
}

fn relu() -> Activation {
    Activation::Relu
}

/// OPT's learned positions start at index 2 (a fairseq legacy kept by transformers).
pub(crate) const POSITION_OFFSET: usize = 2;

fn opt_layer_norm(size: usize, affine: bool, vb: VarBuilder) -> Result<LayerNorm> {
    let cfg = LayerNormConfig {
        eps: 1e-5,
        affine,
        ..Default::default()
    };
    layer_norm(size, cfg, vb)
}

struct Attention {
    q_proj: Dense,
    k_proj: Dense,
    v_proj: Dense,
    out_proj: Dense,
    num_heads: usize,
    head_dim: usize,
    kv_cache: Option<(Tensor, Tensor)>,
}

impl Attention {
    fn load(cfg: &Config, vb: VarBuilder, products: Products) -> Result<Self> {
        let h = cfg.hidden_size;
        let b = cfg.enable_bias;
        Ok(Self {
            q_proj: Dense::load_b(h, h, b, vb.pp("q_proj"), products)?,
            k_proj: Dense::load_b(h, h, b, vb.pp("k_proj"), products)?,
            v_proj: Dense::load_b(h, h, b, vb.pp("v_proj"), products)?,
            out_proj: Dense::load_b(h, h, b, vb.pp("out_proj"), products)?,
            num_heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            kv_cache: None,
        })
    }

    fn forward(&mut self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let heads = |x: Tensor| {
            x.reshape((b, t, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(self.q_proj.forward(xs)?)?;
        let mut k = heads(self.k_proj.forward(xs)?)?;
        let mut v = heads(self.v_proj.forward(xs)?)?;
        if let Some((pk, pv)) = &self.kv_cache {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        self.kv_cache = Some((k.clone(), v.clone()));
        let scale = (self.head_dim as f64).powf(-0.5);
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out =
            probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, t, self.num_heads * self.head_dim))?;
        self.out_proj.forward(&out)
    }
}

struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    final_layer_norm: LayerNorm,
    activation: Activation,
    pre_norm: bool,
}

impl DecoderLayer {
    fn load(cfg: &Config, vb: VarBuilder, products: Products) -> Result<Self> {
        let affine = cfg.layer_norm_elementwise_affine;
        Ok(Self {
            self_attn: Attention::load(cfg, vb.pp("self_attn"), products)?,
            self_attn_layer_norm: opt_layer_norm(
                cfg.hidden_size,
                affine,
                vb.pp("self_attn_layer_norm"),
            )?,
            fc1: Dense::load_b(
                cfg.hidden_size,
                cfg.ffn_dim,
                cfg.enable_bias,
                vb.pp("fc1"),
                products,
            )?,
            fc2: Dense::load_b(
                cfg.ffn_dim,
                cfg.hidden_size,
                cfg.enable_bias,
                vb.pp("fc2"),
                products,
            )?,
            final_layer_norm: opt_layer_norm(cfg.hidden_size, affine, vb.pp("final_layer_norm"))?,
            activation: cfg.activation_function,
            pre_norm: cfg.do_layer_norm_before,
        })
    }

    fn forward(&mut self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let residual = xs;
        let h = if self.pre_norm {
            self.self_attn_layer_norm.forward(xs)?
        } else {
            xs.clone()
        };
        let h = (self.self_attn.forward(&h, mask)? + residual)?;
        let h = if self.pre_norm {
            h
        } else {
            self.self_attn_layer_norm.forward(&h)?
        };
        let residual = &h;
        let f = if self.pre_norm {
            self.final_layer_norm.forward(&h)?
        } else {
            h.clone()
        };
        let f = self
            .fc2
            .forward(&self.activation.forward(&self.fc1.forward(&f)?)?)?;
        let out = (f + residual)?;
        if self.pre_norm {
            Ok(out)
        } else {
            self.final_layer_norm.forward(&out)
        }
    }
}

/// `OPTForCausalLM` with a KV cache.
pub struct Model {
    embed_tokens: Embedding,
    embed_positions: Embedding,
    project_in: Option<Dense>,
    project_out: Option<Dense>,
    final_layer_norm: Option<LayerNorm>,
    layers: Vec<DecoderLayer>,
    lm_head: Dense,
    /// The head is the token embeddings' matrix (a copy where it is packed in bf16).
    head_is_tied: bool,
    max_positions: usize,
    /// Tokens already in the KV cache.
    past_len: usize,
    device: Device,
    dtype: DType,
}

impl Model {
    /// `products`: how every linear layer and the head multiply (under `--precision bf16`,
    /// in bf16, a tied head packed apart from the f32 embedding table).
    pub fn load(vb: VarBuilder, cfg: &Config, products: Products) -> Result<Self> {
        let d = vb.pp("model").pp("decoder");
        let proj_dim = cfg.word_embed_proj_dim.unwrap_or(cfg.hidden_size);
        let embed_tokens = embedding(cfg.vocab_size, proj_dim, d.pp("embed_tokens"))?;
        let embed_positions = embedding(
            cfg.max_position_embeddings + POSITION_OFFSET,
            cfg.hidden_size,
            d.pp("embed_positions"),
        )?;
        let (project_in, project_out) = if proj_dim != cfg.hidden_size {
            (
                Some(Dense::load_b(
                    proj_dim,
                    cfg.hidden_size,
                    false,
                    d.pp("project_in"),
                    products,
                )?),
                Some(Dense::load_b(
                    cfg.hidden_size,
                    proj_dim,
                    false,
                    d.pp("project_out"),
                    products,
                )?),
            )
        } else {
            (None, None)
        };
        let final_layer_norm = if cfg.do_layer_norm_before && !cfg.remove_final_layer_norm {
            Some(opt_layer_norm(
                cfg.hidden_size,
                cfg.layer_norm_elementwise_affine,
                d.pp("final_layer_norm"),
            )?)
        } else {
            None
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(cfg, d.pp(format!("layers.{i}")), products))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if cfg.tie_word_embeddings {
            Dense::tied(embed_tokens.embeddings(), products)?
        } else {
            Dense::load_b(proj_dim, cfg.vocab_size, false, vb.pp("lm_head"), products)?
        };
        Ok(Self {
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            final_layer_norm,
            layers,
            lm_head,
            head_is_tied: cfg.tie_word_embeddings,
            max_positions: cfg.max_position_embeddings,
            past_len: 0,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// Parameters held packed in bf16 instead of the session's dtype, and the bytes those
    /// take (a tied head packed beside the f32 table the embeddings look up adds its bytes
    /// and replaces no parameter).
    pub fn packed_bf16(&self) -> (u64, u64) {
        let layers = self.layers.iter().flat_map(|l| {
            let a = &l.self_attn;
            [&a.q_proj, &a.k_proj, &a.v_proj, &a.out_proj, &l.fc1, &l.fc2]
        });
        let projections = self.project_in.iter().chain(&self.project_out);
        let head = self
            .lm_head
            .packed_bf16()
            .map(|(parameters, bytes)| (if self.head_is_tied { 0 } else { parameters }, bytes));
        layers
            .chain(projections)
            .filter_map(Dense::packed_bf16)
            .chain(head)
            .fold((0, 0), |(p, b), (parameters, bytes)| {
                (p + parameters, b + bytes)
            })
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    pub fn clear_kv_cache(&mut self) {
        self.past_len = 0;
        for l in &mut self.layers {
            l.self_attn.kv_cache = None;
        }
    }

    /// Runs `input_ids` [batch, seq] after what is in the cache; returns logits for every new
    /// position, [batch, seq, vocab].
    pub fn forward(&mut self, input_ids: &Tensor) -> Result<Tensor> {
        let (_, t) = input_ids.dims2()?;
        if self.past_len + t > self.max_positions {
            candle_core::bail!(
                "sequence of {} tokens exceeds OPT's {} positions",
                self.past_len + t,
                self.max_positions
            );
        }
        let mut h = self.embed_tokens.forward(input_ids)?;
        if let Some(p) = &self.project_in {
            h = p.forward(&h)?;
        }
        let start = (self.past_len + POSITION_OFFSET) as u32;
        let positions = Tensor::arange(start, start + t as u32, &self.device)?;
        h = h.broadcast_add(&self.embed_positions.forward(&positions)?)?;
        let mask = causal_mask(t, self.past_len, self.dtype, &self.device)?;
        for layer in &mut self.layers {
            h = layer.forward(&h, mask.as_ref())?;
        }
        if let Some(ln) = &self.final_layer_norm {
            h = ln.forward(&h)?;
        }
        if let Some(p) = &self.project_out {
            h = p.forward(&h)?;
        }
        self.past_len += t;
        self.lm_head.forward(&h)
    }
}

/// Additive mask [t, past + t]: new token i may see cached tokens and new tokens <= i.
fn causal_mask(t: usize, past: usize, dtype: DType, device: &Device) -> Result<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..past + t).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Tensor::from_vec(mask, (t, past + t), device)?
        .to_dtype(dtype)
        .map(Some)
}

/// Logits of the last position, [batch, vocab], as f32.
pub fn last_logits(logits: &Tensor) -> Result<Tensor> {
    let t = logits.dim(1)?;
    logits
        .narrow(1, t - 1, 1)?
        .squeeze(1)?
        .to_dtype(DType::F32)?
        .contiguous()
}
