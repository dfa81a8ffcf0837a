//! The rows every chart kind draws (ia_charts holds the one definition of each chart): one
//! query, filtered by model, platform, precision and run, with the latest result per
//! combination or, for trends, every run.

use crate::{Result, Store};
use duckdb::types::Value;

/// The latest result of each combination (model and weights, machine, platform, engine,
/// precision, scenario, shape), over `p` results, `m` models and `h` hardware: what charts and
/// reports show unless they follow runs over time.
pub const LATEST_PER_COMBINATION: &str = "QUALIFY row_number() OVER (
    PARTITION BY m.model_name, m.weights, h.fingerprint, h.platform, p.engine, p.precision,
                 p.scenario, p.batch_size, p.seq_len
    ORDER BY p.created_at DESC, p.result_id DESC) = 1";

/// `db plot` / report filters; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct ChartFilter {
    /// Part of the model name (case-insensitive).
    pub model: Option<String>,
    /// A platform (cpu, wasm, ...) or an engine name.
    pub platform: Option<String>,
    pub precision: Option<String>,
    pub run: Option<i64>,
    /// Model class (bert, llama, ...).
    pub class: Option<String>,
    pub engine: Option<String>,
    pub batch_size: Option<i32>,
    /// Results created at or after / before this time (`YYYY-MM-DD[ HH:MM[:SS]]`, UTC).
    pub since: Option<String>,
    pub until: Option<String>,
    /// Hardware fingerprint (or its start).
    pub fingerprint: Option<String>,
}

impl ChartFilter {
    /// The filters as the flags that set them (`--model bert --run 3`), for messages; empty
    /// when nothing is filtered.
    pub fn flags(&self) -> String {
        let mut parts = vec![];
        for (flag, v) in [
            ("--model", self.model.clone()),
            ("--platform", self.platform.clone()),
            ("--precision", self.precision.clone()),
            ("--run", self.run.map(|r| r.to_string())),
            ("--class", self.class.clone()),
            ("--engine", self.engine.clone()),
            ("--batch-size", self.batch_size.map(|b| b.to_string())),
            ("--since", self.since.clone()),
            ("--until", self.until.clone()),
            ("--fingerprint", self.fingerprint.clone()),
        ] {
            if let Some(v) = v {
                parts.push(format!("{flag} {v}"));
            }
        }
        parts.join(" ")
    }

    /// The WHERE clause (over `m`, `h`, `p`) and its parameters.
    pub(crate) fn clause(&self) -> (String, Vec<Value>) {
        let mut parts = vec!["true".to_string()];
        let mut params = vec![];
        if let Some(m) = &self.model {
            parts.push("m.model_name ILIKE '%' || ? || '%'".into());
            params.push(Value::Text(m.clone()));
        }
        if let Some(p) = &self.platform {
            parts.push("(h.platform = ? OR p.engine = ?)".into());
            params.push(Value::Text(p.clone()));
            params.push(Value::Text(p.clone()));
        }
        if let Some(p) = &self.precision {
            parts.push("p.precision = ?".into());
            params.push(Value::Text(p.clone()));
        }
        if let Some(r) = self.run {
            parts.push("p.run_id = ?".into());
            params.push(Value::BigInt(r));
        }
        if let Some(c) = &self.class {
            parts.push("m.class = ?".into());
            params.push(Value::Text(c.clone()));
        }
        if let Some(e) = &self.engine {
            parts.push("p.engine = ?".into());
            params.push(Value::Text(e.clone()));
        }
        if let Some(b) = self.batch_size {
            parts.push("p.batch_size = ?".into());
            params.push(Value::Int(b));
        }
        if let Some(t) = &self.since {
            parts.push("p.created_at >= CAST(? AS TIMESTAMP)".into());
            params.push(Value::Text(t.clone()));
        }
        if let Some(t) = &self.until {
            parts.push("p.created_at < CAST(? AS TIMESTAMP)".into());
            params.push(Value::Text(t.clone()));
        }
        if let Some(f) = &self.fingerprint {
            parts.push("starts_with(h.fingerprint, ?)".into());
            params.push(Value::Text(f.clone()));
        }
        (parts.join(" AND "), params)
    }
}

/// A model name for people: `org/name` for a Hugging Face cache folder, the folder name for
/// any other path, the name itself otherwise.
pub fn display_model_name(name: &str) -> String {
    if let Some(i) = name.find("models--") {
        let rest = &name[i + "models--".len()..];
        let repo = rest.split('/').next().unwrap_or(rest);
        return repo.replace("--", "/");
    }
    let looks_like_path = name.starts_with('/')
        || name.starts_with('.')
        || name.starts_with('~')
        || name.matches('/').count() > 1;
    if looks_like_path {
        let trimmed = name.trim_end_matches('/');
        return trimmed.rsplit('/').next().unwrap_or(trimmed).to_string();
    }
    name.to_string()
}

/// The points of a chart kind.
pub fn points(
    store: &Store,
    kind: ia_charts::Kind,
    filter: &ChartFilter,
) -> Result<Vec<ia_charts::Point>> {
    let (clause, params) = filter.clause();
    let latest = if kind.every_run() {
        ""
    } else {
        LATEST_PER_COMBINATION
    };
    let sql = format!(
        "SELECT m.model_name, m.weights, p.engine, h.platform, p.precision, p.batch_size, p.status,
                p.latency_p50_ms, p.throughput_items_per_s,
                CASE WHEN p.peak_rss_per_combination THEN p.peak_rss_mb END,
                CAST(epoch(r.started_at) AS DOUBLE), CAST(r.started_at AS VARCHAR)
         FROM performance_results p
         JOIN models m USING (model_id)
         JOIN hardware_platforms h USING (hardware_id)
         JOIN runs r USING (run_id)
         WHERE {clause}
         {latest}
         ORDER BY m.model_name, h.platform, p.engine, p.precision, p.batch_size, r.started_at"
    );
    let conn = store.connection();
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map(duckdb::params_from_iter(params), |r| {
        let model: String = r.get(0)?;
        let weights: String = r.get(1)?;
        let engine: String = r.get(2)?;
        let platform: String = r.get(3)?;
        let mut name = display_model_name(&model);
        if weights == "random" {
            name.push_str(" (random weights)");
        }
        Ok(ia_charts::Point {
            model: name,
            target: format!("{engine}/{platform}"),
            platform,
            precision: r.get(4)?,
            batch_size: r.get(5)?,
            status: r.get(6)?,
            p50_ms: r.get(7)?,
            throughput_items_per_s: r.get(8)?,
            peak_memory_mb: r.get(9)?,
            at_s: r.get::<_, Option<f64>>(10)?.unwrap_or(0.0),
            at: r.get::<_, Option<String>>(11)?.unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

/// The chart of a kind over the stored results that pass the filter.
pub fn chart(
    store: &Store,
    kind: ia_charts::Kind,
    filter: &ChartFilter,
) -> Result<ia_charts::Chart> {
    Ok(ia_charts::build(kind, &points(store, kind, filter)?))
}

#[cfg(test)]
mod tests {
    use super::display_model_name;

    #[test]
    fn cache_paths_become_readable_names() {
        assert_eq!(
            display_model_name(
                "/root/.cache/huggingface/hub/models--prajjwal1--bert-tiny/snapshots/abc"
            ),
            "prajjwal1/bert-tiny"
        );
        assert_eq!(
            display_model_name("/root/.cache/ipfs-accelerate/checkpoints/bert-base-uncased"),
            "bert-base-uncased"
        );
        assert_eq!(
            display_model_name("prajjwal1/bert-tiny"),
            "prajjwal1/bert-tiny"
        );
        assert_eq!(display_model_name("fixtures/tiny/bert/"), "bert");
    }
}
