//! Every file of fixtures/legacy-results (real files of the Python framework, copied from
//! ../shared/legacy-results) is recognised as the format its MANIFEST names, and what the
//! files hold is kept without invention.

use ia_bench::legacy::{parse, EntryKind, LegacyFile};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/legacy-results")
}

fn load(rel: &str) -> LegacyFile {
    let text = std::fs::read_to_string(fixtures().join(rel)).unwrap();
    parse(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn every_manifest_file_is_recognised_as_its_format() {
    let manifest = std::fs::read_to_string(fixtures().join("MANIFEST.tsv")).unwrap();
    let mut formats = std::collections::BTreeSet::new();
    for line in manifest.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (path, format) = (cols[0], cols[3]);
        let file = load(path);
        assert_eq!(file.format, format, "{path}");
        formats.insert(format);
    }
    assert_eq!(formats.len(), 22, "{formats:?}");
}

#[test]
fn raw_latencies_in_seconds_become_milliseconds_with_percentiles() {
    let f = load("hardware_benchmark_run/20250305_202703__benchmark_results.json");
    let w2v = f
        .entries
        .iter()
        .find(|e| {
            e.model.as_deref() == Some("facebook/wav2vec2-base")
                && e.path.ends_with("batch_1_audio_5s")
        })
        .unwrap();
    assert_eq!(w2v.batch_size, Some(1));
    assert_eq!(w2v.detail.as_deref(), Some("audio_5s"));
    assert_eq!(w2v.samples_ms.len(), 20);
    assert!(
        (w2v.samples_ms[0] - 4111.16).abs() < 0.01,
        "{}",
        w2v.samples_ms[0]
    );
    let mean = w2v.mean_latency_ms.unwrap();
    assert!((mean - 2973.39).abs() < 0.01, "{mean}");
    assert!(w2v.stats.is_some());
    let whisper_failed = f
        .entries
        .iter()
        .filter(|e| e.model.as_deref() == Some("openai/whisper-tiny"))
        .all(|e| e.status == "failed" && e.error.is_some() && e.stats.is_none());
    assert!(whisper_failed);
}

#[test]
fn means_without_samples_give_no_percentiles() {
    let f = load("benchmark_summary/20250305_195054__benchmark_summary.json");
    let measured: Vec<_> = f
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Measurement)
        .collect();
    assert!(!measured.is_empty());
    assert!(measured
        .iter()
        .all(|e| e.stats.is_none() && e.mean_latency_ms.is_some()));
    assert!(f
        .entries
        .iter()
        .any(|e| e.kind == EntryKind::Comparison && e.relative_value.is_some()));
}

#[test]
fn simulation_markers_are_found_where_the_files_put_them() {
    let web = load("web_platform_result/bert_webnn_20250302_231100__result.json");
    assert!(web.entries.iter().all(|e| e.simulated.is_some()));
    let batch =
        load("web_platform_batch/web_platform_results__all_models_webgpu_20250305_193352.json");
    assert_eq!(batch.entries.len(), 10);
    assert!(batch.entries.iter().all(|e| e.simulated.is_some()));
    let matrix =
        load("hardware_compatibility_matrix/benchmark_results__hardware_compatibility_matrix.json");
    assert!(!matrix.simulated_hardware.is_empty());
    assert!(matrix
        .entries
        .iter()
        .filter(|e| e.hardware.as_deref() == Some("webgpu"))
        .all(|e| e.simulated.is_some()));
    assert!(matrix
        .entries
        .iter()
        .filter(|e| e.hardware.as_deref() == Some("cpu"))
        .all(|e| e.simulated.is_none() && !e.has_figures()));
    let skill = load(
        "hf_skill_performance/performance_results__hf_whisper_performance_20250228_001943.json",
    );
    assert!(skill
        .entries
        .iter()
        .any(|e| e.simulated.as_deref().is_some_and(|m| m.contains("MOCK"))));
    let aggregated = load("aggregated_benchmarks/processed_results__aggregated_benchmarks.json");
    assert!(aggregated.warning.is_some() && aggregated.entries.is_empty());
    // No marker in the file: nothing is claimed either way.
    let placeholder = load(
        "model_hardware_benchmark/benchmark_results__benchmark_bert_webgpu_20250305_195720.json",
    );
    assert!(placeholder.entries.iter().all(|e| e.simulated.is_none()));
}
