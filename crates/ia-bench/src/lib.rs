//! The benchmark harness.
//!
//! For each combination (model, platform, batch size, precision, scenario) it loads a fresh
//! session, times the first inference, warms up, then runs timed iterations until both a
//! minimum count and a minimum duration are reached. It reports latency statistics with the
//! sample count, throughput, peak resident memory, and its own per-iteration overhead.

pub mod external;
pub mod isolation;
pub mod legacy;
pub mod limits;
pub mod memory;
pub mod stats;
pub mod training;

use ia_engine::generation::{self, GenerateOptions, Sampling, TextGenerator};
use ia_engine::{
    inputs, Capability, Engine, EngineError, GenerationTiming, ImageBatch, InputSpec, Inputs,
    LoadFailure, LoadVariant, Placement, Precision, Session, SessionInfo, TimedIterations,
    TimedWorkload,
};
use ia_hardware::Platform;
use ia_models::{Modality, Model};
use serde::Serialize;
use std::time::{Duration, Instant};

pub use isolation::{cancel_requested, isolate, request_cancel};
pub use stats::LatencyStats;

/// How long and how often to measure.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Protocol {
    pub warmup_iterations: usize,
    pub min_iterations: usize,
    pub min_duration: Duration,
    /// Hard cap so a very fast model cannot run for ever on a large duration.
    pub max_iterations: usize,
}

impl Default for Protocol {
    fn default() -> Self {
        Self {
            warmup_iterations: 3,
            min_iterations: 10,
            min_duration: Duration::from_secs(2),
            max_iterations: 100_000,
        }
    }
}

impl Protocol {
    /// Whether the timed loop goes on after `done` iterations: until both the minimum count
    /// and the minimum duration are reached, never past the cap.
    pub fn wants_more(&self, done: usize, elapsed: Duration) -> bool {
        done < self.max_iterations && (done < self.min_iterations || elapsed < self.min_duration)
    }

    /// How many more timed iterations to run after `done` in `elapsed`, iterations taking
    /// about `per_iteration_ms`: enough for both minimums as far as can be foreseen, never
    /// past the cap, 0 when the protocol is satisfied. The loop asks again after each call,
    /// so a wrong estimate costs at most a call.
    pub fn remaining(&self, done: usize, elapsed: Duration, per_iteration_ms: f64) -> usize {
        if !self.wants_more(done, elapsed) {
            return 0;
        }
        let by_count = self.min_iterations.saturating_sub(done);
        let left_ms = self.min_duration.saturating_sub(elapsed).as_secs_f64() * 1e3;
        let by_time = if per_iteration_ms > 0.0 {
            (left_ms / per_iteration_ms).ceil() as usize
        } else {
            1
        };
        by_count.max(by_time).max(1).min(self.max_iterations - done)
    }
}

/// MLPerf-style scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One query at a time, latency per query.
    SingleStream,
    /// Queries back to back; throughput from total wall time.
    Offline,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::SingleStream => "single-stream",
            Scenario::Offline => "offline",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "single-stream" | "singlestream" | "latency" => Ok(Scenario::SingleStream),
            "offline" | "throughput" => Ok(Scenario::Offline),
            other => Err(format!(
                "unknown scenario '{other}' (expected single-stream or offline)"
            )),
        }
    }
}

/// What a combination measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum Mode {
    /// Forward passes, generations or transcriptions.
    #[default]
    Inference,
    /// Optimiser steps on a synthetic labelled batch ([`training::measure_training`]).
    Training { gradient_checkpointing: bool },
}

#[derive(Debug, Clone)]
pub struct Combination {
    pub model: Model,
    pub platform: Platform,
    pub batch_size: usize,
    pub seq_len: usize,
    pub precision: Precision,
    pub scenario: Scenario,
    /// Tokens generated per iteration, for generation models.
    pub new_tokens: usize,
    /// Clip length for audio models, seconds.
    pub audio_seconds: f32,
    /// How the runtime gets the model ready, where it offers a choice (the web platforms).
    pub load_variant: LoadVariant,
    /// A recording to feed audio models instead of the synthetic signal (every batch row).
    pub audio_file: Option<std::path::PathBuf>,
    pub mode: Mode,
}

#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub session: SessionInfo,
    pub load_time_ms: f64,
    pub first_inference_ms: f64,
    pub warmup_iterations: usize,
    /// Every timed iteration, milliseconds, in order.
    pub samples_ms: Vec<f64>,
    pub latency: LatencyStats,
    /// Wall time of the timed phase.
    pub timed_duration_s: f64,
    /// How far the timed phase's consecutive windows disagree ([`stats::window_spread`]):
    /// whether the machine kept one speed while it ran. None with too few samples to say.
    pub window_spread: Option<f64>,
    pub throughput_items_per_s: f64,
    pub throughput_tokens_per_s: Option<f64>,
    /// Peak resident set of the process during this combination, when the OS reports it.
    pub peak_rss_bytes: Option<u64>,
    /// Whether the peak covers only this combination (Linux can reset the high-water mark).
    pub peak_rss_per_combination: bool,
    /// What the timing loop itself costs per iteration, measured on an empty body.
    pub harness_overhead_ns: f64,
    /// Text-generation metrics, for generation models (one timed iteration = one generation).
    pub generation: Option<GenerationMetrics>,
    /// Seconds of audio in each input, for audio models.
    pub audio_seconds: Option<f64>,
    /// Median compute time over the audio it processed (all rows of the batch): < 1 is faster
    /// than real time.
    pub real_time_factor: Option<f64>,
    /// Training combinations: what the steps held and learned.
    pub training: Option<training::TrainingMetrics>,
}

/// LLM metrics as optimum-benchmark defines them.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationMetrics {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Time to first token: prefill plus choosing the first new token.
    pub ttft: LatencyStats,
    /// Time per output token: every decode step of every timed generation.
    pub tpot: LatencyStats,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// Bytes of the weights as loaded (quantised blocks included), when the engine knows.
    pub weight_bytes: Option<u64>,
    /// For quantised precisions: the fraction of greedy tokens identical to the f32 model's at
    /// the same position, over AGREEMENT_PROMPT_LENGTHS prompts x `new_tokens` tokens.
    pub greedy_agreement_vs_f32: Option<f64>,
    /// Image-text generation: image tokens in the prompt (part of `prompt_tokens`), and the
    /// mean time to encode the images (part of TTFT).
    pub image_tokens: Option<usize>,
    pub image_encode_mean_ms: Option<f64>,
}

impl GenerationMetrics {
    /// Summarises timed generations of `batch` sequences: TTFT and prefill per generation,
    /// TPOT per decode step (each step yields one token per sequence).
    pub fn from_samples(
        prompt_tokens: usize,
        new_tokens: usize,
        batch: usize,
        ttft_ms: &[f64],
        prefill_ms: &[f64],
        tpot_ms: &[f64],
    ) -> Self {
        let mean_prefill_s = prefill_ms.iter().sum::<f64>() / prefill_ms.len().max(1) as f64 / 1e3;
        let decode_s = tpot_ms.iter().sum::<f64>() / 1e3;
        Self {
            prompt_tokens,
            new_tokens,
            ttft: LatencyStats::from_samples(ttft_ms),
            tpot: LatencyStats::from_samples(tpot_ms),
            prefill_tokens_per_s: (prompt_tokens * batch) as f64 / mean_prefill_s,
            decode_tokens_per_s: (tpot_ms.len() * batch) as f64 / decode_s,
            weight_bytes: None,
            greedy_agreement_vs_f32: None,
            image_tokens: None,
            image_encode_mean_ms: None,
        }
    }
}

/// What a timed run produced before any statistic: how the model was loaded and every timed
/// sample. [`Measurement::new`] is the one place this becomes a `Measurement`, for the native
/// harness, the browser and imported results alike.
#[derive(Debug, Clone)]
pub struct TimedRun {
    pub session: SessionInfo,
    pub load_time_ms: f64,
    pub first_inference_ms: f64,
    pub warmup_iterations: usize,
    /// Every timed iteration, milliseconds, in order.
    pub samples_ms: Vec<f64>,
    /// Wall time of the timed phase (the sum of the samples where gaps were not recorded).
    pub timed_duration_s: f64,
    pub peak_rss_bytes: Option<u64>,
    pub peak_rss_per_combination: bool,
    /// What the timing loop itself costs per iteration (NaN where nobody measured it).
    pub harness_overhead_ns: f64,
}

/// What one timed iteration processed: the sizes throughput and the per-kind metrics need.
#[derive(Debug, Clone)]
pub struct Work {
    pub scenario: Scenario,
    /// Inputs (batch rows; generated sequences) per iteration.
    pub items: usize,
    /// Tokens per iteration, for text inputs (for generations: prompt plus new tokens).
    pub tokens: Option<usize>,
    /// Seconds of audio in each input, for audio models.
    pub audio_seconds: Option<f64>,
    pub generation: Option<GenerationMetrics>,
}

impl Work {
    /// One forward pass over `inputs`.
    pub fn forward(scenario: Scenario, inputs: &Inputs) -> Self {
        let audio_seconds = match inputs {
            Inputs::Audio {
                batch,
                sample_rate,
                samples,
            } => Some(samples.len() as f64 / (*batch).max(1) as f64 / f64::from(*sample_rate)),
            _ => None,
        };
        Self {
            scenario,
            items: inputs.batch_size(),
            tokens: inputs.token_count(),
            audio_seconds,
            generation: None,
        }
    }

    /// One generation of `metrics.new_tokens` tokens for each of `batch` prompts.
    pub fn generation(batch: usize, metrics: GenerationMetrics) -> Self {
        Self {
            scenario: Scenario::SingleStream,
            items: batch,
            tokens: Some((metrics.prompt_tokens + metrics.new_tokens) * batch),
            audio_seconds: None,
            generation: Some(metrics),
        }
    }
}

impl Measurement {
    /// Statistics of a timed run. Throughput: single stream (and generations) at the mean
    /// latency; offline at everything the timed loop spent, gaps between queries included.
    /// The real-time factor is the median compute time over the audio of all rows.
    pub fn new(run: TimedRun, work: Work) -> Self {
        let latency = LatencyStats::from_samples(&run.samples_ms);
        let per_query_s = match work.scenario {
            Scenario::Offline if work.generation.is_none() => {
                run.timed_duration_s / run.samples_ms.len().max(1) as f64
            }
            _ => latency.mean_ms / 1e3,
        };
        let items = work.items as f64;
        let real_time_factor = work
            .audio_seconds
            .map(|s| latency.p50_ms / 1e3 / (s * items));
        Self {
            session: run.session,
            load_time_ms: run.load_time_ms,
            first_inference_ms: run.first_inference_ms,
            warmup_iterations: run.warmup_iterations,
            window_spread: stats::window_spread(&run.samples_ms),
            samples_ms: run.samples_ms,
            timed_duration_s: run.timed_duration_s,
            throughput_items_per_s: items / per_query_s,
            throughput_tokens_per_s: work.tokens.map(|t| t as f64 / per_query_s),
            latency,
            peak_rss_bytes: run.peak_rss_bytes,
            peak_rss_per_combination: run.peak_rss_per_combination,
            harness_overhead_ns: run.harness_overhead_ns,
            generation: work.generation,
            audio_seconds: work.audio_seconds,
            real_time_factor,
            training: None,
        }
    }
}

/// The fixed prompt set of the agreement check: the sample passage cut to these lengths.
pub const AGREEMENT_PROMPT_LENGTHS: [usize; 4] = [8, 16, 32, 64];

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status")]
pub enum Outcome {
    #[serde(rename = "pass")]
    Measured(Box<Measurement>),
    /// The engine cannot run this combination on this machine (platform absent, class or
    /// precision not implemented): recorded with the reason.
    #[serde(rename = "unavailable")]
    Unavailable { reason: String },
    #[serde(rename = "fail")]
    Failed { stage: String, error: String },
}

impl Outcome {
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Measured(_) => "pass",
            Outcome::Unavailable { .. } => "unavailable",
            Outcome::Failed { .. } => "fail",
        }
    }
}

/// An engine's refusal: `Unsupported` means this machine or engine cannot run the combination
/// (unavailable, with the reason); anything else is a failure at `stage`.
fn refused(stage: &str, e: EngineError) -> Outcome {
    match e {
        EngineError::Unsupported(reason) => Outcome::Unavailable { reason },
        e => fail(stage, e),
    }
}

/// The outcome of a combination stopped by a cancellation request; the caller abandons it.
pub fn interrupted() -> Outcome {
    fail("interrupted", "the run was interrupted (SIGINT/SIGTERM)")
}

pub(crate) fn fail(stage: &str, e: impl ToString) -> Outcome {
    Outcome::Failed {
        stage: stage.into(),
        error: e.to_string().replace('\n', " "),
    }
}

/// What every iteration of a combination feeds the model, prepared by the harness before any
/// runtime loads it.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// One forward pass over these inputs.
    Forward(Inputs),
    /// A greedy generation of `combo.new_tokens` tokens for `combo.batch_size` copies of
    /// the prompt; for an image-text model, each copy opens with its picture (one per copy),
    /// whose tokens the loaded model adds.
    Generation {
        prompt: Vec<u32>,
        images: Option<ImageBatch>,
    },
}

/// Measures one combination on an in-process engine. Never panics on a model error:
/// failures become outcomes.
pub fn measure(
    engine: &dyn Engine,
    combo: &Combination,
    platform_available: Result<(), String>,
    protocol: &Protocol,
) -> Outcome {
    if let Err(reason) = platform_available {
        return Outcome::Unavailable { reason };
    }
    if let Mode::Training {
        gradient_checkpointing,
    } = combo.mode
    {
        return training::measure_training(engine, combo, gradient_checkpointing, protocol);
    }
    let capability = if combo.model.generates_text() {
        Capability::Generate
    } else {
        Capability::Run
    };
    if let Err(e) = engine.supports(combo.model.class, combo.platform, capability) {
        return refused("load", e);
    }
    let (mut outcome, target) = measure_with(combo, Ok(()), protocol, |prepared| {
        load_in_process(engine, combo, prepared)
    });
    drop(target);
    let quantised = !matches!(
        combo.precision,
        Precision::F32 | Precision::F16 | Precision::Bf16
    );
    if let Outcome::Measured(m) = &mut outcome {
        // A checkpoint that is only a .gguf file has no f32 weights to agree with.
        let has_f32 = match &combo.model.source {
            ia_models::ModelSource::Checkpoint(c) => !c.safetensors.is_empty(),
            ia_models::ModelSource::RandomInit { .. } => true,
        };
        if let (Some(g), true, true) = (m.generation.as_mut(), quantised, has_f32) {
            // Loads the model twice more, so after the timed model is gone.
            match greedy_agreement(engine, combo) {
                Ok(a) => g.greedy_agreement_vs_f32 = Some(a),
                Err(e) => return fail("agreement-check", e),
            }
        }
    }
    outcome
}

/// Checks that the combination fits in memory, then loads it on `engine` as a timed workload
/// over `prepared`.
fn load_in_process(
    engine: &dyn Engine,
    combo: &Combination,
    prepared: Prepared,
) -> Result<Box<dyn TimedWorkload>, LoadFailure> {
    let source = &combo.model.source;
    match prepared {
        Prepared::Forward(inputs) => {
            let work = ia_engine::memory::forward_workload(source, &inputs);
            ia_engine::memory::check_fits(source, combo.precision, work)?;
            let session = engine.load(
                &combo.model,
                Placement::new(combo.platform, combo.precision),
            )?;
            Ok(Box::new(ForwardTarget { session, inputs }))
        }
        Prepared::Generation { prompt, images } => {
            // The prompt opens with the picture's image tokens.
            let image_tokens = match &images {
                Some(images) => {
                    ia_engine::inputs::image_work(&combo.model, images)
                        .map_err(|e| LoadFailure {
                            stage: "inputs",
                            error: e,
                        })?
                        .tokens
                }
                None => 0,
            };
            let positions = combo.seq_len.saturating_add(image_tokens);
            let work = ia_models::footprint::Workload {
                batch: combo.batch_size,
                positions,
                cached_positions: positions.saturating_add(combo.new_tokens),
                beams: 1,
            };
            ia_engine::memory::check_fits(source, combo.precision, work)?;
            let model = engine.load_generator(
                &combo.model,
                Placement::new(combo.platform, combo.precision),
            )?;
            Ok(Box::new(GenerationTarget::new(
                model,
                prompt,
                combo.batch_size,
                combo.new_tokens,
                images,
            )?))
        }
    }
}

/// Measures one combination on a runtime `load` gives: prepares the inputs, loads, runs the
/// protocol ([`drive`]) and computes the statistics. The target comes back with a measured
/// outcome (the browser's details are read from it). Never panics on a model error.
pub fn measure_with<T: TimedWorkload>(
    combo: &Combination,
    platform_available: Result<(), String>,
    protocol: &Protocol,
    load: impl FnOnce(Prepared) -> Result<T, LoadFailure>,
) -> (Outcome, Option<T>) {
    if let Err(reason) = platform_available {
        return (Outcome::Unavailable { reason }, None);
    }
    let prepared = match prepare(combo) {
        Ok(p) => p,
        Err(e) => return (fail("inputs", e), None),
    };
    // What an iteration processes, read before the inputs move into the workload (one copy
    // of them, not two, counts in the peak memory).
    let (forward_work, prompt_len) = match &prepared {
        Prepared::Forward(inputs) => (Some(Work::forward(combo.scenario, inputs)), 0),
        Prepared::Generation { prompt, .. } => (None, prompt.len()),
    };
    let (target, driven) = match drive(protocol, || load(prepared)) {
        Ok(d) => d,
        Err(outcome) => return (outcome, None),
    };
    let work = match forward_work {
        Some(work) => work,
        None => {
            let timings = &driven.generations;
            if timings.len() != driven.run.samples_ms.len() {
                return (
                    fail(
                        "timed-iteration",
                        "the runtime returned no generation timings",
                    ),
                    None,
                );
            }
            let ttft: Vec<f64> = timings.iter().map(|g| g.ttft_ms).collect();
            let encode: Vec<f64> = timings.iter().filter_map(|g| g.image_encode_ms).collect();
            let image_tokens = timings.first().map_or(0, |g| g.image_tokens);
            let prefill: Vec<f64> = timings.iter().map(|g| g.prefill_ms).collect();
            let steps: Vec<f64> = timings.iter().flat_map(|g| g.step_ms.clone()).collect();
            let metrics = GenerationMetrics {
                weight_bytes: target.weight_bytes(),
                image_tokens: (image_tokens > 0).then_some(image_tokens),
                image_encode_mean_ms: mean(&encode),
                ..GenerationMetrics::from_samples(
                    prompt_len + image_tokens,
                    combo.new_tokens,
                    combo.batch_size,
                    &ttft,
                    &prefill,
                    &steps,
                )
            };
            Work::generation(combo.batch_size, metrics)
        }
    };
    let measurement = Measurement::new(driven.run, work);
    (Outcome::Measured(Box::new(measurement)), Some(target))
}

/// The inputs of a combination: generated for its modality (or a recording for an audio
/// model given `--audio-file`), or a generation's prompt.
fn prepare(combo: &Combination) -> Result<Prepared, String> {
    let source = &combo.model.source;
    if combo.model.generates_text() {
        let Inputs::Text { input_ids, .. } = inputs::generate(
            &combo.model,
            Modality::Text,
            InputSpec::new(1, combo.seq_len),
        )
        .map_err(|e| e.to_string())?
        else {
            return Err("text generator returned non-text inputs".into());
        };
        // An image-text model's test picture goes through its own image processor.
        let images = (combo.model.modality == Modality::Multimodal)
            .then(|| inputs::test_images(&combo.model, combo.batch_size))
            .transpose()
            .map_err(|e| e.to_string())?;
        return Ok(Prepared::Generation {
            prompt: input_ids,
            images,
        });
    }
    let spec = InputSpec {
        audio_seconds: combo.audio_seconds,
        ..InputSpec::new(combo.batch_size, combo.seq_len)
    };
    let inputs = match &combo.audio_file {
        Some(path) if combo.model.modality == Modality::Audio => {
            file_audio_inputs(source, path, combo.batch_size)?
        }
        _ => {
            inputs::generate(&combo.model, combo.model.modality, spec).map_err(|e| e.to_string())?
        }
    };
    Ok(Prepared::Forward(inputs))
}

/// What [`drive`] measured.
pub struct Driven {
    pub run: TimedRun,
    /// For a generation workload: each timed iteration's timings.
    pub generations: Vec<GenerationTiming>,
}

/// A call of [`TimedWorkload::run_timed`] covers about this much work at most, so a cancel
/// request or a runtime's step limit is never far away.
const CALL_SPAN_MS: f64 = 1000.0;

/// The protocol, once for every runtime: load, time the first inference, warm up, then
/// timed iterations until both the minimum count and the minimum duration are reached (the
/// durations the runtime reports, on its own clock); the process's peak memory when the
/// model runs in it, and what timing costs.
pub fn drive<T: TimedWorkload>(
    protocol: &Protocol,
    load: impl FnOnce() -> Result<T, LoadFailure>,
) -> Result<(T, Driven), Outcome> {
    let rss_reset = memory::reset_peak_rss();
    let t = Instant::now();
    let mut target = load().map_err(|f| refused(f.stage, f.error))?;
    let load_time_ms = target.load_time_ms().unwrap_or_else(|| ms(t.elapsed()));

    let first = target
        .run_timed(1)
        .map_err(|e| refused("first-inference", e))?;
    let Some(&first_inference_ms) = first.samples_ms.first() else {
        return Err(fail("first-inference", "the runtime returned no sample"));
    };

    let mut per_iteration_ms = first_inference_ms;
    let mut warmed = 0;
    while warmed < protocol.warmup_iterations {
        if cancel_requested() {
            return Err(interrupted());
        }
        let n = calls_of(per_iteration_ms).min(protocol.warmup_iterations - warmed);
        let w = target.run_timed(n).map_err(|e| fail("warm-up", e))?;
        per_iteration_ms = mean(&w.samples_ms).unwrap_or(per_iteration_ms);
        warmed += n;
    }

    // Grows as samples come: min_iterations is a user number, not an allocation size.
    let mut samples_ms = Vec::with_capacity(protocol.min_iterations.clamp(64, 1 << 16));
    let mut generations = Vec::new();
    let mut duration_ms = 0.0;
    loop {
        if cancel_requested() {
            return Err(interrupted());
        }
        let elapsed = Duration::from_secs_f64(duration_ms / 1e3);
        let n = protocol
            .remaining(samples_ms.len(), elapsed, per_iteration_ms)
            .min(calls_of(per_iteration_ms));
        if n == 0 {
            break;
        }
        let timed = target
            .run_timed(n)
            .map_err(|e| fail("timed-iteration", e))?;
        if timed.samples_ms.len() != n {
            return Err(fail(
                "timed-iteration",
                format!("asked for {n} iterations, got {}", timed.samples_ms.len()),
            ));
        }
        per_iteration_ms = mean(&timed.samples_ms).unwrap_or(per_iteration_ms);
        duration_ms += timed.duration_ms;
        samples_ms.extend(timed.samples_ms);
        generations.extend(timed.generations);
    }
    let (peak_rss_bytes, peak_rss_per_combination) = if target.in_process() {
        (memory::peak_rss_bytes(), rss_reset)
    } else {
        (None, false)
    };
    let harness_overhead_ns = target
        .timing_overhead_ns()
        .map_err(|e| fail("timed-iteration", e))?;
    let run = TimedRun {
        session: target.info().clone(),
        load_time_ms,
        first_inference_ms,
        warmup_iterations: protocol.warmup_iterations,
        samples_ms,
        timed_duration_s: duration_ms / 1e3,
        peak_rss_bytes,
        peak_rss_per_combination,
        harness_overhead_ns,
    };
    Ok((target, Driven { run, generations }))
}

/// How many iterations of `per_iteration_ms` fit in one call.
fn calls_of(per_iteration_ms: f64) -> usize {
    if per_iteration_ms > 0.0 {
        ((CALL_SPAN_MS / per_iteration_ms) as usize).max(1)
    } else {
        1
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// `iterations` runs of `once` back to back on the process clock, each timed; `once` returns
/// a generation's timings where an iteration is one.
pub(crate) fn timed_in_process(
    iterations: usize,
    mut once: impl FnMut() -> Result<Option<GenerationTiming>, EngineError>,
) -> Result<TimedIterations, EngineError> {
    let mut samples_ms = Vec::with_capacity(iterations);
    let mut generations = Vec::new();
    let start = Instant::now();
    for _ in 0..iterations {
        let t = Instant::now();
        let generation = once()?;
        samples_ms.push(ms(t.elapsed()));
        generations.extend(generation);
    }
    Ok(TimedIterations {
        samples_ms,
        duration_ms: ms(start.elapsed()),
        generations,
    })
}

/// An engine session over fixed inputs: one iteration is one `Session::run`.
struct ForwardTarget {
    session: Box<dyn Session>,
    inputs: Inputs,
}

impl TimedWorkload for ForwardTarget {
    fn info(&self) -> &SessionInfo {
        self.session.info()
    }

    fn run_timed(&mut self, iterations: usize) -> Result<TimedIterations, EngineError> {
        timed_in_process(iterations, || self.session.run(&self.inputs).map(|_| None))
    }

    fn timing_overhead_ns(&mut self) -> Result<f64, EngineError> {
        Ok(harness_overhead_ns())
    }
}

/// A text generator: one iteration is one greedy generation of `new_tokens` tokens for
/// every prompt; for an image-text model, encoding each prompt's picture first.
struct GenerationTarget {
    model: Box<dyn TextGenerator>,
    prompts: Vec<Vec<u32>>,
    new_tokens: usize,
    /// Image-text generation: one picture per prompt, and the image tokens of a prompt.
    images: Option<ImageBatch>,
    image_tokens: usize,
}

impl GenerationTarget {
    /// `batch` copies of `prompt`; with `images` (one per copy), each opens with the model's
    /// image token, expanded as its processor does (an untimed encode at load tells how far).
    fn new(
        mut model: Box<dyn TextGenerator>,
        prompt: Vec<u32>,
        batch: usize,
        new_tokens: usize,
        images: Option<ImageBatch>,
    ) -> Result<Self, LoadFailure> {
        let refused = |e: EngineError| LoadFailure {
            stage: "inputs",
            error: e,
        };
        let (prompt, image_tokens) = match &images {
            Some(images) => {
                let Some(token) = model.image_token() else {
                    return Err(refused(EngineError::Unsupported(
                        "the loaded generator takes no images".into(),
                    )));
                };
                // Every copy has the same picture, so the first image's tokens are each copy's.
                let tokens = model.attach_images(images).map_err(refused)?;
                let per_copy = tokens.first().copied().unwrap_or(0);
                let with_image: Vec<u32> = std::iter::once(token).chain(prompt).collect();
                let expanded = generation::expand_image_tokens(&with_image, token, &[per_copy])
                    .map_err(refused)?;
                (expanded, per_copy)
            }
            None => (prompt, 0),
        };
        Ok(Self {
            model,
            prompts: vec![prompt; batch],
            new_tokens,
            images,
            image_tokens,
        })
    }
}

impl TimedWorkload for GenerationTarget {
    fn info(&self) -> &SessionInfo {
        self.model.info()
    }

    fn run_timed(&mut self, iterations: usize) -> Result<TimedIterations, EngineError> {
        timed_in_process(iterations, || {
            let start = Instant::now();
            let encode_ms = match &self.images {
                Some(images) => {
                    self.model.attach_images(images)?;
                    Some(ms(start.elapsed()))
                }
                None => None,
            };
            let (_, stats) = generation::generate_batch_greedy(
                self.model.as_mut(),
                &self.prompts,
                self.new_tokens,
            )?;
            let mut timing = GenerationTiming::from(&stats);
            timing.ttft_ms += encode_ms.unwrap_or(0.0);
            timing.image_encode_ms = encode_ms;
            timing.image_tokens = self.image_tokens;
            Ok(Some(timing))
        })
    }

    fn timing_overhead_ns(&mut self) -> Result<f64, EngineError> {
        Ok(harness_overhead_ns())
    }

    fn weight_bytes(&self) -> Option<u64> {
        self.model.weight_bytes()
    }
}

/// A WAV file at the rate the model's feature extractor expects, one copy per batch row.
fn file_audio_inputs(
    source: &ia_models::ModelSource,
    path: &std::path::Path,
    batch: usize,
) -> Result<Inputs, String> {
    let rate = inputs::audio_sampling_rate(source.config(), source.preprocessor_config())
        .map_err(|e| e.to_string())?;
    let wav = ia_preprocess::audio::Waveform::open(path)
        .and_then(|w| w.resampled(rate))
        .map_err(|e| e.to_string())?;
    Ok(Inputs::Audio {
        batch,
        sample_rate: rate,
        samples: wav.samples.repeat(batch),
    })
}

/// Generates greedily with the combination's precision and with f32 on the fixed prompt set
/// and returns the fraction of positions where the tokens agree.
fn greedy_agreement(engine: &dyn Engine, combo: &Combination) -> Result<f64, EngineError> {
    let opts = &GenerateOptions {
        max_new_tokens: combo.new_tokens,
        sampling: Sampling::greedy(),
        stop_tokens: vec![],
        ignore_eos: true,
    };
    let mut quantised = engine.load_generator(
        &combo.model,
        Placement::new(combo.platform, combo.precision),
    )?;
    let mut reference =
        engine.load_generator(&combo.model, Placement::new(combo.platform, Precision::F32))?;
    let (mut same, mut total) = (0usize, 0usize);
    for len in AGREEMENT_PROMPT_LENGTHS {
        let Inputs::Text {
            input_ids: prompt, ..
        } = inputs::generate(&combo.model, Modality::Text, InputSpec::new(1, len))?
        else {
            unreachable!("text modality gives text inputs");
        };
        let (a, _) = generation::generate(quantised.as_mut(), &prompt, opts, |_| {
            std::ops::ControlFlow::Continue(())
        })?;
        let (b, _) = generation::generate(reference.as_mut(), &prompt, opts, |_| {
            std::ops::ControlFlow::Continue(())
        })?;
        same += a.iter().zip(&b).filter(|(x, y)| x == y).count();
        total += a.len().max(b.len());
    }
    Ok(same as f64 / total.max(1) as f64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The cost of one timed iteration with an empty body: two clock reads, a subtraction and a
/// push, exactly what `measure` wraps around each run.
pub fn harness_overhead_ns() -> f64 {
    const N: usize = 10_000;
    let mut samples = Vec::with_capacity(N);
    let start = Instant::now();
    for i in 0..N {
        let t = Instant::now();
        std::hint::black_box(i);
        samples.push(ms(t.elapsed()));
    }
    std::hint::black_box(&samples);
    start.elapsed().as_nanos() as f64 / N as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_is_small_and_positive() {
        let o = harness_overhead_ns();
        assert!(o > 0.0 && o < 1e6, "{o}");
    }

    fn run(samples_ms: Vec<f64>, timed_duration_s: f64) -> TimedRun {
        TimedRun {
            session: SessionInfo {
                engine: "test".into(),
                engine_version: "0".into(),
                platform: ia_hardware::Platform::Cpu,
                device: "cpu".into(),
                precision: Precision::F32,
                weights: ia_models::WeightsKind::Random,
                parameter_count: 0,
                output_names: vec![],
            },
            load_time_ms: 1.0,
            first_inference_ms: 1.0,
            warmup_iterations: 0,
            samples_ms,
            timed_duration_s,
            peak_rss_bytes: None,
            peak_rss_per_combination: false,
            harness_overhead_ns: f64::NAN,
        }
    }

    /// One constructor for every source: single stream counts the latency, offline the loop's
    /// wall time, generations prompt plus new tokens, audio a real-time factor.
    #[test]
    fn measurements_follow_the_scenario_and_the_work() {
        let text = |scenario| Work {
            scenario,
            items: 2,
            tokens: Some(16),
            audio_seconds: None,
            generation: None,
        };
        let m = Measurement::new(run(vec![10.0, 30.0], 0.1), text(Scenario::SingleStream));
        assert_eq!(m.latency.mean_ms, 20.0);
        assert!((m.throughput_items_per_s - 100.0).abs() < 1e-9);
        assert_eq!(m.throughput_tokens_per_s, Some(800.0));
        let m = Measurement::new(run(vec![10.0, 30.0], 0.1), text(Scenario::Offline));
        assert!(
            (m.throughput_items_per_s - 40.0).abs() < 1e-9,
            "0.05 s per query"
        );

        let g = GenerationMetrics::from_samples(4, 6, 2, &[5.0], &[4.0], &[1.0; 5]);
        let m = Measurement::new(run(vec![20.0], 0.5), Work::generation(2, g));
        assert!((m.throughput_items_per_s - 100.0).abs() < 1e-9);
        assert_eq!(m.throughput_tokens_per_s, Some(1000.0));
        assert_eq!(m.generation.as_ref().unwrap().new_tokens, 6);

        let audio = Inputs::Audio {
            batch: 2,
            sample_rate: 16_000,
            samples: vec![0.0; 2 * 8_000],
        };
        let m = Measurement::new(
            run(vec![100.0], 0.1),
            Work::forward(Scenario::SingleStream, &audio),
        );
        assert_eq!(m.audio_seconds, Some(0.5));
        assert_eq!(m.real_time_factor, Some(0.1));
    }

    /// A workload whose iterations "take" a fixed time on its own clock (the page's, say):
    /// the harness decides how many to run from what the workload reports.
    struct Fixed {
        info: SessionInfo,
        per_iteration_ms: f64,
        calls: Vec<usize>,
    }

    impl TimedWorkload for Fixed {
        fn info(&self) -> &SessionInfo {
            &self.info
        }

        fn run_timed(&mut self, iterations: usize) -> Result<TimedIterations, EngineError> {
            self.calls.push(iterations);
            Ok(TimedIterations {
                samples_ms: vec![self.per_iteration_ms; iterations],
                duration_ms: self.per_iteration_ms * iterations as f64,
                generations: Vec::new(),
            })
        }

        fn timing_overhead_ns(&mut self) -> Result<f64, EngineError> {
            Ok(7.0)
        }

        fn load_time_ms(&self) -> Option<f64> {
            Some(42.0)
        }

        fn in_process(&self) -> bool {
            false
        }
    }

    #[test]
    fn the_harness_decides_how_many_iterations_a_workload_runs() {
        let protocol = Protocol {
            warmup_iterations: 3,
            min_iterations: 10,
            min_duration: Duration::from_millis(2_000),
            max_iterations: 100_000,
        };
        let (target, driven) = drive(&protocol, || {
            Ok(Fixed {
                info: run(vec![], 0.0).session,
                per_iteration_ms: 5.0,
                calls: vec![],
            })
        })
        .unwrap();
        // First inference, one warm-up call, then timed calls until 2 s of reported time.
        assert_eq!(target.calls[..2], [1, 3]);
        assert_eq!(driven.run.samples_ms.len(), 400);
        assert!((driven.run.timed_duration_s - 2.0).abs() < 1e-9);
        // A call covers about a second of work.
        assert!(
            target.calls[2..].iter().all(|&n| n <= 200),
            "{:?}",
            target.calls
        );
        assert_eq!(driven.run.load_time_ms, 42.0);
        assert_eq!(driven.run.harness_overhead_ns, 7.0);
        assert_eq!(driven.run.peak_rss_bytes, None, "not this process's memory");

        // Slow iterations: the count decides, and the cap is never passed.
        let capped = Protocol {
            max_iterations: 4,
            ..protocol
        };
        let (target, driven) = drive(&capped, || {
            Ok(Fixed {
                info: run(vec![], 0.0).session,
                per_iteration_ms: 900.0,
                calls: vec![],
            })
        })
        .unwrap();
        assert_eq!(driven.run.samples_ms.len(), 4);
        assert_eq!(target.calls, [1, 1, 1, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn remaining_covers_both_minimums_and_respects_the_cap() {
        let p = Protocol {
            warmup_iterations: 0,
            min_iterations: 10,
            min_duration: Duration::from_secs(1),
            max_iterations: 50,
        };
        assert_eq!(p.remaining(0, Duration::ZERO, 1.0), 50, "capped");
        assert_eq!(p.remaining(0, Duration::ZERO, 500.0), 10, "by count");
        assert_eq!(
            p.remaining(10, Duration::from_millis(500), 100.0),
            5,
            "by time"
        );
        assert_eq!(p.remaining(10, Duration::from_secs(1), 100.0), 0);
        assert_eq!(p.remaining(50, Duration::ZERO, 1.0), 0);
    }

    #[test]
    fn scenario_parses() {
        assert_eq!("offline".parse::<Scenario>().unwrap(), Scenario::Offline);
        assert!("server".parse::<Scenario>().is_err());
    }
}
