//! The results store: one DuckDB file holding every benchmark run.
//!
//! * [`schema`]: the versioned schema and its migrations.
//! * [`Store`]: opening (with clear errors for missing, corrupt or newer files) and
//!   transactional writes, one transaction per finished combination so a killed run keeps
//!   everything that finished.
//! * [`query`]: arbitrary SQL and the table/csv/json/md/html renderings.
//! * [`report`]: the performance and compatibility reports; [`export`]: parquet/csv dumps.

pub mod api;
pub mod charts;
pub mod export;
pub mod legacy;
pub mod maintain;
pub mod query;
pub mod records;
pub mod report;
pub mod schema;
pub mod submissions;
pub mod trend;

use duckdb::{params, AccessMode, Config, Connection, OptionalExt};
use std::path::{Path, PathBuf};

pub use query::{Limits, OutputFormat, QueryResult};
pub use records::{
    CalibrationRecord, CombinationRecords, CompatibilityRecord, HardwareRecord, ModelRecord,
    PerformanceRecord, ResultMode, RunRecord, WebRecord,
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
    #[error("{path} has schema version {found}; this program reads version {current}: run `ipfs-accelerate db migrate --db-path {path}` (reads never change the file)")]
    OlderSchema {
        path: PathBuf,
        found: i64,
        current: i64,
    },
    #[error("{path} is locked by {holder} and stayed locked for {waited_s} s: {message}")]
    Locked {
        path: PathBuf,
        holder: String,
        waited_s: u64,
        message: String,
    },
    #[error("{path}: table {table} {problem}; this store was not written by ipfs-accelerate, or was altered, and is not read")]
    Tampered {
        path: PathBuf,
        table: String,
        problem: String,
    },
    #[error("SQL error: {0}")]
    Sql(String),
    #[error("no stored results match: {0}")]
    NoMatchingRows(String),
    /// A request the store cannot answer as asked (a missing option), not a SQL failure.
    #[error("{0}")]
    Request(String),
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
    /// Model and hardware rows this store has committed, by identity: a run stores one
    /// combination after another, and each lookup is a statement DuckDB plans and runs
    /// (about 1 ms). Only committed ids are kept; model and hardware rows are never deleted.
    known_ids: KnownIds,
}

impl Store {
    /// Opens the store for writing, creating the file and migrating the schema as needed.
    pub fn open_or_create(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| DbError::Io(format!("cannot create {}: {e}", parent.display())))?;
        }
        if !path.exists() {
            create_whole(path)?;
        }
        let conn = open(path, false, &ReadOptions::default())?;
        if !schema::has_version_table(&conn)? && schema::has_user_tables(&conn)? {
            return Err(DbError::NotOurs { path: path.into() });
        }
        schema::migrate(&conn, path)?;
        Ok(Self {
            conn,
            path: path.into(),
            known_ids: Default::default(),
        })
    }

    /// Opens an existing store for reading, and only reading: the file is opened read-only,
    /// DuckDB may not reach files, the network or extensions (external access, extension
    /// installing and autoloading are off, and the configuration is locked so SQL cannot turn
    /// them back on), and an older schema is an error rather than a migration. A missing file
    /// is an error, never created.
    pub fn open_existing(path: &Path) -> Result<Self> {
        Self::open_read_only(path, &ReadOptions::default())
    }

    /// [`Store::open_existing`] with a memory cap and the directories (if any) `COPY ... TO`
    /// may write into.
    pub fn open_read_only(path: &Path, options: &ReadOptions) -> Result<Self> {
        if !path.is_file() {
            return Err(DbError::Missing(path.into()));
        }
        let conn = open(path, true, options)?;
        check_version(&conn, path)?;
        Ok(Self {
            conn,
            path: path.into(),
            known_ids: Default::default(),
        })
    }

    /// Opens an existing store of the current schema for writing (maintenance): never
    /// created, never migrated.
    pub fn open_writable(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(DbError::Missing(path.into()));
        }
        let conn = open(path, false, &ReadOptions::default())?;
        check_version(&conn, path)?;
        Ok(Self {
            conn,
            path: path.into(),
            known_ids: Default::default(),
        })
    }

    /// Brings an existing store to the current schema (each migration one transaction);
    /// returns (version before, version after).
    pub fn migrate(path: &Path) -> Result<(i64, i64)> {
        if !path.is_file() {
            return Err(DbError::Missing(path.into()));
        }
        let before = {
            let conn = open(path, true, &ReadOptions::default())?;
            if !schema::has_version_table(&conn)? {
                return Err(DbError::NotOurs { path: path.into() });
            }
            schema::current_version(&conn)?
        };
        let store = Self::open_or_create(path)?;
        let after = schema::current_version(&store.conn)?;
        Ok((before, after))
    }

    /// Checks that every table of the schema is the base table this program created, not a
    /// view (or missing): reports and exports read them by name.
    pub fn check_tables(&self) -> Result<()> {
        for table in schema::TABLES {
            let kind: Option<String> = self
                .conn
                .query_row(
                    "SELECT table_type FROM information_schema.tables
                     WHERE table_schema = 'main' AND table_name = ?",
                    params![table],
                    |r| r.get(0),
                )
                .optional()?;
            let problem = match kind.as_deref() {
                Some("BASE TABLE") => continue,
                Some(other) => format!("is a {other}, not a table"),
                None => "is missing".to_string(),
            };
            return Err(DbError::Tampered {
                path: self.path.clone(),
                table: table.to_string(),
                problem,
            });
        }
        for (table, declared) in records::DECLARED_TABLES {
            let present = self.columns(table)?;
            if let Some(missing) = declared.iter().find(|c| !present.iter().any(|p| p == *c)) {
                return Err(DbError::Tampered {
                    path: self.path.clone(),
                    table: table.to_string(),
                    problem: format!("has no column {missing}"),
                });
            }
        }
        Ok(())
    }

    /// The columns of `table`, in order.
    pub(crate) fn columns(&self, table: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT column_name FROM information_schema.columns
             WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
        )?;
        let names = stmt
            .query_map(params![table], |r| r.get(0))?
            .collect::<std::result::Result<Vec<String>, _>>()?;
        Ok(names)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another connection to the same open database, for reading from another thread while
    /// this one writes (each sees what the other committed).
    pub fn reader(&self) -> Result<Self> {
        Ok(Self {
            conn: self.conn.try_clone()?,
            path: self.path.clone(),
            known_ids: Default::default(),
        })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn begin_run(&mut self, run: &RunRecord) -> Result<i64> {
        let id: i64 = self.conn.query_row(
            "INSERT INTO runs (started_at, git_commit, command_line, host, tool_version, status, pid)
             VALUES (now(), ?, ?, ?, ?, 'running', ?) RETURNING run_id",
            params![
                run.git_commit,
                run.command_line,
                run.host,
                run.tool_version,
                i64::from(std::process::id())
            ],
            |r| r.get(0),
        )?;
        Ok(id)
    }

    /// Marks `running` runs of `host` whose process is gone as `interrupted` (a run killed
    /// outright could not mark itself); returns how many.
    pub fn close_abandoned_runs(&mut self, host: &str) -> Result<usize> {
        let mut stmt = self
            .conn
            .prepare("SELECT run_id, pid FROM runs WHERE status = 'running' AND host = ? AND pid IS NOT NULL")?;
        let running: Vec<(i64, i64)> = stmt
            .query_map(params![host], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<_, _>>()?;
        let mut closed = 0;
        for (run_id, pid) in running {
            if !process_alive(pid) {
                self.conn.execute(
                    "UPDATE runs SET status = 'interrupted', ended_at = now() WHERE run_id = ?",
                    params![run_id],
                )?;
                closed += 1;
            }
        }
        Ok(closed)
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
    pub fn record_combination(&mut self, run_id: i64, c: &CombinationRecords) -> Result<i64> {
        Ok(self.record_combinations(run_id, std::slice::from_ref(c))?[0])
    }

    /// Stores several finished combinations of one run in a single transaction (all or
    /// none); returns their result ids in order. Writing many at once costs about what one
    /// costs (see `insert_combinations`): imports and submissions use it.
    pub fn record_combinations(
        &mut self,
        run_id: i64,
        combinations: &[CombinationRecords],
    ) -> Result<Vec<i64>> {
        let tx = self.conn.transaction()?;
        let (result_ids, ids) = insert_combinations(&tx, &self.known_ids, run_id, combinations)?;
        tx.commit()?;
        self.known_ids.extend(ids);
        Ok(result_ids)
    }

    /// Stores the calibration figures of one hardware platform in a single transaction.
    pub fn record_calibrations(
        &mut self,
        hardware: &HardwareRecord,
        figures: &[CalibrationRecord],
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        let hardware_id = upsert_hardware(&tx, hardware)?;
        for c in figures {
            records::insert_calibration(&tx, hardware_id, c)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn query(&self, sql: &str) -> Result<QueryResult> {
        query::run(&self.conn, sql)
    }

    pub fn query_limited(&self, sql: &str, limits: query::Limits) -> Result<QueryResult> {
        query::run_limited(&self.conn, sql, limits)
    }

    /// Every result's timed samples in iteration order, by result id (a result without
    /// samples is absent).
    pub fn samples_by_result(&self) -> Result<std::collections::HashMap<i64, Vec<f64>>> {
        let mut statement = self.conn.prepare(
            "SELECT result_id, latency_ms FROM raw_samples ORDER BY result_id, iteration",
        )?;
        let rows = statement.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?)))?;
        let mut samples: std::collections::HashMap<i64, Vec<f64>> = Default::default();
        for row in rows {
            let (result_id, latency_ms) = row?;
            samples.entry(result_id).or_default().push(latency_ms);
        }
        Ok(samples)
    }
}

/// Creates a new store with the whole schema under a temporary name beside `path` and links it
/// into place, so `path` never names a half-created store: a process killed while creating
/// leaves at most a stray temporary file, which the next creation in that folder removes. When
/// another process created `path` first, its store is kept and ours is dropped.
fn create_whole(path: &Path) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    remove_stale_creations(dir);
    let temp = dir.join(format!(".{name}{CREATING}{}", std::process::id()));
    let remove_temp = || {
        let _ = std::fs::remove_file(&temp);
        let _ = std::fs::remove_file(wal_path(&temp));
    };
    remove_temp();
    let created = open(&temp, false, &ReadOptions::default()).and_then(|conn| {
        schema::migrate(&conn, path)?;
        conn.execute_batch("CHECKPOINT")?;
        Ok(())
    });
    if let Err(e) = created {
        remove_temp();
        // The user named `path`, not the temporary file.
        return Err(match e {
            DbError::Open { message, .. } => DbError::Open {
                path: path.into(),
                message: message.replace(&*temp.to_string_lossy(), &path.to_string_lossy()),
            },
            other => other,
        });
    }
    let placed = match std::fs::hard_link(&temp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // A file system without hard links: rename, which cannot refuse to replace, so only
        // when nothing has appeared meanwhile.
        Err(_) if !path.exists() => std::fs::rename(&temp, path),
        Err(_) => Ok(()),
    };
    remove_temp();
    placed.map_err(|e| DbError::Io(format!("cannot create {}: {e}", path.display())))
}

/// DuckDB's log beside the store at `path`: `NAME.wal`.
pub(crate) fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push(".wal");
    wal.into()
}

/// What names a store being created: `.NAME.creating-PID`.
const CREATING: &str = ".creating-";

/// Temporary stores in `dir` left by creators that were killed (their process is gone).
fn remove_stale_creations(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, rest)) = name.strip_prefix('.').and_then(|n| n.rsplit_once(CREATING)) else {
            continue;
        };
        let pid = rest.strip_suffix(".wal").unwrap_or(rest);
        if pid.parse::<i64>().is_ok_and(|pid| !process_alive(pid)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Ours, and of the schema this program reads (no migration on the way).
fn check_version(conn: &Connection, path: &Path) -> Result<()> {
    if !schema::has_version_table(conn)? {
        return Err(DbError::NotOurs { path: path.into() });
    }
    let version = schema::current_version(conn)?;
    if version > schema::CURRENT_VERSION {
        return Err(DbError::NewerSchema {
            path: path.into(),
            found: version,
            supported: schema::CURRENT_VERSION,
        });
    }
    if version < schema::CURRENT_VERSION {
        return Err(DbError::OlderSchema {
            path: path.into(),
            found: version,
            current: schema::CURRENT_VERSION,
        });
    }
    Ok(())
}

/// Whether `pid` is a live process on this machine (Linux /proc; elsewhere assumed alive, so
/// nothing is closed by mistake).
fn process_alive(pid: i64) -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    std::fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// How a read-only store is opened.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// DuckDB's memory_limit, bytes (its default, 80% of RAM, when None).
    pub memory_limit: Option<u64>,
    /// Folders `COPY ... TO` may write into (export); nothing else outside the file is reachable.
    pub allowed_directories: Vec<PathBuf>,
}

/// How long opening waits for another process's lock on the file (a bench holds it only
/// while it commits one combination); `IPFS_ACCELERATE_LOCK_WAIT_S` overrides it.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

fn lock_wait() -> std::time::Duration {
    std::env::var("IPFS_ACCELERATE_LOCK_WAIT_S")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(LOCK_WAIT, |s| std::time::Duration::from_secs(s.min(3600)))
}

fn open(path: &Path, read_only: bool, options: &ReadOptions) -> Result<Connection> {
    let wait = lock_wait();
    let start = std::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(20);
    loop {
        match open_once(path, read_only, options) {
            Err(DbError::Open { message, .. }) if is_lock_conflict(&message) => {
                if start.elapsed() >= wait {
                    return Err(DbError::Locked {
                        path: path.into(),
                        holder: lock_holder(&message),
                        waited_s: wait.as_secs(),
                        message,
                    });
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

fn open_once(path: &Path, read_only: bool, options: &ReadOptions) -> Result<Connection> {
    let err = |e: duckdb::Error| DbError::Open {
        path: path.into(),
        message: one_line(&e.to_string()),
    };
    let mut config = Config::default()
        .access_mode(if read_only {
            AccessMode::ReadOnly
        } else {
            AccessMode::ReadWrite
        })
        .and_then(|c| c.enable_autoload_extension(false))
        .and_then(|c| c.with("autoinstall_known_extensions", "false"))
        .and_then(|c| c.with("allow_community_extensions", "false"))
        .map_err(err)?;
    if let Some(bytes) = options.memory_limit {
        config = config
            .max_memory(&format!("{}MB", (bytes >> 20).max(64)))
            .map_err(err)?;
    }
    let conn = Connection::open_with_flags(path, config).map_err(err)?;
    if read_only {
        // In this order: the directories COPY may write to, then no other external access,
        // then no SET can undo either.
        let mut setup = String::new();
        if !options.allowed_directories.is_empty() {
            let dirs: Vec<String> = options
                .allowed_directories
                .iter()
                .map(|d| format!("'{}'", d.display().to_string().replace('\'', "''")))
                .collect();
            setup.push_str(&format!("SET allowed_directories = [{}];", dirs.join(", ")));
        }
        setup.push_str("SET enable_external_access = false; SET lock_configuration = true;");
        conn.execute_batch(&setup).map_err(err)?;
    }
    Ok(conn)
}

fn is_lock_conflict(message: &str) -> bool {
    message.contains("Could not set lock") || message.contains("Conflicting lock")
}

/// "process 1234 (ipfs-accelerate bench --models bert)" from DuckDB's "Conflicting lock is
/// held in <program> (PID 1234)".
fn lock_holder(message: &str) -> String {
    let pid = message
        .split("PID ")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|p| !p.is_empty());
    match pid {
        Some(pid) => {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .split('\0')
                        .filter(|a| !a.is_empty())
                        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
                        .take(8)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            if cmdline.is_empty() {
                format!("process {pid}")
            } else {
                format!("process {pid} ({cmdline})")
            }
        }
        None => "another process".to_string(),
    }
}

fn upsert_model(tx: &Connection, m: &ModelRecord) -> Result<i64> {
    // Cached statements: planning a statement costs more than running it, and the harness
    // stores one combination after another.
    let existing: Option<i64> = tx
        .prepare_cached(
            "SELECT model_id FROM models WHERE model_name = ? AND source = ? AND weights = ?
               AND parameter_count = ?",
        )?
        .query_row(
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
        .prepare_cached(
            "SELECT hardware_id FROM hardware_platforms
             WHERE fingerprint = ? AND platform = ? AND device = ?",
        )?
        .query_row(params![h.fingerprint, h.platform, h.device], |r| r.get(0))
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

/// Model and hardware ids by their identity, so that a session looks each one up once.
type KnownIds = std::collections::HashMap<String, i64>;

/// Inserts finished combinations of one run inside the caller's transaction; returns their
/// result ids (in order) and the model/hardware ids it had to look up.
///
/// Every statement costs this DuckDB a bind and an optimiser pass, even a prepared one (its
/// EXECUTE is planned again each time), about 0.3–5 ms here, so the rows are written with a
/// fixed number of statements whatever the count: one for the run check, one that draws the
/// ids and the timestamp, and one appender per table. Upserts of models and hardware the
/// store has not seen in this session, and browser details, add one statement each. The
/// looked-up ids are to be remembered once the transaction commits.
pub(crate) fn insert_combinations(
    tx: &Connection,
    known_ids: &KnownIds,
    run_id: i64,
    combinations: &[CombinationRecords],
) -> Result<(Vec<i64>, KnownIds)> {
    // The schema has no foreign keys (DuckDB could not purge runs with them): the
    // reference to the run is checked here, inside the transaction.
    let runs: i64 = tx
        .prepare_cached("SELECT count(*) FROM runs WHERE run_id = ?")?
        .query_row(params![run_id], |r| r.get(0))?;
    if runs == 0 {
        return Err(DbError::Sql(format!("run {run_id} is not in the store")));
    }
    let mut learned = KnownIds::default();
    let mut keys = Vec::with_capacity(combinations.len());
    for c in combinations {
        let model_key = format!(
            "model\0{}\0{}\0{}\0{}",
            c.model.model_name, c.model.source, c.model.weights, c.model.parameter_count
        );
        let hardware_key = format!(
            "hardware\0{}\0{}\0{}",
            c.hardware.fingerprint, c.hardware.platform, c.hardware.device
        );
        let model_id = match known_ids.get(&model_key).or(learned.get(&model_key)) {
            Some(id) => *id,
            None => upsert_model(tx, &c.model)?,
        };
        let hardware_id = match known_ids.get(&hardware_key).or(learned.get(&hardware_key)) {
            Some(id) => *id,
            None => upsert_hardware(tx, &c.hardware)?,
        };
        learned.insert(model_key, model_id);
        learned.insert(hardware_key, hardware_id);
        keys.push((model_id, hardware_id));
    }
    // `now()` is the transaction's start, as the column defaults of single INSERTs had it.
    let drawn: Vec<(i64, i64, duckdb::types::Value)> = tx
        .prepare_cached(
            "SELECT nextval('seq_result_id'), nextval('seq_compat_id'), now()::TIMESTAMP
             FROM range(?)",
        )?
        .query_map(params![combinations.len() as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<std::result::Result<_, _>>()?;
    if drawn.len() != combinations.len() {
        return Err(DbError::Sql(format!(
            "drew {} ids for {} combinations",
            drawn.len(),
            combinations.len()
        )));
    }
    let rows = || combinations.iter().zip(&keys).zip(&drawn);

    let mut columns = vec![
        "result_id",
        "run_id",
        "model_id",
        "hardware_id",
        "created_at",
    ];
    columns.extend(PerformanceRecord::COLUMNS);
    let mut app = tx.appender_with_columns("performance_results", &columns)?;
    for ((c, (model_id, hardware_id)), (result_id, _, created_at)) in rows() {
        let mut values: Vec<&dyn duckdb::ToSql> =
            vec![result_id, &run_id, model_id, hardware_id, created_at];
        values.extend(c.performance.values());
        app.append_row(duckdb::appender_params_from_iter(values))?;
    }
    app.flush()?;
    drop(app);

    if combinations.iter().any(|c| !c.samples_ms.is_empty()) {
        let mut app = tx.appender("raw_samples")?;
        for ((c, _), (result_id, _, _)) in rows() {
            for (i, s) in c.samples_ms.iter().enumerate() {
                app.append_row(params![result_id, i as i64, *s])?;
            }
        }
        app.flush()?;
    }
    for ((c, _), (result_id, _, _)) in rows() {
        if let Some(w) = &c.web {
            records::insert_web(tx, *result_id, w)?;
        }
    }

    let mut app = tx.appender_with_columns(
        "compatibility_results",
        &[
            "compat_id",
            "run_id",
            "model_id",
            "hardware_id",
            "platform",
            "engine",
            "precision",
            "status",
            "error",
            "created_at",
        ],
    )?;
    for ((c, (model_id, hardware_id)), (_, compat_id, created_at)) in rows() {
        let compat = &c.compatibility;
        app.append_row(params![
            compat_id,
            run_id,
            model_id,
            hardware_id,
            compat.platform,
            compat.engine,
            compat.precision,
            compat.status,
            compat.error,
            created_at
        ])?;
    }
    app.flush()?;
    Ok((
        drawn
            .into_iter()
            .map(|(result_id, _, _)| result_id)
            .collect(),
        learned,
    ))
}
