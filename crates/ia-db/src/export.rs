//! Dumps every table to a folder as Parquet or CSV, through DuckDB's own COPY. The store must
//! be opened with the folder among its `allowed_directories` (nothing else is writable).

use crate::schema::TABLES;
use crate::{DbError, Result, Store};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Parquet,
    Csv,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "parquet" => Ok(ExportFormat::Parquet),
            "csv" => Ok(ExportFormat::Csv),
            other => Err(format!(
                "unknown export format '{other}' (expected parquet or csv)"
            )),
        }
    }
}

/// Writes one file per table into `dir` and returns their paths.
pub fn export(store: &Store, format: ExportFormat, dir: &Path) -> Result<Vec<PathBuf>> {
    store.check_tables()?;
    std::fs::create_dir_all(dir)
        .map_err(|e| DbError::Io(format!("cannot create {}: {e}", dir.display())))?;
    let (ext, options) = match format {
        ExportFormat::Parquet => ("parquet", "FORMAT parquet"),
        ExportFormat::Csv => ("csv", "FORMAT csv, HEADER true"),
    };
    let mut written = Vec::new();
    for table in TABLES {
        let file = dir.join(format!("{table}.{ext}"));
        let quoted = file.display().to_string().replace('\'', "''");
        store
            .connection()
            .execute_batch(&format!("COPY {table} TO '{quoted}' ({options})"))?;
        written.push(file);
    }
    Ok(written)
}
