//! Text generation, independent of the runtime: any engine that can prefill a prompt and step
//! one token at a time (with its own KV cache) gets greedy and sampled decoding, stop tokens,
//! streaming and the LLM timings (time to first token, prefill and decode tokens/s).

use crate::inputs::SplitMix64;
use crate::{EngineError, SessionInfo};
use serde::Serialize;
use std::ops::ControlFlow;
use std::time::Instant;

/// A model that generates text token by token, keeping a KV cache between calls.
pub trait TextGenerator: Send {
    fn info(&self) -> &SessionInfo;
    /// Starts a new sequence (clearing any cache) with `prompt`; returns next-token logits.
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError>;
    /// Appends one token to the sequence; returns next-token logits.
    fn step(&mut self, token: u32) -> Result<Vec<f32>, EngineError>;
    /// Tokens (prompt + generated) the model can attend to.
    fn max_context(&self) -> usize;
    /// End-of-sequence ids from the checkpoint's config.
    fn eos_tokens(&self) -> Vec<u32>;
    /// Bytes the weights occupy as loaded (quantised blocks included), when known.
    fn weight_bytes(&self) -> Option<u64> {
        None
    }
    /// Host time so far (ms, cumulative) spent carrying data to and from a runtime in
    /// another process (a browser page driven over WebDriver), which the runtime's own clock
    /// does not count; generation timings leave it out. 0 for a runtime in this process.
    fn transport_ms(&self) -> f64 {
        0.0
    }
    /// Starts `prompts.len()` sequences at once (equal lengths: no padding is applied);
    /// returns next-token logits per sequence.
    fn prefill_batch(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        match prompts {
            [one] => Ok(vec![self.prefill(one)?]),
            _ => Err(EngineError::Unsupported(format!(
                "batched generation (batch {}) is not implemented by the {} engine for this model",
                prompts.len(),
                self.info().engine
            ))),
        }
    }
    /// Appends one token to each sequence of the batch.
    fn step_batch(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        match tokens {
            [one] => Ok(vec![self.step(*one)?]),
            _ => Err(EngineError::Unsupported(
                "batched step without batched prefill".into(),
            )),
        }
    }
    /// The engine's sequences with a KV cache each, when it has them (continuous batching).
    fn sequence_pool(&mut self) -> Option<&mut dyn SequencePool> {
        None
    }
    /// Image-text generators (LLaVA): the prompt token that stands for an image. None for
    /// text-only models.
    fn image_token(&self) -> Option<u32> {
        None
    }
    /// Encodes `images`; their features replace the image tokens of the next prefill, in
    /// order. Returns how many image tokens each image takes in the prompt (see
    /// [`expand_image_tokens`]).
    fn attach_images(&mut self, images: &ImageBatch) -> Result<Vec<usize>, EngineError> {
        let _ = images;
        Err(EngineError::Unsupported(format!(
            "this model takes no images on the {} engine",
            self.info().engine
        )))
    }
}

/// Images for an image-text generator, as its image processor made them.
#[derive(Debug, Clone)]
pub struct ImageBatch {
    /// [tiles, channels, height, width]: one tile per image, or several (LLaVA-NeXT's anyres
    /// tiling), image after image.
    pub shape: [usize; 4],
    pub pixel_values: Vec<f32>,
    /// Each image's (height, width) before processing.
    pub sizes: Vec<(usize, usize)>,
    /// Images a processor without fixed sizes (Qwen-VL's) made at different sizes: each
    /// one's (height, width) after processing, its pixels (CHW) one after another, and
    /// `shape` [images, channels, 0, 0]. None when every tile has `shape`'s size.
    pub each: Option<Vec<(usize, usize)>>,
}

/// The prompt as the model's processor gives it to the model: the i-th image token repeated
/// `tokens[i]` times, once per feature of image i (transformers' processors expand the text
/// `<image>` before tokenizing; it is a special token, so expanding ids is the same). There
/// must be one image token per image.
pub fn expand_image_tokens(
    ids: &[u32],
    token: u32,
    tokens: &[usize],
) -> Result<Vec<u32>, EngineError> {
    let found = ids.iter().filter(|&&t| t == token).count();
    if found != tokens.len() {
        return Err(EngineError::InvalidInput(format!(
            "the prompt has {found} image tokens (id {token}) for {} images",
            tokens.len()
        )));
    }
    let mut next = tokens.iter();
    Ok(ids
        .iter()
        .flat_map(|&t| {
            let n = if t == token {
                next.next().copied().unwrap_or(1)
            } else {
                1
            };
            std::iter::repeat_n(t, n)
        })
        .collect())
}

/// One sequence of a [`SequencePool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SequenceId(pub u64);

/// A decoder that keeps one KV cache per sequence, so that sequences start and stop between
/// decode steps while the others go on (continuous batching). Each pass computes the listed
/// sequences together: their new tokens go through the weights as one batch, and each
/// attends only to its own cache, so prompts of any lengths mix with decode steps.
pub trait SequencePool {
    /// In one pass, starts a sequence per prompt of `start` and appends one token to each
    /// sequence of `steps`; returns the started sequences' ids and next-token logits, then the
    /// stepped sequences' logits, each in order. On failure the sequences involved are gone.
    #[allow(clippy::type_complexity)]
    fn run(
        &mut self,
        start: &[&[u32]],
        steps: &[(SequenceId, u32)],
    ) -> Result<(Vec<(SequenceId, Vec<f32>)>, Vec<Vec<f32>>), EngineError>;
    /// Frees a sequence's cache (an unknown id is ignored).
    fn end(&mut self, id: SequenceId);
    /// Starts one sequence per prompt.
    fn start(&mut self, prompts: &[&[u32]]) -> Result<Vec<(SequenceId, Vec<f32>)>, EngineError> {
        Ok(self.run(prompts, &[])?.0)
    }
    /// Appends one token to each listed sequence.
    fn step(&mut self, steps: &[(SequenceId, u32)]) -> Result<Vec<Vec<f32>>, EngineError> {
        Ok(self.run(&[], steps)?.1)
    }
}

/// Checks a batch of prompts for batched prefill: non-empty, equal lengths.
pub fn equal_length_batch(prompts: &[Vec<u32>]) -> Result<usize, EngineError> {
    let len = prompts.first().map(Vec::len).unwrap_or(0);
    if len == 0 {
        return Err(EngineError::InvalidInput("empty prompt batch".into()));
    }
    if prompts.iter().any(|p| p.len() != len) {
        return Err(EngineError::InvalidInput(
            "batched prompts must have equal lengths (padding is not implemented)".into(),
        ));
    }
    Ok(len)
}

/// Greedy generation of exactly `new_tokens` tokens for every prompt of a batch (EOS is not a
/// stop: benchmarks need a fixed amount of work). Returns the tokens and the timings, where
/// each decode step produced one token per sequence.
pub fn generate_batch_greedy(
    model: &mut dyn TextGenerator,
    prompts: &[Vec<u32>],
    new_tokens: usize,
) -> Result<(Vec<Vec<u32>>, GenerationStats), EngineError> {
    let len = equal_length_batch(prompts)?;
    if len.saturating_add(new_tokens) > model.max_context() {
        return Err(EngineError::InvalidInput(format!(
            "{len} prompt + {new_tokens} new tokens exceed the model's context of {}",
            model.max_context()
        )));
    }
    let mut out: Vec<Vec<u32>> = vec![Vec::with_capacity(new_tokens); prompts.len()];
    // A phase's time is the host's less the transport to an out-of-process runtime inside it.
    let elapsed_since = |model: &dyn TextGenerator, start: Instant, moved: f64| {
        start.elapsed().as_secs_f64() * 1e3 - (model.transport_ms() - moved)
    };
    let (start, moved) = (Instant::now(), model.transport_ms());
    let mut logits = model.prefill_batch(prompts)?;
    let prefill_ms = elapsed_since(model, start, moved);
    let mut ttft_ms = prefill_ms;
    let mut decode_step_ms = Vec::with_capacity(new_tokens);
    for i in 0..new_tokens {
        let (t, moved) = (Instant::now(), model.transport_ms());
        if i > 0 {
            let last: Vec<u32> = out.iter().map(|o| *o.last().expect("non-empty")).collect();
            logits = model.step_batch(&last)?;
        }
        for (row, l) in out.iter_mut().zip(&logits) {
            row.push(argmax(l));
        }
        let elapsed = elapsed_since(model, t, moved);
        if i == 0 {
            ttft_ms = prefill_ms + elapsed;
        } else {
            decode_step_ms.push(elapsed);
        }
    }
    let stats = GenerationStats {
        batch_size: prompts.len(),
        prompt_tokens: len * prompts.len(),
        new_tokens: new_tokens * prompts.len(),
        time_to_first_token_ms: ttft_ms,
        prefill_ms,
        decode_step_ms,
        stop_reason: StopReason::MaxNewTokens,
    };
    Ok((out, stats))
}

#[derive(Debug, Clone, Serialize)]
pub struct Sampling {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    /// 1.0 disables it; > 1 discourages tokens already in the sequence (HF/CTRL rule).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Extra ids that end generation, besides the model's EOS.
    pub stop_tokens: Vec<u32>,
    /// Keep going through EOS (benchmarks that need an exact token count).
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    MaxNewTokens,
    Eos,
    StopToken,
    ContextFull,
    /// The caller's `on_token` asked to stop (a stop string matched, a client went away).
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationStats {
    /// Sequences generated together; each decode step yields one token per sequence.
    pub batch_size: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Prefill plus choosing the first new token.
    pub time_to_first_token_ms: f64,
    pub prefill_ms: f64,
    /// One entry per decode step (each new token after the first).
    pub decode_step_ms: Vec<f64>,
    pub stop_reason: StopReason,
}

impl GenerationStats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / (self.prefill_ms / 1e3)
    }

    pub fn decode_tokens_per_s(&self) -> Option<f64> {
        let total: f64 = self.decode_step_ms.iter().sum();
        (!self.decode_step_ms.is_empty())
            .then(|| (self.decode_step_ms.len() * self.batch_size) as f64 / (total / 1e3))
    }
}

/// One sequence being generated: its history, sampler, stop rules and timings.
struct Sequence {
    opts: GenerateOptions,
    eos: Vec<u32>,
    rng: SplitMix64,
    history: Vec<u32>,
    prompt_tokens: usize,
    context: usize,
    new_tokens: Vec<u32>,
    time_to_first_token_ms: f64,
    decode_step_ms: Vec<f64>,
    stop: Option<StopReason>,
}

impl Sequence {
    fn start(
        model: &dyn TextGenerator,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Self, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::InvalidInput("the prompt has no tokens".into()));
        }
        let context = model.max_context();
        if prompt.len() >= context {
            return Err(EngineError::InvalidInput(format!(
                "the prompt has {} tokens but the model's context is {context}",
                prompt.len()
            )));
        }
        // Generation stops when the context is full, so no more than this many tokens come.
        let room = opts.max_new_tokens.min(context - prompt.len());
        Ok(Self {
            opts: opts.clone(),
            eos: if opts.ignore_eos {
                vec![]
            } else {
                model.eos_tokens()
            },
            rng: SplitMix64::new(opts.sampling.seed),
            history: prompt.to_vec(),
            prompt_tokens: prompt.len(),
            context,
            new_tokens: Vec::with_capacity(room),
            time_to_first_token_ms: 0.0,
            decode_step_ms: Vec::with_capacity(room),
            stop: (opts.max_new_tokens == 0).then_some(StopReason::MaxNewTokens),
        })
    }

    fn done(&self) -> bool {
        self.stop.is_some()
    }

    fn last_token(&self) -> u32 {
        *self.history.last().expect("a prompt has tokens")
    }

    /// Chooses the next token from `logits` (the call that produced them started at
    /// `since`), hands it to `on_token`, and decides whether the sequence goes on.
    fn advance(
        &mut self,
        logits: &mut [f32],
        since: Instant,
        prefill_ms: f64,
        on_token: impl FnOnce(u32) -> ControlFlow<()>,
    ) -> Result<(), EngineError> {
        let token = choose(logits, &self.history, &self.opts.sampling, &mut self.rng)?;
        let elapsed = since.elapsed().as_secs_f64() * 1e3;
        if self.new_tokens.is_empty() {
            self.time_to_first_token_ms = prefill_ms + elapsed;
        } else {
            self.decode_step_ms.push(elapsed);
        }
        self.new_tokens.push(token);
        self.history.push(token);
        let flow = on_token(token);
        self.stop = if self.eos.contains(&token) {
            Some(StopReason::Eos)
        } else if self.opts.stop_tokens.contains(&token) {
            Some(StopReason::StopToken)
        } else if flow.is_break() {
            Some(StopReason::Stopped)
        } else if self.history.len() >= self.context {
            Some(StopReason::ContextFull)
        } else if self.new_tokens.len() >= self.opts.max_new_tokens {
            Some(StopReason::MaxNewTokens)
        } else {
            None
        };
        Ok(())
    }

    fn finish(self, prefill_ms: f64) -> (Vec<u32>, GenerationStats) {
        let stats = GenerationStats {
            batch_size: 1,
            prompt_tokens: self.prompt_tokens,
            new_tokens: self.new_tokens.len(),
            time_to_first_token_ms: if self.new_tokens.is_empty() {
                prefill_ms
            } else {
                self.time_to_first_token_ms
            },
            prefill_ms,
            decode_step_ms: self.decode_step_ms,
            stop_reason: self.stop.unwrap_or(StopReason::MaxNewTokens),
        };
        (self.new_tokens, stats)
    }
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_token` with each new token as
/// soon as it is chosen (for streaming); `on_token` returning `Break` ends the generation after
/// that token ([`StopReason::Stopped`]). Returns the new tokens and the timings.
pub fn generate(
    model: &mut dyn TextGenerator,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<(Vec<u32>, GenerationStats), EngineError> {
    let mut seq = Sequence::start(model, prompt, opts)?;
    let start = Instant::now();
    let mut logits = model.prefill(prompt)?;
    let prefill_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut since = Instant::now();
    while !seq.done() {
        seq.advance(&mut logits, since, prefill_ms, &mut on_token)?;
        if seq.done() {
            break;
        }
        since = Instant::now();
        logits = model.step(seq.last_token())?;
    }
    Ok(seq.finish(prefill_ms))
}

/// Several generations sharing the model's prefill and decode steps: prompts of equal length
/// go through one batched prefill, then one batched step per token. Each sequence samples with
/// its own options and stops by its own rules, exactly as [`generate`] would run it alone; a
/// finished sequence rides along (its rows computed, its tokens unused) until every sequence
/// has stopped, since the engines cannot drop a row from their cache. `on_token` receives the
/// index of the sequence. An engine without batched decoding answers
/// [`EngineError::Unsupported`] before any token is chosen.
pub fn generate_together(
    model: &mut dyn TextGenerator,
    requests: &[(&[u32], &GenerateOptions)],
    mut on_token: impl FnMut(usize, u32) -> ControlFlow<()>,
) -> Result<Vec<(Vec<u32>, GenerationStats)>, EngineError> {
    let prompts: Vec<Vec<u32>> = requests.iter().map(|(p, _)| p.to_vec()).collect();
    equal_length_batch(&prompts)?;
    let mut seqs = requests
        .iter()
        .map(|(p, o)| Sequence::start(model, p, o))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let mut logits = model.prefill_batch(&prompts)?;
    let prefill_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut since = Instant::now();
    loop {
        for (i, (seq, row)) in seqs.iter_mut().zip(logits.iter_mut()).enumerate() {
            if !seq.done() {
                seq.advance(row, since, prefill_ms, |t| on_token(i, t))?;
            }
        }
        if seqs.iter().all(Sequence::done) {
            break;
        }
        since = Instant::now();
        let last: Vec<u32> = seqs.iter().map(Sequence::last_token).collect();
        logits = model.step_batch(&last)?;
    }
    Ok(seqs.into_iter().map(|s| s.finish(prefill_ms)).collect())
}

/// A generation that left a [`ContinuousBatch`]: the caller's handle and its outcome.
pub struct Finished<T> {
    pub tag: T,
    pub result: Result<(Vec<u32>, GenerationStats), EngineError>,
}

struct Active<T> {
    id: SequenceId,
    seq: Sequence,
    prefill_ms: f64,
    tag: T,
}

/// Continuous batching over an engine's [`SequencePool`]: generations join between decode
/// steps and leave as soon as they stop, and every running one shares each step (the
/// scheduling of text-generation-inference and vLLM). Each generation samples and stops by
/// its own rules, exactly as [`generate`] would run it alone. `T` is the caller's handle of a
/// generation (where its tokens go); `on_token` gets it with each token as it is chosen.
pub struct ContinuousBatch<T> {
    active: Vec<Active<T>>,
}

impl<T> Default for ContinuousBatch<T> {
    fn default() -> Self {
        Self { active: Vec::new() }
    }
}

impl<T> ContinuousBatch<T> {
    /// Generations running.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// One pass of the engine: the prompts of `joining` (any lengths) are prefilled and each
    /// of those generations gets its first token, while every running generation gets its
    /// next one. Returns the generations that ended, or could not start (a prompt that does
    /// not fit, an engine without a sequence pool).
    pub fn step(
        &mut self,
        model: &mut dyn TextGenerator,
        joining: Vec<(Vec<u32>, GenerateOptions, T)>,
        mut on_token: impl FnMut(&mut T, u32) -> ControlFlow<()>,
    ) -> Vec<Finished<T>> {
        let mut finished = Vec::new();
        let mut starting = Vec::new();
        for (prompt, opts, tag) in joining {
            match Sequence::start(model, &prompt, &opts) {
                Ok(seq) => starting.push((prompt, seq, tag)),
                Err(e) => finished.push(Finished {
                    tag,
                    result: Err(e),
                }),
            }
        }
        if starting.is_empty() && self.active.is_empty() {
            return finished;
        }
        let Some(pool) = model.sequence_pool() else {
            let e = EngineError::Unsupported(
                "this engine has no per-sequence KV caches (continuous batching)".into(),
            );
            finished.extend(starting.into_iter().map(|(_, _, tag)| Finished {
                tag,
                result: Err(e.clone()),
            }));
            finished.extend(self.fail_all(None, e));
            return finished;
        };
        let prompts: Vec<&[u32]> = starting.iter().map(|(p, _, _)| p.as_slice()).collect();
        let steps: Vec<(SequenceId, u32)> = self
            .active
            .iter()
            .map(|a| (a.id, a.seq.last_token()))
            .collect();
        let start = Instant::now();
        let outcome = pool.run(&prompts, &steps);
        let pass_ms = start.elapsed().as_secs_f64() * 1e3;
        let (started, stepped) = match outcome {
            Ok((started, stepped))
                if started.len() == starting.len() && stepped.len() == steps.len() =>
            {
                (started, stepped)
            }
            other => {
                let e = match other {
                    Err(e) => e,
                    Ok((started, _)) => {
                        for (id, _) in started {
                            pool.end(id);
                        }
                        EngineError::Runtime("the engine ran the wrong number of sequences".into())
                    }
                };
                finished.extend(starting.into_iter().map(|(_, _, tag)| Finished {
                    tag,
                    result: Err(e.clone()),
                }));
                finished.extend(self.fail_all(Some(pool), e));
                return finished;
            }
        };
        // The running generations' step started with the pass; the newcomers' first token
        // comes after a prefill of the pass's length.
        let since = start;
        let chosen = Instant::now();
        let running = std::mem::take(&mut self.active);
        for (mut active, mut logits) in running.into_iter().zip(stepped) {
            let tag = &mut active.tag;
            let advanced = active
                .seq
                .advance(&mut logits, since, active.prefill_ms, |t| on_token(tag, t));
            self.keep_or_finish(pool, active, advanced, &mut finished);
        }
        for ((_, seq, tag), (id, mut logits)) in starting.into_iter().zip(started) {
            let mut active = Active {
                id,
                seq,
                prefill_ms: pass_ms,
                tag,
            };
            let advanced = if active.seq.done() {
                Ok(())
            } else {
                let tag = &mut active.tag;
                active
                    .seq
                    .advance(&mut logits, chosen, pass_ms, |t| on_token(tag, t))
            };
            self.keep_or_finish(pool, active, advanced, &mut finished);
        }
        finished
    }

    /// Ends every generation in the batch with `error` (the engine failed under them) and
    /// frees their caches.
    pub fn abort(&mut self, model: &mut dyn TextGenerator, error: EngineError) -> Vec<Finished<T>> {
        let pool = model.sequence_pool();
        self.fail_all(pool, error)
    }

    fn fail_all(
        &mut self,
        mut pool: Option<&mut dyn SequencePool>,
        e: EngineError,
    ) -> Vec<Finished<T>> {
        std::mem::take(&mut self.active)
            .into_iter()
            .map(|a| {
                if let Some(pool) = pool.as_deref_mut() {
                    pool.end(a.id);
                }
                Finished {
                    tag: a.tag,
                    result: Err(e.clone()),
                }
            })
            .collect()
    }

    fn keep_or_finish(
        &mut self,
        pool: &mut dyn SequencePool,
        active: Active<T>,
        advanced: Result<(), EngineError>,
        finished: &mut Vec<Finished<T>>,
    ) {
        match advanced {
            Ok(()) if !active.seq.done() => self.active.push(active),
            outcome => {
                pool.end(active.id);
                finished.push(Finished {
                    tag: active.tag,
                    result: outcome.map(|()| active.seq.finish(active.prefill_ms)),
                });
            }
        }
    }
}

/// Applies the logits processors in transformers' order (repetition penalty, temperature,
/// top-k, top-p) and picks a token.
fn choose(
    logits: &mut [f32],
    history: &[u32],
    s: &Sampling,
    rng: &mut SplitMix64,
) -> Result<u32, EngineError> {
    if logits.is_empty() {
        return Err(EngineError::Runtime("the model returned no logits".into()));
    }
    if s.repetition_penalty != 1.0 {
        let mut seen = history.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &t in &seen {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l < 0.0 {
                    *l * s.repetition_penalty
                } else {
                    *l / s.repetition_penalty
                };
            }
        }
    }
    if s.temperature <= 0.0 {
        return Ok(argmax(logits));
    }
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / s.temperature))
        .collect();
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(k) = s.top_k.filter(|&k| k > 0) {
        candidates.truncate(k);
    }
    let max = candidates[0].1;
    let mut probs: Vec<f32> = candidates.iter().map(|(_, l)| (l - max).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if let Some(p) = s.top_p.filter(|&p| p < 1.0) {
        // Keep the smallest prefix whose mass reaches p (always at least one token).
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|&q| {
                acc += q;
                acc >= p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= sum);
    }
    let r = rng.next_f32();
    let mut acc = 0.0;
    for (i, q) in probs.iter().enumerate() {
        acc += q;
        if r < acc {
            return Ok(candidates[i].0);
        }
    }
    Ok(candidates[probs.len() - 1].0)
}

/// log(sum(exp(x))), computed from the maximum; minus infinity when every entry is (as
/// torch.logsumexp).
pub fn log_sum_exp(x: &[f32]) -> f32 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if m == f32::NEG_INFINITY {
        return m;
    }
    m + x.iter().map(|&v| (v - m).exp()).sum::<f32>().ln()
}

/// First index of the maximum, as torch.argmax.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Precision;
    use ia_hardware::Platform;
    use ia_models::WeightsKind;

    /// A toy model whose next token is (last + 1) mod vocab, with EOS = 9.
    struct Counter {
        info: SessionInfo,
        last: u32,
    }

    impl Counter {
        fn new() -> Self {
            Self {
                info: SessionInfo {
                    engine: "test".into(),
                    engine_version: "0".into(),
                    platform: Platform::Cpu,
                    device: "cpu".into(),
                    precision: Precision::F32,
                    weights: WeightsKind::Random,
                    parameter_count: 0,
                    output_names: vec![],
                },
                last: 0,
            }
        }

        fn logits(&self) -> Vec<f32> {
            let mut l = vec![0.0; 12];
            l[((self.last + 1) % 12) as usize] = 5.0;
            l
        }
    }

    impl TextGenerator for Counter {
        fn info(&self) -> &SessionInfo {
            &self.info
        }
        fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
            self.last = *prompt.last().unwrap();
            Ok(self.logits())
        }
        fn step(&mut self, token: u32) -> Result<Vec<f32>, EngineError> {
            self.last = token;
            Ok(self.logits())
        }
        fn max_context(&self) -> usize {
            16
        }
        fn eos_tokens(&self) -> Vec<u32> {
            vec![9]
        }
    }

    fn opts(n: usize) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: n,
            sampling: Sampling::greedy(),
            stop_tokens: vec![],
            ignore_eos: false,
        }
    }

    /// A batch of counters: each row runs its own Counter.
    struct Counters(Vec<Counter>);

    impl TextGenerator for Counters {
        fn info(&self) -> &SessionInfo {
            &self.0[0].info
        }
        fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
            self.0[0].prefill(prompt)
        }
        fn step(&mut self, token: u32) -> Result<Vec<f32>, EngineError> {
            self.0[0].step(token)
        }
        fn max_context(&self) -> usize {
            16
        }
        fn eos_tokens(&self) -> Vec<u32> {
            vec![9]
        }
        fn prefill_batch(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
            self.0 = prompts.iter().map(|_| Counter::new()).collect();
            self.0
                .iter_mut()
                .zip(prompts)
                .map(|(c, p)| c.prefill(p))
                .collect()
        }
        fn step_batch(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
            self.0
                .iter_mut()
                .zip(tokens)
                .map(|(c, &t)| c.step(t))
                .collect()
        }
    }

    #[test]
    fn generations_together_match_each_alone() {
        let plain = opts(10);
        let mut through_eos = opts(4);
        through_eos.ignore_eos = true;
        let mut stop_at_4 = opts(10);
        stop_at_4.stop_tokens = vec![4];
        let cases: [(&[u32], &GenerateOptions); 4] = [
            (&[3], &plain),
            (&[7], &through_eos),
            (&[2], &stop_at_4),
            (&[5], &plain),
        ];
        let mut streamed = vec![vec![]; cases.len()];
        let together = generate_together(&mut Counters(vec![]), &cases, |i, t| {
            streamed[i].push(t);
            // The last sequence is stopped by its caller after two tokens.
            if i == 3 && streamed[3].len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        for (i, (prompt, o)) in cases.iter().enumerate().take(3) {
            let (alone, stats) =
                generate(
                    &mut Counter::new(),
                    prompt,
                    o,
                    |_| ControlFlow::Continue(()),
                )
                .unwrap();
            assert_eq!(together[i].0, alone, "sequence {i}");
            assert_eq!(together[i].1.stop_reason, stats.stop_reason, "sequence {i}");
            assert_eq!(streamed[i], alone);
        }
        assert_eq!(
            (together[3].0.clone(), together[3].1.stop_reason),
            (vec![6, 7], StopReason::Stopped)
        );
        let e = generate_together(&mut Counter::new(), &cases[..2], |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
        assert!(matches!(e, EngineError::Unsupported(_)), "{e}");
    }

    /// Counters with one state per sequence, started and stopped at any step.
    #[derive(Default)]
    struct CounterPool {
        live: std::collections::BTreeMap<SequenceId, Counter>,
        next: u64,
        widest_step: usize,
    }

    impl TextGenerator for CounterPool {
        fn info(&self) -> &SessionInfo {
            unreachable!("not asked")
        }
        fn prefill(&mut self, _: &[u32]) -> Result<Vec<f32>, EngineError> {
            unreachable!("the batch goes through the pool")
        }
        fn step(&mut self, _: u32) -> Result<Vec<f32>, EngineError> {
            unreachable!("the batch goes through the pool")
        }
        fn max_context(&self) -> usize {
            16
        }
        fn eos_tokens(&self) -> Vec<u32> {
            vec![9]
        }
        fn sequence_pool(&mut self) -> Option<&mut dyn SequencePool> {
            Some(self)
        }
    }

    impl SequencePool for CounterPool {
        fn run(
            &mut self,
            start: &[&[u32]],
            steps: &[(SequenceId, u32)],
        ) -> Result<(Vec<(SequenceId, Vec<f32>)>, Vec<Vec<f32>>), EngineError> {
            self.widest_step = self.widest_step.max(start.len() + steps.len());
            let stepped = steps
                .iter()
                .map(|(id, t)| self.live.get_mut(id).expect("live").step(*t))
                .collect::<Result<_, _>>()?;
            let started = start
                .iter()
                .map(|p| {
                    let id = SequenceId(self.next);
                    self.next += 1;
                    let mut c = Counter::new();
                    let logits = c.prefill(p)?;
                    self.live.insert(id, c);
                    Ok((id, logits))
                })
                .collect::<Result<_, _>>()?;
            Ok((started, stepped))
        }
        fn end(&mut self, id: SequenceId) {
            self.live.remove(&id);
        }
    }

    #[test]
    fn generations_join_and_leave_a_continuous_batch() {
        let mut pool = CounterPool::default();
        let mut batch: ContinuousBatch<(usize, Vec<u32>)> = ContinuousBatch::default();
        let mut stop_at_4 = opts(10);
        stop_at_4.stop_tokens = vec![4];
        let record = |tag: &mut (usize, Vec<u32>), t: u32| {
            tag.1.push(t);
            // Generation 3's client goes away after two tokens.
            if tag.0 == 3 && tag.1.len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let mut done = batch.step(&mut pool, vec![(vec![3], opts(10), (0, vec![]))], record);
        done.extend(batch.step(&mut pool, vec![], record));
        // Two join a running batch, one of them with a longer prompt; one cannot start.
        done.extend(batch.step(
            &mut pool,
            vec![
                (vec![1, 2, 2], stop_at_4.clone(), (1, vec![])),
                (vec![5], opts(3), (2, vec![])),
                (vec![0; 16], opts(3), (4, vec![])),
            ],
            record,
        ));
        done.extend(batch.step(&mut pool, vec![(vec![5], opts(10), (3, vec![]))], record));
        while !batch.is_empty() {
            done.extend(batch.step(&mut pool, vec![], record));
        }
        assert!(pool.live.is_empty(), "every sequence's cache was freed");
        assert_eq!(pool.widest_step, 4);
        done.sort_by_key(|f| f.tag.0);
        let cases = [
            (vec![3], opts(10)),
            (vec![1, 2, 2], stop_at_4),
            (vec![5], opts(3)),
        ];
        for (i, (prompt, o)) in cases.iter().enumerate() {
            let (alone, stats) =
                generate(
                    &mut Counter::new(),
                    prompt,
                    o,
                    |_| ControlFlow::Continue(()),
                )
                .unwrap();
            let (tokens, got) = done[i].result.as_ref().unwrap();
            assert_eq!((tokens, &done[i].tag.1), (&alone, &alone), "generation {i}");
            assert_eq!(got.stop_reason, stats.stop_reason, "generation {i}");
            assert_eq!(got.new_tokens, alone.len());
        }
        let (tokens, stats) = done[3].result.as_ref().unwrap();
        assert_eq!(
            (tokens.clone(), stats.stop_reason),
            (vec![6, 7], StopReason::Stopped)
        );
        let e = done[4].result.as_ref().unwrap_err();
        assert!(e.to_string().contains("context is 16"), "{e}");
        // An engine without a pool says so for each generation.
        let done = ContinuousBatch::default().step(
            &mut Counter::new(),
            vec![(vec![3], opts(2), ())],
            |_, _| ControlFlow::Continue(()),
        );
        assert!(matches!(done[0].result, Err(EngineError::Unsupported(_))));
    }

    #[test]
    fn greedy_streams_and_stops_at_eos() {
        let mut streamed = vec![];
        let (toks, stats) = generate(&mut Counter::new(), &[3], &opts(10), |t| {
            streamed.push(t);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(toks, vec![4, 5, 6, 7, 8, 9]);
        assert_eq!(streamed, toks);
        assert_eq!(stats.stop_reason, StopReason::Eos);
        assert_eq!(stats.decode_step_ms.len(), 5);
    }

    #[test]
    fn ignore_eos_stop_tokens_and_context() {
        let mut o = opts(4);
        o.ignore_eos = true;
        let (toks, s) =
            generate(&mut Counter::new(), &[7], &o, |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(
            (toks, s.stop_reason),
            (vec![8, 9, 10, 11], StopReason::MaxNewTokens)
        );
        let mut o = opts(10);
        o.stop_tokens = vec![5];
        let (toks, s) =
            generate(&mut Counter::new(), &[3], &o, |_| ControlFlow::Continue(())).unwrap();
        assert_eq!((toks, s.stop_reason), (vec![4, 5], StopReason::StopToken));
        let mut o = opts(100);
        o.ignore_eos = true;
        let (toks, s) = generate(&mut Counter::new(), &[0; 10], &o, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!((toks.len(), s.stop_reason), (6, StopReason::ContextFull));
        let (toks, s) = generate(&mut Counter::new(), &[3], &opts(10), |t| {
            if t == 5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert_eq!((toks, s.stop_reason), (vec![4, 5], StopReason::Stopped));
    }

    #[test]
    fn batch_of_one_uses_the_single_sequence_path() {
        let (toks, stats) = generate_batch_greedy(&mut Counter::new(), &[vec![3]], 3).unwrap();
        assert_eq!(toks, vec![vec![4, 5, 6]]);
        assert_eq!(stats.decode_step_ms.len(), 2);
        let e = generate_batch_greedy(&mut Counter::new(), &[vec![3], vec![4]], 3).unwrap_err();
        assert!(e.to_string().contains("batch 2"), "{e}");
        let e = generate_batch_greedy(&mut Counter::new(), &[vec![3], vec![4, 5]], 3).unwrap_err();
        assert!(e.to_string().contains("equal lengths"), "{e}");
    }

    #[test]
    fn prompt_longer_than_context_is_a_clear_error() {
        let e = generate(&mut Counter::new(), &[1; 16], &opts(1), |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
        assert!(e.to_string().contains("context is 16"), "{e}");
    }

    #[test]
    fn sampling_is_seeded_and_respects_top_k() {
        let s = Sampling {
            temperature: 1.0,
            top_k: Some(2),
            top_p: None,
            repetition_penalty: 1.0,
            seed: 3,
        };
        let logits = vec![1.0, 3.0, 2.9, -4.0];
        let draw = |seed| {
            let mut rng = SplitMix64::new(seed);
            (0..200)
                .map(|_| choose(&mut logits.clone(), &[], &s, &mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(3);
        assert_eq!(a, draw(3));
        assert!(a.iter().all(|t| *t == 1 || *t == 2));
        assert!(a.contains(&1) && a.contains(&2));
        // top_p small enough keeps only the best token.
        let s = Sampling {
            top_k: None,
            top_p: Some(0.1),
            ..s
        };
        let mut rng = SplitMix64::new(0);
        assert!((0..50).all(|_| choose(&mut logits.clone(), &[], &s, &mut rng).unwrap() == 1));
    }

    #[test]
    fn repetition_penalty_follows_transformers() {
        let s = Sampling {
            repetition_penalty: 2.0,
            ..Sampling::greedy()
        };
        let mut l = vec![4.0, 3.0, -1.0];
        let t = choose(&mut l, &[0, 2], &s, &mut SplitMix64::new(0)).unwrap();
        assert_eq!(l, vec![2.0, 3.0, -2.0]);
        assert_eq!(t, 1);
    }
}
