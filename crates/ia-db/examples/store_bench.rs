//! `cargo build --release --workspace --examples`, then `$CARGO_TARGET_DIR/release/examples/store_bench`
//! (see Cargo.toml for why not `cargo bench`): how fast the store takes raw samples in (through the same
//! `record_combination` the harness calls: one transaction per combination) and how fast the
//! trend queries read a store of 1,000,000 raw samples back.
//!
//! Targets (issue 16): ingest >= 100,000 samples/s; trend query over 1,000,000 samples
//! < 200 ms. Sizes can be changed with IA_BENCH_RUNS / IA_BENCH_RESULTS / IA_BENCH_SAMPLES.

use ia_db::{
    CombinationRecords, CompatibilityRecord, HardwareRecord, ModelRecord, PerformanceRecord,
    RunRecord, Store,
};
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs = env("IA_BENCH_RUNS", 100);
    let per_run = env("IA_BENCH_RESULTS", 10);
    let samples = env("IA_BENCH_SAMPLES", 1000);
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_or_create(&dir.path().join("bench.duckdb")).unwrap();
    let hardware = HardwareRecord {
        fingerprint: "bench".into(),
        platform: "cpu".into(),
        device: "cpu".into(),
        host: "bench".into(),
        cpu_model: "bench".into(),
        details_json: "{}".into(),
    };
    let started = Instant::now();
    let mut stored = 0usize;
    let mut per_combination = vec![];
    for run in 0..runs {
        let run_id = store
            .begin_run(&RunRecord {
                git_commit: Some(format!("{run:07x}")),
                command_line: "store_bench".into(),
                host: "bench".into(),
                tool_version: "bench".into(),
            })
            .unwrap();
        for i in 0..per_run {
            let model = ModelRecord {
                model_name: format!("model-{}", i % 5),
                class: "bert".into(),
                family: "embedding".into(),
                task: "feature-extraction".into(),
                modality: "text".into(),
                parameter_count: 1,
                source: "bench".into(),
                weights: "random".into(),
            };
            let batch = 1 << (i / 5);
            // Spread over [10, 11) ms by a fixed stride: the store's cost does not depend on
            // the values, and no second random generator is needed.
            let xs: Vec<f64> = (0..samples)
                .map(|k| 10.0 + ((k * 7919 + run * 31 + i) % 1000) as f64 / 1000.0)
                .collect();
            let mut sorted = xs.clone();
            sorted.sort_by(f64::total_cmp);
            let perf = PerformanceRecord {
                engine: "native".into(),
                engine_version: "bench".into(),
                device: "cpu".into(),
                precision: "f32".into(),
                scenario: "single-stream".into(),
                batch_size: batch,
                status: "pass".into(),
                iterations: Some(samples as i32),
                latency_p50_ms: Some(sorted[samples / 2]),
                ..Default::default()
            };
            let compat = CompatibilityRecord {
                platform: "cpu".into(),
                engine: "native".into(),
                precision: "f32".into(),
                status: "pass".into(),
                error: None,
            };
            let combination = CombinationRecords {
                model,
                hardware: hardware.clone(),
                performance: perf,
                samples_ms: xs,
                compatibility: compat,
                web: None,
            };
            let t = Instant::now();
            store.record_combination(run_id, &combination).unwrap();
            per_combination.push(t.elapsed().as_secs_f64());
            stored += samples;
        }
        store.end_run(run_id, "completed").unwrap();
    }
    let ingest_s = started.elapsed().as_secs_f64();
    println!(
        "ingest: {stored} raw samples in {} combinations ({runs} runs) in {ingest_s:.2} s: \
         {:.0} samples/s; one combination of {samples} samples: median {:.2} ms",
        runs * per_run,
        stored as f64 / ingest_s,
        median(per_combination) * 1e3
    );

    let time = |label: &str, sql: &str| {
        let mut times = vec![];
        let mut rows = 0;
        for _ in 0..7 {
            let t = Instant::now();
            let result = store.query(sql).unwrap();
            times.push(t.elapsed().as_secs_f64());
            rows = result.rows.len();
        }
        println!(
            "{label}: {rows} rows over {stored} raw samples: median {:.1} ms (of 7)",
            median(times) * 1e3
        );
    };
    time(
        "trend query (db trend --metric p50)",
        &ia_db::trend::series_sql("latency_p50_ms", None, None),
    );
    time(
        "trend from raw samples (median per result)",
        ia_db::trend::RAW_SAMPLE_TREND_SQL,
    );
}
