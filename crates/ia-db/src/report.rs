//! The reports: performance (latest result of every measured combination), compatibility
//! (model x platform matrix with the error behind every non-pass cell), web (each browser
//! platform's result beside the native platforms' for the same model and shape), hardware
//! (one model on every platform, speedup over the CPU), summary (what was measured where, the
//! best platform per model, failures) and legacy (imported results of the Python framework;
//! simulated entries only on request). HTML reports put the charts (ia_charts, the same
//! definitions as `db plot`) first, then one table per model with reasons collapsed.

use crate::charts::{display_model_name, ChartFilter, LATEST_PER_COMBINATION};
use crate::query::{html_escape, value_text, OutputFormat, QueryResult};
use crate::{DbError, Result, Store};
use duckdb::types::Value;
use ia_charts::Kind as ChartKind;

pub const PLATFORMS: [&str; 8] = [
    "cpu", "cuda", "rocm", "mps", "openvino", "webgpu", "webnn", "wasm",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Performance,
    Compatibility,
    Web,
    Hardware,
    Summary,
    Legacy,
}

impl std::str::FromStr for ReportKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "performance" => Ok(ReportKind::Performance),
            "compatibility" => Ok(ReportKind::Compatibility),
            "web" => Ok(ReportKind::Web),
            "hardware" => Ok(ReportKind::Hardware),
            "summary" => Ok(ReportKind::Summary),
            "legacy" => Ok(ReportKind::Legacy),
            other => Err(format!(
                "unknown report kind '{other}' (expected performance, compatibility, web, \
                 hardware, summary or legacy)"
            )),
        }
    }
}

/// Latest result per combination, with provenance (engine, device, weights) on every row.
/// A percentile from too few samples is prefixed with '~'.
const PERFORMANCE_SQL: &str = r#"
SELECT m.model_name AS model, m.weights, round(nullif(m.parameter_count, 0) / 1e6, 2) AS params_m,
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
WHERE {where}
{latest}
ORDER BY model, weights, platform, engine, precision, scenario, batch
"#;

const COMPATIBILITY_SQL: &str = r#"
SELECT m.model_name AS model, m.weights, p.platform, p.engine, p.precision, p.status, p.error,
       p.created_at
FROM compatibility_results p
JOIN models m USING (model_id)
JOIN hardware_platforms h USING (hardware_id)
WHERE {where}
QUALIFY row_number() OVER (
    PARTITION BY m.model_name, m.weights, p.platform, p.engine, p.precision
    ORDER BY p.created_at DESC, p.compat_id DESC) = 1
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
    WHERE {where}
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

/// One model on every platform: each latest result with its speedup over the CPU (the
/// native engine's CPU result where there is one, else the fastest other CPU engine) at the
/// same precision, scenario and shape.
const HARDWARE_SQL: &str = r#"
WITH latest AS (
    SELECT p.*, m.model_name, m.weights, h.platform, h.fingerprint
    FROM performance_results p
    JOIN models m USING (model_id)
    JOIN hardware_platforms h USING (hardware_id)
    WHERE {where}
    {latest}
), cpu AS (
    SELECT * FROM latest WHERE platform = 'cpu' AND status = 'pass'
    QUALIFY row_number() OVER (
        PARTITION BY model_name, weights, fingerprint, precision, scenario, batch_size, seq_len
        ORDER BY (engine = 'native') DESC, latency_p50_ms) = 1
)
SELECT l.model_name AS model, l.weights, l.platform,
       l.engine || ' (' || l.engine_version || ')' AS engine, l.device, l.precision, l.scenario,
       l.batch_size AS batch, l.seq_len AS seq, l.status,
       round(l.latency_p50_ms, 3) AS p50_ms, round(l.throughput_items_per_s, 2) AS items_per_s,
       round(l.peak_rss_mb, 1) AS peak_rss_mb, c.engine AS cpu_reference,
       round(c.latency_p50_ms / l.latency_p50_ms, 2) AS speedup_vs_cpu, l.error
FROM latest l
LEFT JOIN cpu c
       ON c.model_name = l.model_name AND c.weights = l.weights AND c.fingerprint = l.fingerprint
      AND c.precision = l.precision AND c.scenario = l.scenario
      AND c.batch_size = l.batch_size AND c.seq_len IS NOT DISTINCT FROM l.seq_len
ORDER BY model, l.weights, batch, seq, l.precision, speedup_vs_cpu DESC NULLS LAST, l.platform
"#;

/// Summary, what was measured: per model and target, results by status and batch sizes.
const SUMMARY_MEASURED_SQL: &str = r#"
SELECT m.model_name AS model, m.weights, h.platform, p.engine,
       count(*) AS results,
       count(*) FILTER (WHERE p.status = 'pass') AS pass,
       count(*) FILTER (WHERE p.status = 'fail') AS fail,
       count(*) FILTER (WHERE p.status = 'unavailable') AS unavailable,
       string_agg(DISTINCT p.precision, ', ' ORDER BY p.precision) AS precisions,
       string_agg(DISTINCT CAST(p.batch_size AS VARCHAR), ', ' ORDER BY CAST(p.batch_size AS VARCHAR)) AS batch_sizes,
       count(DISTINCT h.fingerprint) AS machines,
       max(p.created_at) AS last_measured
FROM performance_results p
JOIN models m USING (model_id)
JOIN hardware_platforms h USING (hardware_id)
WHERE {where}
GROUP BY ALL
ORDER BY model, m.weights, h.platform, p.engine
"#;

/// Summary, the best platform per model and shape: lowest p50 of the latest passing results
/// on one machine, with the runner-up.
const SUMMARY_BEST_SQL: &str = r#"
WITH latest AS (
    SELECT p.*, m.model_name, m.weights, h.platform, h.fingerprint
    FROM performance_results p
    JOIN models m USING (model_id)
    JOIN hardware_platforms h USING (hardware_id)
    WHERE {where} AND p.status = 'pass' AND p.latency_p50_ms > 0
    {latest}
), ranked AS (
    SELECT *, row_number() OVER (
        PARTITION BY model_name, weights, fingerprint, scenario, batch_size, seq_len
        ORDER BY latency_p50_ms) AS place,
        count(*) OVER (
        PARTITION BY model_name, weights, fingerprint, scenario, batch_size, seq_len) AS targets
    FROM latest
)
SELECT b.model_name AS model, b.weights, b.scenario, b.batch_size AS batch, b.seq_len AS seq,
       b.targets AS targets_measured,
       b.engine || '/' || b.platform || ' ' || b.precision AS best,
       round(b.latency_p50_ms, 3) AS best_p50_ms,
       r.engine || '/' || r.platform || ' ' || r.precision AS runner_up,
       round(r.latency_p50_ms / b.latency_p50_ms, 2) AS runner_up_slower_by
FROM ranked b
LEFT JOIN ranked r
       ON r.place = 2 AND r.model_name = b.model_name AND r.weights = b.weights
      AND r.fingerprint = b.fingerprint AND r.scenario = b.scenario
      AND r.batch_size = b.batch_size AND r.seq_len IS NOT DISTINCT FROM b.seq_len
WHERE b.place = 1
ORDER BY model, b.weights, b.scenario, batch, seq
"#;

/// Summary, failures: every latest result that did not pass, with its reason.
const SUMMARY_FAILURES_SQL: &str = r#"
SELECT m.model_name AS model, m.weights, h.platform, p.engine, p.precision,
       p.batch_size AS batch, p.status, p.error, p.created_at
FROM performance_results p
JOIN models m USING (model_id)
JOIN hardware_platforms h USING (hardware_id)
WHERE {where}
{latest}
    AND p.status <> 'pass'
ORDER BY p.status, model, h.platform, p.engine, p.precision, batch
"#;

/// Imported legacy entries (db migrate-json); simulated ones only when asked for.
const LEGACY_SQL: &str = r#"
SELECT l.model, l.family, l.hardware AS platform, l.kind, l.batch_size AS batch, l.seq_len AS seq,
       l.precision, l.detail, l.status,
       CASE WHEN l.simulated THEN 'simulated: ' || l.simulation_marker ELSE 'unverified' END AS provenance,
       l.has_figures, l.samples, round(l.latency_mean_ms, 3) AS mean_ms,
       round(l.latency_p50_ms, 3) AS p50_ms, round(l.latency_p90_ms, 3) AS p90_ms,
       round(l.throughput_items_per_s, 2) AS items_per_s, round(l.memory_mb, 1) AS memory_mb,
       round(l.relative_value, 3) AS relative, l.implementation_type, l.measured_at,
       f.format, f.source_path, l.entry_path, l.error
FROM legacy_results l
JOIN legacy_files f USING (file_id)
WHERE (? OR NOT l.simulated) AND {where}
ORDER BY l.model NULLS LAST, l.hardware, l.kind, l.batch_size, f.source_path, l.entry_path
"#;

/// Runs a report query with the filter in place of `{where}` and the one definition of "the
/// latest result of each combination" in place of `{latest}`.
fn rows(store: &Store, sql: &str, filter: &ChartFilter) -> Result<QueryResult> {
    let (clause, params) = filter.clause();
    let sql = sql
        .replace("{where}", &clause)
        .replace("{latest}", LATEST_PER_COMBINATION);
    crate::query::run_with_params(store.connection(), &sql, &params)
}

/// What a report covers besides its kind.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    pub filter: ChartFilter,
    /// Legacy report: include entries their files mark as simulated.
    pub include_simulated: bool,
}

/// One titled table of a report.
struct Section {
    heading: &'static str,
    rows: QueryResult,
}

fn title(kind: ReportKind) -> &'static str {
    match kind {
        ReportKind::Performance => "Performance report",
        ReportKind::Compatibility => "Compatibility report",
        ReportKind::Web => "Web platforms report",
        ReportKind::Hardware => "Hardware report",
        ReportKind::Summary => "Summary report",
        ReportKind::Legacy => "Legacy results (ipfs_accelerate_py)",
    }
}

fn intro(kind: ReportKind) -> &'static str {
    match kind {
        ReportKind::Performance => {
            "Latest result per combination; `weights = random` rows were \
            measured on seeded random weights; `~` marks a percentile from fewer samples than it \
            needs (p90 < 64, p99 < 662)."
        }
        ReportKind::Compatibility => {
            "pass = ran and measured; fail = ran and errored; \
            unavailable = could not run here (reason below); - = not tried."
        }
        ReportKind::Web => {
            "Each browser result (onnxruntime-web in a headless browser) beside \
            each native platform's latest passing result for the same model and shape. \
            executed_ep is where onnxruntime-web placed the nodes (its log); first_over_warm is \
            first-inference time over warm p50 (shader compilation on WebGPU); web_over_native \
            is web p50 over native p50."
        }
        ReportKind::Hardware => {
            "One model on every platform and engine: the latest result per \
            combination, and its speedup over the CPU (CPU p50 / this p50; the native engine's \
            CPU result where there is one) at the same precision and shape."
        }
        ReportKind::Summary => {
            "What was measured and where, the best platform per model and \
            shape (lowest p50 among the latest passing results on one machine), and every \
            latest result that did not pass."
        }
        ReportKind::Legacy => {
            "Entries imported by `db migrate-json` from the Python \
            framework's JSON files. None was measured by this program: every entry is \
            unverified, and percentiles exist only where the file held raw latencies."
        }
    }
}

fn sections(store: &Store, kind: ReportKind, options: &ReportOptions) -> Result<Vec<Section>> {
    let f = &options.filter;
    Ok(match kind {
        ReportKind::Performance => vec![Section {
            heading: "Results",
            rows: rows(store, PERFORMANCE_SQL, f)?,
        }],
        ReportKind::Compatibility => {
            let details = rows(store, COMPATIBILITY_SQL, f)?;
            vec![
                Section {
                    heading: "Matrix",
                    rows: compatibility_matrix(&details),
                },
                Section {
                    heading: "Details",
                    rows: details,
                },
            ]
        }
        ReportKind::Web => vec![Section {
            heading: "Results",
            rows: rows(store, WEB_SQL, f)?,
        }],
        ReportKind::Hardware => {
            if f.model.is_none() {
                return Err(DbError::Request(
                    "the hardware report is about one model: pass --model NAME".into(),
                ));
            }
            vec![Section {
                heading: "Every platform",
                rows: rows(store, HARDWARE_SQL, f)?,
            }]
        }
        ReportKind::Summary => vec![
            Section {
                heading: "What was measured, where",
                rows: rows(store, SUMMARY_MEASURED_SQL, f)?,
            },
            Section {
                heading: "Best platform per model and shape",
                rows: rows(store, SUMMARY_BEST_SQL, f)?,
            },
            Section {
                heading: "Failures and unavailable platforms",
                rows: rows(store, SUMMARY_FAILURES_SQL, f)?,
            },
        ],
        ReportKind::Legacy => {
            // The legacy table has its own columns: the filter's model and platform only.
            let mut parts = vec!["true".to_string()];
            let mut params = vec![Value::Boolean(options.include_simulated)];
            if let Some(m) = &f.model {
                parts.push("l.model ILIKE '%' || ? || '%'".into());
                params.push(Value::Text(m.clone()));
            }
            if let Some(p) = &f.platform {
                parts.push("l.hardware = ?".into());
                params.push(Value::Text(p.clone()));
            }
            let sql = LEGACY_SQL.replace("{where}", &parts.join(" AND "));
            vec![Section {
                heading: "Entries",
                rows: crate::query::run_with_params(store.connection(), &sql, &params)?,
            }]
        }
    })
}

/// The charts an HTML report opens with (the definitions `db plot` draws).
fn charts_of(kind: ReportKind) -> &'static [ChartKind] {
    match kind {
        ReportKind::Performance => &[
            ChartKind::LatencyVsBatch,
            ChartKind::ThroughputByPlatform,
            ChartKind::Memory,
        ],
        ReportKind::Compatibility => &[ChartKind::Compatibility],
        ReportKind::Web => &[ChartKind::WebVsNative],
        ReportKind::Hardware => &[ChartKind::ThroughputByPlatform, ChartKind::LatencyVsBatch],
        ReportKind::Summary => &[ChartKind::Compatibility, ChartKind::ThroughputByPlatform],
        ReportKind::Legacy => &[],
    }
}

/// Every table of a report with its heading (what md and html show), for callers that lay
/// the report out themselves (the dashboard). Tables may be empty: the caller says so.
pub fn tables(
    store: &Store,
    kind: ReportKind,
    options: &ReportOptions,
) -> Result<Vec<(&'static str, QueryResult)>> {
    store.check_tables()?;
    Ok(sections(store, kind, options)?
        .into_iter()
        .map(|s| (s.heading, s.rows))
        .collect())
}

/// Renders a report. md and html get a title and sections; csv and json get the rows of its
/// main table as they are. A report whose tables are all empty is an error naming what was
/// asked for, never an empty table.
pub fn render(
    store: &Store,
    kind: ReportKind,
    format: OutputFormat,
    options: &ReportOptions,
) -> Result<String> {
    store.check_tables()?;
    let sections = sections(store, kind, options)?;
    if sections.iter().all(|s| s.rows.rows.is_empty()) {
        let hint = if kind == ReportKind::Legacy && !options.include_simulated {
            "; entries marked simulated are left out unless --include-simulated"
        } else {
            ""
        };
        return Err(DbError::NoMatchingRows(format!(
            "the {} has no rows{}{hint}",
            title(kind).to_lowercase(),
            describe(options)
        )));
    }
    let generated = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC");
    let source = store.path().display().to_string();
    let title = title(kind);
    Ok(match format {
        OutputFormat::Csv | OutputFormat::Json | OutputFormat::Table => {
            // The main table: the details for compatibility, else the first one.
            let main = match kind {
                ReportKind::Compatibility => &sections[1],
                _ => &sections[0],
            };
            main.rows.render(format)
        }
        OutputFormat::Markdown => {
            let mut out = format!(
                "# {title}\n\nGenerated {generated} from `{source}`. {}\n",
                intro(kind)
            );
            for s in &sections {
                out.push_str(&format!("\n## {}\n\n", s.heading));
                if s.rows.rows.is_empty() {
                    out.push_str("(no rows)\n");
                } else {
                    out.push_str(&s.rows.markdown());
                }
            }
            out
        }
        OutputFormat::Html => {
            let mut body = String::new();
            for chart in charts_of(kind) {
                let c = crate::charts::chart(store, *chart, &options.filter)?;
                if !c.is_empty() {
                    body.push_str(&format!("<figure>{}</figure>\n", c.svg()));
                }
            }
            for s in &sections {
                body.push_str(&format!("<h2>{}</h2>\n", html_escape(s.heading)));
                if s.rows.rows.is_empty() {
                    body.push_str("<p class=\"empty\">No rows.</p>\n");
                } else if s.rows.columns.first().map(String::as_str) == Some("model")
                    && kind != ReportKind::Compatibility
                {
                    body.push_str(&grouped_html(&s.rows));
                } else {
                    body.push_str(&plain_html(&s.rows));
                }
            }
            html_page(
                title,
                &format!("Generated {generated} from {source}. {}", intro(kind)),
                &body,
            )
        }
    })
}

fn describe(options: &ReportOptions) -> String {
    match options.filter.flags() {
        flags if flags.is_empty() => " (the store holds none of its kind)".into(),
        flags => format!(" for {flags}"),
    }
}

const CSS: &str = "body{font-family:'DejaVu Sans',Verdana,sans-serif;margin:24px;color:#222;\
max-width:1400px}h1{font-size:22px}h2{font-size:17px;margin-top:28px}\
h3{font-size:15px;margin:20px 0 6px}p.meta{color:#555;font-size:13px;max-width:960px}\
figure{margin:12px 0}table{border-collapse:collapse;font-size:12px;margin-bottom:8px}\
th{background:#f2f2f2;text-align:left;white-space:normal;vertical-align:bottom}td,th{border:1px solid #ddd;padding:3px 4px;vertical-align:top}\
td{white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}\
td.reason{white-space:normal}td.wrap{white-space:normal;min-width:9em}\
td.status-pass{color:#17672e}td.status-fail{color:#a8201a}td.status-unavailable{color:#666}\
details{max-width:12em;white-space:normal}summary{cursor:pointer;color:#555;\
white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:12em}\
span.path{color:#777;font-size:12px;font-weight:normal}";

fn html_page(title: &str, meta: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>{CSS}</style></head>\n<body><h1>{t}</h1><p class=\"meta\">{m}</p>\n{body}</body></html>\n",
        t = html_escape(title),
        m = html_escape(meta)
    )
}

/// Columns that carry a reason: collapsed behind their first words.
const REASON_COLUMNS: [&str; 1] = ["error"];

/// Text columns that may take a second line when the table would not fit the window.
const WRAP_COLUMNS: [&str; 12] = [
    "engine",
    "scenario",
    "best",
    "runner_up",
    "provenance",
    "detail",
    "source_path",
    "entry_path",
    "native",
    "adapter",
    "browser",
    "executed_ep",
];

fn cell_html(column: &str, v: &Value) -> String {
    let text = value_text(v);
    if REASON_COLUMNS.contains(&column) {
        if text.is_empty() {
            return "<td class=\"reason\"></td>".into();
        }
        let first: String = text.chars().take(40).collect();
        return format!(
            "<td class=\"reason\"><details><summary>{}</summary>{}</details></td>",
            html_escape(&first),
            html_escape(&text)
        );
    }
    let class = match (column, v) {
        ("status", _) => format!(" class=\"status-{}\"", html_escape(&text)),
        (c, _) if WRAP_COLUMNS.contains(&c) => " class=\"wrap\"".into(),
        (
            _,
            Value::Double(_)
            | Value::Float(_)
            | Value::BigInt(_)
            | Value::Int(_)
            | Value::HugeInt(_)
            | Value::Decimal(_),
        ) => " class=\"num\"".into(),
        _ => String::new(),
    };
    format!("<td{class}>{}</td>", html_escape(&text))
}

fn table_html(columns: &[String], keep: &[usize], rows: &[&Vec<Value>]) -> String {
    let mut out = String::from("<table>\n<thead><tr>");
    for &i in keep {
        // Spaces let a long header wrap over its (usually narrower) numbers.
        out.push_str(&format!(
            "<th>{}</th>",
            html_escape(&columns[i].replace('_', " "))
        ));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for r in rows {
        out.push_str("<tr>");
        for &i in keep {
            out.push_str(&cell_html(&columns[i], &r[i]));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

fn plain_html(rows: &QueryResult) -> String {
    let keep: Vec<usize> = (0..rows.columns.len()).collect();
    let all: Vec<&Vec<Value>> = rows.rows.iter().collect();
    table_html(&rows.columns, &keep, &all)
}

/// One table per model (and weights), headed by the readable model name with the stored name
/// beside it; the model, weights and parameter columns move into the heading.
fn grouped_html(rows: &QueryResult) -> String {
    let col = |name: &str| rows.columns.iter().position(|c| c == name);
    let (mi, wi, pi) = (col("model"), col("weights"), col("params_m"));
    let keep: Vec<usize> = (0..rows.columns.len())
        .filter(|i| Some(*i) != mi && Some(*i) != wi && Some(*i) != pi)
        .collect();
    let key = |r: &Vec<Value>| {
        (
            mi.map(|i| value_text(&r[i])).unwrap_or_default(),
            wi.map(|i| value_text(&r[i])).unwrap_or_default(),
        )
    };
    let mut out = String::new();
    let mut start = 0;
    while start < rows.rows.len() {
        let k = key(&rows.rows[start]);
        let group: Vec<&Vec<Value>> = rows.rows[start..]
            .iter()
            .take_while(|r| key(r) == k)
            .collect();
        start += group.len();
        // Columns with no value anywhere in this group (a text model has no audio columns,
        // an encoder no token rates) are left out of its table.
        // So is the device where it only repeats the platform, and the time stamp (csv and
        // json keep both).
        let same_as_platform = |i: usize| {
            rows.columns[i] == "device"
                && col("platform")
                    .is_some_and(|p| group.iter().all(|r| value_text(&r[i]) == value_text(&r[p])))
        };
        let keep: Vec<usize> = keep
            .iter()
            .copied()
            .filter(|&i| group.iter().any(|r| !value_text(&r[i]).is_empty()))
            .filter(|&i| rows.columns[i] != "created_at" && !same_as_platform(i))
            .collect();
        let name = display_model_name(&k.0);
        let params = pi
            .map(|i| value_text(&group[0][i]))
            .filter(|p| !p.is_empty())
            .map(|p| format!(", {p} M parameters"))
            .unwrap_or_default();
        let weights = if k.1.is_empty() {
            String::new()
        } else {
            format!(" · {} weights{params}", k.1)
        };
        let path = if name != k.0 {
            format!(" <span class=\"path\">{}</span>", html_escape(&k.0))
        } else {
            String::new()
        };
        out.push_str(&format!(
            "<h3>{}{}{path}</h3>\n",
            html_escape(&name),
            html_escape(&weights)
        ));
        out.push_str(&table_html(&rows.columns, &keep, &group));
    }
    out
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
