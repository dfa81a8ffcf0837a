//! Store maintenance (`db maintain`): integrity checks, statistics, checkpoint, verified
//! backups and the transactional purge of old runs.

use crate::{schema, DbError, Result, Store};
use duckdb::params;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One integrity check: how many rows break it (0 is good).
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub problems: i64,
}

/// References between tables (the schema declares none: see migration 8), as
/// (check name, child table, child column, parent table, parent column).
const REFERENCES: [(&str, &str, &str, &str, &str); 10] = [
    (
        "results without their run",
        "performance_results",
        "run_id",
        "runs",
        "run_id",
    ),
    (
        "results without their model",
        "performance_results",
        "model_id",
        "models",
        "model_id",
    ),
    (
        "results without their hardware",
        "performance_results",
        "hardware_id",
        "hardware_platforms",
        "hardware_id",
    ),
    (
        "raw samples without their result",
        "raw_samples",
        "result_id",
        "performance_results",
        "result_id",
    ),
    (
        "web details without their result",
        "web_results",
        "result_id",
        "performance_results",
        "result_id",
    ),
    (
        "compatibility rows without their run",
        "compatibility_results",
        "run_id",
        "runs",
        "run_id",
    ),
    (
        "compatibility rows without their model",
        "compatibility_results",
        "model_id",
        "models",
        "model_id",
    ),
    (
        "calibrations without their hardware",
        "calibrations",
        "hardware_id",
        "hardware_platforms",
        "hardware_id",
    ),
    (
        "legacy entries without their file",
        "legacy_results",
        "file_id",
        "legacy_files",
        "file_id",
    ),
    (
        "legacy samples without their entry",
        "legacy_samples",
        "legacy_id",
        "legacy_results",
        "legacy_id",
    ),
];

/// Size and contents of the store.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStats {
    pub schema_version: i64,
    pub file_bytes: u64,
    pub wal_bytes: u64,
    pub rows: Vec<(String, i64)>,
    pub runs: i64,
    pub oldest_run: Option<String>,
    pub newest_run: Option<String>,
}

/// Rows deleted by a purge, per table.
#[derive(Debug, Clone, Serialize)]
pub struct Purged {
    pub runs: Vec<i64>,
    pub rows: Vec<(String, usize)>,
}

/// A written and verified backup.
#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    pub path: PathBuf,
    pub bytes: u64,
    pub compressed: bool,
    /// Rows per table, counted again in the reopened copy (equal to the source's).
    pub rows: Vec<(String, i64)>,
}

impl Store {
    /// Every integrity check; DuckDB's own block checksums are verified by reading every
    /// column of every table.
    pub fn check_integrity(&self) -> Result<Vec<Check>> {
        let c = self.connection();
        let count = |sql: &str| -> Result<i64> { Ok(c.query_row(sql, [], |r| r.get(0))?) };
        let mut checks = vec![Check {
            name: "schema version behind the program's",
            problems: (schema::CURRENT_VERSION - schema::current_version(c)?).max(0),
        }];
        for (name, child, ccol, parent, pcol) in REFERENCES {
            checks.push(Check {
                name,
                problems: count(&format!(
                    "SELECT count(*) FROM {child} c WHERE NOT EXISTS
                       (SELECT 1 FROM {parent} p WHERE p.{pcol} = c.{ccol})"
                ))?,
            });
        }
        checks.push(Check {
            name: "measured results without raw samples",
            problems: count(
                "SELECT count(*) FROM performance_results p
                 WHERE p.status = 'pass' AND coalesce(p.iterations, 0) > 0
                   AND NOT EXISTS (SELECT 1 FROM raw_samples s WHERE s.result_id = p.result_id)",
            )?,
        });
        checks.push(Check {
            name: "legacy entries whose sample count differs from their samples",
            problems: count(
                "SELECT count(*) FROM legacy_results l
                 WHERE l.samples <> (SELECT count(*) FROM legacy_samples s
                                     WHERE s.legacy_id = l.legacy_id)",
            )?,
        });
        checks.push(Check {
            name: "runs still marked running",
            problems: count("SELECT count(*) FROM runs WHERE status = 'running'")?,
        });
        let mut unreadable = 0;
        for table in schema::TABLES {
            // bit_xor(hash(row)) makes DuckDB read (and checksum) every block of every column.
            if c.query_row(
                &format!("SELECT count(*), bit_xor(hash(t)) FROM {table} t"),
                [],
                |r| r.get::<_, i64>(0),
            )
            .is_err()
            {
                unreadable += 1;
            }
        }
        checks.push(Check {
            name: "tables DuckDB could not read in full",
            problems: unreadable,
        });
        Ok(checks)
    }

    /// Rows per table, in schema order.
    pub fn row_counts(&self) -> Result<Vec<(String, i64)>> {
        schema::TABLES
            .iter()
            .map(|t| {
                let n: i64 =
                    self.connection()
                        .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))?;
                Ok((t.to_string(), n))
            })
            .collect()
    }

    pub fn stats(&self) -> Result<StoreStats> {
        let c = self.connection();
        let (runs, oldest, newest): (i64, Option<String>, Option<String>) = c.query_row(
            "SELECT count(*), CAST(min(started_at) AS VARCHAR), CAST(max(started_at) AS VARCHAR)
             FROM runs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        Ok(StoreStats {
            schema_version: schema::current_version(c)?,
            file_bytes: size(self.path()),
            wal_bytes: size(&crate::wal_path(self.path())),
            rows: self.row_counts()?,
            runs,
            oldest_run: oldest,
            newest_run: newest,
        })
    }

    /// Writes everything to the file (WAL included) and lets DuckDB reclaim freed blocks.
    pub fn checkpoint(&self) -> Result<()> {
        self.connection()
            .execute_batch("VACUUM; FORCE CHECKPOINT;")?;
        Ok(())
    }

    /// Deletes every run that started before `before` (a date or timestamp DuckDB reads),
    /// with its results, samples, web details and compatibility rows, in one transaction.
    /// Models and hardware rows stay: other runs may share them.
    pub fn purge_runs_before(&mut self, before: &str) -> Result<Purged> {
        let tx = self.conn.transaction()?;
        let runs: Vec<i64> = {
            let mut st = tx.prepare(
                "SELECT run_id FROM runs WHERE started_at < CAST(? AS TIMESTAMP) ORDER BY run_id",
            )?;
            let rows = st.query_map(params![before], |r| r.get(0))?;
            rows.collect::<std::result::Result<_, _>>()?
        };
        let selected = "SELECT run_id FROM runs WHERE started_at < CAST(? AS TIMESTAMP)";
        let results =
            format!("SELECT result_id FROM performance_results WHERE run_id IN ({selected})");
        let mut rows = vec![];
        for (table, filter) in [
            ("raw_samples", format!("result_id IN ({results})")),
            ("web_results", format!("result_id IN ({results})")),
            ("performance_results", format!("run_id IN ({selected})")),
            ("compatibility_results", format!("run_id IN ({selected})")),
            ("runs", format!("run_id IN ({selected})")),
        ] {
            let n = tx.execute(
                &format!("DELETE FROM {table} WHERE {filter}"),
                params![before],
            )?;
            rows.push((table.to_string(), n));
        }
        tx.commit()?;
        Ok(Purged { runs, rows })
    }

    /// Copies the store into `dir` (gzip with `compress`), then reopens the copy and checks
    /// that every table has the rows the store has; the copy keeps its final name only once
    /// verified. The store's write lock is held throughout, so nothing changes underneath.
    pub fn backup(&self, dir: &Path, compress: bool) -> Result<Backup> {
        let io = |what: &str, e: std::io::Error| DbError::Io(format!("{what}: {e}"));
        std::fs::create_dir_all(dir).map_err(|e| io(&format!("creating {}", dir.display()), e))?;
        self.connection().execute_batch("FORCE CHECKPOINT;")?;
        let expected = self.row_counts()?;
        let stem = self
            .path()
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "store".into());
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let name = format!("{stem}-{stamp}.duckdb{}", if compress { ".gz" } else { "" });
        let final_path = dir.join(&name);
        let partial = dir.join(format!(".{name}.partial"));
        let result = (|| {
            let mut src = std::fs::File::open(self.path())
                .map_err(|e| io(&format!("reading {}", self.path().display()), e))?;
            let out = std::fs::File::create(&partial)
                .map_err(|e| io(&format!("writing {}", partial.display()), e))?;
            if compress {
                let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
                std::io::copy(&mut src, &mut gz).map_err(|e| io("compressing", e))?;
                gz.finish()
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io("compressing", e))?;
            } else {
                let mut out = out;
                std::io::copy(&mut src, &mut out).map_err(|e| io("copying", e))?;
                out.sync_all().map_err(|e| io("copying", e))?;
            }
            let rows = verify_copy(&partial, compress, &expected)?;
            std::fs::rename(&partial, &final_path)
                .map_err(|e| io(&format!("renaming to {}", final_path.display()), e))?;
            let bytes = std::fs::metadata(&final_path).map(|m| m.len()).unwrap_or(0);
            Ok(Backup {
                path: final_path.clone(),
                bytes,
                compressed: compress,
                rows,
            })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }
}

/// Opens a backup read-only (decompressed into a temporary file first) and counts its rows.
fn verify_copy(
    copy: &Path,
    compressed: bool,
    expected: &[(String, i64)],
) -> Result<Vec<(String, i64)>> {
    let tmp = tempfile::tempdir().map_err(|e| DbError::Io(format!("temporary folder: {e}")))?;
    let plain = if compressed {
        let p = tmp.path().join("verify.duckdb");
        let mut gz = flate2::read::GzDecoder::new(
            std::fs::File::open(copy).map_err(|e| DbError::Io(e.to_string()))?,
        );
        let mut out = std::fs::File::create(&p).map_err(|e| DbError::Io(e.to_string()))?;
        std::io::copy(&mut gz, &mut out)
            .and_then(|_| out.flush())
            .map_err(|e| DbError::Io(format!("decompressing the backup: {e}")))?;
        p
    } else {
        // A copy under its own name, so DuckDB does not pick up a stray WAL beside it.
        let p = tmp.path().join("verify.duckdb");
        std::fs::copy(copy, &p).map_err(|e| DbError::Io(e.to_string()))?;
        p
    };
    let store = Store::open_existing(&plain)?;
    let rows = store.row_counts()?;
    if rows != expected {
        return Err(DbError::Io(format!(
            "backup verification failed: the copy has {rows:?} rows, the store {expected:?}"
        )));
    }
    Ok(rows)
}

/// Deletes backups of this store (`<stem>-<UTC stamp>.duckdb[.gz]`) in `dir` whose stamp is
/// older than `days`; returns the deleted paths. Other files are never touched.
pub fn apply_retention(dir: &Path, stem: &str, days: u32) -> Result<Vec<PathBuf>> {
    let cutoff = chrono::Utc::now().naive_utc() - chrono::Duration::days(days as i64);
    let mut deleted = vec![];
    let entries = std::fs::read_dir(dir)
        .map_err(|e| DbError::Io(format!("reading {}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{stem}-")) else {
            continue;
        };
        let stamp = rest
            .strip_suffix(".duckdb.gz")
            .or_else(|| rest.strip_suffix(".duckdb"));
        let Some(t) =
            stamp.and_then(|s| chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ").ok())
        else {
            continue;
        };
        if t < cutoff {
            std::fs::remove_file(entry.path())
                .map_err(|e| DbError::Io(format!("deleting {name}: {e}")))?;
            deleted.push(entry.path());
        }
    }
    deleted.sort();
    Ok(deleted)
}
