//! The benchmark harness.
//!
//! For each combination (model, platform, batch size, precision, scenario) it loads a fresh
//! session, times the first inference, warms up, then runs timed iterations until both a
//! minimum count and a minimum duration are reached. It reports latency statistics with the
//! sample count, throughput, peak resident memory, and its own per-iteration overhead.

pub mod external;
pub mod isolation;
pub mod limits;
pub mod memory;
pub mod stats;

use ia_engine::generation::{self, GenerateOptions, Sampling, TextGenerator};
use ia_engine::{
    inputs, Capability, Engine, EngineError, InputSpec, Inputs, Precision, SessionInfo,
};
use ia_hardware::Platform;
use ia_models::{Modality, ModelClass, ModelSource};
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

/// A model ready to benchmark.
#[derive(Debug, Clone)]
pub struct ModelPlan {
    /// Name stored in results (hub id or folder path).
    pub name: String,
    pub class: ModelClass,
    pub family: String,
    pub task: String,
    pub modality: Modality,
    pub source: ModelSource,
}

impl ModelPlan {
    /// A plan for `source`, classified from its config.json.
    pub fn classify(name: String, source: ModelSource) -> Result<Self, ia_models::ClassifyError> {
        let c = ia_models::classify_config(source.config())?;
        Ok(Self {
            name,
            class: c.class,
            family: c.family.to_string(),
            task: c.task.to_string(),
            modality: c.modality,
            source,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Combination {
    pub model: ModelPlan,
    pub platform: Platform,
    pub batch_size: usize,
    pub seq_len: usize,
    pub precision: Precision,
    pub scenario: Scenario,
    /// Tokens generated per iteration, for generation models.
    pub new_tokens: usize,
    /// Clip length for audio models, seconds.
    pub audio_seconds: f32,
    /// A recording to feed audio models instead of the synthetic signal (every batch row).
    pub audio_file: Option<std::path::PathBuf>,
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

fn fail(stage: &str, e: impl ToString) -> Outcome {
    Outcome::Failed {
        stage: stage.into(),
        error: e.to_string().replace('\n', " "),
    }
}

/// Measures one combination. Never panics on a model error: failures become outcomes.
pub fn measure(
    engine: &dyn Engine,
    combo: &Combination,
    platform_available: Result<(), String>,
    protocol: &Protocol,
) -> Outcome {
    if let Err(reason) = platform_available {
        return Outcome::Unavailable { reason };
    }
    if is_generation_task(&combo.model.task) {
        return measure_generation(engine, combo, protocol);
    }
    if let Err(e) = engine.supports(combo.model.class, combo.platform, Capability::Run) {
        return Outcome::Unavailable {
            reason: e.to_string(),
        };
    }
    let spec = InputSpec {
        audio_seconds: combo.audio_seconds,
        ..InputSpec::new(combo.batch_size, combo.seq_len)
    };
    let generated = match &combo.audio_file {
        Some(path) if combo.model.modality == Modality::Audio => {
            file_audio_inputs(&combo.model.source, path, combo.batch_size)
        }
        _ => inputs::generate(&combo.model.source, combo.model.modality, spec)
            .map_err(|e| e.to_string()),
    };
    let inputs = match generated {
        Ok(i) => i,
        Err(e) => return fail("inputs", e),
    };
    let work = ia_engine::memory::forward_workload(&combo.model.source, &inputs);
    if let Err(e) = ia_engine::memory::check_fits(&combo.model.source, combo.precision, work) {
        return refused("load", e);
    }
    let rss_reset = memory::reset_peak_rss();
    let t = Instant::now();
    let mut session = match engine.load(&combo.model.source, combo.platform, combo.precision) {
        Ok(s) => s,
        Err(EngineError::Unsupported(reason)) => return Outcome::Unavailable { reason },
        Err(e) => return fail("load", e),
    };
    let load_time_ms = ms(t.elapsed());

    let t = Instant::now();
    if let Err(e) = session.run(&inputs) {
        return fail("first-inference", e);
    }
    let first_inference_ms = ms(t.elapsed());

    for _ in 0..protocol.warmup_iterations {
        if cancel_requested() {
            return interrupted();
        }
        if let Err(e) = session.run(&inputs) {
            return fail("warm-up", e);
        }
    }

    // Grows as samples come: min_iterations is a user number, not an allocation size.
    let mut samples_ms = Vec::with_capacity(protocol.min_iterations.clamp(64, 1 << 16));
    let start = Instant::now();
    while protocol.wants_more(samples_ms.len(), start.elapsed()) {
        if cancel_requested() {
            return interrupted();
        }
        let t = Instant::now();
        if let Err(e) = session.run(&inputs) {
            return fail("timed-iteration", e);
        }
        samples_ms.push(ms(t.elapsed()));
    }
    let timed_duration_s = start.elapsed().as_secs_f64();
    let run = TimedRun {
        session: session.info().clone(),
        load_time_ms,
        first_inference_ms,
        warmup_iterations: protocol.warmup_iterations,
        samples_ms,
        timed_duration_s,
        peak_rss_bytes: memory::peak_rss_bytes(),
        peak_rss_per_combination: rss_reset,
        harness_overhead_ns: harness_overhead_ns(),
    };
    drop(session);
    Outcome::Measured(Box::new(Measurement::new(
        run,
        Work::forward(combo.scenario, &inputs),
    )))
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

/// Tasks measured as text generation rather than single forward passes.
pub fn is_generation_task(task: &str) -> bool {
    matches!(task, "text-generation" | "text2text-generation")
}

/// One timed iteration generates `combo.new_tokens` tokens (through EOS) for each of
/// `batch_size` copies of a `combo.seq_len`-token prompt; latency statistics are per
/// generation, TTFT and time per output token (per decode step) get their own.
fn measure_generation(engine: &dyn Engine, combo: &Combination, protocol: &Protocol) -> Outcome {
    if let Err(e) = engine.supports(combo.model.class, combo.platform, Capability::Generate) {
        return refused("load", e);
    }
    let work = ia_models::footprint::Workload {
        batch: combo.batch_size,
        positions: combo.seq_len,
        cached_positions: combo.seq_len.saturating_add(combo.new_tokens),
        beams: 1,
    };
    if let Err(e) = ia_engine::memory::check_fits(&combo.model.source, combo.precision, work) {
        return refused("load", e);
    }
    let inputs = match inputs::generate(
        &combo.model.source,
        Modality::Text,
        InputSpec::new(1, combo.seq_len),
    ) {
        Ok(i) => i,
        Err(e) => return fail("inputs", e),
    };
    let Inputs::Text {
        input_ids: prompt, ..
    } = inputs
    else {
        return fail("inputs", "text generator returned non-text inputs");
    };
    let opts = GenerateOptions {
        max_new_tokens: combo.new_tokens,
        sampling: Sampling::greedy(),
        stop_tokens: vec![],
        ignore_eos: true,
    };
    let rss_reset = memory::reset_peak_rss();
    let t = Instant::now();
    let mut model =
        match engine.load_generator(&combo.model.source, combo.platform, combo.precision) {
            Ok(m) => m,
            Err(EngineError::Unsupported(reason)) => return Outcome::Unavailable { reason },
            Err(e) => return fail("load", e),
        };
    let load_time_ms = ms(t.elapsed());
    let prompts = vec![prompt.clone(); combo.batch_size];
    let run = |model: &mut dyn TextGenerator| {
        generation::generate_batch_greedy(model, &prompts, combo.new_tokens)
    };
    let t = Instant::now();
    match run(model.as_mut()) {
        Ok(_) => {}
        Err(EngineError::Unsupported(reason)) => return Outcome::Unavailable { reason },
        Err(e) => return fail("first-inference", e),
    }
    let first_inference_ms = ms(t.elapsed());
    for _ in 0..protocol.warmup_iterations {
        if cancel_requested() {
            return interrupted();
        }
        if let Err(e) = run(model.as_mut()) {
            return fail("warm-up", e);
        }
    }
    let (mut samples_ms, mut ttft, mut tpot, mut prefill_ms) = (vec![], vec![], vec![], vec![]);
    let start = Instant::now();
    while protocol.wants_more(samples_ms.len(), start.elapsed()) {
        if cancel_requested() {
            return interrupted();
        }
        let t = Instant::now();
        let stats = match run(model.as_mut()) {
            Ok((_, stats)) => stats,
            Err(e) => return fail("timed-iteration", e),
        };
        samples_ms.push(ms(t.elapsed()));
        ttft.push(stats.time_to_first_token_ms);
        prefill_ms.push(stats.prefill_ms);
        tpot.extend(stats.decode_step_ms);
    }
    let timed_duration_s = start.elapsed().as_secs_f64();
    // Read before the agreement check below loads the model again.
    let peak_rss_bytes = memory::peak_rss_bytes();
    let weight_bytes = model.weight_bytes();
    let session = model.info().clone();
    drop(model);
    let greedy_agreement_vs_f32 = if matches!(
        combo.precision,
        Precision::F32 | Precision::F16 | Precision::Bf16
    ) {
        None
    } else {
        match greedy_agreement(engine, combo, &opts) {
            Ok(a) => Some(a),
            Err(e) => return fail("agreement-check", e),
        }
    };
    let batch = combo.batch_size;
    let generation = GenerationMetrics {
        weight_bytes,
        greedy_agreement_vs_f32,
        ..GenerationMetrics::from_samples(
            prompt.len(),
            combo.new_tokens,
            batch,
            &ttft,
            &prefill_ms,
            &tpot,
        )
    };
    let run = TimedRun {
        session,
        load_time_ms,
        first_inference_ms,
        warmup_iterations: protocol.warmup_iterations,
        samples_ms,
        timed_duration_s,
        peak_rss_bytes,
        peak_rss_per_combination: rss_reset,
        harness_overhead_ns: harness_overhead_ns(),
    };
    Outcome::Measured(Box::new(Measurement::new(
        run,
        Work::generation(batch, generation),
    )))
}

/// Generates greedily with the combination's precision and with f32 on the fixed prompt set
/// and returns the fraction of positions where the tokens agree.
fn greedy_agreement(
    engine: &dyn Engine,
    combo: &Combination,
    opts: &GenerateOptions,
) -> Result<f64, EngineError> {
    let mut quantised =
        engine.load_generator(&combo.model.source, combo.platform, combo.precision)?;
    let mut reference =
        engine.load_generator(&combo.model.source, combo.platform, Precision::F32)?;
    let (mut same, mut total) = (0usize, 0usize);
    for len in AGREEMENT_PROMPT_LENGTHS {
        let Inputs::Text {
            input_ids: prompt, ..
        } = inputs::generate(&combo.model.source, Modality::Text, InputSpec::new(1, len))?
        else {
            unreachable!("text modality gives text inputs");
        };
        let (a, _) = generation::generate(quantised.as_mut(), &prompt, opts, |_| {})?;
        let (b, _) = generation::generate(reference.as_mut(), &prompt, opts, |_| {})?;
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

    #[test]
    fn scenario_parses() {
        assert_eq!("offline".parse::<Scenario>().unwrap(), Scenario::Offline);
        assert!("server".parse::<Scenario>().is_err());
    }
}
