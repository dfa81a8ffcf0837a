//! Fuzz targets for every parser of data that comes from outside: each takes arbitrary bytes
//! and must return (an `Err` inside is fine) without panicking, aborting, hanging or
//! allocating without bound.
//!
//! * [`TARGETS`]: config.json (classification, range checks, memory estimate), preprocessor
//!   configs (Whisper, CLAP, image processors, then a small input through them), images (PNG /
//!   JPEG decode and the three image processors), WAV audio (decode, resample, log-mel),
//!   safetensors and GGUF headers, ONNX graphs and OpenVINO IR (parameter counts), the JSON
//!   `db import` reads, and the legacy JSON results `db migrate-json` reads.
//! * [`Fuzzer`]: a small mutation fuzzer (bit flips, interesting integers, dictionary tokens,
//!   splices, cuts) on stable Rust, seeded from the repository's fixtures; the test suite runs
//!   it for a bounded time per target (tests/fuzz.rs) and replays every input that ever broke
//!   a target (regressions/).
//! * The same functions are the entry points of the cargo-fuzz (libFuzzer, coverage-guided)
//!   targets in `fuzz/`, which `scripts/fuzz.sh` runs for longer.

pub mod seeds;

use ia_models::footprint::{self, Workload};
use ia_models::ModelSource;
use ia_preprocess::audio::{ClapFrontEnd, Waveform, WhisperFrontEnd};
use ia_preprocess::image::{ImageProcessor, RgbImage};
use serde_json::Value;
use std::time::{Duration, Instant};

pub type Target = fn(&[u8]);

/// Every target, by the name its seeds, regressions and cargo-fuzz binary use.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("preprocessor", preprocessor),
    ("image", image),
    ("audio", audio),
    ("safetensors", safetensors),
    ("gguf", gguf),
    ("onnx", onnx),
    ("openvino_ir", openvino_ir),
    ("import", import),
    ("legacy_json", legacy_json),
];

/// config.json: classification with its range checks, then the memory estimate of a random-
/// weight model built from it (what the engines consult before allocating).
pub fn config(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if ia_models::classify_config(&v).is_err() {
        return;
    }
    let _ = footprint::estimate_parameters(&v);
    let src = ModelSource::RandomInit { config: v, seed: 0 };
    let _ = footprint::estimate(
        &src,
        4,
        Workload {
            batch: 8,
            positions: 512,
            cached_positions: 1024,
            beams: 4,
        },
    );
}

/// preprocessor_config.json: the three front ends' readers, then a short input through
/// whatever they accepted (long windows are valid configs but not fuzzing material).
pub fn preprocessor(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let wave: Vec<f32> = (0..4000).map(|i| ((i as f32) * 0.05).sin() * 0.3).collect();
    if let Ok(w) = WhisperFrontEnd::from_config(&v) {
        if w.n_samples <= 64_000 && w.n_fft <= 4096 && w.feature_size <= 256 {
            let _ = w.log_mel(&wave);
        }
    }
    if let Ok(c) = ClapFrontEnd::from_config(&v) {
        if c.max_samples <= 96_000 && c.fft_window_size <= 4096 && c.feature_size <= 256 {
            let _ = c.features(&wave);
        }
    }
    if let Ok(p) = ImageProcessor::from_config(&v) {
        let img = RgbImage::new(7, 5, (0..105).map(|i| i as u8).collect()).expect("7x5x3");
        let _ = p.process(&[img]);
    }
}

/// Image files: decode, then the CLIP, ViT and DETR processors at their default sizes.
pub fn image(data: &[u8]) {
    let Ok(img) = RgbImage::decode(data) else {
        return;
    };
    for kind in [
        "CLIPImageProcessor",
        "ViTImageProcessor",
        "DetrImageProcessor",
    ] {
        let p = ImageProcessor::from_config(&serde_json::json!({ "image_processor_type": kind }))
            .expect("built-in processors");
        let _ = p.process(std::slice::from_ref(&img));
    }
}

/// WAV files: decode, resample to 16 kHz, Whisper's log-mel over a one-second window and
/// Wav2Vec2's normalisation.
pub fn audio(data: &[u8]) {
    let Ok(w) = Waveform::read(data, "fuzz input") else {
        return;
    };
    if w.samples.len() > 1 << 20 {
        return;
    }
    let Ok(r) = w.resampled(16_000) else {
        return;
    };
    let fe = WhisperFrontEnd {
        n_samples: 16_000,
        ..Default::default()
    };
    let _ = fe.log_mel(&r.samples);
    let _ = ia_preprocess::audio::zero_mean_unit_var(&r.samples);
}

pub fn safetensors(data: &[u8]) {
    let _ = footprint::parse_safetensors_file(data);
}

pub fn gguf(data: &[u8]) {
    let _ = ia_models::gguf::check(data);
}

pub fn onnx(data: &[u8]) {
    let _ = ia_models::graph_weights::onnx_parameter_count_in(
        std::io::Cursor::new(data),
        data.len() as u64,
    );
}

pub fn openvino_ir(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ia_models::graph_weights::ir_parameter_count_in(text);
    }
}

/// The JSON `db import` reads.
pub fn import(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ia_bench::external::parse(text);
    }
}

/// The Python framework's JSON result files `db migrate-json` reads.
pub fn legacy_json(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ia_bench::legacy::parse(text);
    }
}

/// Byte strings mutations insert: numbers at the edges of every range the parsers check, JSON
/// shapes, format magics.
pub const DICTIONARY: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1e308",
    b"-1e308",
    b"1e-320",
    b"NaN",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9223372036854775807",
    b"4294967297",
    b"0.5",
    b"[]",
    b"{}",
    b"null",
    b"true",
    b"\"\"",
    b"[0, 0]",
    b"\"../../etc/passwd\"",
    b"GGUF",
    b"RIFF",
    b"WAVE",
    b"fmt ",
    b"data",
    b"IHDR",
    b"IDAT",
    b"\x89PNG\r\n\x1a\n",
    b"<layer ",
    b"type=\"Const\"",
    b"shape=\"",
];

/// An input that broke a target.
#[derive(Debug)]
pub struct Finding {
    pub target: &'static str,
    pub input: Vec<u8>,
    /// The panic message, or how long the input took.
    pub what: String,
}

/// A mutation fuzzer: each round takes a seed (or an earlier input that was kept), applies a
/// few random mutations and runs the target. Deterministic for a given `seed`.
pub struct Fuzzer {
    rng: ia_engine::inputs::SplitMix64,
}

/// The longest one input may take before it counts as a hang.
pub const SLOW_INPUT: Duration = Duration::from_secs(5);

impl Fuzzer {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ia_engine::inputs::SplitMix64::new(seed),
        }
    }

    fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n.max(1) as u64) as usize
    }

    /// One to four mutations of `input`; `other` is spliced from. Half the mutations of a JSON
    /// input change one of its values, so the mutant still parses and reaches the checks.
    pub fn mutate(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        if self.below(2) == 0 {
            if let Ok(mut json) = serde_json::from_slice::<Value>(input) {
                for _ in 0..1 + self.below(3) {
                    self.mutate_json(&mut json);
                }
                return json.to_string().into_bytes();
            }
        }
        self.mutate_bytes(input, other)
    }

    /// Replaces one value somewhere in `v` (a number most often) with an edge case.
    fn mutate_json(&mut self, v: &mut Value) {
        let mut at = v;
        loop {
            let children = match at {
                Value::Array(a) if !a.is_empty() => a.len(),
                Value::Object(o) if !o.is_empty() => o.len(),
                _ => 0,
            };
            // Stop here sometimes, or at a leaf.
            if children == 0 || self.below(4) == 0 {
                break;
            }
            let i = self.below(children);
            at = match at {
                Value::Array(a) => &mut a[i],
                Value::Object(o) => o.values_mut().nth(i).expect("index below len"),
                _ => unreachable!("has children"),
            };
        }
        let edge: [Value; 16] = [
            Value::from(0),
            Value::from(-1),
            Value::from(1),
            Value::from(1u64 << 31),
            Value::from((1u64 << 32) + 1),
            Value::from(1u64 << 53),
            Value::from(1u64 << 63),
            Value::from(u64::MAX),
            Value::from(1e308),
            Value::from(-1e308),
            Value::from(0.5),
            Value::Null,
            Value::from(""),
            Value::Array(vec![]),
            Value::Object(Default::default()),
            Value::Bool(true),
        ];
        *at = edge[self.below(edge.len())].clone();
    }

    fn mutate_bytes(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut v = input.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(v.len() + 1);
            match self.below(9) {
                0 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] ^= 1 << self.below(8);
                }
                1 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] = [0u8, 1, 0x7f, 0x80, 0xff][self.below(5)];
                }
                2 => {
                    let w = [1usize, 2, 4, 8][self.below(4)];
                    let values: [u64; 8] = [0, 1, u64::MAX, 1 << 31, 1 << 32, 1 << 63, 255, 65_535];
                    let bytes = values[self.below(values.len())].to_le_bytes();
                    let end = (at + w).min(v.len());
                    v.splice(at..end, bytes[..w].iter().copied());
                }
                3 => {
                    let token = DICTIONARY[self.below(DICTIONARY.len())];
                    v.splice(at..at, token.iter().copied());
                }
                4 if !v.is_empty() => {
                    // Replace a run of digits or a token with a dictionary entry.
                    let len = 1 + self.below(16);
                    let end = (at + len).min(v.len());
                    let token = DICTIONARY[self.below(DICTIONARY.len())];
                    v.splice(at..end, token.iter().copied());
                }
                5 if !v.is_empty() => {
                    let len = 1 + self.below(v.len().min(256));
                    let end = (at + len).min(v.len());
                    v.drain(at..end);
                }
                6 if !v.is_empty() => {
                    let start = self.below(v.len());
                    let len = 1 + self.below((v.len() - start).min(256));
                    let copy = v[start..start + len].to_vec();
                    v.splice(at..at, copy);
                }
                7 if !other.is_empty() => {
                    let start = self.below(other.len());
                    let len = 1 + self.below((other.len() - start).min(512));
                    v.splice(at..at, other[start..start + len].iter().copied());
                }
                _ => v.truncate(at),
            }
        }
        v.truncate(1 << 22);
        v
    }

    /// Runs `target` on every seed, then on mutations until `rounds` or `budget` is spent.
    /// Returns the number of inputs run, or the first input that panicked or took longer than
    /// [`SLOW_INPUT`].
    pub fn run(
        &mut self,
        name: &'static str,
        target: Target,
        seeds: &[Vec<u8>],
        rounds: usize,
        budget: Duration,
    ) -> Result<usize, Finding> {
        // A panic's message and location, kept quietly for the finding.
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(ia_bench::isolation::install_panic_hook);
        let start = Instant::now();
        let mut pool: Vec<Vec<u8>> = seeds.to_vec();
        if pool.is_empty() {
            pool.push(Vec::new());
        }
        let mut ran = 0;
        let total = seeds.len().saturating_add(rounds);
        for round in 0..total {
            if round >= seeds.len() && start.elapsed() > budget {
                break;
            }
            let input = if round < seeds.len() {
                seeds[round].clone()
            } else {
                let a = self.below(pool.len());
                let b = self.below(pool.len());
                self.mutate(&pool[a], &pool[b])
            };
            let t = Instant::now();
            let result = ia_bench::isolate(|| target(&input));
            let took = t.elapsed();
            ran += 1;
            if let Err(what) = result {
                return Err(Finding {
                    target: name,
                    input,
                    what,
                });
            }
            if took > SLOW_INPUT {
                return Err(Finding {
                    target: name,
                    input,
                    what: format!("took {took:?}"),
                });
            }
            // Keep some mutants: later rounds mutate them further (deeper inputs).
            if round >= seeds.len() && pool.len() < 4096 && self.below(8) == 0 {
                pool.push(input);
            }
        }
        Ok(ran)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_is_deterministic_and_bounded() {
        let mut a = Fuzzer::new(7);
        let mut b = Fuzzer::new(7);
        let seed = b"{\"hidden_size\": 32}".to_vec();
        for _ in 0..100 {
            assert_eq!(a.mutate(&seed, &seed), b.mutate(&seed, &seed));
        }
    }

    #[test]
    fn a_panicking_target_is_reported_with_its_input() {
        fn fragile(d: &[u8]) {
            assert!(!d.starts_with(b"GG"), "fragile");
        }
        let mut f = Fuzzer::new(1);
        let finding = f
            .run(
                "fragile",
                fragile,
                &[b"GGUF".to_vec()],
                10,
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert_eq!(finding.input, b"GGUF");
        assert!(finding.what.contains("fragile"));
    }
}
