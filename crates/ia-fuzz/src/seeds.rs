//! The inputs each target starts from: the repository's fixtures of that kind (configs,
//! preprocessor configs, images, WAV files, safetensors and ONNX files, OpenVINO IR), and
//! small generated files where the fixtures have none (GGUF, `db import` JSON). Shared by the
//! test suite's fuzzer and by `scripts/fuzz.sh`, which writes them out as libFuzzer corpora.

use std::path::Path;

/// Every file under `dir` (recursively, in name order) that `pick` accepts, up to 1 MiB each.
pub fn files(dir: &Path, pick: &dyn Fn(&Path) -> bool, out: &mut Vec<Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, pick, out);
        } else if pick(&p) {
            if let Ok(b) = std::fs::read(&p) {
                if b.len() <= 1 << 20 {
                    out.push(b);
                }
            }
        }
    }
}

fn named(name: &'static str) -> impl Fn(&Path) -> bool {
    move |p: &Path| p.file_name().is_some_and(|n| n == name)
}

fn ext(e: &'static str) -> impl Fn(&Path) -> bool {
    move |p: &Path| p.extension().is_some_and(|x| x == e)
}

/// A GGUF v3 file with one q8_0 tensor and the metadata a llama file carries.
pub fn gguf_seed() -> Vec<u8> {
    use ia_models::gguf::{write, WriteValue};
    write(
        &[
            ("general.architecture", WriteValue::Str("llama")),
            ("general.alignment", WriteValue::U32(32)),
            ("llama.context_length", WriteValue::U32(128)),
        ],
        &[("token_embd.weight", &[32, 2], 8)],
        &[1u8; 68],
    )
}

const IMPORT_SEED: &str = r#"[{"model": "bert", "engine": "pytorch", "engine_version": "2.5",
 "platform": "cpu", "device": "cpu", "precision": "f32", "scenario": "single-stream",
 "batch_size": 2, "seq_len": 16, "parameter_count": 4000, "load_time_ms": 1.5,
 "first_inference_ms": 2.0, "warmup_iterations": 1, "samples_ms": [1.0, 1.1, 0.9],
 "peak_rss_bytes": 1000000, "audio_seconds": null,
 "generation": {"prompt_tokens": 8, "new_tokens": 4, "ttft_ms": [1.0], "prefill_ms": [0.5],
                "tpot_ms": [0.1, 0.1, 0.1]}}]"#;

pub fn seeds(target: &str, repo: &Path) -> Vec<Vec<u8>> {
    let fixtures = repo.join("fixtures");
    let mut out = Vec::new();
    match target {
        "config" => files(&fixtures, &named("config.json"), &mut out),
        "preprocessor" => files(&fixtures, &named("preprocessor_config.json"), &mut out),
        "image" => {
            files(&fixtures.join("media"), &ext("png"), &mut out);
            files(&fixtures.join("media"), &ext("jpg"), &mut out);
        }
        "audio" => {
            files(&fixtures.join("media"), &ext("wav"), &mut out);
            // Short ones first: mutating 100 kB files is slow to explore.
            out.sort_by_key(Vec::len);
            for b in out.iter_mut() {
                b.truncate(8_000);
            }
        }
        "safetensors" => files(&fixtures, &named("model.safetensors"), &mut out),
        "gguf" => out.push(gguf_seed()),
        "onnx" => files(&fixtures, &ext("onnx"), &mut out),
        "openvino_ir" => files(&fixtures, &ext("xml"), &mut out),
        "import" => out.push(IMPORT_SEED.as_bytes().to_vec()),
        "legacy_json" => {
            files(&fixtures.join("legacy-results"), &ext("json"), &mut out);
            // Small ones first: the 93 kB suite file is slow to explore.
            out.sort_by_key(Vec::len);
        }
        other => panic!("no seeds for {other}"),
    }
    assert!(!out.is_empty(), "no seeds found for {target}");
    out
}
