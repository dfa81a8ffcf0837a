//! Training combinations under the one protocol: each timed iteration is one optimiser step
//! ([`ia_engine::Trainer::step`]); the step times become the latency statistics, samples and
//! tokens per second the throughput, and the memory the step held is split by purpose.

use crate::{drive, fail, memory, timed_in_process, Combination, Measurement, Outcome};
use crate::{harness_overhead_ns, Protocol, Work};
use ia_engine::training::{AdamW, TrainingOptions, TrainingPrecision};
use ia_engine::{
    Engine, EngineError, LoadFailure, Placement, Precision, SessionInfo, TimedIterations,
    TimedWorkload, Trainer, TrainingMemory,
};
use serde::Serialize;

/// What a training combination measured beyond its step times.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingMetrics {
    pub precision: TrainingPrecision,
    pub gradient_checkpointing: bool,
    /// Weights, gradients and optimiser state, counted from the tensors.
    pub memory: TrainingMemory,
    /// The combination's peak resident memory less what the process held before loading
    /// and less `memory`: activations and temporaries. None where the OS reports no peak.
    pub activations_bytes: Option<u64>,
    /// The loss of the first step (the first inference) and of the last timed step.
    pub loss_first: f32,
    pub loss_last: f32,
}

/// The settings a training combination runs with: f32, or bf16 autocast for `--precision
/// bf16`; AdamW with its defaults.
pub fn options(
    combo: &Combination,
    gradient_checkpointing: bool,
) -> Result<TrainingOptions, String> {
    let precision = match combo.precision {
        Precision::F32 => TrainingPrecision::F32,
        Precision::Bf16 => TrainingPrecision::Bf16Mixed,
        other => {
            return Err(format!(
                "training computes in f32 or with bf16 autocast (--precision bf16), not {other}"
            ))
        }
    };
    Ok(TrainingOptions {
        batch_size: combo.batch_size,
        seq_len: combo.seq_len,
        precision,
        gradient_checkpointing,
        optimizer: AdamW::default(),
    })
}

/// Measures one training combination on an in-process engine. Never panics on a model error.
pub fn measure_training(
    engine: &dyn Engine,
    combo: &Combination,
    gradient_checkpointing: bool,
    protocol: &Protocol,
) -> Outcome {
    let options = match options(combo, gradient_checkpointing) {
        Ok(o) => o,
        Err(reason) => return Outcome::Unavailable { reason },
    };
    let before = memory::rss_bytes();
    let load = || -> Result<TrainingTarget, LoadFailure> {
        let work = ia_models::footprint::Workload {
            batch: combo.batch_size,
            positions: combo.seq_len,
            cached_positions: 0,
            beams: 1,
        };
        ia_engine::memory::check_training_fits(&combo.model.source, work, gradient_checkpointing)?;
        let trainer = engine.load_trainer(
            &combo.model,
            Placement::new(combo.platform, combo.precision),
            &options,
        )?;
        Ok(TrainingTarget {
            trainer,
            losses: Vec::new(),
        })
    };
    let (target, driven) = match drive(protocol, load) {
        Ok(d) => d,
        Err(outcome) => return outcome,
    };
    let (items, tokens) = target.trainer.items();
    let (Some(&loss_first), Some(&loss_last)) = (target.losses.first(), target.losses.last())
    else {
        return fail("timed-iteration", "the trainer reported no loss");
    };
    if !loss_last.is_finite() {
        return fail(
            "timed-iteration",
            format!("the loss diverged: {loss_first} at the first step, {loss_last} at the last"),
        );
    }
    let mem = target.trainer.memory();
    let held = mem.weights + mem.gradients + mem.optimizer_state;
    let activations_bytes = match (driven.run.peak_rss_bytes, before) {
        (Some(peak), Some(before)) if driven.run.peak_rss_per_combination => {
            Some(peak.saturating_sub(before).saturating_sub(held))
        }
        _ => None,
    };
    let work = Work {
        scenario: combo.scenario,
        items,
        tokens,
        audio_seconds: None,
        generation: None,
    };
    let mut m = Measurement::new(driven.run, work);
    m.training = Some(TrainingMetrics {
        precision: options.precision,
        gradient_checkpointing,
        memory: mem,
        activations_bytes,
        loss_first,
        loss_last,
    });
    Outcome::Measured(Box::new(m))
}

/// A trainer as the harness drives it: one iteration is one step; the losses are kept.
struct TrainingTarget {
    trainer: Box<dyn Trainer>,
    losses: Vec<f32>,
}

impl TimedWorkload for TrainingTarget {
    fn info(&self) -> &SessionInfo {
        self.trainer.info()
    }

    fn run_timed(&mut self, iterations: usize) -> Result<TimedIterations, EngineError> {
        let (trainer, losses) = (&mut self.trainer, &mut self.losses);
        timed_in_process(iterations, || {
            losses.push(trainer.step()?);
            Ok(None)
        })
    }

    fn timing_overhead_ns(&mut self) -> Result<f64, EngineError> {
        Ok(harness_overhead_ns())
    }

    fn weight_bytes(&self) -> Option<u64> {
        Some(self.trainer.memory().weights)
    }
}
