//! The reports: performance (latest result of every measured combination), compatibility
//! (model x platform matrix with the error behind every non-pass cell) and web (each browser
//! platform's result beside the native platforms' for the same model and shape).

use crate::query::{html_escape, value_text, OutputFormat, QueryResult};
use crate::{Result, Store};
use duckdb::types::Value;

pub const PLATFORMS: [&str; 8] = [
    "cpu", "cuda", "rocm", "mps", "openvino", "webgpu", "webnn", "wasm",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Performance,
    Compatibility,
    Web,
}

impl std::str::FromStr for ReportKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "performance" => Ok(ReportKind::Performance),
            "compatibility" => Ok(ReportKind::Compatibility),
            "web" => Ok(ReportKind::Web),
            other => Err(format!(
                "unknown report kind '{other}' (expected performance, compatibility or web)"
            )),
        }
    }
}

/// Latest result per combination, with provenance (engine, device, weights) on every row.
/// A percentile from too few samples is prefixed with '~'.
const PERFORMANCE_SQL: &str = r#"
SELECT m.model_name AS model, m.weights, round(m.parameter_count / 1e6, 2) AS params_m,
       h.platform, p.engine || ' (' || p.engine_version || ')' AS engine, p.device,
       p.precision, p.scenario, p.batch_size AS batch, p.seq_len AS seq, p.status,
       p.iterations AS n,
       round(p.latency_mean_ms, 3) AS mean_ms, round(p.latency_stdev_ms, 3) AS stdev_ms,
       round(p.latency_p50_ms, 3) AS p50_ms,
       CASE WHEN p.p90_is_estimate THEN '~' ELSE '' END || CAST(round(p.latency_p90_ms, 3) AS VARCHAR) AS p90_ms,
       CASE WHEN p.p99_is_estimate THEN '~' ELSE '' END || CAST(round(p.latency_p99_ms, 3) AS VARCHAR) AS p99_ms,
       round(p.throughput_items_per_s, 2) AS items_per_s,
       round(p.throughput_tokens_per_s, 1) AS tokens_per_s,
       round(p.ttft_p50_ms, 2) AS ttft_p50_ms,
       CASE WHEN p.tpot_p90_is_estimate THEN '~' ELSE '' END || CAST(round(p.tpot_p90_ms, 3) AS VARCHAR) AS tpot_p90_ms,
       round(p.prefill_tokens_per_s, 1) AS prefill_tok_s, round(p.decode_tokens_per_s, 1) AS decode_tok_s,
       round(p.weight_mb, 2) AS weight_mb, round(p.greedy_agreement_vs_f32, 3) AS agreement_vs_f32,
       round(p.audio_seconds, 2) AS audio_s, round(p.real_time_factor, 4) AS rtf,
       round(p.peak_rss_mb, 1) AS peak_rss_mb, round(p.load_time_ms, 1) AS load_ms,
       round(p.first_inference_ms, 2) AS first_ms, p.error,
       p.created_at
FROM performance_results p
JOIN models m USING (model_id)
JOIN hardware_platforms h USING (hardware_id)
QUALIFY row_number() OVER (
    PARTITION BY m.model_name, m.weights, h.fingerprint, h.platform, p.engine, p.precision,
                 p.scenario, p.batch_size, p.seq_len
    ORDER BY p.created_at DESC, p.result_id DESC) = 1
ORDER BY model, weights, platform, engine, precision, scenario, batch
"#;

const COMPATIBILITY_SQL: &str = r#"
SELECT m.model_name AS model, m.weights, c.platform, c.engine, c.precision, c.status, c.error,
       c.created_at
FROM compatibility_results c
JOIN models m USING (model_id)
QUALIFY row_number() OVER (
    PARTITION BY m.model_name, m.weights, c.platform, c.engine, c.precision
    ORDER BY c.created_at DESC, c.compat_id DESC) = 1
ORDER BY model, weights, platform, engine, precision
"#;

/// Every web platform's latest result (including unavailable and failed ones, with the
/// reason), each beside every native platform's latest passing result for the same model,
/// weights, machine, precision, scenario, batch and sequence length.
const WEB_SQL: &str = r#"
WITH latest AS (
    SELECT p.*, m.model_name, m.weights, h.platform, h.fingerprint,
           coalesce(w.precompiled, false) AS precompiled,
           coalesce(w.parallel_load, false) AS parallel_load
    FROM performance_results p
    JOIN models m USING (model_id)
    JOIN hardware_platforms h USING (hardware_id)
    LEFT JOIN web_results w USING (result_id)
    QUALIFY row_number() OVER (
        PARTITION BY m.model_name, m.weights, h.fingerprint, h.platform, p.engine, p.precision,
                     p.scenario, p.batch_size, p.seq_len, precompiled, parallel_load
        ORDER BY p.created_at DESC, p.result_id DESC) = 1
)
SELECT web.model_name AS model, web.weights, web.batch_size AS batch, web.seq_len AS seq,
       web.platform, web.status, w.executed_ep,
       CASE WHEN w.fell_back THEN 'yes' ELSE '' END AS fell_back,
       nullif(concat_ws(' ', w.adapter_vendor, w.adapter_architecture,
              CASE WHEN w.adapter_is_fallback THEN '(fallback adapter)' END), '') AS adapter,
       w.browser || ' ' || w.browser_version AS browser,
       web.precompiled, web.parallel_load, w.concurrent_sessions,
       round(web.load_time_ms, 1) AS load_ms, round(w.precompile_ms, 1) AS precompile_ms,
       round(web.first_inference_ms, 2) AS first_ms, round(web.latency_p50_ms, 3) AS p50_ms,
       round(w.renderer_peak_rss_bytes / 1e6, 1) AS renderer_peak_mb,
       round(w.gpu_process_peak_rss_bytes / 1e6, 1) AS gpu_process_peak_mb,
       round(web.first_inference_ms / web.latency_p50_ms, 1) AS first_over_warm,
       nat.platform || ' / ' || nat.engine AS native, round(nat.latency_p50_ms, 3) AS native_p50_ms,
       round(web.latency_p50_ms / nat.latency_p50_ms, 2) AS web_over_native,
       web.error
FROM latest web
LEFT JOIN web_results w USING (result_id)
LEFT JOIN latest nat
       ON nat.platform NOT IN ('wasm', 'webgpu', 'webnn') AND nat.status = 'pass'
      AND nat.model_name = web.model_name AND nat.weights = web.weights
      AND nat.fingerprint = web.fingerprint AND nat.precision = web.precision
      AND nat.scenario = web.scenario AND nat.batch_size = web.batch_size
      AND nat.seq_len IS NOT DISTINCT FROM web.seq_len
WHERE web.platform IN ('wasm', 'webgpu', 'webnn')
ORDER BY model, weights, batch, seq, web.platform, web.precompiled, web.parallel_load, native
"#;

pub fn web(store: &Store) -> Result<QueryResult> {
    store.query(WEB_SQL)
}

pub fn performance(store: &Store) -> Result<QueryResult> {
    store.query(PERFORMANCE_SQL)
}

pub fn compatibility(store: &Store) -> Result<QueryResult> {
    store.query(COMPATIBILITY_SQL)
}

/// Renders a report. md and html get a title and, for compatibility, the matrix view;
/// csv and json get the rows as they are.
pub fn render(store: &Store, kind: ReportKind, format: OutputFormat) -> Result<String> {
    store.check_tables()?;
    let rows = match kind {
        ReportKind::Performance => performance(store)?,
        ReportKind::Compatibility => compatibility(store)?,
        ReportKind::Web => web(store)?,
    };
    let title = match kind {
        ReportKind::Performance => "Performance report",
        ReportKind::Compatibility => "Compatibility report",
        ReportKind::Web => "Web platforms report",
    };
    let generated = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC");
    let source = store.path().display();
    Ok(match (kind, format) {
        (_, OutputFormat::Csv) | (_, OutputFormat::Json) | (_, OutputFormat::Table) => {
            rows.render(format)
        }
        (ReportKind::Performance, OutputFormat::Markdown) => format!(
            "# {title}\n\nGenerated {generated} from `{source}`. Latest result per combination; \
             `weights = random` rows were measured on seeded random weights; `~` marks a \
             percentile from fewer samples than it needs (p90 < 64, p99 < 662).\n\n{}",
            rows.markdown()
        ),
        (ReportKind::Web, OutputFormat::Markdown) => format!(
            "# {title}\n\nGenerated {generated} from `{source}`. Each browser result (onnxruntime-web \
             in a headless browser) beside each native platform's latest passing result for the \
             same model and shape. executed_ep is where onnxruntime-web placed the nodes (its \
             log); first_over_warm is first-inference time over warm p50 (shader compilation on \
             WebGPU); web_over_native is web p50 over native p50.\n\n{}",
            rows.markdown()
        ),
        (ReportKind::Compatibility, OutputFormat::Markdown) => {
            let matrix = compatibility_matrix(&rows);
            format!(
                "# {title}\n\nGenerated {generated} from `{source}`. pass = ran and measured; \
                 fail = ran and errored; unavailable = could not run here (reason below); \
                 - = not tried.\n\n{}\n## Details\n\n{}",
                matrix.markdown(),
                rows.markdown()
            )
        }
        (kind, OutputFormat::Html) => {
            let body = match kind {
                ReportKind::Performance | ReportKind::Web => rows.html_table(),
                ReportKind::Compatibility => format!(
                    "{}<h2>Details</h2>\n{}",
                    compatibility_matrix(&rows).html_table(),
                    rows.html_table()
                ),
            };
            format!(
                "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\
                 <style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}\
                 td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}</style></head>\
                 <body><h1>{title}</h1><p>Generated {generated} from {}</p>\n{body}</body></html>\n",
                html_escape(&source.to_string())
            )
        }
    })
}

/// Pivots compatibility rows into model (+weights) x platform, best status per cell
/// (pass beats fail beats unavailable, across engines and precisions).
fn compatibility_matrix(rows: &QueryResult) -> QueryResult {
    let col = |name: &str| rows.columns.iter().position(|c| c == name).expect("column");
    let (mi, wi, pi, si) = (col("model"), col("weights"), col("platform"), col("status"));
    let mut models: Vec<(String, String)> = Vec::new();
    let mut cells: std::collections::HashMap<(String, String, String), String> = Default::default();
    let rank = |s: &str| match s {
        "pass" => 3,
        "fail" => 2,
        "unavailable" => 1,
        _ => 0,
    };
    for r in &rows.rows {
        let key = (value_text(&r[mi]), value_text(&r[wi]));
        if !models.contains(&key) {
            models.push(key.clone());
        }
        let status = value_text(&r[si]);
        let cell = cells.entry((key.0, key.1, value_text(&r[pi]))).or_default();
        if rank(&status) > rank(cell) {
            *cell = status;
        }
    }
    let mut columns = vec!["model".to_string(), "weights".to_string()];
    columns.extend(PLATFORMS.iter().map(|p| p.to_string()));
    let out_rows = models
        .into_iter()
        .map(|(m, w)| {
            let mut row = vec![Value::Text(m.clone()), Value::Text(w.clone())];
            for p in PLATFORMS {
                let v = cells
                    .get(&(m.clone(), w.clone(), p.to_string()))
                    .cloned()
                    .unwrap_or_else(|| "-".into());
                row.push(Value::Text(v));
            }
            row
        })
        .collect();
    QueryResult {
        columns,
        rows: out_rows,
        truncated: rows.truncated,
    }
}
