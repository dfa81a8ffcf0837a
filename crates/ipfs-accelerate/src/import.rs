//! `ipfs-accelerate db import`: stores measurements another runtime took (e.g. the PyTorch
//! side of scripts/compare_pytorch.py) next to ours. The raw samples are imported and the
//! statistics computed by the same code as the native harness, so both sides are summarised
//! identically; the runtime's own name and version are the result's engine.

use crate::plan::{resolve_model, PlanOptions};
use anyhow::Context;
use ia_bench::{GenerationMetrics, Measurement, Outcome, TimedRun, Work};
use ia_engine::SessionInfo;
use std::path::Path;

pub use ia_bench::external::ExternalResult;

pub fn read(path: &Path) -> anyhow::Result<Vec<ExternalResult>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    ia_bench::external::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The imported result as a harness combination and outcome, ready to store.
pub fn to_outcome(r: ExternalResult) -> anyhow::Result<(ia_bench::Combination, Outcome)> {
    let plan = resolve_model(
        &r.model,
        &PlanOptions {
            small: false,
            random_weights: false,
            seed: 0,
        },
    )?;
    let generation = r.generation.as_ref().map(|g| {
        GenerationMetrics::from_samples(
            g.prompt_tokens,
            g.new_tokens,
            r.batch_size,
            &g.ttft_ms,
            &g.prefill_ms,
            &g.tpot_ms,
        )
    });
    let combo = ia_bench::Combination {
        platform: r.platform,
        batch_size: r.batch_size,
        seq_len: r.seq_len.unwrap_or(0),
        precision: r.precision,
        scenario: r.scenario,
        new_tokens: r.generation.as_ref().map_or(0, |g| g.new_tokens),
        audio_seconds: r.audio_seconds.unwrap_or(0.0) as f32,
        audio_file: None,
        load_variant: Default::default(),
        mode: Default::default(),
        model: plan.clone(),
    };
    let work = match generation {
        Some(g) => Work::generation(r.batch_size, g),
        None => Work {
            scenario: r.scenario,
            items: r.batch_size,
            tokens: r
                .seq_len
                .filter(|_| plan.modality == ia_models::Modality::Text)
                .map(|s| s * r.batch_size),
            audio_seconds: r.audio_seconds,
            generation: None,
        },
    };
    let run = TimedRun {
        session: SessionInfo {
            engine: r.engine,
            engine_version: r.engine_version,
            platform: r.platform,
            device: r.device,
            precision: r.precision,
            weights: plan.source.weights_kind(),
            parameter_count: r.parameter_count,
            output_names: vec![],
        },
        load_time_ms: r.load_time_ms,
        first_inference_ms: r.first_inference_ms,
        warmup_iterations: r.warmup_iterations,
        // The external harness recorded no gaps between iterations.
        timed_duration_s: r.samples_ms.iter().sum::<f64>() / 1e3,
        samples_ms: r.samples_ms,
        peak_rss_bytes: r.peak_rss_bytes,
        peak_rss_per_combination: false,
        // Not ours to know: the external harness did not measure its own overhead.
        harness_overhead_ns: f64::NAN,
    };
    let outcome = Outcome::Measured(Box::new(Measurement::new(run, work)));
    Ok((combo, outcome))
}
