//! Result files of the Python framework (`db migrate-json`): one transaction per file, so a
//! crash leaves whole files or nothing; a file whose content is already stored is not stored
//! again.

use crate::{Result, Store};
use duckdb::{params, OptionalExt};

/// One legacy file as stored: where it came from and what it says about itself.
#[derive(Debug, Clone)]
pub struct LegacyFileRecord {
    pub source_path: String,
    pub content_sha256: String,
    pub format: String,
    pub file_timestamp: Option<String>,
    pub host: Option<String>,
    pub simulated_hardware: Vec<String>,
    pub warning: Option<String>,
}

/// One entry of a legacy file (see `ia_bench::legacy::LegacyEntry`, which the binary maps).
#[derive(Debug, Clone, Default)]
pub struct LegacyEntryRecord {
    pub entry_path: String,
    pub kind: String,
    pub model: Option<String>,
    pub family: Option<String>,
    pub hardware: Option<String>,
    pub batch_size: Option<i64>,
    pub seq_len: Option<i64>,
    pub precision: Option<String>,
    pub detail: Option<String>,
    pub status: String,
    pub error: Option<String>,
    pub implementation_type: Option<String>,
    pub simulation_marker: Option<String>,
    pub has_figures: bool,
    pub measured_at: Option<String>,
    pub samples_ms: Vec<f64>,
    pub latency_mean_ms: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p90_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_min_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub throughput_items_per_s: Option<f64>,
    pub memory_mb: Option<f64>,
    pub load_time_s: Option<f64>,
    pub execution_time_s: Option<f64>,
    pub iterations: Option<i64>,
    pub relative_value: Option<f64>,
}

/// What storing a file did.
#[derive(Debug, Clone, PartialEq)]
pub enum LegacyImport {
    Imported {
        file_id: i64,
        entries: usize,
    },
    /// The same content is already stored (from this path or another).
    AlreadyImported {
        file_id: i64,
        source_path: String,
    },
}

impl Store {
    /// The stored file with this content hash, if any.
    pub fn legacy_file_by_hash(&self, sha256: &str) -> Result<Option<(i64, String)>> {
        Ok(self
            .connection()
            .query_row(
                "SELECT file_id, source_path FROM legacy_files WHERE content_sha256 = ?",
                params![sha256],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Stores a file and all its entries in one transaction.
    pub fn record_legacy_file(
        &mut self,
        file: &LegacyFileRecord,
        entries: &[LegacyEntryRecord],
    ) -> Result<LegacyImport> {
        if let Some((file_id, source_path)) = self.legacy_file_by_hash(&file.content_sha256)? {
            return Ok(LegacyImport::AlreadyImported {
                file_id,
                source_path,
            });
        }
        let tx = self.conn.transaction()?;
        let simulated =
            (!file.simulated_hardware.is_empty()).then(|| file.simulated_hardware.join(","));
        let file_id: i64 = tx.query_row(
            "INSERT INTO legacy_files (source_path, content_sha256, format, file_timestamp, host,
                simulated_hardware, warning, entries, imported_at)
             VALUES (?, ?, ?, CAST(? AS TIMESTAMP), ?, ?, ?, ?, now()) RETURNING file_id",
            params![
                file.source_path,
                file.content_sha256,
                file.format,
                file.file_timestamp,
                file.host,
                simulated,
                file.warning,
                entries.len() as i64
            ],
            |r| r.get(0),
        )?;
        let mut samples: Vec<(i64, i64, f64)> = vec![];
        for e in entries {
            let legacy_id: i64 = tx.query_row(
                "INSERT INTO legacy_results (file_id, entry_path, kind, model, family, hardware,
                    batch_size, seq_len, precision, detail, status, error, implementation_type,
                    simulated, simulation_marker, has_figures, measured_at, samples,
                    latency_mean_ms, latency_p50_ms, latency_p90_ms, latency_p99_ms,
                    latency_min_ms, latency_max_ms, throughput_items_per_s, memory_mb,
                    load_time_s, execution_time_s, iterations, relative_value)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS TIMESTAMP), ?,
                    ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 RETURNING legacy_id",
                params![
                    file_id,
                    e.entry_path,
                    e.kind,
                    e.model,
                    e.family,
                    e.hardware,
                    e.batch_size,
                    e.seq_len,
                    e.precision,
                    e.detail,
                    e.status,
                    e.error,
                    e.implementation_type,
                    e.simulation_marker.is_some(),
                    e.simulation_marker,
                    e.has_figures,
                    e.measured_at,
                    e.samples_ms.len() as i64,
                    e.latency_mean_ms,
                    e.latency_p50_ms,
                    e.latency_p90_ms,
                    e.latency_p99_ms,
                    e.latency_min_ms,
                    e.latency_max_ms,
                    e.throughput_items_per_s,
                    e.memory_mb,
                    e.load_time_s,
                    e.execution_time_s,
                    e.iterations,
                    e.relative_value
                ],
                |r| r.get(0),
            )?;
            samples.extend(
                e.samples_ms
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (legacy_id, i as i64, *s)),
            );
        }
        if !samples.is_empty() {
            let mut app = tx.appender("legacy_samples")?;
            for (id, i, s) in samples {
                app.append_row(params![id, i, s])?;
            }
            app.flush()?;
        }
        tx.commit()?;
        Ok(LegacyImport::Imported {
            file_id,
            entries: entries.len(),
        })
    }
}
