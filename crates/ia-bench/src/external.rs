//! Measurements another runtime took (e.g. the PyTorch side of scripts/compare_pytorch.py),
//! as `ipfs-accelerate db import` reads them: a JSON list of raw samples with how they were
//! obtained. Parsed and range-checked here, so a bad file is refused before anything is stored.

use ia_engine::Precision;
use ia_hardware::Platform;
use serde::Deserialize;

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
    pub scenario: crate::Scenario,
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

/// Parses a JSON list of external results and checks every number; the error names the result
/// (by index), the field, the value and its range.
pub fn parse(text: &str) -> Result<Vec<ExternalResult>, String> {
    let rows: Vec<ExternalResult> =
        serde_json::from_str(text).map_err(|e| format!("not a list of external results: {e}"))?;
    for (i, r) in rows.iter().enumerate() {
        r.check().map_err(|e| format!("result {i}: {e}"))?;
    }
    Ok(rows)
}

impl ExternalResult {
    /// Every number within the range the store and the statistics accept; the error names
    /// the field, the value and the range.
    pub fn check(&self) -> Result<(), String> {
        let range = crate::limits::check;
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
