//! One worker thread per served model, behind a bounded queue (text-embeddings-inference's
//! and text-generation-inference's shape: handlers enqueue, a batching task owns the model).
//!
//! * A pipeline worker owns an [`ia_tasks::Pipeline`]. Embedding requests waiting in its
//!   queue when a batch starts go through the model together, up to `max_batch_tokens`
//!   padded tokens; other tasks (transcription, classification, detection) run one at a time.
//! * A generator worker owns a [`TextGenerator`] and its KV caches. On an engine with a cache
//!   per sequence (the native LLaMA-family decoders) it batches continuously: between two
//!   decode steps, queued generations join the running batch through one prefill (prompts of
//!   any lengths) and finished ones leave, up to [`MAX_SHARED_GENERATIONS`] at a time. Other
//!   engines batch statically: queued generations whose prompts have the same length share
//!   the prefill and every step (`generate_together`) while the others wait for the next
//!   round, or run one after another without batched decoding. Tokens go back over a channel
//!   as they are chosen; a closed channel (the client went away) stops that generation after
//!   the current token, and its cache is freed.
//!
//! Engine calls are blocking CPU work, so workers are plain threads, not async tasks.

use crate::error::ApiError;
use crate::metrics::Metrics;
use ia_engine::generation::{
    generate, generate_together, ContinuousBatch, Finished, GenerateOptions, GenerationStats,
    StopReason, TextGenerator,
};
use ia_engine::EngineError;
use ia_tasks::{Input, Pipeline, TaskOptions, TaskOutput, TaskResult};
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;
use tokenizers::Tokenizer;
use tokio::sync::{mpsc, oneshot};

/// Work for a pipeline worker.
pub enum PipelineJob {
    /// Sentence embeddings of `texts`; `tokens` bounds the longest text's token count from
    /// above (for the padded batch size; the handler does not tokenize, the pipeline does).
    Embed {
        texts: Vec<String>,
        tokens: usize,
        reply: EmbeddingReply,
    },
    /// One task input (its file, if any, lives as long as the job).
    Run {
        input: Input,
        opts: TaskOptions,
        reply: oneshot::Sender<Result<TaskResult, ApiError>>,
        _file: Option<tempfile::TempPath>,
    },
}

/// How the pipeline worker batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Padded tokens (texts x longest text) one batch may hold; a single larger request
    /// still runs, alone.
    pub max_batch_tokens: usize,
    /// Off: every request runs alone (the baseline of the batching benchmark).
    pub enabled: bool,
}

pub fn spawn_pipeline_worker(
    model: String,
    mut pipeline: Pipeline,
    mut jobs: mpsc::Receiver<PipelineJob>,
    batching: Batching,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("serve-{model}"))
        .spawn(move || {
            let mut pending: Option<PipelineJob> = None;
            while let Some(job) = pending.take().or_else(|| jobs.blocking_recv()) {
                metrics.queue_left(&model);
                match job {
                    PipelineJob::Run {
                        input, opts, reply, ..
                    } => {
                        metrics.batch(&model, 1);
                        let result =
                            contain(|| pipeline.run(&input, &opts).map_err(ApiError::from));
                        let _ = reply.send(result.and_then(|r| r));
                    }
                    PipelineJob::Embed {
                        texts,
                        tokens,
                        reply,
                    } => {
                        let mut batch = vec![(texts, reply)];
                        let (mut count, mut longest) = (batch[0].0.len(), tokens);
                        while let Some(next) =
                            batching.enabled.then(|| jobs.try_recv().ok()).flatten()
                        {
                            match next {
                                PipelineJob::Embed {
                                    texts,
                                    tokens,
                                    reply,
                                } if (count + texts.len()) * longest.max(tokens)
                                    <= batching.max_batch_tokens =>
                                {
                                    metrics.queue_left(&model);
                                    count += texts.len();
                                    longest = longest.max(tokens);
                                    batch.push((texts, reply));
                                }
                                other => {
                                    pending = Some(other);
                                    break;
                                }
                            }
                        }
                        metrics.batch(&model, count);
                        embed_batch(&mut pipeline, batch);
                    }
                }
            }
        })
        .map(|_| ())
}

/// One text's embedding and the tokens the model saw of it.
pub struct EmbeddingRow {
    pub values: Vec<f32>,
    pub tokens: usize,
}

/// Where a request's embeddings (one row per text) go.
type EmbeddingReply = oneshot::Sender<Result<Vec<EmbeddingRow>, ApiError>>;

/// Runs `f`, turning a panic of the engine into an error for the requests at hand, so that
/// the worker (and its model) keeps serving.
fn contain<T>(f: impl FnOnce() -> T) -> Result<T, ApiError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        ApiError::Engine(format!("the engine failed: {what}"))
    })
}

/// Runs the texts of several requests as one padded batch and hands each its rows.
fn embed_batch(pipeline: &mut Pipeline, batch: Vec<(Vec<String>, EmbeddingReply)>) {
    let inputs: Vec<Input> = batch
        .iter()
        .flat_map(|(texts, _)| texts.iter().cloned().map(Input::Text))
        .collect();
    let rows: Result<Vec<EmbeddingRow>, ApiError> = contain(|| {
        pipeline
            .run_batch(&inputs, &TaskOptions::default())
            .map_err(ApiError::from)
    })
    .and_then(|r| r)
    .and_then(|results| {
        results
            .into_iter()
            .map(|r| match r.output {
                TaskOutput::Embedding { values, .. } => Ok(EmbeddingRow {
                    values,
                    tokens: r.input_tokens.unwrap_or(0),
                }),
                _ => Err(ApiError::Engine(
                    "the model returned no embedding for a text".into(),
                )),
            })
            .collect()
    });
    match rows {
        Ok(mut rows) => {
            for (texts, reply) in batch {
                let rest = rows.split_off(texts.len().min(rows.len()));
                let _ = reply.send(Ok(std::mem::replace(&mut rows, rest)));
            }
        }
        Err(e) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// A generation request for a generator worker.
pub struct GenerationJob {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    /// Strings that end the generation; the text stops before them.
    pub stop: Vec<String>,
    pub events: mpsc::Sender<GenerationEvent>,
}

/// Why a generation ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS, a stop token or a stop string.
    Stop,
    /// max_tokens or the context.
    Length,
}

/// What a generator worker reports about one generation.
#[derive(Debug, Clone)]
pub enum GenerationEvent {
    /// A chosen token and the text it completes (empty while a character or a possible stop
    /// string is incomplete).
    Token {
        id: u32,
        text: String,
        elapsed_ms: f64,
    },
    Done(GenerationSummary),
    Failed(ApiError),
}

#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct GenerationSummary {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub time_to_first_token_ms: f64,
    /// None with fewer than two new tokens.
    pub decode_tokens_per_s: Option<f64>,
}

/// Most generations that share decode steps.
pub const MAX_SHARED_GENERATIONS: usize = 8;

pub fn spawn_generator_worker(
    model: String,
    mut generator: Box<dyn TextGenerator>,
    tokenizer: Arc<Tokenizer>,
    mut jobs: mpsc::Receiver<GenerationJob>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("serve-{model}"))
        .spawn(move || {
            if generator.sequence_pool().is_some() {
                continuous(&model, generator.as_mut(), &tokenizer, &mut jobs, &metrics);
            } else {
                grouped(&model, generator.as_mut(), &tokenizer, &mut jobs, &metrics);
            }
        })
        .map(|_| ())
}

/// Continuous batching: at each decode step, queued generations join the running batch (up
/// to [`MAX_SHARED_GENERATIONS`]), their prefill riding in the same pass, and finished ones
/// leave.
fn continuous(
    model: &str,
    generator: &mut dyn TextGenerator,
    tokenizer: &Tokenizer,
    jobs: &mut mpsc::Receiver<GenerationJob>,
    metrics: &Metrics,
) {
    let mut batch: ContinuousBatch<Stream> = ContinuousBatch::default();
    let on_token = |stream: &mut Stream, id: u32| stream.token(tokenizer, id);
    loop {
        let mut newcomers = Vec::new();
        if batch.is_empty() {
            match jobs.blocking_recv() {
                Some(job) => newcomers.push(job),
                None => return,
            }
        }
        while batch.len() + newcomers.len() < MAX_SHARED_GENERATIONS {
            match jobs.try_recv() {
                Ok(job) => newcomers.push(job),
                Err(_) => break,
            }
        }
        for _ in &newcomers {
            metrics.queue_left(model);
        }
        let senders: Vec<_> = newcomers.iter().map(|j| j.events.clone()).collect();
        let joining = newcomers
            .into_iter()
            .map(|job| {
                let stream = Stream::new(&job);
                (job.prompt, job.options, stream)
            })
            .collect::<Vec<_>>();
        metrics.batch(model, batch.len() + joining.len());
        let finished = match contain(|| batch.step(generator, joining, on_token)) {
            Ok(done) => done,
            Err(e) => {
                // The newcomers' streams went down with the panic; tell their clients.
                for events in senders {
                    let _ = events.blocking_send(GenerationEvent::Failed(e.clone()));
                }
                batch.abort(generator, EngineError::Runtime(e.to_string()))
            }
        };
        for Finished {
            tag: stream,
            result,
        } in finished
        {
            let events = stream.events.clone();
            let event = match result {
                Ok((_, stats)) => {
                    let summary = stream.finish(&stats);
                    metrics.generation(model, &summary);
                    GenerationEvent::Done(summary)
                }
                Err(e) => GenerationEvent::Failed(ApiError::from(e)),
            };
            let _ = events.blocking_send(event);
        }
    }
}

/// Static batching for engines without per-sequence caches: queued generations whose prompts
/// have the first one's length start together and share every step until all have stopped.
fn grouped(
    model: &str,
    generator: &mut dyn TextGenerator,
    tokenizer: &Tokenizer,
    jobs: &mut mpsc::Receiver<GenerationJob>,
    metrics: &Metrics,
) {
    // Jobs taken off the channel to look for companions, in arrival order.
    let mut waiting: VecDeque<GenerationJob> = VecDeque::new();
    loop {
        let Some(first) = waiting.pop_front().or_else(|| jobs.blocking_recv()) else {
            return;
        };
        while waiting.len() < MAX_SHARED_GENERATIONS {
            match jobs.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => break,
            }
        }
        let mut group = vec![first];
        let mut i = 0;
        while i < waiting.len() && group.len() < MAX_SHARED_GENERATIONS {
            if waiting[i].prompt.len() == group[0].prompt.len() {
                group.extend(waiting.remove(i));
            } else {
                i += 1;
            }
        }
        for _ in &group {
            metrics.queue_left(model);
        }
        metrics.batch(model, group.len());
        let senders: Vec<_> = group.iter().map(|j| j.events.clone()).collect();
        let outcomes = contain(|| run_generations(generator, tokenizer, group))
            .unwrap_or_else(|e| senders.into_iter().map(|s| (s, Err(e.clone()))).collect());
        for (events, outcome) in outcomes {
            let event = match outcome {
                Ok(summary) => {
                    metrics.generation(model, &summary);
                    GenerationEvent::Done(summary)
                }
                Err(e) => GenerationEvent::Failed(e),
            };
            let _ = events.blocking_send(event);
        }
    }
}

/// A generation's way back to its client: the text so far and the channel.
struct Stream {
    events: mpsc::Sender<GenerationEvent>,
    text: StreamedText,
    tokens: Vec<u32>,
    start: Instant,
}

impl Stream {
    fn new(job: &GenerationJob) -> Self {
        Self {
            events: job.events.clone(),
            text: StreamedText::new(job.stop.clone()),
            tokens: Vec::new(),
            start: Instant::now(),
        }
    }

    /// Sends the piece of text `id` completes; `Break` when the client went away or a stop
    /// string ended the text.
    fn token(&mut self, tokenizer: &Tokenizer, id: u32) -> ControlFlow<()> {
        self.tokens.push(id);
        let decoded = tokenizer.decode(&self.tokens, true).unwrap_or_default();
        let (piece, stop_string) = self.text.advance(&decoded);
        let event = GenerationEvent::Token {
            id,
            text: piece,
            elapsed_ms: self.start.elapsed().as_secs_f64() * 1e3,
        };
        let gone = self.events.blocking_send(event).is_err();
        if gone || stop_string {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// Sends what was held back, and sums the generation up.
    fn finish(mut self, stats: &GenerationStats) -> GenerationSummary {
        let rest = self.text.finish();
        if !rest.is_empty() {
            let _ = self.events.blocking_send(GenerationEvent::Token {
                id: *self.tokens.last().unwrap_or(&0),
                text: rest,
                elapsed_ms: self.start.elapsed().as_secs_f64() * 1e3,
            });
        }
        let finish_reason = match stats.stop_reason {
            StopReason::MaxNewTokens | StopReason::ContextFull => FinishReason::Length,
            StopReason::Eos | StopReason::StopToken | StopReason::Stopped => FinishReason::Stop,
        };
        GenerationSummary {
            finish_reason,
            prompt_tokens: stats.prompt_tokens,
            completion_tokens: stats.new_tokens,
            time_to_first_token_ms: stats.time_to_first_token_ms,
            decode_tokens_per_s: stats.decode_tokens_per_s(),
        }
    }
}

type Outcome = (
    mpsc::Sender<GenerationEvent>,
    Result<GenerationSummary, ApiError>,
);

/// Runs a group of generations: alone, or sharing prefill and decode steps when there are
/// several (equal prompt lengths) and the engine decodes batches; one after another when it
/// does not.
fn run_generations(
    generator: &mut dyn TextGenerator,
    tokenizer: &Tokenizer,
    group: Vec<GenerationJob>,
) -> Vec<Outcome> {
    if group.len() > 1 {
        let mut streams: Vec<Stream> = group.iter().map(Stream::new).collect();
        let requests: Vec<(&[u32], &GenerateOptions)> = group
            .iter()
            .map(|j| (j.prompt.as_slice(), &j.options))
            .collect();
        match generate_together(generator, &requests, |i, id| {
            streams[i].token(tokenizer, id)
        }) {
            Ok(results) => {
                return streams
                    .into_iter()
                    .zip(results)
                    .map(|(stream, (_, stats))| (stream.events.clone(), Ok(stream.finish(&stats))))
                    .collect()
            }
            // No batched decoding here, and nothing was sent yet: one after another.
            Err(EngineError::Unsupported(_)) => {}
            Err(e) => {
                let e = ApiError::from(e);
                return group
                    .iter()
                    .map(|j| (j.events.clone(), Err(e.clone())))
                    .collect();
            }
        }
    }
    group
        .into_iter()
        .map(|job| {
            let mut stream = Stream::new(&job);
            let outcome = generate(generator, &job.prompt, &job.options, |id| {
                stream.token(tokenizer, id)
            })
            .map(|(_, stats)| stream.finish(&stats))
            .map_err(ApiError::from);
            (job.events, outcome)
        })
        .collect()
}

/// The text of a generation as it grows, handed out in pieces that never change afterwards:
/// a piece is held back while it ends in an incomplete character or in what may be the start
/// of a stop string, and the text ends before the first stop string.
pub struct StreamedText {
    stop: Vec<String>,
    /// The text handed out so far.
    sent: String,
    /// The latest decoded continuation.
    last: String,
}

impl StreamedText {
    pub fn new(stop: Vec<String>) -> Self {
        Self {
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            sent: String::new(),
            last: String::new(),
        }
    }

    /// The new piece of `decoded` (the whole continuation so far) and whether a stop string
    /// now ends it.
    pub fn advance(&mut self, decoded: &str) -> (String, bool) {
        self.last = decoded.to_string();
        if let Some(end) = self
            .stop
            .iter()
            .filter_map(|s| decoded.find(s.as_str()))
            .min()
        {
            self.last.truncate(end);
            return (self.take_until(decoded, end), true);
        }
        let complete = decoded.trim_end_matches('\u{FFFD}').len();
        let held = self
            .stop
            .iter()
            .map(|s| {
                (1..s.len())
                    .rev()
                    .find(|&k| s.is_char_boundary(k) && decoded[..complete].ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        (self.take_until(decoded, complete - held), false)
    }

    /// What was held back at the end, once the generation stopped.
    pub fn finish(&mut self) -> String {
        let last = std::mem::take(&mut self.last);
        match last.strip_prefix(self.sent.as_str()) {
            Some(rest) => {
                let rest = rest.to_string();
                self.sent = last;
                rest
            }
            None => String::new(),
        }
    }

    fn take_until(&mut self, decoded: &str, end: usize) -> String {
        // Decoding again may rewrite the tail (an incomplete character resolved): only text
        // past what was sent, when what was sent is still its start.
        match decoded.get(..end) {
            Some(prefix) if prefix.starts_with(self.sent.as_str()) => {
                let piece = prefix[self.sent.len()..].to_string();
                self.sent = prefix.to_string();
                piece
            }
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stop: &[&str], steps: &[&str]) -> (Vec<String>, bool, String) {
        let mut t = StreamedText::new(stop.iter().map(|s| s.to_string()).collect());
        let mut pieces = Vec::new();
        for s in steps {
            let (piece, hit) = t.advance(s);
            pieces.push(piece);
            if hit {
                return (pieces, true, String::new());
            }
        }
        let rest = t.finish();
        (pieces, false, rest)
    }

    #[test]
    fn an_engine_panic_becomes_an_error_for_its_requests() {
        let e = contain(|| -> u32 { panic!("shape mismatch") }).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        assert!(e.to_string().contains("shape mismatch"), "{e}");
        assert_eq!(contain(|| 7).unwrap(), 7);
    }

    #[test]
    fn pieces_never_change_and_stop_strings_are_cut() {
        let (p, hit, rest) = run(&[], &["He", "Hel\u{FFFD}", "Hello", "Hello!"]);
        assert_eq!((p.concat() + &rest, hit), ("Hello!".to_string(), false));
        assert_eq!(p[1], "l", "the incomplete character is held back");
        // "EN" may start the stop string "END": held back, then cut.
        let (p, hit, _) = run(&["END"], &["ab", "abEN", "abEND more"]);
        assert_eq!((p.concat(), hit), ("ab".to_string(), true));
        // Not a stop after all: released.
        let (p, hit, rest) = run(&["END"], &["ab", "abEN", "abENx"]);
        assert_eq!((p.concat() + &rest, hit), ("abENx".to_string(), false));
        let (p, _, rest) = run(&["END"], &["ab", "abE"]);
        assert_eq!(p.concat(), "ab");
        assert_eq!(rest, "E", "held-back text comes out at the end");
    }
}
