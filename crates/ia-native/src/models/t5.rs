//! T5 (encoder-decoder, text2text), written against transformers' `modeling_t5.py`.
//!
//! candle-transformers' T5 buckets decoder relative positions as if attention were
//! bidirectional, which diverges from transformers once a decoder distance reaches
//! `max_exact`, and scales tied-head logits by d_model^0.5 instead of d_model^-0.5; this file
//! follows transformers on both. Tensor names match the HF checkpoint (`shared`, `encoder.block.N.layer.M.*`,
//! `decoder.*`, `lm_head`).
//!
//! `T5Generator` runs the encoder once per prompt and the decoder one token per step, with
//! self-attention keys/values cached and cross-attention keys/values computed once.

use super::encoder::{Dense, Products};
use super::{parse_config, LoadContext};
use crate::rt;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{embedding, Activation, Embedding, VarBuilder};
use ia_engine::{EngineError, SessionInfo, TextGenerator};
use serde::Deserialize;

/// HF `T5Config`, deserialised from config.json as is.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_ff_proj")]
    pub feed_forward_proj: String,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// transformers 5 names the tied-head rescaling explicitly; older configs imply it.
    pub scale_decoder_outputs: Option<bool>,
    pub decoder_start_token_id: Option<u32>,
    pub pad_token_id: u32,
    #[serde(default = "default_n_positions")]
    pub n_positions: usize,
}

fn default_max_distance() -> usize {
    128
}

fn default_ff_proj() -> String {
    "relu".into()
}

fn default_n_positions() -> usize {
    512
}

fn yes() -> bool {
    true
}

impl Config {
    /// "relu" or "gated-gelu" -> (gated, activation). transformers maps "gelu" here to
    /// gelu_new (the tanh approximation).
    pub(crate) fn feed_forward(&self) -> (bool, Activation) {
        let (gated, act) = match self.feed_forward_proj.strip_prefix("gated-") {
            Some(a) => (true, a),
            None => (false, self.feed_forward_proj.as_str()),
        };
        let act = match act {
            "gelu" | "gelu_new" => Activation::NewGelu,
            "silu" | "swish" => Activation::Silu,
            _ => Activation::Relu,
        };
        (gated, act)
    }
}

/// transformers' `T5Attention._relative_position_bucket`, in f32 as torch computes it.
pub(crate) fn relative_position_bucket(
    relative: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> u32 {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let distance = if bidirectional {
        num_buckets /= 2;
        if relative > 0 {
            bucket += num_buckets;
        }
        relative.abs()
    } else {
        -relative.min(0)
    };
    let max_exact = num_buckets / 2;
    if distance < max_exact {
        bucket += distance;
    } else {
        let large = max_exact
            + ((distance as f32 / max_exact as f32).ln()
                / (max_distance as f32 / max_exact as f32).ln()
                * (num_buckets - max_exact) as f32) as i64;
        bucket += large.min(num_buckets - 1);
    }
    bucket as u32
}

/// T5's RMS norm: no mean subtraction, no bias, variance in f32.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?,
            eps,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        x.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}

struct Attention {
    q: Dense,
    k: Dense,
    v: Dense,
    o: Dense,
    relative_attention_bias: Option<Embedding>,
    n_heads: usize,
    d_kv: usize,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
    /// Self-attention: keys/values of earlier decoder positions. Cross-attention: the
    /// encoder's keys/values, computed on the first step.
    cache: Option<(Tensor, Tensor)>,
}

impl Attention {
    fn load(
        has_bias: bool,
        bidirectional: bool,
        cfg: &Config,
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        let inner = cfg.n_heads_dim();
        Ok(Self {
            q: Dense::load_b(cfg.d_model, inner, false, vb.pp("q"), products)?,
            k: Dense::load_b(cfg.d_model, inner, false, vb.pp("k"), products)?,
            v: Dense::load_b(cfg.d_model, inner, false, vb.pp("v"), products)?,
            o: Dense::load_b(inner, cfg.d_model, false, vb.pp("o"), products)?,
            relative_attention_bias: if has_bias {
                Some(embedding(
                    cfg.relative_attention_num_buckets,
                    cfg.num_heads,
                    vb.pp("relative_attention_bias"),
                )?)
            } else {
                None
            },
            n_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            bidirectional,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
            cache: None,
        })
    }

    fn heads(&self, x: Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.n_heads, self.d_kv))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Bias [1, heads, q_len, k_len] for queries at positions q_start.. over keys 0..k_len.
    fn position_bias(
        &self,
        q_start: usize,
        q_len: usize,
        k_len: usize,
        causal: bool,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let table = self
            .relative_attention_bias
            .as_ref()
            .expect("only the first layer computes the position bias");
        let buckets: Vec<u32> = (q_start..q_start + q_len)
            .flat_map(|i| {
                (0..k_len).map(move |j| {
                    relative_position_bucket(
                        j as i64 - i as i64,
                        self.bidirectional,
                        self.num_buckets,
                        self.max_distance,
                    )
                })
            })
            .collect();
        let buckets = Tensor::from_vec(buckets, (q_len, k_len), dev)?;
        let mut bias = table.forward(&buckets)?.permute((2, 0, 1))?.unsqueeze(0)?;
        if causal && q_len > 1 {
            let mask: Vec<f32> = (q_start..q_start + q_len)
                .flat_map(|i| (0..k_len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (q_len, k_len), dev)?.to_dtype(bias.dtype())?;
            bias = bias.broadcast_add(&mask)?;
        }
        bias.to_dtype(dtype)
    }

    /// Self-attention when `encoder` is None (appending to the cache when `use_cache`),
    /// cross-attention otherwise. Returns the output and the position bias used.
    fn forward(
        &mut self,
        xs: &Tensor,
        bias: Option<&Tensor>,
        encoder: Option<&Tensor>,
        use_cache: bool,
        causal: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, q_len, _) = xs.dims3()?;
        let q = self.heads(self.q.forward(xs)?)?;
        let (k, v) = match (encoder, &self.cache) {
            (Some(_), Some(kv)) if use_cache => kv.clone(),
            (Some(enc), _) => {
                let kv = (
                    self.heads(self.k.forward(enc)?)?,
                    self.heads(self.v.forward(enc)?)?,
                );
                if use_cache {
                    self.cache = Some(kv.clone());
                }
                kv
            }
            (None, cached) => {
                let mut k = self.heads(self.k.forward(xs)?)?;
                let mut v = self.heads(self.v.forward(xs)?)?;
                if use_cache {
                    if let Some((pk, pv)) = cached {
                        k = Tensor::cat(&[pk, &k], 2)?;
                        v = Tensor::cat(&[pv, &v], 2)?;
                    }
                    self.cache = Some((k.clone(), v.clone()));
                }
                (k, v)
            }
        };
        let k_len = k.dim(2)?;
        // T5 does not scale scores by 1/sqrt(d_kv): its initialisation absorbs it.
        let scores = q.matmul(&k.t()?)?;
        let bias = match (bias, encoder) {
            (Some(b), _) => Some(b.clone()),
            (None, None) if self.relative_attention_bias.is_some() => Some(self.position_bias(
                k_len - q_len,
                q_len,
                k_len,
                causal,
                scores.dtype(),
                xs.device(),
            )?),
            _ => None,
        };
        let scores = match &bias {
            Some(bias) => scores.broadcast_add(bias)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out =
            probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, q_len, self.n_heads * self.d_kv))?;
        Ok((self.o.forward(&out)?, bias))
    }
}

impl Config {
    pub(crate) fn n_heads_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

struct FeedForward {
    wi: Option<Dense>,
    wi_0: Option<Dense>,
    wi_1: Option<Dense>,
    wo: Dense,
    act: Activation,
}

impl FeedForward {
    fn load(cfg: &Config, vb: VarBuilder, products: Products) -> Result<Self> {
        let (gated, act) = cfg.feed_forward();
        let (wi, wi_0, wi_1) = if gated {
            (
                None,
                Some(Dense::load_b(
                    cfg.d_model,
                    cfg.d_ff,
                    false,
                    vb.pp("wi_0"),
                    products,
                )?),
                Some(Dense::load_b(
                    cfg.d_model,
                    cfg.d_ff,
                    false,
                    vb.pp("wi_1"),
                    products,
                )?),
            )
        } else {
            (
                Some(Dense::load_b(
                    cfg.d_model,
                    cfg.d_ff,
                    false,
                    vb.pp("wi"),
                    products,
                )?),
                None,
                None,
            )
        };
        Ok(Self {
            wi,
            wi_0,
            wi_1,
            wo: Dense::load_b(cfg.d_ff, cfg.d_model, false, vb.pp("wo"), products)?,
            act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = match (&self.wi, &self.wi_0, &self.wi_1) {
            (Some(wi), _, _) => self.act.forward(&wi.forward(xs)?)?,
            (None, Some(w0), Some(w1)) => {
                (self.act.forward(&w0.forward(xs)?)? * w1.forward(xs)?)?
            }
            _ => unreachable!("loaded as gated or not"),
        };
        self.wo.forward(&h)
    }
}

struct Block {
    self_attn: Attention,
    self_attn_norm: LayerNorm,
    cross_attn: Option<(Attention, LayerNorm)>,
    ff: FeedForward,
    ff_norm: LayerNorm,
}

impl Block {
    fn load(
        first: bool,
        decoder: bool,
        cfg: &Config,
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        let l0 = vb.pp("layer.0");
        let self_attn = Attention::load(first, !decoder, cfg, l0.pp("SelfAttention"), products)?;
        let self_attn_norm = LayerNorm::load(cfg.d_model, eps, l0.pp("layer_norm"))?;
        let (cross_attn, ff_index) = if decoder {
            let l1 = vb.pp("layer.1");
            let attn = Attention::load(false, true, cfg, l1.pp("EncDecAttention"), products)?;
            (
                Some((
                    attn,
                    LayerNorm::load(cfg.d_model, eps, l1.pp("layer_norm"))?,
                )),
                2,
            )
        } else {
            (None, 1)
        };
        let lf = vb.pp(format!("layer.{ff_index}"));
        Ok(Self {
            self_attn,
            self_attn_norm,
            cross_attn,
            ff: FeedForward::load(cfg, lf.pp("DenseReluDense"), products)?,
            ff_norm: LayerNorm::load(cfg.d_model, eps, lf.pp("layer_norm"))?,
        })
    }
}

struct Stack {
    blocks: Vec<Block>,
    final_layer_norm: LayerNorm,
    decoder: bool,
}

impl Stack {
    fn load(
        decoder: bool,
        layers: usize,
        cfg: &Config,
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        Ok(Self {
            blocks: (0..layers)
                .map(|i| Block::load(i == 0, decoder, cfg, vb.pp(format!("block.{i}")), products))
                .collect::<Result<_>>()?,
            final_layer_norm: LayerNorm::load(
                cfg.d_model,
                cfg.layer_norm_epsilon,
                vb.pp("final_layer_norm"),
            )?,
            decoder,
        })
    }

    fn forward(&mut self, embeds: &Tensor, encoder: Option<&Tensor>) -> Result<Tensor> {
        let use_cache = self.decoder;
        let mut h = embeds.clone();
        let mut self_bias: Option<Tensor> = None;
        for block in &mut self.blocks {
            let (a, bias) = block.self_attn.forward(
                &block.self_attn_norm.forward(&h)?,
                self_bias.as_ref(),
                None,
                use_cache,
                self.decoder,
            )?;
            self_bias = bias;
            h = (h + a)?;
            if let Some((attn, norm)) = &mut block.cross_attn {
                let (a, _) = attn.forward(&norm.forward(&h)?, None, encoder, use_cache, false)?;
                h = (h + a)?;
            }
            h = (&h + block.ff.forward(&block.ff_norm.forward(&h)?)?)?;
        }
        self.final_layer_norm.forward(&h)
    }

    fn clear_cache(&mut self) {
        for b in &mut self.blocks {
            b.self_attn.cache = None;
            if let Some((a, _)) = &mut b.cross_attn {
                a.cache = None;
            }
        }
    }
}

/// `T5ForConditionalGeneration`.
pub struct Model {
    shared: Embedding,
    encoder: Stack,
    decoder: Stack,
    lm_head: Dense,
    /// d_model^-0.5 when the head is tied to the embeddings, else 1.
    output_scale: f64,
}

impl Model {
    /// `products`: how every linear layer and the head multiply (under `--precision bf16`,
    /// in bf16, a tied head packed apart from the f32 embedding table).
    pub fn load(vb: VarBuilder, cfg: &Config, products: Products) -> Result<Self> {
        let shared = embedding(cfg.vocab_size, cfg.d_model, vb.pp("shared"))?;
        let encoder = Stack::load(false, cfg.num_layers, cfg, vb.pp("encoder"), products)?;
        let decoder = Stack::load(
            true,
            cfg.num_decoder_layers.unwrap_or(cfg.num_layers),
            cfg,
            vb.pp("decoder"),
            products,
        )?;
        let lm_head = if cfg.tie_word_embeddings {
            Dense::tied(shared.embeddings(), products)?
        } else {
            Dense::load_b(
                cfg.d_model,
                cfg.vocab_size,
                false,
                vb.pp("lm_head"),
                products,
            )?
        };
        let scale = cfg.scale_decoder_outputs.unwrap_or(cfg.tie_word_embeddings);
        Ok(Self {
            shared,
            encoder,
            decoder,
            lm_head,
            output_scale: if scale {
                (cfg.d_model as f64).powf(-0.5)
            } else {
                1.0
            },
        })
    }

    /// Encoder hidden states [batch, seq, d_model].
    pub fn encode(&mut self, input_ids: &Tensor) -> Result<Tensor> {
        let embeds = self.shared.forward(input_ids)?;
        self.encoder.forward(&embeds, None)
    }

    /// Runs new decoder tokens after the cached ones; logits [batch, new, vocab].
    pub fn decode(&mut self, decoder_ids: &Tensor, encoder_output: &Tensor) -> Result<Tensor> {
        let embeds = self.shared.forward(decoder_ids)?;
        let h = self.decoder.forward(&embeds, Some(encoder_output))?;
        self.lm_head.forward(&(h * self.output_scale)?)
    }

    pub fn clear_kv_cache(&mut self) {
        self.decoder.clear_cache();
    }
}

pub struct T5Generator {
    model: Model,
    encoder_output: Option<Tensor>,
    decoder_start: u32,
    max_context: usize,
    info: SessionInfo,
    eos: Vec<u32>,
    device: Device,
}

impl T5Generator {
    pub fn load(ctx: LoadContext<'_>) -> std::result::Result<Box<dyn TextGenerator>, EngineError> {
        let cfg: Config = parse_config(ctx.source, "T5")?;
        let (model, info) =
            ctx.build("T5", &["logits"], |vb| Model::load(vb, &cfg, ctx.products))?;
        Ok(Box::new(Self {
            model,
            encoder_output: None,
            decoder_start: cfg.decoder_start_token_id.unwrap_or(cfg.pad_token_id),
            max_context: cfg.n_positions,
            info,
            eos: ctx.source.eos_tokens(),
            device: ctx.device,
        }))
    }

    /// One decoder step for every sequence of the batch; next-token logits per sequence.
    fn decode(&mut self, tokens: &[u32]) -> std::result::Result<Vec<Vec<f32>>, EngineError> {
        let enc = self
            .encoder_output
            .clone()
            .ok_or_else(|| EngineError::InvalidInput("step() before prefill()".into()))?;
        let ids = Tensor::from_vec(tokens.to_vec(), (tokens.len(), 1), &self.device).map_err(rt)?;
        let logits = self.model.decode(&ids, &enc).map_err(rt)?;
        super::causal_lm::logits_rows(&logits, tokens.len())
    }
}

impl TextGenerator for T5Generator {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn prefill(&mut self, prompt: &[u32]) -> std::result::Result<Vec<f32>, EngineError> {
        Ok(self.prefill_batch(&[prompt.to_vec()])?.remove(0))
    }

    fn step(&mut self, token: u32) -> std::result::Result<Vec<f32>, EngineError> {
        Ok(self.step_batch(&[token])?.remove(0))
    }

    fn prefill_batch(
        &mut self,
        prompts: &[Vec<u32>],
    ) -> std::result::Result<Vec<Vec<f32>>, EngineError> {
        let len = ia_engine::generation::equal_length_batch(prompts)?;
        self.model.clear_kv_cache();
        let ids =
            Tensor::from_vec(prompts.concat(), (prompts.len(), len), &self.device).map_err(rt)?;
        self.encoder_output = Some(self.model.encode(&ids).map_err(rt)?);
        self.decode(&vec![self.decoder_start; prompts.len()])
    }

    fn step_batch(&mut self, tokens: &[u32]) -> std::result::Result<Vec<Vec<f32>>, EngineError> {
        self.decode(tokens)
    }

    fn max_context(&self) -> usize {
        // Relative positions put no hard limit on T5; n_positions (512) is what it was trained with.
        self.max_context
    }

    fn eos_tokens(&self) -> Vec<u32> {
        self.eos.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::relative_position_bucket;

    #[test]
    fn buckets_match_transformers() {
        // torch: T5Attention._relative_position_bucket(torch.arange(-40, 41), bidirectional, 32, 128)
        let uni: Vec<u32> = [-40, -20, -16, -15, -8, -1, 0, 5]
            .iter()
            .map(|&r| relative_position_bucket(r, false, 32, 128))
            .collect();
        assert_eq!(uni, vec![23, 17, 16, 15, 8, 1, 0, 0]);
        let bi: Vec<u32> = [-40, -8, -7, -1, 0, 1, 7, 8, 40]
            .iter()
            .map(|&r| relative_position_bucket(r, true, 32, 128))
            .collect();
        assert_eq!(bi, vec![12, 8, 7, 1, 0, 17, 23, 24, 28]);
    }
}
