//! The results store: one DuckDB file holding every benchmark run.
//!
//! * [`schema`]: the versioned schema and its migrations.
//! * [`Store`]: opening (with clear errors for missing, corrupt or newer files) and
//!   transactional writes, one transaction per finished combination so a killed run keeps
//!   everything that finished.
//! * [`query`]: arbitrary SQL and the table/csv/json/md/html renderings.
//! * [`report`]: the performance and compatibility reports; [`export`]: parquet/csv dumps.

pub mod export;
pub mod query;
pub mod records;
pub mod report;
pub mod schema;

use duckdb::{params, AccessMode, Config, Connection, OptionalExt};
use std::path::{Path, PathBuf};

pub use query::{OutputFormat, QueryResult};
pub use records::{
    CompatibilityRecord, HardwareRecord, ModelRecord, PerformanceRecord, RunRecord, WebRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database file not found: {0} (run `ipfs-accelerate bench` first, or pass --db-path)")]
    Missing(PathBuf),
    #[error("cannot open {path} as a DuckDB database: {message}")]
    Open { path: PathBuf, message: String },
    #[error("{path} has schema version {found}, newer than this program supports ({supported}); upgrade ipfs-accelerate")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{path} is a DuckDB database but not an ipfs-accelerate results store (no schema_version table)")]
    NotOurs { path: PathBuf },
    #[error("SQL error: {0}")]
    Sql(String),
    #[error("{0}")]
    Io(String),
}

impl From<duckdb::Error> for DbError {
    fn from(e: duckdb::Error) -> Self {
        DbError::Sql(one_line(&e.to_string()))
    }
}

/// DuckDB errors span lines (with a caret under the position); users get one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub type Result<T> = std::result::Result<T, DbError>;

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens the store for writing, creating the file and migrating the schema as needed.
    pub fn open_or_create(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| DbError::Io(format!("cannot create {}: {e}", parent.display())))?;
        }
        let fresh = !path.exists();
        let conn = open(path, AccessMode::ReadWrite)?;
        if !fresh && !schema::has_version_table(&conn)? && schema::has_user_tables(&conn)? {
            return Err(DbError::NotOurs { path: path.into() });
        }
        schema::migrate(&conn, path)?;
        Ok(Self {
            conn,
            path: path.into(),
        })
    }

    /// Opens an existing store for reading. A missing file is an error, never created.
    pub fn open_existing(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(DbError::Missing(path.into()));
        }
        let conn = open(path, AccessMode::ReadOnly)?;
        if !schema::has_version_table(&conn)? {
            return Err(DbError::NotOurs { path: path.into() });
        }
        let version = schema::current_version(&conn)?;
        if version > schema::CURRENT_VERSION {
            return Err(DbError::NewerSchema {
                path: path.into(),
                found: version,
                supported: schema::CURRENT_VERSION,
            });
        }
        if version < schema::CURRENT_VERSION {
            // An older store: migrate it once, then read it as usual.
            drop(conn);
            drop(Self::open_or_create(path)?);
            return Self::open_existing(path);
        }
        Ok(Self {
            conn,
            path: path.into(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn begin_run(&mut self, run: &RunRecord) -> Result<i64> {
        let id: i64 = self.conn.query_row(
            "INSERT INTO runs (started_at, git_commit, command_line, host, tool_version, status)
             VALUES (now(), ?, ?, ?, ?, 'running') RETURNING run_id",
            params![run.git_commit, run.command_line, run.host, run.tool_version],
            |r| r.get(0),
        )?;
        Ok(id)
    }

    pub fn end_run(&mut self, run_id: i64, status: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET ended_at = now(), status = ? WHERE run_id = ?",
            params![status, run_id],
        )?;
        Ok(())
    }

    /// Stores one finished combination (its model, hardware, result row, raw samples,
    /// compatibility row and, for browser results, how they were obtained) in a single
    /// transaction: all of it or none of it.
    // One parameter per table written: bundling them would only move the list elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub fn record_combination(
        &mut self,
        run_id: i64,
        model: &ModelRecord,
        hardware: &HardwareRecord,
        perf: &PerformanceRecord,
        samples_ms: &[f64],
        compat: &CompatibilityRecord,
        web: Option<&WebRecord>,
    ) -> Result<i64> {
        let tx = self.conn.transaction()?;
        let model_id = upsert_model(&tx, model)?;
        let hardware_id = upsert_hardware(&tx, hardware)?;
        let result_id = records::insert_performance(&tx, run_id, model_id, hardware_id, perf)?;
        if !samples_ms.is_empty() {
            let mut app = tx.appender("raw_samples")?;
            for (i, s) in samples_ms.iter().enumerate() {
                app.append_row(params![result_id, i as i64, *s])?;
            }
            app.flush()?;
        }
        if let Some(w) = web {
            records::insert_web(&tx, result_id, w)?;
        }
        tx.execute(
            "INSERT INTO compatibility_results
               (run_id, model_id, hardware_id, platform, engine, precision, status, error, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, now())",
            params![
                run_id,
                model_id,
                hardware_id,
                compat.platform,
                compat.engine,
                compat.precision,
                compat.status,
                compat.error
            ],
        )?;
        tx.commit()?;
        Ok(result_id)
    }

    pub fn query(&self, sql: &str) -> Result<QueryResult> {
        query::run(&self.conn, sql)
    }
}

fn open(path: &Path, mode: AccessMode) -> Result<Connection> {
    let config = Config::default()
        .access_mode(mode)
        .map_err(|e| DbError::Open {
            path: path.into(),
            message: one_line(&e.to_string()),
        })?;
    Connection::open_with_flags(path, config).map_err(|e| DbError::Open {
        path: path.into(),
        message: one_line(&e.to_string()),
    })
}

fn upsert_model(tx: &Connection, m: &ModelRecord) -> Result<i64> {
    let existing: Option<i64> = tx
        .query_row(
            "SELECT model_id FROM models WHERE model_name = ? AND source = ? AND weights = ?
               AND parameter_count = ?",
            params![m.model_name, m.source, m.weights, m.parameter_count],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = existing {
        return Ok(id);
    }
    Ok(tx.query_row(
        "INSERT INTO models (model_name, class, family, task, modality, parameter_count, source, weights)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING model_id",
        params![
            m.model_name,
            m.class,
            m.family,
            m.task,
            m.modality,
            m.parameter_count,
            m.source,
            m.weights
        ],
        |r| r.get(0),
    )?)
}

fn upsert_hardware(tx: &Connection, h: &HardwareRecord) -> Result<i64> {
    let existing: Option<i64> = tx
        .query_row(
            "SELECT hardware_id FROM hardware_platforms
             WHERE fingerprint = ? AND platform = ? AND device = ?",
            params![h.fingerprint, h.platform, h.device],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = existing {
        return Ok(id);
    }
    Ok(tx.query_row(
        "INSERT INTO hardware_platforms (fingerprint, platform, device, host, cpu_model, details)
         VALUES (?, ?, ?, ?, ?, ?) RETURNING hardware_id",
        params![
            h.fingerprint,
            h.platform,
            h.device,
            h.host,
            h.cpu_model,
            h.details_json
        ],
        |r| r.get(0),
    )?)
}
