//! The SQL behind `db trend` / `db regressions` (every series of one metric, in run order) and
//! `db compare` (a run's raw samples by combination); the binary runs it and
//! the store_bench example times it, so both measure the same query.

/// The columns that name a combination on a machine (`p` results, `m` models, `h` hardware).
pub const COMBINATION_COLUMNS: &str = "m.model_name AS model, p.engine, h.platform, p.precision, \
     p.scenario, p.batch_size, coalesce(p.prompt_tokens, p.seq_len) AS seq_len, h.fingerprint";

/// Quotes a user-given string as a SQL literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Every passing result with a value of `metric_column` (a column of performance_results),
/// with its combination and the run's environment, in run order.
pub fn series_sql(metric_column: &str, model: Option<&str>, platform: Option<&str>) -> String {
    let mut filters = vec![format!("p.{metric_column} IS NOT NULL")];
    filters.push("p.status = 'pass'".into());
    if let Some(m) = model {
        filters.push(format!("contains(m.model_name, {})", literal(m)));
    }
    if let Some(p) = platform {
        filters.push(format!("h.platform = {}", literal(p)));
    }
    format!(
        "SELECT {COMBINATION_COLUMNS}, \
                p.{metric_column} AS value, p.result_id, r.run_id, \
                strftime(r.started_at, '%Y-%m-%d %H:%M:%S') AS started_at, p.engine_version, \
                r.git_commit, r.command_line, r.tool_version, r.host, p.device \
         FROM performance_results p JOIN runs r USING (run_id) JOIN models m USING (model_id) \
              JOIN hardware_platforms h USING (hardware_id) \
         WHERE {} ORDER BY r.started_at, p.result_id",
        filters.join(" AND ")
    )
}

/// The raw samples of every passing result of a run, with its combination.
pub fn run_samples_sql(run: i64) -> String {
    format!(
        "SELECT {COMBINATION_COLUMNS}, \
                p.result_id, s.latency_ms \
         FROM performance_results p JOIN raw_samples s USING (result_id) \
              JOIN models m USING (model_id) JOIN hardware_platforms h USING (hardware_id) \
         WHERE p.run_id = {run} AND p.status = 'pass' ORDER BY p.result_id, s.iteration"
    )
}

/// A trend straight from raw samples: the median of each result's samples, per combination
/// and run, in run order (what `series_sql` reads from the stored p50, recomputed).
pub const RAW_SAMPLE_TREND_SQL: &str = "SELECT m.model_name AS model, p.engine, h.platform, \
     p.precision, p.batch_size, r.run_id, r.started_at, median(s.latency_ms) AS p50_ms, \
     count(*) AS samples \
     FROM raw_samples s JOIN performance_results p USING (result_id) JOIN runs r USING (run_id) \
          JOIN models m USING (model_id) JOIN hardware_platforms h USING (hardware_id) \
     GROUP BY ALL ORDER BY model, p.engine, h.platform, p.precision, p.batch_size, r.started_at";
