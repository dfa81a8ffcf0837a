//! `ipfs-accelerate db maintain`: integrity, statistics, checkpoint, verified backups with
//! retention, and the purge of old runs. The store is opened for writing (it must exist and
//! be of the current schema), which also keeps other writers out while it works.

use ia_db::maintain::{apply_retention, Check};
use ia_db::Store;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct MaintainArgs {
    /// Orphan rows, measured results without raw samples, schema version, and a full read of
    /// every table (DuckDB verifies each block's checksum); exit status 1 on any problem
    #[arg(long)]
    check_integrity: bool,
    /// Rows per table, size on disk, oldest and newest run
    #[arg(long)]
    stats: bool,
    /// Write the WAL into the file and reclaim freed space (VACUUM, FORCE CHECKPOINT)
    #[arg(long)]
    vacuum: bool,
    /// Copy the store into this folder, then reopen the copy and count its rows
    #[arg(long, value_name = "DIR")]
    backup: Option<PathBuf>,
    /// Gzip the backup
    #[arg(long, requires = "backup")]
    compress: bool,
    /// Delete this store's backups older than N days from the --backup folder
    #[arg(long, value_name = "N", requires = "backup")]
    retention_days: Option<u32>,
    /// Delete every run that started before this date (YYYY-MM-DD or a timestamp), with its
    /// results and samples, in one transaction
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    purge_runs_before: Option<String>,
    /// Print what was done as JSON
    #[arg(long)]
    json: bool,
}

fn parse_date(s: &str) -> Result<String, String> {
    let t = s.trim();
    let ok = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").is_ok()
        || chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").is_ok()
        || chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S").is_ok();
    if ok {
        Ok(t.replace('T', " "))
    } else {
        Err(format!(
            "{s:?} is not a date (YYYY-MM-DD or YYYY-MM-DD HH:MM:SS)"
        ))
    }
}

#[derive(Serialize, Default)]
struct Report {
    integrity: Option<Vec<Check>>,
    stats: Option<ia_db::maintain::StoreStats>,
    vacuum: Option<(u64, u64)>,
    purged: Option<ia_db::maintain::Purged>,
    backup: Option<ia_db::maintain::Backup>,
    retention_deleted: Option<Vec<PathBuf>>,
}

pub fn run(db_path: &Path, args: &MaintainArgs) -> anyhow::Result<()> {
    let nothing_asked = !args.check_integrity
        && !args.stats
        && !args.vacuum
        && args.backup.is_none()
        && args.purge_runs_before.is_none();
    let mut store = Store::open_writable(db_path)?;
    let mut report = Report::default();
    // Destructive steps after the backup, so a backup taken in the same call holds the runs.
    if let Some(dir) = &args.backup {
        report.backup = Some(store.backup(dir, args.compress)?);
        if let Some(days) = args.retention_days {
            let stem = db_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            report.retention_deleted = Some(apply_retention(dir, &stem, days)?);
        }
    }
    if let Some(before) = &args.purge_runs_before {
        report.purged = Some(store.purge_runs_before(before)?);
    }
    if args.vacuum {
        let before = store.stats()?;
        store.checkpoint()?;
        let after = store.stats()?;
        report.vacuum = Some((
            before.file_bytes + before.wal_bytes,
            after.file_bytes + after.wal_bytes,
        ));
    }
    if args.check_integrity || nothing_asked {
        report.integrity = Some(store.check_integrity()?);
    }
    if args.stats || nothing_asked {
        report.stats = Some(store.stats()?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    let problems: i64 = report
        .integrity
        .iter()
        .flatten()
        .filter(|c| c.name != "runs still marked running")
        .map(|c| c.problems)
        .sum();
    if problems > 0 {
        anyhow::bail!("integrity check found {problems} problem rows");
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn print_report(r: &Report) {
    if let Some(b) = &r.backup {
        let rows: i64 = b.rows.iter().map(|(_, n)| n).sum();
        println!(
            "backup: {} ({}{}), verified: reopened, {rows} rows in {} tables match the store",
            b.path.display(),
            mib(b.bytes),
            if b.compressed { ", gzip" } else { "" },
            b.rows.len()
        );
    }
    if let Some(deleted) = &r.retention_deleted {
        println!("retention: {} old backups deleted", deleted.len());
        for p in deleted {
            println!("  {}", p.display());
        }
    }
    if let Some(p) = &r.purged {
        println!("purged {} runs: {:?}", p.runs.len(), p.runs);
        for (table, n) in &p.rows {
            println!("  {table:<24} {n:>10} rows deleted");
        }
    }
    if let Some((before, after)) = r.vacuum {
        println!("vacuum: {} -> {} (file + WAL)", mib(before), mib(after));
    }
    if let Some(checks) = &r.integrity {
        println!("integrity:");
        for c in checks {
            let verdict = match (c.problems, c.name) {
                (0, _) => "ok".to_string(),
                (n, "runs still marked running") => format!("{n} (a run in progress, or killed)"),
                (n, _) => format!("{n} PROBLEM"),
            };
            println!("  {:<62} {verdict}", c.name);
        }
    }
    if let Some(s) = &r.stats {
        println!(
            "store: schema version {}, {} on disk + {} WAL, {} runs ({} .. {})",
            s.schema_version,
            mib(s.file_bytes),
            mib(s.wal_bytes),
            s.runs,
            s.oldest_run.as_deref().unwrap_or("-"),
            s.newest_run.as_deref().unwrap_or("-")
        );
        for (table, n) in &s.rows {
            println!("  {table:<24} {n:>12} rows");
        }
    }
}
