//! Training steps as a benchmark workload: what `bench --mode training` asks an engine for, and
//! what a loaded training workload reports beyond its step times.
//!
//! One timed iteration of a [`Trainer`] is one optimiser step on the same synthetic labelled
//! batch: forward, loss, backward, AdamW update. The harness drives it like any other
//! workload, so the step times get the one protocol and the one set of statistics.

use crate::{EngineError, SessionInfo};
use serde::{Deserialize, Serialize};

/// How the training step computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrainingPrecision {
    /// Everything in f32.
    F32,
    /// f32 master weights, gradients and optimiser state; the matrix products of the forward
    /// (and so of the backward) in bf16, as `torch.autocast(dtype=torch.bfloat16)` runs them.
    Bf16Mixed,
}

impl TrainingPrecision {
    pub fn as_str(self) -> &'static str {
        match self {
            TrainingPrecision::F32 => "f32",
            TrainingPrecision::Bf16Mixed => "bf16-mixed",
        }
    }
}

/// AdamW's settings, named as `torch.optim.AdamW` names them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    /// transformers' `TrainingArguments` defaults (learning rate 5e-5, weight decay 0 there;
    /// 0.01 here, the value most fine-tuning recipes set).
    fn default() -> Self {
        Self {
            lr: 5e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// A training combination's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainingOptions {
    /// Samples per step.
    pub batch_size: usize,
    /// Tokens per sample, for text models (T5: encoder and decoder each).
    pub seq_len: usize,
    pub precision: TrainingPrecision,
    /// Keep only each layer's input in the forward; recompute the layer in the backward.
    pub gradient_checkpointing: bool,
    pub optimizer: AdamW,
}

/// Bytes a training workload holds, by what they are for. Each is counted from the tensors
/// themselves, not estimated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingMemory {
    /// The trainable parameters.
    pub weights: u64,
    /// The gradients of the last backward pass.
    pub gradients: u64,
    /// AdamW's two moments.
    pub optimizer_state: u64,
}

/// A model loaded for training on one batch. The harness times [`Trainer::step`] under the
/// one protocol, as it times a session's forward pass.
pub trait Trainer: Send {
    fn info(&self) -> &SessionInfo;
    /// One optimiser step (forward, loss, backward, update); returns the loss before the
    /// update.
    fn step(&mut self) -> Result<f32, EngineError>;
    /// What the weights, gradients and optimiser state take (gradients: those of the last
    /// step).
    fn memory(&self) -> TrainingMemory;
    /// Samples per step and the tokens they hold (text models).
    fn items(&self) -> (usize, Option<usize>);
}
