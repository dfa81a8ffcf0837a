//! The ranges the command line accepts for numbers. Each flag is checked when it is parsed,
//! and the error names the flag, the value and the range: a number that would overflow a
//! duration, ask for a huge allocation, or wrap in a database column never reaches the code.

use clap::builder::{RangedU64ValueParser, TypedValueParser};

pub use ia_bench::limits::{BATCH, ITERATIONS, MAX_SECONDS, NEW_TOKENS, SEQ_LEN, WARMUP};
/// Beam width for Whisper.
pub const BEAMS: (u64, u64) = (1, ia_engine::speech::MAX_BEAMS as u64);
/// Labels printed (`--top-k`).
pub const TOP_K: (u64, u64) = (1, 1 << 20);

/// GPUs per node and nodes of a training plan.
pub const GPUS: (u64, u64) = (1, 4096);
/// Samples per optimizer step of a training plan.
pub const GLOBAL_BATCH: (u64, u64) = (1, 1 << 24);

/// A GPU's memory in GiB: (0, 65536].
pub fn gpu_memory_gib(s: &str) -> Result<f64, String> {
    within(s, 0.0, true, 65536.0, " GiB")
}

/// A count in `range`, parsed as usize.
pub fn count(range: (u64, u64)) -> impl TypedValueParser<Value = usize> {
    RangedU64ValueParser::<usize>::new().range(range.0..=range.1)
}

/// A count in `range`, parsed as u64.
pub fn count_u64(range: (u64, u64)) -> impl TypedValueParser<Value = u64> {
    RangedU64ValueParser::<u64>::new().range(range.0..=range.1)
}

fn number(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{s} is not a finite number"))
    }
}

/// `s` as a number in `lo..=hi`, or in `(lo, hi]` when `open_low`; the error writes the range
/// in the same notation, then `unit`.
fn within(s: &str, lo: f64, open_low: bool, hi: f64, unit: &str) -> Result<f64, String> {
    let v = number(s)?;
    let above_low = if open_low { v > lo } else { v >= lo };
    if above_low && v <= hi {
        return Ok(v);
    }
    let range = if open_low {
        format!("({lo}, {hi}]")
    } else {
        format!("{lo}..={hi}")
    };
    Err(format!("{v} is not in {range}{unit}"))
}

/// Seconds in [0, one day].
pub fn seconds(s: &str) -> Result<f64, String> {
    within(s, 0.0, false, MAX_SECONDS, " seconds")
}

/// Seconds of audio per input: (0, MAX_AUDIO_SECONDS].
pub fn audio_seconds(s: &str) -> Result<f32, String> {
    let max = ia_preprocess::audio::MAX_AUDIO_SECONDS;
    within(s, 0.0, true, max, " seconds").map(|v| v as f32)
}

/// A probability or score threshold in [0, 1].
pub fn unit_interval(s: &str) -> Result<f32, String> {
    within(s, 0.0, false, 1.0, "").map(|v| v as f32)
}

/// top-p: (0, 1].
pub fn top_p(s: &str) -> Result<f32, String> {
    within(s, 0.0, true, 1.0, "").map(|v| v as f32)
}

/// Sampling temperature: [0, 100] (0 = greedy).
pub fn temperature(s: &str) -> Result<f32, String> {
    within(s, 0.0, false, 100.0, "").map(|v| v as f32)
}

/// Repetition penalty: (0, 100].
pub fn repetition_penalty(s: &str) -> Result<f32, String> {
    within(s, 0.0, true, 100.0, "").map(|v| v as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_out_of_range_name_the_range() {
        assert!(seconds("1e20").unwrap_err().contains("0..=86400"));
        assert!(seconds("NaN").unwrap_err().contains("finite"));
        assert!(seconds("-1").is_err());
        assert_eq!(seconds("2.5"), Ok(2.5));
        assert!(audio_seconds("1e30").is_err());
        assert!(audio_seconds("0").is_err());
        assert!(top_p("0").is_err() && top_p("1").is_ok());
        assert!(temperature("inf").is_err());
        assert!(unit_interval("1.5").is_err());
    }
}
