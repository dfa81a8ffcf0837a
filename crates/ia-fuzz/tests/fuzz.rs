//! Each fuzz target for a bounded time on stable Rust (IA_FUZZ_SECONDS per target, default 3;
//! IA_FUZZ_SEED picks the mutation sequence, default fixed so CI is repeatable), seeded from
//! the repository's fixtures, after replaying every input in regressions/<target>/ (inputs
//! that once broke a target). A finding is written to the system temp folder and reported with
//! its path; copy it into regressions/<target>/ when fixing it. `scripts/fuzz.sh` runs the
//! same targets under libFuzzer (cargo-fuzz) for longer.

use ia_fuzz::seeds::{files, seeds};
use ia_fuzz::{Fuzzer, Target, TARGETS};
use std::path::PathBuf;
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn target(name: &str) -> (&'static str, Target) {
    *TARGETS.iter().find(|(n, _)| *n == name).expect("target")
}

fn fuzz(name: &str) {
    let (name, f) = target(name);
    // Inputs that once broke this target.
    let mut replay = Vec::new();
    files(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("regressions")
            .join(name),
        &|p| p.extension().is_none_or(|e| e != "md"),
        &mut replay,
    );
    let seconds: f64 = std::env::var("IA_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let seed: u64 = std::env::var("IA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1a_2b_3c);
    let mut all = replay;
    all.extend(seeds(name, &repo()));
    let mut fuzzer = Fuzzer::new(seed);
    match fuzzer.run(name, f, &all, usize::MAX, Duration::from_secs_f64(seconds)) {
        Ok(n) => eprintln!("{name}: {n} inputs, no finding"),
        Err(finding) => {
            let path = std::env::temp_dir().join(format!(
                "ia-fuzz-{name}-{:016x}",
                finding
                    .input
                    .iter()
                    .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b))
                        .wrapping_mul(0x100_0000_01b3))
            ));
            std::fs::write(&path, &finding.input).unwrap();
            panic!(
                "fuzz target {name}: {} on the input saved at {} ({} bytes; copy it into crates/ia-fuzz/regressions/{name}/ with the fix)",
                finding.what,
                path.display(),
                finding.input.len()
            );
        }
    }
}

#[test]
fn fuzz_config() {
    fuzz("config");
}

#[test]
fn fuzz_preprocessor() {
    fuzz("preprocessor");
}

#[test]
fn fuzz_image() {
    fuzz("image");
}

#[test]
fn fuzz_audio() {
    fuzz("audio");
}

#[test]
fn fuzz_safetensors() {
    fuzz("safetensors");
}

#[test]
fn fuzz_gguf() {
    fuzz("gguf");
}

#[test]
fn fuzz_onnx() {
    fuzz("onnx");
}

#[test]
fn fuzz_openvino_ir() {
    fuzz("openvino_ir");
}

#[test]
fn fuzz_import() {
    fuzz("import");
}

#[test]
fn fuzz_legacy_json() {
    fuzz("legacy_json");
}

#[test]
fn every_target_is_fuzzed() {
    let src =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz.rs"))
            .unwrap();
    for (name, _) in TARGETS {
        assert!(
            src.contains(&format!("fn fuzz_{name}()")),
            "{name} has no test"
        );
    }
}
