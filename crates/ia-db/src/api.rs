//! The rows the results service's read routes answer with: every result (not only the
//! latest per combination) with its provenance, one result's raw samples, the runs with who
//! submitted them, and the hardware. Reports come from [`crate::report`] as they are.

use crate::charts::ChartFilter;
use crate::{QueryResult, Result, Store};
use duckdb::types::Value;

/// Most rows one answer holds unless the caller asks for fewer.
pub const MAX_ROWS: usize = 10_000;

/// Results matching `filter`, newest first, at most `limit`.
pub fn results(store: &Store, filter: &ChartFilter, limit: usize) -> Result<QueryResult> {
    let (clause, mut params) = filter.clause();
    params.push(Value::BigInt(limit.min(MAX_ROWS) as i64));
    crate::query::run_with_params(
        store.connection(),
        &format!(
            "SELECT p.result_id, p.run_id, m.model_name AS model, m.class, m.weights,
                    m.parameter_count, h.platform, h.fingerprint, h.host, p.engine,
                    p.engine_version, p.device, p.precision, p.scenario, p.batch_size,
                    p.seq_len, p.status, p.error, p.iterations, p.latency_mean_ms,
                    p.latency_p50_ms, p.latency_p90_ms, p.latency_p99_ms,
                    p.throughput_items_per_s, p.throughput_tokens_per_s, p.peak_rss_mb,
                    p.load_time_ms, p.first_inference_ms, p.ttft_p50_ms,
                    p.decode_tokens_per_s, CAST(p.created_at AS VARCHAR) AS created_at
             FROM performance_results p
             JOIN models m USING (model_id)
             JOIN hardware_platforms h USING (hardware_id)
             WHERE {clause}
             ORDER BY p.created_at DESC, p.result_id DESC
             LIMIT ?"
        ),
        &params,
    )
}

/// The raw samples of one result, in iteration order; None when there is no such result.
pub fn samples(store: &Store, result_id: i64) -> Result<Option<QueryResult>> {
    let exists: i64 = store.connection().query_row(
        "SELECT count(*) FROM performance_results WHERE result_id = ?",
        [result_id],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(None);
    }
    crate::query::run_with_params(
        store.connection(),
        "SELECT iteration, latency_ms FROM raw_samples WHERE result_id = ? ORDER BY iteration",
        &[Value::BigInt(result_id)],
    )
    .map(Some)
}

/// Runs, newest first, with their result count and, for submitted runs, the token's name.
pub fn runs(store: &Store, limit: usize) -> Result<QueryResult> {
    crate::query::run_with_params(
        store.connection(),
        "SELECT r.run_id, CAST(r.started_at AS VARCHAR) AS started_at,
                CAST(r.ended_at AS VARCHAR) AS ended_at, r.status, r.host, r.tool_version,
                r.git_commit, r.command_line,
                (SELECT count(*) FROM performance_results p WHERE p.run_id = r.run_id) AS results,
                (SELECT t.name FROM submissions s JOIN api_tokens t USING (token_id)
                 WHERE s.run_id = r.run_id) AS submitted_by
         FROM runs r ORDER BY r.run_id DESC LIMIT ?",
        &[Value::BigInt(limit.min(MAX_ROWS) as i64)],
    )
}

/// Every machine and platform results were measured on.
pub fn hardware(store: &Store) -> Result<QueryResult> {
    crate::query::run(
        store.connection(),
        "SELECT h.hardware_id, h.fingerprint, h.platform, h.device, h.host, h.cpu_model,
                (SELECT count(*) FROM performance_results p WHERE p.hardware_id = h.hardware_id)
                  AS results
         FROM hardware_platforms h ORDER BY h.host, h.platform, h.device",
    )
}

/// Compatibility by model class and platform: the best latest status of any model of the
/// class there (pass beats fail beats unavailable, over engines and precisions), the models
/// behind it, and the reasons of the latest results that did not pass. Classes with no result
/// have no row; the caller knows the catalog.
pub fn compatibility(store: &Store, filter: &ChartFilter) -> Result<QueryResult> {
    if filter.batch_size.is_some() {
        return Err(crate::DbError::Request(
            "compatibility is recorded per model and platform, not per batch size".into(),
        ));
    }
    let (clause, params) = filter.clause();
    crate::query::run_with_params(
        store.connection(),
        &format!(
            "WITH latest AS (
                 SELECT m.class, m.model_name, p.platform, p.engine, p.precision, p.status,
                        p.error
                 FROM compatibility_results p
                 JOIN models m USING (model_id)
                 JOIN hardware_platforms h USING (hardware_id)
                 WHERE {clause}
                 QUALIFY row_number() OVER (
                     PARTITION BY m.model_name, m.weights, h.fingerprint, p.platform, p.engine,
                                  p.precision
                     ORDER BY p.created_at DESC, p.compat_id DESC) = 1)
             SELECT class, platform,
                    CASE max(CASE status WHEN 'pass' THEN 3 WHEN 'fail' THEN 2
                                         WHEN 'unavailable' THEN 1 ELSE 0 END)
                        WHEN 3 THEN 'pass' WHEN 2 THEN 'fail' WHEN 1 THEN 'unavailable'
                        ELSE 'unknown' END AS status,
                    count(DISTINCT model_name) AS models,
                    count(*) FILTER (WHERE status = 'pass') AS passed,
                    count(*) FILTER (WHERE status = 'fail') AS failed,
                    count(*) FILTER (WHERE status = 'unavailable') AS unavailable,
                    string_agg(DISTINCT model_name, ', ') AS model_names,
                    string_agg(DISTINCT engine || ' ' || precision || ': ' || coalesce(error, status), '; ')
                        FILTER (WHERE status <> 'pass') AS reasons
             FROM latest
             GROUP BY class, platform
             ORDER BY class, platform"
        ),
        &params,
    )
}
