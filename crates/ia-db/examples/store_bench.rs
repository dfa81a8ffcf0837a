//! `cargo build --release --workspace --examples`, then `$CARGO_TARGET_DIR/release/examples/store_bench`
//! (see Cargo.toml for why not `cargo bench`): how fast the store takes raw samples in and how
//! fast the trend queries read a store of 1,000,000 raw samples back.
//!
//! Two write paths are timed. Ingest is `record_combinations`, one transaction per run of
//! combinations, which is how `db import` and the results API's submissions store results.
//! The harness's `record_combination`, one transaction per finished combination so that a
//! killed run keeps every result that finished, is timed on its own: it runs once per
//! measurement of seconds, and its cost per combination is what matters there.
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

/// Combination `i` of run `run`: five models at batch sizes 1, 2, 4, ... with `samples`
/// latencies spread over [10, 11) ms by a fixed stride (the store's cost does not depend on
/// the values, and no second random generator is needed).
fn combination(run: usize, i: usize, samples: usize) -> CombinationRecords {
    let xs: Vec<f64> = (0..samples)
        .map(|k| 10.0 + ((k * 7919 + run * 31 + i) % 1000) as f64 / 1000.0)
        .collect();
    let mut sorted = xs.clone();
    sorted.sort_by(f64::total_cmp);
    CombinationRecords {
        model: ModelRecord {
            model_name: format!("model-{}", i % 5),
            class: "bert".into(),
            family: "embedding".into(),
            task: "feature-extraction".into(),
            modality: "text".into(),
            parameter_count: 1,
            source: "bench".into(),
            weights: "random".into(),
        },
        hardware: HardwareRecord {
            fingerprint: "bench".into(),
            platform: "cpu".into(),
            device: "cpu".into(),
            host: "bench".into(),
            cpu_model: "bench".into(),
            details_json: "{}".into(),
        },
        performance: PerformanceRecord {
            engine: "native".into(),
            engine_version: "bench".into(),
            device: "cpu".into(),
            precision: "f32".into(),
            scenario: "single-stream".into(),
            batch_size: 1 << (i / 5),
            status: "pass".into(),
            iterations: Some(samples as i32),
            latency_p50_ms: Some(sorted[samples / 2]),
            ..Default::default()
        },
        samples_ms: xs,
        compatibility: CompatibilityRecord {
            platform: "cpu".into(),
            engine: "native".into(),
            precision: "f32".into(),
            status: "pass".into(),
            error: None,
        },
        web: None,
    }
}

fn run_record(run: usize) -> RunRecord {
    RunRecord {
        git_commit: Some(format!("{run:07x}")),
        command_line: "store_bench".into(),
        host: "bench".into(),
        tool_version: "bench".into(),
    }
}

fn main() {
    let runs = env("IA_BENCH_RUNS", 100);
    let per_run = env("IA_BENCH_RESULTS", 10);
    let samples = env("IA_BENCH_SAMPLES", 1000);
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_or_create(&dir.path().join("bench.duckdb")).unwrap();

    // Ingest: each run's combinations in one transaction. Building the records is not timed.
    let mut ingest_s = 0.0;
    let mut per_run_s = vec![];
    for run in 0..runs {
        let combinations: Vec<_> = (0..per_run).map(|i| combination(run, i, samples)).collect();
        let t = Instant::now();
        let run_id = store.begin_run(&run_record(run)).unwrap();
        store.record_combinations(run_id, &combinations).unwrap();
        store.end_run(run_id, "completed").unwrap();
        let elapsed = t.elapsed().as_secs_f64();
        ingest_s += elapsed;
        per_run_s.push(elapsed);
    }
    let stored = runs * per_run * samples;
    println!(
        "ingest (record_combinations, one transaction per run): {stored} raw samples in {} \
         combinations ({runs} runs) in {ingest_s:.2} s: {:.0} samples/s; one run of {per_run} \
         combinations: median {:.1} ms",
        runs * per_run,
        stored as f64 / ingest_s,
        median(per_run_s) * 1e3
    );

    // The harness's path: one transaction per combination, into a second store so that the
    // query figures below read exactly `stored` samples.
    let mut harness = Store::open_or_create(&dir.path().join("harness.duckdb")).unwrap();
    let run_id = harness.begin_run(&run_record(0)).unwrap();
    let mut per_combination = vec![];
    for i in 0..(per_run * 5) {
        let c = combination(0, i % per_run, samples);
        let t = Instant::now();
        harness.record_combination(run_id, &c).unwrap();
        per_combination.push(t.elapsed().as_secs_f64());
    }
    harness.end_run(run_id, "completed").unwrap();
    println!(
        "harness (record_combination, one transaction per combination of {samples} samples): \
         median {:.1} ms, {:.0} samples/s",
        median(per_combination.clone()) * 1e3,
        samples as f64 / median(per_combination)
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
