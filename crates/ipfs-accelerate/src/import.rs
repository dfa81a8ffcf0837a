//! `ipfs-accelerate db import`: stores measurements another runtime took (e.g. the PyTorch
//! side of scripts/compare_pytorch.py) next to ours. The raw samples are imported and the
//! statistics computed by the same code as the native harness, so both sides are summarised
//! identically; the runtime's own name and version are the result's engine.

use crate::plan::{resolve_model, PlanOptions};
use anyhow::Context;
use ia_bench::{GenerationMetrics, LatencyStats, Measurement, Outcome};
use ia_engine::{Precision, SessionInfo};
use ia_hardware::Platform;
use serde::Deserialize;
use std::path::Path;

/// One external measurement, as a JSON object in the imported array.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalResult {
    /// Checkpoint folder (or catalog key) the runtime measured.
    pub model: String,
    pub engine: String,
    pub engine_version: String,
    pub platform: Platform,
    pub device: String,
    pub precision: Precision,
    pub scenario: ia_bench::Scenario,
    pub batch_size: usize,
    pub seq_len: Option<usize>,
    pub parameter_count: u64,
    pub load_time_ms: f64,
    pub first_inference_ms: f64,
    pub warmup_iterations: usize,
    /// Every timed iteration, in order (one generation for generation runs).
    pub samples_ms: Vec<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub generation: Option<ExternalGeneration>,
    /// Seconds of audio per input, for audio models (gives the real-time factor).
    #[serde(default)]
    pub audio_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalGeneration {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub ttft_ms: Vec<f64>,
    pub prefill_ms: Vec<f64>,
    pub tpot_ms: Vec<f64>,
}

pub fn read(path: &Path) -> anyhow::Result<Vec<ExternalResult>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rows: Vec<ExternalResult> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a list of external results", path.display()))?;
    for (i, r) in rows.iter().enumerate() {
        r.check()
            .map_err(|e| anyhow::anyhow!("{}: result {i}: {e}", path.display()))?;
    }
    Ok(rows)
}

impl ExternalResult {
    /// Every number within the range the store and the statistics accept; the error names
    /// the field, the value and the range.
    fn check(&self) -> Result<(), String> {
        let range = |name: &str, v: u64, (lo, hi): (u64, u64)| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} {v} is outside {lo}..={hi}"))
            }
        };
        range("batch_size", self.batch_size as u64, crate::limits::BATCH)?;
        if let Some(s) = self.seq_len {
            range("seq_len", s as u64, crate::limits::SEQ_LEN)?;
        }
        range(
            "warmup_iterations",
            self.warmup_iterations as u64,
            crate::limits::WARMUP,
        )?;
        range(
            "samples_ms (count)",
            self.samples_ms.len() as u64,
            crate::limits::ITERATIONS,
        )?;
        range(
            "parameter_count",
            self.parameter_count,
            (0, i64::MAX as u64),
        )?;
        let times = |name: &str, v: &[f64]| match v.iter().find(|x| !(x.is_finite() && **x >= 0.0))
        {
            Some(bad) => Err(format!(
                "{name} holds {bad}: a negative or non-finite time in ms"
            )),
            None => Ok(()),
        };
        times("samples_ms", &self.samples_ms)?;
        times("load_time_ms", &[self.load_time_ms])?;
        times("first_inference_ms", &[self.first_inference_ms])?;
        if let Some(a) = self.audio_seconds {
            if !(a > 0.0 && a <= ia_preprocess::audio::MAX_AUDIO_SECONDS) {
                return Err(format!(
                    "audio_seconds {a} is outside (0, {}]",
                    ia_preprocess::audio::MAX_AUDIO_SECONDS
                ));
            }
        }
        if let Some(b) = self.peak_rss_bytes {
            range("peak_rss_bytes", b, (0, i64::MAX as u64))?;
        }
        if let Some(g) = &self.generation {
            range(
                "generation.prompt_tokens",
                g.prompt_tokens as u64,
                crate::limits::SEQ_LEN,
            )?;
            range(
                "generation.new_tokens",
                g.new_tokens as u64,
                crate::limits::NEW_TOKENS,
            )?;
            for (name, v) in [
                ("generation.ttft_ms", &g.ttft_ms),
                ("generation.prefill_ms", &g.prefill_ms),
            ] {
                if v.is_empty() {
                    return Err(format!("{name} is empty"));
                }
                times(name, v)?;
            }
            times("generation.tpot_ms", &g.tpot_ms)?;
        }
        Ok(())
    }
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
    let latency = LatencyStats::from_samples(&r.samples_ms);
    let per_query_s = latency.mean_ms / 1e3;
    let batch = r.batch_size as f64;
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
    let throughput_tokens_per_s = match (&generation, r.seq_len) {
        (Some(g), _) => Some((g.prompt_tokens + g.new_tokens) as f64 * batch / per_query_s),
        (None, Some(s)) if plan.modality == ia_models::Modality::Text => {
            Some(s as f64 * batch / per_query_s)
        }
        _ => None,
    };
    let combo = ia_bench::Combination {
        platform: r.platform,
        batch_size: r.batch_size,
        seq_len: r.seq_len.unwrap_or(0),
        precision: r.precision,
        scenario: r.scenario,
        new_tokens: r.generation.as_ref().map_or(0, |g| g.new_tokens),
        audio_seconds: r.audio_seconds.unwrap_or(0.0) as f32,
        audio_file: None,
        model: plan.clone(),
    };
    let latency_p50_ms = latency.p50_ms;
    let outcome = Outcome::Measured(Box::new(Measurement {
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
        timed_duration_s: r.samples_ms.iter().sum::<f64>() / 1e3,
        throughput_items_per_s: batch / per_query_s,
        throughput_tokens_per_s,
        latency,
        samples_ms: r.samples_ms,
        peak_rss_bytes: r.peak_rss_bytes,
        peak_rss_per_combination: false,
        // Not ours to know: the external harness did not measure its own overhead.
        harness_overhead_ns: f64::NAN,
        generation,
        audio_seconds: r.audio_seconds,
        real_time_factor: r.audio_seconds.map(|s| latency_p50_ms / 1e3 / (s * batch)),
    }));
    Ok((combo, outcome))
}
