//! Where a bench run's results go as each combination finishes.
//!
//! * The DuckDB store is opened for each write and closed after it, so the file is locked only
//!   while one combination commits: `db query` and `db report` read it during a run (they wait
//!   out a commit in progress), and two runs can share one store.
//! * `--output-json` is rewritten whole (to a temporary file, then renamed) after each
//!   combination: a run killed at any point leaves a valid file with every finished result.

use anyhow::Context;
use ia_db::{RunRecord, Store};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Held while this process writes the store, so a forced exit never cuts a write short.
static WRITE: Mutex<()> = Mutex::new(());

pub struct RunStore {
    path: PathBuf,
    run_id: i64,
    /// The host the run's results are recorded under.
    host: String,
}

impl RunStore {
    /// Creates or migrates the store and opens a run in it (status `running`).
    pub fn begin(path: &Path, run: &RunRecord) -> anyhow::Result<Self> {
        let _guard = WRITE.lock().unwrap_or_else(|e| e.into_inner());
        let mut store = Store::open_or_create(path).context("opening the results database")?;
        store.close_abandoned_runs(&run.host)?;
        let run_id = store.begin_run(run)?;
        Ok(Self {
            path: path.to_path_buf(),
            run_id,
            host: run.host.clone(),
        })
    }

    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the store, lets `f` write (one transaction per call is the caller's unit) and
    /// closes it.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Store, i64) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let _guard = WRITE.lock().unwrap_or_else(|e| e.into_inner());
        let mut store = Store::open_or_create(&self.path)?;
        f(&mut store, self.run_id)
    }

    /// Marks the run completed, failed or interrupted.
    pub fn end(&self, status: &str) -> anyhow::Result<()> {
        self.write(|s, id| Ok(s.end_run(id, status)?))
    }

    /// What a forced exit runs: marks the run interrupted, waiting for a write in progress to
    /// commit, and keeps the lock so no other write starts before the process ends.
    pub fn interrupt_hook(&self) -> Box<dyn Fn() + Send> {
        let (path, run_id) = (self.path.clone(), self.run_id);
        Box::new(move || {
            let guard = WRITE.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(mut store) = Store::open_or_create(&path) {
                let _ = store.end_run(run_id, "interrupted");
            }
            std::mem::forget(guard);
        })
    }
}

/// The `--output-json` file, always a complete JSON list of the results so far.
pub struct JsonOutput {
    path: PathBuf,
}

impl JsonOutput {
    /// Starts the file as an empty list (so a path that cannot be written fails before any
    /// measurement).
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let out = Self {
            path: path.to_path_buf(),
        };
        out.write::<()>(&[])?;
        Ok(out)
    }

    pub fn write<T: Serialize>(&self, rows: &[T]) -> anyhow::Result<()> {
        let name = self
            .path
            .file_name()
            .with_context(|| format!("{} is not a file path", self.path.display()))?;
        let mut partial = name.to_os_string();
        partial.push(".partial");
        let tmp = self.path.with_file_name(partial);
        std::fs::write(&tmp, serde_json::to_string_pretty(rows)?)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_output_is_always_a_complete_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        let out = JsonOutput::create(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[]");
        out.write(&[1, 2]).unwrap();
        let v: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v, vec![1, 2]);
        assert!(!dir.path().join("out.json.partial").exists());
    }
}

/// The results store a command reads or writes (`--db-path`; also after a subcommand).
#[derive(clap::Args)]
pub struct StoreArg {
    /// DuckDB results file
    #[arg(
        long = "db-path",
        global = true,
        env = "BENCHMARK_DB_PATH",
        default_value = "./benchmark_db.duckdb"
    )]
    pub db_path: std::path::PathBuf,
}
