//! The engine API: the one interface every runtime (the native candle engine now; ONNX Runtime,
//! OpenVINO and the browser later) implements, so the benchmark harness and the server never
//! care which runtime runs a model.
//!
//! `Engine::load(model, placement) -> Session` (a model resolved once, [`ia_models::Model`],
//! at a [`Placement`]: platform and precision), then `Session::run(inputs) -> Outputs`.
//! Inputs come from [`inputs::generate`], one generator per modality.

pub mod calibration;
pub mod ctc;
pub mod exported_decoder;
pub mod exported_seq2seq;
pub mod features;
pub mod generation;
pub mod inputs;
pub mod memory;
pub mod seq2seq;
pub mod speech;
pub mod timing;
pub mod tokenizer;
pub mod towers;
pub mod training;
pub mod whisper;

use ia_hardware::Platform;
use ia_models::{Model, ModelClass, WeightsKind};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

pub use generation::{
    ContinuousBatch, GenerateOptions, GenerationStats, ImageBatch, Sampling, SequenceId,
    SequencePool, StopReason, TextGenerator,
};
pub use inputs::{InputSpec, Inputs};
pub use speech::{SpeechRecognizer, TranscribeOptions, Transcription};
pub use timing::{GenerationTiming, LoadFailure, LoadVariant, TimedIterations, TimedWorkload};
pub use training::{Trainer, TrainingMemory, TrainingOptions, TrainingPrecision};

/// Numeric precision of a session's weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    Bf16,
    Int8,
    Q8_0,
    #[serde(rename = "q4_k")]
    Q4K,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
            Precision::Q8_0 => "q8_0",
            Precision::Q4K => "q4_k",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Precision::F32,
            "f16" | "fp16" | "float16" => Precision::F16,
            "bf16" | "bfloat16" => Precision::Bf16,
            "int8" => Precision::Int8,
            "q8_0" => Precision::Q8_0,
            "q4_k" => Precision::Q4K,
            other => {
                return Err(EngineError::Unsupported(format!(
                    "unknown precision '{other}' (expected f32, f16, bf16, int8, q8_0, q4_k)"
                )))
            }
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The engine cannot run this model, platform or precision at all.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The checkpoint or config is not what the architecture needs.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The runtime failed while loading or running.
    #[error("runtime error: {0}")]
    Runtime(String),
}

/// Where a model runs and at what precision: what every load asks an engine for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub platform: Platform,
    pub precision: Precision,
}

impl Placement {
    pub fn new(platform: Platform, precision: Precision) -> Self {
        Self {
            platform,
            precision,
        }
    }
}

/// What an engine sustains on a dense matrix product at a placement: the compute ceiling of
/// the predictor's roofline.
#[derive(Debug, Clone, Serialize)]
pub struct MatmulRate {
    /// The device as the runtime names it.
    pub device: String,
    /// n of the n x n by n x n product.
    pub size: usize,
    /// Median over the timed products, FLOP/s (2 n^3 per product).
    pub flops_per_s: f64,
    pub samples: usize,
}

/// What dispatching work costs an engine on a platform beyond the arithmetic
/// ([`calibration::dispatch_costs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchCost {
    /// The device as the runtime names it.
    pub device: String,
    /// Seconds of one call (a session run) beyond the operations it runs.
    pub call_seconds: f64,
    /// Seconds of each operation of a call beyond its arithmetic.
    pub op_seconds: f64,
    pub samples: usize,
}

/// What an engine's elementwise operations stream through a device's own memory
/// ([`calibration::stream_bandwidth`]): the memory ceiling of the roofline on a platform
/// whose memory is not the host's (a GPU), where the host's STREAM triad says nothing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bandwidth {
    /// The device as the runtime names it.
    pub device: String,
    /// Bytes of each array an addition reads or writes.
    pub array_bytes: usize,
    /// Bytes read and written per second by one addition, the fastest round.
    pub bytes_per_s: f64,
    pub samples: usize,
}

/// How a session was obtained; stored with every result.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub engine: String,
    pub engine_version: String,
    pub platform: Platform,
    /// The device as the runtime names it ("cpu", "cuda:0").
    pub device: String,
    pub precision: Precision,
    pub weights: WeightsKind,
    pub parameter_count: u64,
    /// Names of the outputs `run` returns, in order.
    pub output_names: Vec<String>,
}

/// A tensor a session produced. Kept in the runtime's own memory until asked for, so timing a
/// run does not include a copy the caller may not need.
pub trait OutputTensor: Send {
    fn shape(&self) -> Vec<usize>;
    fn to_f32_vec(&self) -> Result<Vec<f32>, EngineError>;
}

pub struct Outputs {
    pub tensors: Vec<(String, Box<dyn OutputTensor>)>,
}

/// An output copied out of its runtime into host memory as f32 (graph runtimes return these).
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl OutputTensor for HostTensor {
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn to_f32_vec(&self) -> Result<Vec<f32>, EngineError> {
        Ok(self.data.clone())
    }
}

impl Outputs {
    pub fn get(&self, name: &str) -> Option<&dyn OutputTensor> {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_ref())
    }
}

pub trait Session: Send {
    fn info(&self) -> &SessionInfo;
    fn run(&mut self, inputs: &Inputs) -> Result<Outputs, EngineError>;
}

/// What a caller asks an engine to do with a model; engines answer [`Engine::supports`] per
/// capability, since one that runs a class's forward pass may not generate with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// [`Engine::load`]: a forward pass per `Session::run`.
    Run,
    /// [`Engine::load_generator`]: text generation with a KV cache.
    Generate,
    /// [`Engine::load_speech_recognizer`]: waveform to text.
    Transcribe,
}

pub trait Engine: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> String;
    /// Whether this engine can do `capability` with the class on the platform; the error says
    /// why not. Each `load*` checks it first.
    fn supports(&self, class: ModelClass, on: Platform, to: Capability) -> Result<(), EngineError>;
    fn load(&self, model: &Model, at: Placement) -> Result<Box<dyn Session>, EngineError>;
    /// Loads a text-generation model (decoder or encoder-decoder) with a KV cache.
    fn load_generator(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<Box<dyn TextGenerator>, EngineError> {
        let _ = (model, at);
        Err(EngineError::Unsupported(format!(
            "the {} engine cannot generate text",
            self.name()
        )))
    }

    /// Loads a model for training steps on one synthetic labelled batch (the engine makes
    /// the batch from `options`, for the model's task).
    fn load_trainer(
        &self,
        model: &Model,
        at: Placement,
        options: &TrainingOptions,
    ) -> Result<Box<dyn Trainer>, EngineError> {
        let _ = (model, at, options);
        Err(EngineError::Unsupported(format!(
            "the {} engine does not train models",
            self.name()
        )))
    }

    /// Times dense n x n matrix products at `at` (a short micro-benchmark: well under a
    /// second), for the hardware calibration.
    fn calibrate_matmul(&self, at: Placement) -> Result<MatmulRate, EngineError> {
        let _ = at;
        Err(EngineError::Unsupported(format!(
            "the {} engine has no matmul calibration yet",
            self.name()
        )))
    }

    /// Times what a call and each operation in it cost at `at` beyond their arithmetic (a
    /// short micro-benchmark), for the hardware calibration.
    fn calibrate_dispatch(&self, at: Placement) -> Result<DispatchCost, EngineError> {
        let _ = at;
        Err(EngineError::Unsupported(format!(
            "the {} engine has no dispatch calibration yet",
            self.name()
        )))
    }

    /// Times what elementwise operations stream through the memory of `at`'s device (a
    /// short micro-benchmark), for the hardware calibration of a platform whose memory is
    /// not the host's.
    fn calibrate_bandwidth(&self, at: Placement) -> Result<Bandwidth, EngineError> {
        let _ = at;
        Err(EngineError::Unsupported(format!(
            "the {} engine has no bandwidth calibration",
            self.name()
        )))
    }

    /// Loads a speech-recognition model (waveform to text). By default: CTC models (Wav2Vec2)
    /// through this engine's forward pass and the one CTC decoding ([`ctc::CtcRecognizer`]),
    /// where [`Engine::supports`] allows transcription.
    fn load_speech_recognizer(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<Box<dyn SpeechRecognizer>, EngineError> {
        ctc::load_recognizer(self, model, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_round_trips_and_rejects_unknown() {
        for p in ["f32", "f16", "bf16", "int8", "q8_0", "q4_k"] {
            assert_eq!(p.parse::<Precision>().unwrap().as_str(), p);
        }
        assert!("fp8"
            .parse::<Precision>()
            .unwrap_err()
            .to_string()
            .contains("fp8"));
    }
}
