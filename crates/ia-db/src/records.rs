//! Plain rows the store writes. The benchmark harness fills them; this crate does not depend
//! on the harness so that schema work never rebuilds the engines.

use crate::Result;
use duckdb::{params, Connection};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub git_commit: Option<String>,
    pub command_line: String,
    pub host: String,
    pub tool_version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelRecord {
    pub model_name: String,
    pub class: String,
    pub family: String,
    pub task: String,
    pub modality: String,
    pub parameter_count: i64,
    pub source: String,
    /// "trained" or "random".
    pub weights: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HardwareRecord {
    pub fingerprint: String,
    pub platform: String,
    pub device: String,
    pub host: String,
    pub cpu_model: String,
    pub details_json: String,
}

/// One measured (or failed) combination. Measurement fields are None when it did not run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PerformanceRecord {
    pub engine: String,
    pub engine_version: String,
    pub device: String,
    pub precision: String,
    pub scenario: String,
    pub batch_size: i32,
    pub seq_len: Option<i32>,
    pub status: String,
    pub error: Option<String>,
    pub load_time_ms: Option<f64>,
    pub first_inference_ms: Option<f64>,
    pub warmup_iterations: Option<i32>,
    pub iterations: Option<i32>,
    pub timed_duration_s: Option<f64>,
    pub latency_mean_ms: Option<f64>,
    pub latency_stdev_ms: Option<f64>,
    pub latency_min_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p90_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub p90_is_estimate: Option<bool>,
    pub p95_is_estimate: Option<bool>,
    pub p99_is_estimate: Option<bool>,
    pub throughput_items_per_s: Option<f64>,
    pub throughput_tokens_per_s: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub peak_rss_per_combination: Option<bool>,
    pub harness_overhead_ns: Option<f64>,
    pub prompt_tokens: Option<i32>,
    pub new_tokens: Option<i32>,
    pub ttft_mean_ms: Option<f64>,
    pub ttft_p50_ms: Option<f64>,
    pub tpot_p50_ms: Option<f64>,
    pub tpot_p90_ms: Option<f64>,
    pub tpot_p90_is_estimate: Option<bool>,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    pub weight_mb: Option<f64>,
    pub greedy_agreement_vs_f32: Option<f64>,
    pub audio_seconds: Option<f64>,
    pub real_time_factor: Option<f64>,
}

/// How a browser result was obtained (table `web_results`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WebRecord {
    pub browser: String,
    pub browser_version: String,
    pub user_agent: String,
    pub requested_ep: String,
    pub executed_ep: String,
    pub fell_back: bool,
    pub node_placement_json: String,
    pub adapter_vendor: Option<String>,
    pub adapter_architecture: Option<String>,
    pub adapter_description: Option<String>,
    pub adapter_is_fallback: Option<bool>,
    pub adapter_features: Option<String>,
    pub webnn_device: Option<String>,
    pub wasm_threads: i32,
    pub cross_origin_isolated: bool,
    pub precompiled: bool,
    pub precompile_ms: Option<f64>,
    pub parallel_load: bool,
    /// The parts' sessions were created at the same time (a parallel load where the EP allows).
    pub concurrent_sessions: bool,
    /// Peak resident set of the browser's renderer / GPU process, when /proc shows them.
    pub renderer_peak_rss_bytes: Option<i64>,
    pub gpu_process_peak_rss_bytes: Option<i64>,
    pub part_load_ms_json: String,
}

pub(crate) fn insert_web(tx: &Connection, result_id: i64, w: &WebRecord) -> Result<()> {
    tx.execute(
        "INSERT INTO web_results (
            result_id, browser, browser_version, user_agent, requested_ep, executed_ep,
            fell_back, node_placement, adapter_vendor, adapter_architecture,
            adapter_description, adapter_is_fallback, adapter_features, webnn_device,
            wasm_threads, cross_origin_isolated, precompiled, precompile_ms, parallel_load,
            concurrent_sessions, renderer_peak_rss_bytes, gpu_process_peak_rss_bytes,
            part_load_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![
            result_id,
            w.browser,
            w.browser_version,
            w.user_agent,
            w.requested_ep,
            w.executed_ep,
            w.fell_back,
            w.node_placement_json,
            w.adapter_vendor,
            w.adapter_architecture,
            w.adapter_description,
            w.adapter_is_fallback,
            w.adapter_features,
            w.webnn_device,
            w.wasm_threads,
            w.cross_origin_isolated,
            w.precompiled,
            w.precompile_ms,
            w.parallel_load,
            w.concurrent_sessions,
            w.renderer_peak_rss_bytes,
            w.gpu_process_peak_rss_bytes,
            w.part_load_ms_json
        ],
    )?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct CompatibilityRecord {
    pub platform: String,
    pub engine: String,
    pub precision: String,
    pub status: String,
    pub error: Option<String>,
}

pub(crate) fn insert_performance(
    tx: &Connection,
    run_id: i64,
    model_id: i64,
    hardware_id: i64,
    p: &PerformanceRecord,
) -> Result<i64> {
    Ok(tx.query_row(
        "INSERT INTO performance_results (
            run_id, model_id, hardware_id, engine, engine_version, device, precision, scenario,
            batch_size, seq_len, status, error, load_time_ms, first_inference_ms,
            warmup_iterations, iterations, timed_duration_s, latency_mean_ms, latency_stdev_ms,
            latency_min_ms, latency_max_ms, latency_p50_ms, latency_p90_ms, latency_p95_ms,
            latency_p99_ms, p90_is_estimate, p95_is_estimate, p99_is_estimate,
            throughput_items_per_s, throughput_tokens_per_s, peak_rss_mb,
            peak_rss_per_combination, harness_overhead_ns, prompt_tokens, new_tokens,
            ttft_mean_ms, ttft_p50_ms, tpot_p50_ms, tpot_p90_ms, tpot_p90_is_estimate,
            prefill_tokens_per_s, decode_tokens_per_s, weight_mb, greedy_agreement_vs_f32,
            audio_seconds, real_time_factor, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                 ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())
         RETURNING result_id",
        params![
            run_id,
            model_id,
            hardware_id,
            p.engine,
            p.engine_version,
            p.device,
            p.precision,
            p.scenario,
            p.batch_size,
            p.seq_len,
            p.status,
            p.error,
            p.load_time_ms,
            p.first_inference_ms,
            p.warmup_iterations,
            p.iterations,
            p.timed_duration_s,
            p.latency_mean_ms,
            p.latency_stdev_ms,
            p.latency_min_ms,
            p.latency_max_ms,
            p.latency_p50_ms,
            p.latency_p90_ms,
            p.latency_p95_ms,
            p.latency_p99_ms,
            p.p90_is_estimate,
            p.p95_is_estimate,
            p.p99_is_estimate,
            p.throughput_items_per_s,
            p.throughput_tokens_per_s,
            p.peak_rss_mb,
            p.peak_rss_per_combination,
            p.harness_overhead_ns,
            p.prompt_tokens,
            p.new_tokens,
            p.ttft_mean_ms,
            p.ttft_p50_ms,
            p.tpot_p50_ms,
            p.tpot_p90_ms,
            p.tpot_p90_is_estimate,
            p.prefill_tokens_per_s,
            p.decode_tokens_per_s,
            p.weight_mb,
            p.greedy_agreement_vs_f32,
            p.audio_seconds,
            p.real_time_factor
        ],
        |r| r.get(0),
    )?)
}
