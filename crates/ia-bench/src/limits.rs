//! The ranges the protocol accepts for its numbers. The command line parses its flags against
//! them and imported results are checked against them, so a value that would overflow a
//! duration, ask for a huge allocation, or wrap in a database column never reaches the harness.

/// Batch sizes.
pub const BATCH: (u64, u64) = (1, ia_engine::inputs::MAX_BATCH as u64);
/// Tokens per sequence.
pub const SEQ_LEN: (u64, u64) = (1, ia_engine::inputs::MAX_SEQ_LEN as u64);
/// Tokens generated per generation.
pub const NEW_TOKENS: (u64, u64) = (1, 1 << 20);
/// Untimed iterations.
pub const WARMUP: (u64, u64) = (0, 100_000);
/// Timed iterations.
pub const ITERATIONS: (u64, u64) = (1, 10_000_000);
/// Seconds a protocol phase or a browser step may be asked to take (one day).
pub const MAX_SECONDS: f64 = 86_400.0;

/// Ok when `v` is in `range`, else the one-line reason naming `name`.
pub fn check(name: &str, v: u64, (lo, hi): (u64, u64)) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{name} {v} is outside {lo}..={hi}"))
    }
}
