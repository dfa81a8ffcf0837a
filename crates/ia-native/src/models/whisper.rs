//! Whisper (transformers' `WhisperForConditionalGeneration`), written against
//! `modeling_whisper.py`: two GELU convolutions and pre-LN encoder layers over log-mel
//! features, a pre-LN decoder with a self-attention KV cache and cached cross-attention keys,
//! logits from the tied token embeddings. Tensor names match the HF checkpoint.
//!
//! candle-transformers has a Whisper too, but its GELU is the tanh approximation (transformers
//! uses the exact erf form) and its decoder recomputes every position at each step.
//!
//! Decoding follows transformers' rules. Up to 30 s (short-form, no timestamps): the prompt
//! is the start token plus the forced tokens (language, task, `<|notimestamps|>`),
//! `suppress_tokens` are never chosen, `begin_suppress_tokens` not as the first token, and
//! decoding ends at end-of-text or the decoder's context. Longer audio is transcribed window
//! by window with timestamps ([`ia_engine::whisper_long_form`]), as the ASR pipeline does.
//! Greedy and beam search.

use super::attention::{Mlp, MultiHeadAttention};
use super::LoadContext;
use crate::{rt, CandleOutput};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{
    conv1d, embedding, layer_norm, Activation, Conv1d, Conv1dConfig, Embedding, LayerNorm,
    VarBuilder,
};
use ia_engine::generation::{argmax, log_sum_exp};
use ia_engine::whisper_long_form::{transcript_text, TimestampRules, WindowCut};
use ia_engine::{
    EngineError, Inputs, Outputs, Session, SessionInfo, SpeechRecognizer, TranscribeOptions,
    Transcription,
};
use ia_preprocess::audio::WhisperFrontEnd;
use serde::Deserialize;
use serde_json::Value;
use std::sync::atomic::Ordering;

/// HF `WhisperConfig`, deserialised from config.json as is.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub num_mel_bins: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_layers: usize,
    pub decoder_attention_heads: usize,
    pub decoder_ffn_dim: usize,
    pub max_source_positions: usize,
    pub max_target_positions: usize,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default)]
    pub activation_function: Activation,
    pub decoder_start_token_id: u32,
}

fn ln(dim: usize, vb: VarBuilder) -> Result<LayerNorm> {
    layer_norm(dim, 1e-5, vb)
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn: MultiHeadAttention,
    self_attn_layer_norm: LayerNorm,
    mlp: Mlp,
    final_layer_norm: LayerNorm,
}

impl EncoderLayer {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        Ok(Self {
            self_attn: MultiHeadAttention::load(
                d,
                cfg.encoder_attention_heads,
                false,
                vb.pp("self_attn"),
            )?,
            self_attn_layer_norm: ln(d, vb.pp("self_attn_layer_norm"))?,
            mlp: Mlp::load(d, cfg.encoder_ffn_dim, cfg.activation_function, &vb)?,
            final_layer_norm: ln(d, vb.pp("final_layer_norm"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = (x + self
            .self_attn
            .forward(&self.self_attn_layer_norm.forward(x)?, None)?)?;
        &h + self.mlp.forward(&self.final_layer_norm.forward(&h)?)?
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: MultiHeadAttention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: MultiHeadAttention,
    encoder_attn_layer_norm: LayerNorm,
    mlp: Mlp,
    final_layer_norm: LayerNorm,
    /// Keys/values of the tokens decoded so far, [batch, heads, past, head_dim].
    self_kv: Option<(Tensor, Tensor)>,
    /// Keys/values of the encoder output, computed once per input.
    cross_kv: Option<(Tensor, Tensor)>,
}

impl DecoderLayer {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (d, h) = (cfg.d_model, cfg.decoder_attention_heads);
        Ok(Self {
            self_attn: MultiHeadAttention::load(d, h, false, vb.pp("self_attn"))?,
            self_attn_layer_norm: ln(d, vb.pp("self_attn_layer_norm"))?,
            encoder_attn: MultiHeadAttention::load(d, h, false, vb.pp("encoder_attn"))?,
            encoder_attn_layer_norm: ln(d, vb.pp("encoder_attn_layer_norm"))?,
            mlp: Mlp::load(d, cfg.decoder_ffn_dim, cfg.activation_function, &vb)?,
            final_layer_norm: ln(d, vb.pp("final_layer_norm"))?,
            self_kv: None,
            cross_kv: None,
        })
    }

    fn forward(&mut self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.self_attn_layer_norm.forward(x)?;
        let (mut k, mut v) = self.self_attn.keys_values(&h)?;
        if let Some((pk, pv)) = &self.self_kv {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        let a = self.self_attn.attend(&h, &k, &v, mask)?;
        self.self_kv = Some((k, v));
        let x = (x + a)?;
        let (ck, cv) = self
            .cross_kv
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("decoder used before start()".into()))?;
        let h = self.encoder_attn_layer_norm.forward(&x)?;
        let x = (&x + self.encoder_attn.attend(&h, ck, cv, None)?)?;
        &x + self.mlp.forward(&self.final_layer_norm.forward(&x)?)?
    }
}

/// The Whisper network with its decoder caches.
#[derive(Debug, Clone)]
pub struct Model {
    conv1: Conv1d,
    conv2: Conv1d,
    act: Activation,
    encoder_positions: Tensor,
    encoder_layers: Vec<EncoderLayer>,
    encoder_layer_norm: LayerNorm,
    embed_tokens: Embedding,
    decoder_positions: Tensor,
    decoder_layers: Vec<DecoderLayer>,
    decoder_layer_norm: LayerNorm,
    lm_head: Tensor,
    embed_scale: f64,
    past_len: usize,
    pub config: Config,
}

impl Model {
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let e = vb.pp("model.encoder");
        let d = vb.pp("model.decoder");
        let dm = cfg.d_model;
        let conv = |stride| Conv1dConfig {
            padding: 1,
            stride,
            ..Default::default()
        };
        let embed_tokens = embedding(cfg.vocab_size, dm, d.pp("embed_tokens"))?;
        // transformers ties proj_out to the token embeddings; a separate head is used if stored.
        let lm_head = if vb.contains_tensor("proj_out.weight") {
            vb.get((cfg.vocab_size, dm), "proj_out.weight")?
        } else {
            embed_tokens.embeddings().clone()
        };
        Ok(Self {
            conv1: conv1d(cfg.num_mel_bins, dm, 3, conv(1), e.pp("conv1"))?,
            conv2: conv1d(dm, dm, 3, conv(2), e.pp("conv2"))?,
            act: cfg.activation_function,
            encoder_positions: e.get((cfg.max_source_positions, dm), "embed_positions.weight")?,
            encoder_layers: (0..cfg.encoder_layers)
                .map(|i| EncoderLayer::load(cfg, e.pp(format!("layers.{i}"))))
                .collect::<Result<_>>()?,
            encoder_layer_norm: ln(dm, e.pp("layer_norm"))?,
            embed_tokens,
            decoder_positions: d.get((cfg.max_target_positions, dm), "embed_positions.weight")?,
            decoder_layers: (0..cfg.decoder_layers)
                .map(|i| DecoderLayer::load(cfg, d.pp(format!("layers.{i}"))))
                .collect::<Result<_>>()?,
            decoder_layer_norm: ln(dm, d.pp("layer_norm"))?,
            lm_head,
            embed_scale: if cfg.scale_embedding {
                (dm as f64).sqrt()
            } else {
                1.0
            },
            past_len: 0,
            config: cfg.clone(),
        })
    }

    /// Encoder output [batch, frames / 2, d_model] for log-mel features [batch, mels, frames].
    pub fn encode(&self, features: &Tensor) -> Result<Tensor> {
        let x = self.act.forward(&self.conv1.forward(features)?)?;
        let x = self
            .act
            .forward(&self.conv2.forward(&x)?)?
            .transpose(1, 2)?;
        let t = x.dim(1)?;
        let mut x = x.broadcast_add(&self.encoder_positions.narrow(0, 0, t)?)?;
        for layer in &self.encoder_layers {
            x = layer.forward(&x)?;
        }
        self.encoder_layer_norm.forward(&x)
    }

    /// Starts decoding against `encoder_out` (one row per sequence to decode).
    pub fn start(&mut self, encoder_out: &Tensor) -> Result<()> {
        for layer in &mut self.decoder_layers {
            layer.self_kv = None;
            layer.cross_kv = Some(layer.encoder_attn.keys_values(encoder_out)?);
        }
        self.past_len = 0;
        Ok(())
    }

    /// Logits [batch, t, vocab] for the next `t` tokens of every sequence.
    pub fn decode(&mut self, tokens: &Tensor) -> Result<Tensor> {
        let t = tokens.dim(1)?;
        if self.past_len + t > self.config.max_target_positions {
            candle_core::bail!(
                "decoder context of {} tokens exceeded",
                self.config.max_target_positions
            );
        }
        let pos = self.decoder_positions.narrow(0, self.past_len, t)?;
        let mut x = (self.embed_tokens.forward(tokens)? * self.embed_scale)?.broadcast_add(&pos)?;
        let mask = (t > 1)
            .then(|| causal_mask(t, self.past_len, x.device(), x.dtype()))
            .transpose()?;
        for layer in &mut self.decoder_layers {
            x = layer.forward(&x, mask.as_ref())?;
        }
        self.past_len += t;
        self.decoder_layer_norm
            .forward(&x)?
            .broadcast_matmul(&self.lm_head.t()?)
    }

    /// Keeps, for each new row, the caches of row `rows[i]` (beam search).
    pub fn reorder(&mut self, rows: &[u32]) -> Result<()> {
        let idx = Tensor::new(rows, self.lm_head.device())?;
        for layer in &mut self.decoder_layers {
            if let Some((k, v)) = &layer.self_kv {
                layer.self_kv = Some((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?));
            }
        }
        Ok(())
    }
}

fn causal_mask(t: usize, past: usize, device: &Device, dtype: DType) -> Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..past + t).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Tensor::from_vec(m, (t, past + t), device)?.to_dtype(dtype)
}

/// What transformers' generation config makes of a Whisper checkpoint.
#[derive(Debug, Clone)]
pub struct DecodingRules {
    pub prompt: Vec<u32>,
    pub eos: u32,
    pub suppress: Vec<u32>,
    pub begin_suppress: Vec<u32>,
    /// Set when decoding with timestamps (long-form).
    pub timestamps: Option<TimestampRules>,
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

impl DecodingRules {
    /// From generation_config.json (`generation`, may be null) and config.json.
    pub fn new(
        config: &Value,
        generation: &Value,
        cfg: &Config,
        tokenizer: Option<&tokenizers::Tokenizer>,
        language: Option<&str>,
    ) -> std::result::Result<Self, EngineError> {
        let gen = generation;
        let field = |k: &str| gen.get(k).or_else(|| config.get(k));
        let eos = match field("eos_token_id") {
            Some(Value::Array(a)) => a.first().and_then(Value::as_u64),
            Some(v) => v.as_u64(),
            None => None,
        }
        .ok_or_else(|| EngineError::InvalidModel("Whisper config has no eos_token_id".into()))?
            as u32;
        let start = field("decoder_start_token_id")
            .and_then(Value::as_u64)
            .map_or(cfg.decoder_start_token_id, |x| x as u32);
        let token = |name: &str| tokenizer.and_then(|t| t.token_to_id(name));
        let mut prompt = vec![start];
        if field("is_multilingual")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            let lang = format!("<|{}|>", language.unwrap_or("en"));
            let lang_id = gen
                .get("lang_to_id")
                .and_then(|m| m.get(&lang))
                .and_then(Value::as_u64)
                .map(|x| x as u32)
                .or_else(|| token(&lang))
                .ok_or_else(|| {
                    EngineError::InvalidInput(format!("this Whisper has no language token {lang}"))
                })?;
            let task = gen
                .get("task_to_id")
                .and_then(|m| m.get("transcribe"))
                .and_then(Value::as_u64)
                .map(|x| x as u32)
                .or_else(|| token("<|transcribe|>"))
                .ok_or_else(|| EngineError::InvalidModel("no <|transcribe|> token".into()))?;
            prompt.extend([lang_id, task]);
            if let Some(nt) = field("no_timestamps_token_id").and_then(Value::as_u64) {
                prompt.push(nt as u32);
            }
        } else if let Some(forced) = field("forced_decoder_ids").and_then(Value::as_array) {
            let mut forced: Vec<(u64, u32)> = forced
                .iter()
                .filter_map(|p| Some((p.get(0)?.as_u64()?, p.get(1)?.as_u64()? as u32)))
                .collect();
            forced.sort_unstable();
            prompt.extend(forced.into_iter().map(|(_, id)| id));
        } else if let Some(nt) = field("no_timestamps_token_id").and_then(Value::as_u64) {
            prompt.push(nt as u32);
        }
        Ok(Self {
            prompt,
            eos,
            suppress: ids(field("suppress_tokens")),
            begin_suppress: ids(field("begin_suppress_tokens")),
            timestamps: None,
        })
    }

    /// The same rules decoding with timestamps: transformers drops `<|notimestamps|>` from the
    /// prompt and adds the timestamp rules.
    pub fn with_timestamps(&self, timestamps: TimestampRules) -> Self {
        let mut rules = self.clone();
        rules.prompt.retain(|&t| t != timestamps.no_timestamps);
        rules.timestamps = Some(timestamps);
        rules
    }

    /// Masks the next token's scores given the tokens generated so far.
    fn apply(&self, logits: &mut [f32], generated: &[u32]) {
        let n = logits.len();
        for &t in self.suppress.iter().chain(if generated.is_empty() {
            &self.begin_suppress[..]
        } else {
            &[]
        }) {
            if (t as usize) < n {
                logits[t as usize] = f32::NEG_INFINITY;
            }
        }
        if let Some(ts) = &self.timestamps {
            ts.apply(logits, generated);
        }
    }
}

pub struct WhisperSession {
    model: Model,
    front_end: WhisperFrontEnd,
    tokenizer: Option<tokenizers::Tokenizer>,
    rules: DecodingRules,
    /// The timestamp rules of long-form decoding, where the checkpoint has timestamp tokens.
    timestamps: Option<TimestampRules>,
    /// config.json and generation_config.json, for re-deriving the prompt per language.
    configs: (Value, Value),
    language: Option<String>,
    device: Device,
    dtype: DType,
    info: SessionInfo,
}

impl WhisperSession {
    pub fn load(ctx: LoadContext<'_>) -> std::result::Result<Self, EngineError> {
        let cfg: Config = super::parse_config(ctx.source, "Whisper")?;
        let (vb, params) = crate::load_var_builder(ctx.source, ctx.dtype, &ctx.device)?;
        let model = Model::load(vb, &cfg).map_err(|e| {
            EngineError::InvalidModel(format!(
                "cannot build Whisper: {}",
                crate::candle_message(&e)
            ))
        })?;
        let front_end = match super::preprocessor_config(ctx.source) {
            Some(p) => WhisperFrontEnd::from_config(&p)
                .map_err(|e| EngineError::InvalidModel(e.to_string()))?,
            None => WhisperFrontEnd {
                feature_size: cfg.num_mel_bins,
                n_samples: cfg.max_source_positions * 2 * 160,
                ..Default::default()
            },
        };
        if front_end.frames() != cfg.max_source_positions * 2
            || front_end.feature_size != cfg.num_mel_bins
        {
            return Err(EngineError::InvalidModel(format!(
                "preprocessor gives {} mel bins x {} frames; the encoder takes {} x {}",
                front_end.feature_size,
                front_end.frames(),
                cfg.num_mel_bins,
                cfg.max_source_positions * 2
            )));
        }
        let tokenizer = super::load_tokenizer(ctx.source)?;
        let generation = ctx.source.generation_config();
        let config = ctx.source.config().clone();
        let rules = DecodingRules::new(&config, &generation, &cfg, tokenizer.as_ref(), None)?;
        let timestamps = TimestampRules::from_configs(&config, &generation, rules.eos);
        let mut info = ctx.info;
        info.parameter_count = params.load(Ordering::Relaxed);
        info.output_names = vec!["sequences".into()];
        Ok(Self {
            model,
            front_end,
            tokenizer,
            rules,
            timestamps,
            configs: (config, generation),
            language: None,
            device: ctx.device,
            dtype: ctx.dtype,
            info,
        })
    }

    /// Log-mel features of each waveform (at the extractor's rate), batched.
    fn features(&self, rows: &[&[f32]]) -> Result<Tensor> {
        let mels: Vec<f32> = rows
            .iter()
            .flat_map(|w| self.front_end.log_mel(w))
            .collect();
        self.window_tensor(mels, rows.len())
    }

    fn window_tensor(&self, mels: Vec<f32>, batch: usize) -> Result<Tensor> {
        Tensor::from_vec(
            mels,
            (batch, self.front_end.feature_size, self.front_end.frames()),
            &self.device,
        )?
        .to_dtype(self.dtype)
    }

    fn max_new(&self, rules: &DecodingRules, requested: Option<usize>) -> usize {
        let room = self.model.config.max_target_positions - rules.prompt.len();
        requested.map_or(room, |r| r.min(room))
    }

    /// One window's tokens (without end-of-text) under `rules`, greedy or with beams.
    fn decode_window(
        &mut self,
        features: &Tensor,
        rules: &DecodingRules,
        options: &TranscribeOptions,
    ) -> Result<Vec<u32>> {
        let enc = self.model.encode(features)?;
        let max_new = self.max_new(rules, options.max_new_tokens);
        if options.num_beams > 1 {
            beam_search(&mut self.model, rules, &enc, options.num_beams, max_new)
        } else {
            Ok(greedy(&mut self.model, rules, &enc, max_new)?.remove(0))
        }
    }

    /// Sequential long-form transcription (transformers' `generate` past 3000 frames): windows
    /// of at most 30 s decoded with timestamps, each starting where the last finished segment
    /// of the one before ended.
    fn transcribe_long(
        &mut self,
        waveform: &[f32],
        options: &TranscribeOptions,
    ) -> std::result::Result<Transcription, EngineError> {
        let timestamps = self.timestamps.clone().ok_or_else(|| {
            EngineError::InvalidInput(format!(
                "{:.1} s of audio is longer than Whisper's {:.0}-s window, and transcribing it \
                 window by window needs timestamp tokens: this checkpoint's generation config \
                 has no no_timestamps_token_id",
                waveform.len() as f64 / f64::from(self.front_end.sampling_rate),
                self.front_end.n_samples as f64 / f64::from(self.front_end.sampling_rate)
            ))
        })?;
        let rules = self.rules.with_timestamps(timestamps.clone());
        let (mel, frames) = self.front_end.log_mel_whole(waveform);
        let window = self.front_end.frames();
        let frames_per_timestamp = window / self.model.config.max_source_positions;
        let mels = self.front_end.feature_size;
        let mut tokens = Vec::new();
        let mut seek = 0;
        while seek < frames {
            let held = (frames - seek).min(window);
            // The window's frames, zero-padded to the encoder's width (as transformers pads).
            let mut segment = vec![0f32; mels * window];
            for m in 0..mels {
                segment[m * window..m * window + held]
                    .copy_from_slice(&mel[m * frames + seek..m * frames + seek + held]);
            }
            let features = self.window_tensor(segment, 1).map_err(rt)?;
            let generated = self.decode_window(&features, &rules, options).map_err(rt)?;
            let cut = WindowCut::of(&generated, &timestamps, held, frames_per_timestamp);
            tokens.extend_from_slice(&generated[..cut.keep]);
            seek += cut.advance;
        }
        let seconds_per_timestamp = self.front_end.n_samples as f64
            / f64::from(self.front_end.sampling_rate)
            / self.model.config.max_source_positions as f64;
        let text = transcript_text(&tokens, &timestamps, seconds_per_timestamp, |t| {
            self.decode_text(t)
        })?;
        Ok(Transcription { tokens, text })
    }

    fn decode_text(&self, tokens: &[u32]) -> std::result::Result<String, EngineError> {
        match &self.tokenizer {
            Some(t) => t
                .decode(tokens, true)
                .map_err(|e| EngineError::Runtime(format!("cannot decode tokens: {e}"))),
            None => Ok(String::new()),
        }
    }
}

fn last_logits(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = logits.dim(1)?;
    logits
        .i((.., t - 1))?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()
}

/// Greedy decoding of a batch; rows that reach end-of-text wait for the others.
fn greedy(
    model: &mut Model,
    rules: &DecodingRules,
    encoder_out: &Tensor,
    max_new: usize,
) -> Result<Vec<Vec<u32>>> {
    let batch = encoder_out.dim(0)?;
    let device = encoder_out.device();
    model.start(encoder_out)?;
    let prompt = Tensor::new(rules.prompt.as_slice(), device)?
        .unsqueeze(0)?
        .repeat((batch, 1))?;
    let mut rows = last_logits(&model.decode(&prompt)?)?;
    let mut out = vec![Vec::new(); batch];
    let mut done = vec![false; batch];
    for step in 0..max_new {
        let mut next = Vec::with_capacity(batch);
        for (b, logits) in rows.iter_mut().enumerate() {
            rules.apply(logits, &out[b]);
            let tok = argmax(logits);
            if done[b] || tok == rules.eos {
                done[b] = true;
                next.push(rules.eos);
            } else {
                out[b].push(tok);
                next.push(tok);
            }
        }
        if done.iter().all(|&d| d) || step + 1 == max_new {
            break;
        }
        let t = Tensor::new(next.as_slice(), device)?.unsqueeze(1)?;
        rows = last_logits(&model.decode(&t)?)?;
    }
    Ok(out)
}

/// Beam search as transformers runs it (length_penalty 1, early_stopping false): each step
/// keeps the `beams` best running continuations; an end-of-text among the top `beams`
/// candidates finishes a hypothesis scored by sum of log-probs / generated length.
fn beam_search(
    model: &mut Model,
    rules: &DecodingRules,
    encoder_out: &Tensor,
    beams: usize,
    max_new: usize,
) -> Result<Vec<u32>> {
    let device = encoder_out.device();
    let enc = encoder_out.i(0..1)?.repeat((beams, 1, 1))?;
    model.start(&enc)?;
    let prompt = Tensor::new(rules.prompt.as_slice(), device)?
        .unsqueeze(0)?
        .repeat((beams, 1))?;
    let mut rows = last_logits(&model.decode(&prompt)?)?;
    let mut running: Vec<(Vec<u32>, f32)> = (0..beams)
        .map(|i| (Vec::new(), if i == 0 { 0.0 } else { -1e9 }))
        .collect();
    let mut finished: Vec<(Vec<u32>, f32)> = Vec::new();
    for step in 0..max_new {
        let mut candidates: Vec<(f32, usize, u32)> = Vec::new();
        for (b, logits) in rows.iter().enumerate() {
            let lse = log_sum_exp(logits);
            let mut lp: Vec<f32> = logits.iter().map(|&x| x - lse).collect();
            rules.apply(&mut lp, &running[b].0);
            candidates.extend(
                lp.iter()
                    .enumerate()
                    .map(|(t, &l)| (running[b].1 + l, b, t as u32)),
            );
        }
        // The 2 * beams best, highest first; ties keep the lower flat index as torch.topk does.
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        candidates.truncate(2 * beams);
        let generated = (step + 1) as f32;
        let mut next = Vec::with_capacity(beams);
        for (rank, &(score, b, tok)) in candidates.iter().enumerate() {
            if tok == rules.eos {
                if rank < beams {
                    finished.push((running[b].0.clone(), score / generated));
                }
            } else if next.len() < beams {
                next.push((b, tok, score));
            }
        }
        finished.sort_by(|a, b| b.1.total_cmp(&a.1));
        finished.truncate(beams);
        running = next
            .iter()
            .map(|&(b, tok, score)| {
                let mut seq = running[b].0.clone();
                seq.push(tok);
                (seq, score)
            })
            .collect();
        let best_running = running[0].1 / generated;
        let worst_finished = finished.last().map_or(f32::NEG_INFINITY, |f| f.1);
        if (finished.len() == beams && best_running <= worst_finished) || step + 1 == max_new {
            break;
        }
        let src: Vec<u32> = next.iter().map(|&(b, _, _)| b as u32).collect();
        model.reorder(&src)?;
        let toks: Vec<u32> = next.iter().map(|&(_, t, _)| t).collect();
        let t = Tensor::new(toks.as_slice(), device)?.unsqueeze(1)?;
        rows = last_logits(&model.decode(&t)?)?;
    }
    // Hypotheses still running at the length limit compete with the finished ones.
    for (seq, score) in running {
        let len = seq.len().max(1) as f32;
        finished.push((seq, score / len));
    }
    finished.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(finished.into_iter().next().map(|f| f.0).unwrap_or_default())
}

impl SpeechRecognizer for WhisperSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn sample_rate(&self) -> u32 {
        self.front_end.sampling_rate
    }

    fn transcribe(
        &mut self,
        waveform: &[f32],
        options: &TranscribeOptions,
    ) -> std::result::Result<Transcription, EngineError> {
        options.check()?;
        if options.language != self.language {
            self.rules = DecodingRules::new(
                &self.configs.0,
                &self.configs.1,
                &self.model.config,
                self.tokenizer.as_ref(),
                options.language.as_deref(),
            )?;
            self.language = options.language.clone();
        }
        // transformers' pipeline pads up to 30 s and decodes once; past that, long-form.
        if waveform.len() > self.front_end.n_samples {
            return self.transcribe_long(waveform, options);
        }
        let features = self.features(&[waveform]).map_err(rt)?;
        let rules = self.rules.clone();
        let tokens = self.decode_window(&features, &rules, options).map_err(rt)?;
        let text = self.decode_text(&tokens)?;
        Ok(Transcription { tokens, text })
    }
}

impl Session for WhisperSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Transcribes each waveform greedily (the benchmark's unit of work); `sequences` holds the
    /// chosen tokens, padded with end-of-text. Waveforms up to 30 s are decoded as one batch;
    /// longer ones window by window, one after another, as `transcribe` does.
    fn run(&mut self, inputs: &Inputs) -> std::result::Result<Outputs, EngineError> {
        let Inputs::Audio {
            batch, sample_rate, ..
        } = inputs
        else {
            return Err(EngineError::InvalidInput(
                "Whisper takes audio inputs".into(),
            ));
        };
        if *sample_rate != self.front_end.sampling_rate {
            return Err(EngineError::InvalidInput(format!(
                "Whisper needs {} Hz audio, got {sample_rate} Hz",
                self.front_end.sampling_rate
            )));
        }
        let rows = inputs.audio_rows()?;
        let seqs = if rows.iter().all(|r| r.len() <= self.front_end.n_samples) {
            let features = self.features(&rows).map_err(rt)?;
            let enc = self.model.encode(&features).map_err(rt)?;
            let max_new = self.max_new(&self.rules, None);
            greedy(&mut self.model, &self.rules, &enc, max_new).map_err(rt)?
        } else {
            let opts = TranscribeOptions::default();
            rows.iter()
                .map(|r| self.transcribe(r, &opts).map(|t| t.tokens))
                .collect::<std::result::Result<_, _>>()?
        };
        let width = seqs.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let flat: Vec<f32> = seqs
            .iter()
            .flat_map(|s| {
                s.iter()
                    .map(|&t| t as f32)
                    .chain(std::iter::repeat_n(self.rules.eos as f32, width - s.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let t = Tensor::from_vec(flat, (*batch, width), &Device::Cpu).map_err(rt)?;
        Ok(Outputs {
            tensors: vec![("sequences".into(), Box::new(CandleOutput(t)))],
        })
    }
}

/// Encoder output and teacher-forced logits (parity tests compare both with transformers).
pub fn teacher_forced_logits(
    model: &mut Model,
    features: &Tensor,
    tokens: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let enc = model.encode(features)?;
    model.start(&enc)?;
    let logits = model.decode(tokens)?;
    Ok((enc, logits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> Config {
        serde_json::from_value(json!({
            "vocab_size": 51865, "num_mel_bins": 80, "d_model": 384, "encoder_layers": 4,
            "encoder_attention_heads": 6, "encoder_ffn_dim": 1536, "decoder_layers": 4,
            "decoder_attention_heads": 6, "decoder_ffn_dim": 1536, "max_source_positions": 1500,
            "max_target_positions": 448, "decoder_start_token_id": 50258, "eos_token_id": 50257
        }))
        .unwrap()
    }

    /// transformers builds a multilingual prompt as start, language, task, no-timestamps.
    #[test]
    fn multilingual_prompt_carries_language_and_task() {
        let generation = json!({
            "is_multilingual": true, "no_timestamps_token_id": 50363,
            "lang_to_id": {"<|en|>": 50259, "<|de|>": 50261},
            "task_to_id": {"transcribe": 50359, "translate": 50358},
            "suppress_tokens": [1, 2], "begin_suppress_tokens": [220, 50257]
        });
        let config = json!({"eos_token_id": 50257});
        let r = DecodingRules::new(&config, &generation, &cfg(), None, None).unwrap();
        assert_eq!(r.prompt, vec![50258, 50259, 50359, 50363]);
        assert_eq!(
            (r.eos, r.suppress.len(), r.begin_suppress.len()),
            (50257, 2, 2)
        );
        let de = DecodingRules::new(&config, &generation, &cfg(), None, Some("de")).unwrap();
        assert_eq!(de.prompt[1], 50261);
        let e = DecodingRules::new(&config, &generation, &cfg(), None, Some("xx")).unwrap_err();
        assert!(e.to_string().contains("<|xx|>"), "{e}");
    }

    #[test]
    fn english_only_prompt_comes_from_forced_decoder_ids() {
        let generation = json!({"forced_decoder_ids": [[1, 50362]], "eos_token_id": 50256});
        let r = DecodingRules::new(&json!({}), &generation, &cfg(), None, None).unwrap();
        assert_eq!(r.prompt, vec![50258, 50362]);
        assert_eq!(r.eos, 50256);
    }
}
