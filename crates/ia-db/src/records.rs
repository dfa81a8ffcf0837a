//! Plain rows the store writes. The benchmark harness fills them; this crate does not depend
//! on the harness so that schema work never rebuilds the engines.

use crate::Result;
use duckdb::{params_from_iter, Connection, ToSql};
use serde::{Deserialize, Serialize};

/// Declares a record whose fields are a table's columns, each named once: the struct, its
/// column names in order (`COLUMNS`, which the INSERT and the store's schema check use) and
/// its values in the same order.
macro_rules! table_record {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl $name {
            /// The table's columns this record fills, in field order.
            pub const COLUMNS: &'static [&'static str] = &[$(stringify!($field)),*];

            pub(crate) fn values(&self) -> Vec<&dyn ToSql> {
                vec![$(&self.$field as &dyn ToSql),*]
            }
        }
    };
}

/// The tables written from declared records, with the columns each record fills.
pub(crate) const DECLARED_TABLES: [(&str, &[&str]); 3] = [
    ("performance_results", PerformanceRecord::COLUMNS),
    ("web_results", WebRecord::COLUMNS),
    ("calibrations", CalibrationRecord::COLUMNS),
];

/// `INSERT INTO table (keys..., columns..., extra) VALUES (?..., extra_value)`: the
/// statement for a declared record.
fn insert_sql(table: &str, keys: &[&str], columns: &[&str], extra: Option<(&str, &str)>) -> String {
    let names: Vec<&str> = keys
        .iter()
        .chain(columns)
        .copied()
        .chain(extra.map(|(c, _)| c))
        .collect();
    let values: Vec<&str> = keys
        .iter()
        .chain(columns)
        .map(|_| "?")
        .chain(extra.map(|(_, v)| v))
        .collect();
    format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        names.join(", "),
        values.join(", ")
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    pub git_commit: Option<String>,
    pub command_line: String,
    pub host: String,
    pub tool_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareRecord {
    pub fingerprint: String,
    pub platform: String,
    pub device: String,
    pub host: String,
    pub cpu_model: String,
    pub details_json: String,
}

table_record! {
/// One measured (or failed) combination (table `performance_results`). Measurement fields are
/// None when it did not run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    pub image_tokens: Option<i32>,
    pub image_encode_ms: Option<f64>,
    /// A submission without it is inference.
    #[serde(default)]
    pub mode: ResultMode,
    pub gradient_checkpointing: Option<bool>,
    pub gradients_mb: Option<f64>,
    pub optimizer_state_mb: Option<f64>,
    /// Peak resident memory of the combination less what it held before loading and less the
    /// weights, gradients and optimiser state: activations and temporaries.
    pub activations_mb: Option<f64>,
    pub loss_first: Option<f64>,
    pub loss_last: Option<f64>,
    /// How far the timed phase's windows of consecutive iterations differ: the slowest
    /// window's median over the fastest's, less 1 (a run the machine slowed down part of the
    /// way). None before schema version 13 and with too few samples to say.
    pub window_spread: Option<f64>,
}
}

/// What a result measured: forward passes and generations, or training steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultMode {
    #[default]
    Inference,
    Training,
}

impl ResultMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultMode::Inference => "inference",
            ResultMode::Training => "training",
        }
    }
}

impl ToSql for ResultMode {
    fn to_sql(&self) -> duckdb::Result<duckdb::types::ToSqlOutput<'_>> {
        Ok(duckdb::types::ToSqlOutput::from(self.as_str()))
    }
}

table_record! {
/// How a browser result was obtained (table `web_results`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebRecord {
    pub browser: String,
    pub browser_version: String,
    pub user_agent: String,
    pub requested_ep: String,
    pub executed_ep: String,
    pub fell_back: bool,
    /// JSON: nodes per execution provider.
    #[serde(rename = "node_placement_json")]
    pub node_placement: String,
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
    /// JSON: load time of each part.
    #[serde(rename = "part_load_ms_json")]
    pub part_load_ms: String,
}
}

pub(crate) fn insert_web(tx: &Connection, result_id: i64, w: &WebRecord) -> Result<()> {
    let sql = insert_sql("web_results", &["result_id"], WebRecord::COLUMNS, None);
    let mut values: Vec<&dyn ToSql> = vec![&result_id];
    values.extend(w.values());
    tx.execute(&sql, params_from_iter(values))?;
    Ok(())
}

table_record! {
/// One calibration figure of a hardware platform (table `calibrations`).
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationRecord {
    pub engine: String,
    pub engine_version: String,
    /// "matmul" (value in FLOP/s), "memory-bandwidth" (bytes/s: the host's STREAM triad, engine
    /// "stream-triad", size the bytes of each array; or an engine's own on a device with
    /// memory of its own, size the bytes of each array its additions stream), "dispatch-call" and
    /// "dispatch-op" (seconds of a call beyond its operations, of an operation beyond its
    /// arithmetic; size is the long chain's operations), or "program-memory" (peak resident bytes
    /// of a fresh process with the engine's runtime loaded and run; size 0).
    pub kind: String,
    pub precision: Option<String>,
    pub size: i64,
    pub value: f64,
    pub samples: i32,
}
}

pub(crate) fn insert_calibration(
    tx: &Connection,
    hardware_id: i64,
    c: &CalibrationRecord,
) -> Result<()> {
    let sql = insert_sql(
        "calibrations",
        &["hardware_id"],
        CalibrationRecord::COLUMNS,
        Some(("created_at", "now()")),
    );
    let mut values: Vec<&dyn ToSql> = vec![&hardware_id];
    values.extend(c.values());
    tx.execute(&sql, params_from_iter(values))?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompatibilityRecord {
    pub platform: String,
    pub engine: String,
    pub precision: String,
    pub status: String,
    pub error: Option<String>,
}

/// Every row of one finished combination: what the store writes for it (in one
/// transaction), and what a submission to the results service carries for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CombinationRecords {
    pub model: ModelRecord,
    pub hardware: HardwareRecord,
    pub performance: PerformanceRecord,
    pub samples_ms: Vec<f64>,
    pub compatibility: CompatibilityRecord,
    /// How a browser result was obtained.
    #[serde(default)]
    pub web: Option<WebRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The migrations and the declared records agree: every table written from a record has
    /// exactly its keys, the record's columns and (performance) `created_at`. Later migrations
    /// append columns, and the INSERT names them, so the order is not compared.
    #[test]
    fn declared_columns_are_the_migrated_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open_or_create(&dir.path().join("s.duckdb")).unwrap();
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let expect = |keys: &[&str], columns: &[&str], extra: &[&str]| {
            sorted(
                keys.iter()
                    .chain(columns)
                    .chain(extra)
                    .map(|c| c.to_string())
                    .collect(),
            )
        };
        assert_eq!(
            sorted(store.columns("performance_results").unwrap()),
            expect(
                &["result_id", "run_id", "model_id", "hardware_id"],
                PerformanceRecord::COLUMNS,
                &["created_at"],
            )
        );
        assert_eq!(
            sorted(store.columns("web_results").unwrap()),
            expect(&["result_id"], WebRecord::COLUMNS, &[])
        );
        assert_eq!(
            sorted(store.columns("calibrations").unwrap()),
            expect(
                &["calibration_id", "hardware_id"],
                CalibrationRecord::COLUMNS,
                &["created_at"]
            )
        );
        store.check_tables().unwrap();
    }

    #[test]
    fn inserts_name_every_declared_column() {
        let sql = insert_sql("t", &["k"], &["a", "b"], Some(("at", "now()")));
        assert_eq!(sql, "INSERT INTO t (k, a, b, at) VALUES (?, ?, ?, now())");
    }
}
