//! Whisper's decoding as transformers runs it, over any engine that can encode a window of
//! log-mel features and decode tokens ([`WhisperModel`]): the decoding rules of the generation
//! config ([`DecodingRules`]), greedy and beam search ([`crate::seq2seq`]), and [`WhisperDecoding`],
//! which turns a waveform into a transcription.
//!
//! Up to 30 s (short-form, no timestamps): the prompt is the start token plus the forced tokens
//! (language, task, `<|notimestamps|>`), `suppress_tokens` are never chosen,
//! `begin_suppress_tokens` not as the first token, and decoding ends at end-of-text or the
//! decoder's context.
//!
//! Past 30 s, sequential long-form transcription (`WhisperForConditionalGeneration.generate`
//! past 3000 mel frames, then the ASR pipeline's `_decode_asr`): features of the whole
//! recording; from frame `seek`, a window of at most 3000 frames (zero-padded), decoded with
//! [`TimestampRules`]; [`WindowCut`] keeps the finished segments and moves `seek`; at the end
//! [`transcript_text`] decodes the text between timestamps. No temperature fallback, no
//! conditioning on previous windows: transformers' defaults for checkpoints whose generation
//! config sets no thresholds.

use crate::generation::log_sum_exp;
use crate::seq2seq::{beam_search, greedy, Seq2SeqDecoder, TokenRules};
use crate::{
    EngineError, HostTensor, Inputs, Outputs, Session, SessionInfo, SpeechRecognizer,
    TranscribeOptions, Transcription,
};
use ia_models::ModelSource;
use ia_preprocess::audio::WhisperFrontEnd;
use serde_json::Value;

/// What an engine provides to run Whisper: the encoder over windows of log-mel features and
/// the decoder over tokens.
pub trait WhisperModel: Seq2SeqDecoder {
    /// Encodes `windows` windows of features (`[windows, mel bins, frames]`, row-major) and
    /// starts decoding `copies` rows per window (beam search decodes one window in `beams`
    /// rows).
    fn start(&mut self, features: &[f32], windows: usize, copies: usize)
        -> Result<(), EngineError>;
    /// The decoder's context (`max_target_positions`).
    fn max_target_positions(&self) -> usize;
    /// The encoder's positions (`max_source_positions`; a window has twice as many frames).
    fn max_source_positions(&self) -> usize;
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
    /// From generation_config.json (`generation`, may be null) and config.json;
    /// `decoder_start` is config.json's `decoder_start_token_id` unless the generation config
    /// overrides it.
    pub fn new(
        config: &Value,
        generation: &Value,
        decoder_start: u32,
        tokenizer: Option<&tokenizers::Tokenizer>,
        language: Option<&str>,
    ) -> Result<Self, EngineError> {
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
            .map_or(decoder_start, |x| x as u32);
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
}

impl TokenRules for DecodingRules {
    fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    fn eos(&self) -> u32 {
        self.eos
    }

    fn apply(&self, scores: &mut [f32], generated: &[u32]) {
        let n = scores.len();
        let begin: &[u32] = if generated.is_empty() {
            &self.begin_suppress
        } else {
            &[]
        };
        for &t in self.suppress.iter().chain(begin) {
            if (t as usize) < n {
                scores[t as usize] = f32::NEG_INFINITY;
            }
        }
        if let Some(ts) = &self.timestamps {
            ts.apply(scores, generated);
        }
    }
}

/// A Whisper checkpoint on any engine: its decoding ([`WhisperDecoding`]) over the engine's
/// [`WhisperModel`]; a [`SpeechRecognizer`] for `transcribe` and a [`Session`] for benchmarks.
pub struct WhisperSession<M> {
    model: M,
    decoding: WhisperDecoding,
    info: SessionInfo,
}

impl<M: WhisperModel + Send> WhisperSession<M> {
    /// `model` is `source` loaded by an engine; `info` is what that engine records.
    pub fn new(model: M, source: &ModelSource, info: SessionInfo) -> Result<Self, EngineError> {
        Ok(Self {
            decoding: WhisperDecoding::for_source(source)?,
            model,
            info,
        })
    }
}

impl<M: WhisperModel + Send> SpeechRecognizer for WhisperSession<M> {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn sample_rate(&self) -> u32 {
        self.decoding.front_end().sampling_rate
    }

    fn transcribe(
        &mut self,
        waveform: &[f32],
        options: &TranscribeOptions,
    ) -> Result<Transcription, EngineError> {
        self.decoding.transcribe(&mut self.model, waveform, options)
    }
}

impl<M: WhisperModel + Send> Session for WhisperSession<M> {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Transcribes each waveform greedily (the benchmark's unit of work); `sequences` holds the
    /// chosen tokens, padded with end-of-text. Waveforms up to 30 s are decoded as one batch;
    /// longer ones window by window, one after another, as `transcribe` does.
    fn run(&mut self, inputs: &Inputs) -> Result<Outputs, EngineError> {
        let Inputs::Audio {
            batch, sample_rate, ..
        } = inputs
        else {
            return Err(EngineError::InvalidInput(
                "Whisper takes audio inputs".into(),
            ));
        };
        let rate = self.decoding.front_end().sampling_rate;
        if *sample_rate != rate {
            return Err(EngineError::InvalidInput(format!(
                "Whisper needs {rate} Hz audio, got {sample_rate} Hz"
            )));
        }
        let rows = inputs.audio_rows()?;
        let seqs = self.decoding.transcribe_batch(&mut self.model, &rows)?;
        let eos = self.decoding.eos() as f32;
        let width = seqs.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let data: Vec<f32> = seqs
            .iter()
            .flat_map(|s| {
                s.iter()
                    .map(|&t| t as f32)
                    .chain(std::iter::repeat_n(eos, width - s.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(Outputs {
            tensors: vec![(
                "sequences".into(),
                Box::new(HostTensor {
                    shape: vec![*batch, width],
                    data,
                }),
            )],
        })
    }
}

/// A waveform in, a transcription out: the front end, the tokenizer and the decoding rules of
/// one checkpoint, driving whichever engine runs its [`WhisperModel`].
pub struct WhisperDecoding {
    front_end: WhisperFrontEnd,
    tokenizer: Option<tokenizers::Tokenizer>,
    rules: DecodingRules,
    /// The timestamp rules of long-form decoding, where the checkpoint has timestamp tokens.
    timestamps: Option<TimestampRules>,
    /// config.json and generation_config.json, for re-deriving the prompt per language.
    configs: (Value, Value),
    decoder_start: u32,
    language: Option<String>,
}

impl WhisperDecoding {
    pub fn new(
        config: Value,
        generation: Value,
        decoder_start: u32,
        front_end: WhisperFrontEnd,
        tokenizer: Option<tokenizers::Tokenizer>,
    ) -> Result<Self, EngineError> {
        let rules = DecodingRules::new(
            &config,
            &generation,
            decoder_start,
            tokenizer.as_ref(),
            None,
        )?;
        let timestamps = TimestampRules::from_configs(&config, &generation, rules.eos);
        Ok(Self {
            front_end,
            tokenizer,
            rules,
            timestamps,
            configs: (config, generation),
            decoder_start,
            language: None,
        })
    }

    /// The decoding of a checkpoint: its configs, its front end (checked against the encoder's
    /// input size), its tokenizer.
    pub fn for_source(source: &ModelSource) -> Result<Self, EngineError> {
        let config = source.config();
        let number = |key: &str| {
            config
                .get(key)
                .and_then(Value::as_u64)
                .map(|n| n as usize)
                .ok_or_else(|| EngineError::InvalidModel(format!("config.json has no {key}")))
        };
        let (mel_bins, source_positions) =
            (number("num_mel_bins")?, number("max_source_positions")?);
        let front_end = match source.preprocessor_config() {
            Some(p) => WhisperFrontEnd::from_config(p)
                .map_err(|e| EngineError::InvalidModel(e.to_string()))?,
            None => WhisperFrontEnd {
                feature_size: mel_bins,
                n_samples: source_positions * 2 * 160,
                ..Default::default()
            },
        };
        if front_end.frames() != source_positions * 2 || front_end.feature_size != mel_bins {
            return Err(EngineError::InvalidModel(format!(
                "preprocessor gives {} mel bins x {} frames; the encoder takes {} x {}",
                front_end.feature_size,
                front_end.frames(),
                mel_bins,
                source_positions * 2
            )));
        }
        let decoder_start = u32::try_from(number("decoder_start_token_id")?).map_err(|_| {
            EngineError::InvalidModel("config.json decoder_start_token_id is out of range".into())
        })?;
        Self::new(
            config.clone(),
            source.generation_config().clone(),
            decoder_start,
            front_end,
            crate::tokenizer::of(source)?,
        )
    }

    pub fn front_end(&self) -> &WhisperFrontEnd {
        &self.front_end
    }

    pub fn eos(&self) -> u32 {
        self.rules.eos
    }

    fn max_new(model: &dyn WhisperModel, rules: &DecodingRules, requested: Option<usize>) -> usize {
        let room = model
            .max_target_positions()
            .saturating_sub(rules.prompt.len());
        requested.map_or(room, |r| r.min(room))
    }

    /// Transcribes one waveform (at the front end's rate): one window up to 30 s, window by
    /// window with timestamps past that, as transformers' pipeline does.
    pub fn transcribe(
        &mut self,
        model: &mut dyn WhisperModel,
        waveform: &[f32],
        options: &TranscribeOptions,
    ) -> Result<Transcription, EngineError> {
        options.check()?;
        if options.language != self.language {
            self.rules = DecodingRules::new(
                &self.configs.0,
                &self.configs.1,
                self.decoder_start,
                self.tokenizer.as_ref(),
                options.language.as_deref(),
            )?;
            self.language = options.language.clone();
        }
        if waveform.len() > self.front_end.n_samples {
            return self.transcribe_long(model, waveform, options);
        }
        let features = self.front_end.log_mel(waveform);
        let tokens = Self::decode_window(model, &features, &self.rules, options)?;
        let text = self.decode_text(&tokens)?;
        Ok(Transcription { tokens, text })
    }

    /// Greedy transcription of several waveforms up to 30 s each as one batch (the benchmark's
    /// unit of work); longer ones go one by one through [`Self::transcribe`].
    pub fn transcribe_batch(
        &mut self,
        model: &mut dyn WhisperModel,
        waveforms: &[&[f32]],
    ) -> Result<Vec<Vec<u32>>, EngineError> {
        let greedy_options = TranscribeOptions::default();
        if waveforms.iter().any(|w| w.len() > self.front_end.n_samples) {
            return waveforms
                .iter()
                .map(|w| Ok(self.transcribe(model, w, &greedy_options)?.tokens))
                .collect();
        }
        let features: Vec<f32> = waveforms
            .iter()
            .flat_map(|w| self.front_end.log_mel(w))
            .collect();
        model.start(&features, waveforms.len(), 1)?;
        let max_new = Self::max_new(model, &self.rules, None);
        greedy(model, &self.rules, waveforms.len(), max_new)
    }

    /// One window's tokens (without end-of-text) under `rules`, greedy or with beams.
    fn decode_window(
        model: &mut dyn WhisperModel,
        features: &[f32],
        rules: &DecodingRules,
        options: &TranscribeOptions,
    ) -> Result<Vec<u32>, EngineError> {
        let max_new = Self::max_new(model, rules, options.max_new_tokens);
        let beams = options.num_beams.max(1);
        model.start(features, 1, beams)?;
        if beams > 1 {
            beam_search(model, rules, beams, max_new)
        } else {
            Ok(greedy(model, rules, 1, max_new)?.remove(0))
        }
    }

    /// Sequential long-form transcription: windows of at most 30 s decoded with timestamps,
    /// each starting where the last finished segment of the one before ended.
    fn transcribe_long(
        &mut self,
        model: &mut dyn WhisperModel,
        waveform: &[f32],
        options: &TranscribeOptions,
    ) -> Result<Transcription, EngineError> {
        let rate = f64::from(self.front_end.sampling_rate);
        let timestamps = self.timestamps.clone().ok_or_else(|| {
            EngineError::InvalidInput(format!(
                "{:.1} s of audio is longer than Whisper's {:.0}-s window, and transcribing it \
                 window by window needs timestamp tokens: this checkpoint's generation config \
                 has no no_timestamps_token_id",
                waveform.len() as f64 / rate,
                self.front_end.n_samples as f64 / rate
            ))
        })?;
        let rules = self.rules.with_timestamps(timestamps.clone());
        let (mel, frames) = self.front_end.log_mel_whole(waveform);
        let window = self.front_end.frames();
        let positions = model.max_source_positions().max(1);
        let frames_per_timestamp = window / positions;
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
            let generated = Self::decode_window(model, &segment, &rules, options)?;
            let cut = WindowCut::of(&generated, &timestamps, held, frames_per_timestamp);
            tokens.extend_from_slice(&generated[..cut.keep]);
            seek += cut.advance;
        }
        let seconds_per_timestamp = self.front_end.n_samples as f64 / rate / positions as f64;
        let text = transcript_text(&tokens, &timestamps, seconds_per_timestamp, |t| {
            self.decode_text(t)
        })?;
        Ok(Transcription { tokens, text })
    }

    fn decode_text(&self, tokens: &[u32]) -> Result<String, EngineError> {
        match &self.tokenizer {
            Some(t) => t
                .decode(tokens, true)
                .map_err(|e| EngineError::Runtime(format!("cannot decode tokens: {e}"))),
            None => Ok(String::new()),
        }
    }
}

/// transformers' `WhisperTimeStampLogitsProcessor`: `<|notimestamps|>` is never chosen,
/// timestamps come in pairs (a lone one only right before end-of-text) and never decrease, the
/// first token is a timestamp no later than `max_initial_timestamp_index`, and text is ruled out
/// whenever all timestamps together are likelier than the best text token.
#[derive(Debug, Clone, PartialEq)]
pub struct TimestampRules {
    pub no_timestamps: u32,
    /// The first timestamp token (`<|0.00|>`), one past `<|notimestamps|>`.
    pub begin: u32,
    pub eos: u32,
    pub max_initial_index: Option<u32>,
}

impl TimestampRules {
    /// From generation_config.json (`generation`) and config.json; `None` when the checkpoint
    /// has no `no_timestamps_token_id` (transformers refuses long-form decoding then too).
    pub fn from_configs(config: &Value, generation: &Value, eos: u32) -> Option<Self> {
        let field = |k: &str| generation.get(k).or_else(|| config.get(k));
        let no_timestamps = u32::try_from(field("no_timestamps_token_id")?.as_u64()?).ok()?;
        Some(Self {
            no_timestamps,
            begin: no_timestamps.checked_add(1)?,
            eos,
            max_initial_index: field("max_initial_timestamp_index")
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok()),
        })
    }

    pub fn is_timestamp(&self, token: u32) -> bool {
        token >= self.begin
    }

    /// Masks `scores` (logits or log-probs of the next token) given the tokens generated so far
    /// in this window, after the suppress-token rules.
    pub fn apply(&self, scores: &mut [f32], generated: &[u32]) {
        let n = scores.len();
        let begin = (self.begin as usize).min(n);
        let mask = |scores: &mut [f32], from: usize, to: usize| {
            for s in &mut scores[from.min(n)..to.min(n)] {
                *s = f32::NEG_INFINITY;
            }
        };
        mask(
            scores,
            self.no_timestamps as usize,
            self.no_timestamps as usize + 1,
        );
        let last_was_timestamp = generated.last().is_some_and(|&t| self.is_timestamp(t));
        let penultimate_was_timestamp =
            generated.len() < 2 || self.is_timestamp(generated[generated.len() - 2]);
        if last_was_timestamp {
            if penultimate_was_timestamp {
                mask(scores, begin, n);
            } else {
                mask(scores, 0, self.eos as usize);
            }
        }
        if let Some(&last) = generated.iter().rev().find(|&&t| self.is_timestamp(t)) {
            // A segment's end may repeat as the next one's start, nothing goes back in time.
            let floor = if last_was_timestamp && !penultimate_was_timestamp {
                last
            } else {
                last.saturating_add(1)
            };
            mask(scores, begin, floor as usize);
        }
        if generated.is_empty() {
            mask(scores, 0, begin);
            if let Some(m) = self.max_initial_index {
                mask(
                    scores,
                    begin.saturating_add(m as usize).saturating_add(1),
                    n,
                );
            }
        }
        let timestamps = log_sum_exp(&scores[begin..]);
        let best_text = scores[..begin]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if timestamps > best_text {
            mask(scores, 0, begin);
        }
    }
}

/// What one decoded window contributes (transformers' `_retrieve_segment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowCut {
    /// How many of the window's tokens are kept: every finished segment; after the last pair of
    /// timestamps, an unfinished segment is dropped and decoded again in the next window.
    pub keep: usize,
    /// Mel frames to move `seek` by.
    pub advance: usize,
}

impl WindowCut {
    /// `tokens`: the window's generated tokens without end-of-text; `window_frames`: the frames
    /// of audio it held (before zero padding); `frames_per_timestamp`: mel frames per timestamp
    /// step (2 for Whisper: 0.02 s).
    pub fn of(
        tokens: &[u32],
        rules: &TimestampRules,
        window_frames: usize,
        frames_per_timestamp: usize,
    ) -> Self {
        let ts: Vec<bool> = tokens.iter().map(|&t| rules.is_timestamp(t)).collect();
        let n = ts.len();
        let single_timestamp_ending = n >= 2 && !ts[n - 2] && ts[n - 1];
        let last_pair = (1..n).rev().find(|&i| ts[i - 1] && ts[i]);
        match last_pair {
            Some(second) if !single_timestamp_ending => {
                // Seek to the end of the last finished segment (the first of the pair).
                let end = (tokens[second - 1] - rules.begin) as usize;
                Self {
                    keep: second + 1,
                    // The rules make a pair's first timestamp at least <|0.02|>; a zero would
                    // never move on, so at least one frame.
                    advance: (end * frames_per_timestamp).max(1),
                }
            }
            _ => Self {
                keep: n,
                advance: window_frames.max(1),
            },
        }
    }
}

/// The text of a long-form transcription, as transformers' ASR pipeline assembles it
/// (`_decode_asr` without stride): the text tokens between a segment's opening and closing
/// timestamp are decoded together and the pieces joined. `seconds_per_timestamp` is the
/// pipeline's `chunk_length / max_source_positions` (0.02).
pub fn transcript_text<E>(
    tokens: &[u32],
    rules: &TimestampRules,
    seconds_per_timestamp: f64,
    mut decode: impl FnMut(&[u32]) -> Result<String, E>,
) -> Result<String, E> {
    // The pipeline's segment length in timestamp steps, fixed whatever the model.
    const SEGMENT_STEPS: f64 = 1500.0;
    let mut text = String::new();
    let mut current: Vec<u32> = Vec::new();
    let mut start: Option<f64> = None;
    let (mut cur_max, mut penultimate, mut previous_segments) = (0.0f64, 0.0f64, 0.0f64);
    for (i, &t) in tokens.iter().enumerate() {
        if t == rules.eos {
            continue;
        }
        if !rules.is_timestamp(t) {
            current.push(t);
            continue;
        }
        let stamp = f64::from(t - rules.begin) * seconds_per_timestamp;
        if stamp < cur_max {
            // A new window started: its times count from the end of the previous one.
            let single_ending =
                i >= 2 && !(rules.is_timestamp(tokens[i - 1]) && rules.is_timestamp(tokens[i - 2]));
            if single_ending {
                previous_segments += seconds_per_timestamp * SEGMENT_STEPS;
            } else {
                cur_max = penultimate;
                previous_segments += penultimate;
            }
        }
        penultimate = cur_max;
        cur_max = stamp;
        let time = ((stamp + previous_segments) * 100.0).round() / 100.0;
        match start {
            None => start = Some(time),
            // An end equal to its start is read as a start again.
            Some(s) if s == time => {}
            Some(_) => {
                text.push_str(&decode(&current)?);
                current.clear();
                start = None;
            }
        }
    }
    if !current.is_empty() {
        text.push_str(&decode(&current)?);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NEG: f32 = f32::NEG_INFINITY;

    /// A vocabulary of 20: text 0..=9, end-of-text 10, <|notimestamps|> 11, timestamps 12..20.
    fn rules() -> TimestampRules {
        TimestampRules {
            no_timestamps: 11,
            begin: 12,
            eos: 10,
            max_initial_index: Some(2),
        }
    }

    fn allowed(scores: &[f32]) -> Vec<usize> {
        (0..scores.len()).filter(|&i| scores[i] > NEG).collect()
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
        let r = DecodingRules::new(&config, &generation, 50258, None, None).unwrap();
        assert_eq!(r.prompt, vec![50258, 50259, 50359, 50363]);
        assert_eq!(
            (r.eos, r.suppress.len(), r.begin_suppress.len()),
            (50257, 2, 2)
        );
        let de = DecodingRules::new(&config, &generation, 50258, None, Some("de")).unwrap();
        assert_eq!(de.prompt[1], 50261);
        let e = DecodingRules::new(&config, &generation, 50258, None, Some("xx")).unwrap_err();
        assert!(e.to_string().contains("<|xx|>"), "{e}");
        // Long-form drops <|notimestamps|> from the prompt.
        let ts = TimestampRules::from_configs(&config, &generation, r.eos).unwrap();
        assert_eq!(r.with_timestamps(ts).prompt, vec![50258, 50259, 50359]);
    }

    #[test]
    fn english_only_prompt_comes_from_forced_decoder_ids() {
        let generation = json!({"forced_decoder_ids": [[1, 50362]], "eos_token_id": 50256});
        let r = DecodingRules::new(&json!({}), &generation, 50258, None, None).unwrap();
        assert_eq!(r.prompt, vec![50258, 50362]);
        assert_eq!(r.eos, 50256);
    }

    #[test]
    fn rules_come_from_the_generation_config() {
        let r = TimestampRules::from_configs(
            &json!({}),
            &json!({"no_timestamps_token_id": 50362, "max_initial_timestamp_index": 50}),
            50256,
        )
        .unwrap();
        assert_eq!((r.begin, r.max_initial_index), (50363, Some(50)));
        assert!(TimestampRules::from_configs(&json!({}), &json!({}), 1).is_none());
    }

    #[test]
    fn first_token_is_an_early_timestamp() {
        let mut s = vec![0.0; 20];
        rules().apply(&mut s, &[]);
        assert_eq!(allowed(&s), vec![12, 13, 14]);
    }

    #[test]
    fn timestamps_pair_up_and_never_go_back() {
        let r = rules();
        // After an opening timestamp: text (timestamps would make an empty segment).
        let mut s = vec![0.0; 20];
        s[3] = 5.0;
        r.apply(&mut s, &[13]);
        assert_eq!(allowed(&s), (0..=10).collect::<Vec<_>>());
        // After text: text, end-of-text, or a timestamp later than the opening one.
        let mut s = vec![0.0; 20];
        s[3] = 5.0;
        r.apply(&mut s, &[13, 3]);
        assert_eq!(
            allowed(&s),
            [(0..=10).collect::<Vec<_>>(), (14..20).collect()].concat()
        );
        // After a closing timestamp: end-of-text or the next opening, not earlier.
        let mut s = vec![0.0; 20];
        s[10] = 5.0;
        r.apply(&mut s, &[13, 3, 16]);
        assert_eq!(allowed(&s), vec![10, 16, 17, 18, 19]);
    }

    #[test]
    fn likely_timestamps_rule_out_text() {
        let mut s = vec![-10.0; 20];
        s[3] = 0.0; // best text token
        for v in &mut s[14..20] {
            *v = -0.5; // together likelier than token 3
        }
        rules().apply(&mut s, &[13, 3]);
        assert_eq!(allowed(&s), (14..20).collect::<Vec<_>>());
    }

    #[test]
    fn a_window_keeps_finished_segments_and_seeks_to_the_last_end() {
        let r = rules();
        // <|0.00|> a <|0.08|><|0.08|> b (cut off): keep the first segment plus the reopening.
        let cut = WindowCut::of(&[12, 1, 16, 16, 2], &r, 3000, 2);
        assert_eq!(
            cut,
            WindowCut {
                keep: 4,
                advance: 8
            }
        );
        // Ends on a lone timestamp: nothing more was said, the whole window is done.
        let cut = WindowCut::of(&[12, 1, 16, 16, 2, 18], &r, 3000, 2);
        assert_eq!(
            cut,
            WindowCut {
                keep: 6,
                advance: 3000
            }
        );
        // No pair at all: one segment, the whole window.
        let cut = WindowCut::of(&[12, 1, 2], &r, 1234, 2);
        assert_eq!(
            cut,
            WindowCut {
                keep: 3,
                advance: 1234
            }
        );
        let cut = WindowCut::of(&[], &r, 7, 2);
        assert_eq!(
            cut,
            WindowCut {
                keep: 0,
                advance: 7
            }
        );
    }

    #[test]
    fn text_is_decoded_segment_by_segment() {
        let r = rules();
        let decode = |t: &[u32]| -> Result<String, ()> {
            Ok(format!(
                "[{}]",
                t.iter().map(|x| x.to_string()).collect::<String>()
            ))
        };
        // Two windows: <0> 1 2 <4><4> 3 <6> | <0> 5 <2>
        let tokens = [12, 1, 2, 16, 16, 3, 18, 12, 5, 14];
        assert_eq!(
            transcript_text(&tokens, &r, 0.02, decode).unwrap(),
            "[12][3][5]"
        );
        // Text without timestamps is one piece; a trailing unfinished segment is kept.
        assert_eq!(
            transcript_text(&[1, 2, 10], &r, 0.02, decode).unwrap(),
            "[12]"
        );
        assert_eq!(
            transcript_text(&[12, 1, 14, 14, 2], &r, 0.02, decode).unwrap(),
            "[1][2]"
        );
    }
}
