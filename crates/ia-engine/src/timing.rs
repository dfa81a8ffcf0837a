//! The interface the benchmark harness (`ia-bench`) drives every runtime through: a model
//! loaded with its inputs that runs N iterations when asked and times each one where it runs.
//!
//! In-process engines time with the process clock; the browser page times with
//! `performance.now()`, so no WebDriver round trip falls inside a sample. The protocol (how
//! many iterations, until when, the statistics) is decided by the harness alone.

use crate::{EngineError, GenerationStats, SessionInfo};
use serde::Serialize;

/// The timings of one generation: what the LLM metrics are computed from.
#[derive(Debug, Clone, Default)]
pub struct GenerationTiming {
    /// Prefill plus choosing the first new token (and, with images, encoding them first).
    pub ttft_ms: f64,
    pub prefill_ms: f64,
    /// Each decode step after the first token.
    pub step_ms: Vec<f64>,
    /// Image-text generation: encoding the images (vision tower and projector), which TTFT
    /// includes.
    pub image_encode_ms: Option<f64>,
    /// Image-text generation: the prompt's image tokens (the features that replaced them).
    pub image_tokens: usize,
}

impl From<&GenerationStats> for GenerationTiming {
    fn from(s: &GenerationStats) -> Self {
        Self {
            ttft_ms: s.time_to_first_token_ms,
            prefill_ms: s.prefill_ms,
            step_ms: s.decode_step_ms.clone(),
            image_encode_ms: None,
            image_tokens: 0,
        }
    }
}

/// What one call of [`TimedWorkload::run_timed`] measured.
#[derive(Debug, Clone, Default)]
pub struct TimedIterations {
    /// Each iteration's duration, ms, in order.
    pub samples_ms: Vec<f64>,
    /// From the start of the first iteration to the end of the last, gaps included.
    pub duration_ms: f64,
    /// For a generation workload: each iteration's generation timings.
    pub generations: Vec<GenerationTiming>,
}

/// How a runtime gets a model ready, where it offers a choice. Part of a benchmark
/// combination; only the web platforms offer one today.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LoadVariant {
    /// Run every part once on placeholder inputs at load time, so WebGPU compiles its
    /// shader pipelines before the first real request.
    pub precompile: bool,
    /// Create the sessions of a multi-part model at the same time instead of one by one.
    pub parallel_load: bool,
}

/// A failure before the first inference, with the step it happened in: "load" unless the
/// runtime names a finer one (the browser's "browser-start").
#[derive(Debug)]
pub struct LoadFailure {
    pub stage: &'static str,
    pub error: EngineError,
}

impl From<EngineError> for LoadFailure {
    fn from(error: EngineError) -> Self {
        Self {
            stage: "load",
            error,
        }
    }
}

/// A model loaded with the inputs of one combination, as the harness drives it.
pub trait TimedWorkload {
    fn info(&self) -> &SessionInfo;

    /// Runs the workload `iterations` times back to back, timing each iteration where it
    /// runs. The first call is the first inference.
    fn run_timed(&mut self, iterations: usize) -> Result<TimedIterations, EngineError>;

    /// What timing one iteration costs with an empty body, ns, on the same clock.
    fn timing_overhead_ns(&mut self) -> Result<f64, EngineError>;

    /// The load time as the runtime measured it, where the caller's clock would count more
    /// than loading (the page's own fetch and session creation, without the WebDriver round
    /// trip). `None`: the harness's clock around the load is the load time.
    fn load_time_ms(&self) -> Option<f64> {
        None
    }

    /// Whether the model runs in this process, so the process's peak memory is its memory.
    fn in_process(&self) -> bool {
        true
    }

    /// Bytes of the weights as loaded (quantised blocks included), when the runtime knows.
    fn weight_bytes(&self) -> Option<u64> {
        None
    }
}

impl<T: TimedWorkload + ?Sized> TimedWorkload for Box<T> {
    fn info(&self) -> &SessionInfo {
        (**self).info()
    }

    fn run_timed(&mut self, iterations: usize) -> Result<TimedIterations, EngineError> {
        (**self).run_timed(iterations)
    }

    fn timing_overhead_ns(&mut self) -> Result<f64, EngineError> {
        (**self).timing_overhead_ns()
    }

    fn load_time_ms(&self) -> Option<f64> {
        (**self).load_time_ms()
    }

    fn in_process(&self) -> bool {
        (**self).in_process()
    }

    fn weight_bytes(&self) -> Option<u64> {
        (**self).weight_bytes()
    }
}
