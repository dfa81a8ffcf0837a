//! `ipfs-accelerate db migrate-json`: folders of the Python framework's JSON results into the
//! store's legacy tables. Every `.json` file under the folder is recognised by content
//! (ia_bench::legacy), hashed, and stored in its own transaction; a file already stored is
//! skipped, an unknown or broken one is skipped with its reason, and the rest go on.

use anyhow::Context;
use ia_bench::legacy::{LegacyEntry, LegacyFile};
use ia_db::legacy::{LegacyEntryRecord, LegacyFileRecord, LegacyImport};
use ia_db::Store;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Larger files are not results of that framework (its biggest is under 100 KB).
const MAX_FILE_BYTES: u64 = 256 << 20;

#[derive(clap::Args)]
pub struct MigrateJsonArgs {
    /// Folder of legacy JSON result files (searched recursively)
    #[arg(long)]
    input_dir: PathBuf,
    /// Parse and report what would be imported; write nothing
    #[arg(long)]
    dry_run: bool,
    /// Print the summary as JSON
    #[arg(long)]
    json: bool,
}

/// What happened to one file.
#[derive(Serialize)]
struct FileOutcome {
    file: String,
    /// imported | would-import | already-imported | skipped
    action: &'static str,
    format: Option<&'static str>,
    entries: usize,
    simulated_entries: usize,
    /// Why a file was skipped, or which stored file holds the same content.
    reason: Option<String>,
}

pub fn run(db_path: &Path, args: &MigrateJsonArgs) -> anyhow::Result<()> {
    if !args.input_dir.is_dir() {
        anyhow::bail!("--input-dir {}: not a folder", args.input_dir.display());
    }
    let files = json_files(&args.input_dir)?;
    let mut store = if args.dry_run {
        // A dry run writes nothing, so it only reads a store that exists.
        db_path
            .is_file()
            .then(|| Store::open_existing(db_path))
            .transpose()?
    } else {
        Some(Store::open_or_create(db_path)?)
    };
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    let mut outcomes = vec![];
    for path in &files {
        bar.set_message(path.display().to_string());
        outcomes.push(migrate_one(path, store.as_mut(), args.dry_run));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let skipped = outcomes.iter().filter(|o| o.action == "skipped").count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        print_summary(&outcomes);
    }
    if skipped > 0 {
        anyhow::bail!(
            "{skipped} of {} files skipped (reasons above); the others were {}",
            files.len(),
            if args.dry_run { "checked" } else { "imported" }
        );
    }
    Ok(())
}

fn json_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json"))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn migrate_one(path: &Path, store: Option<&mut Store>, dry_run: bool) -> FileOutcome {
    let mut outcome = FileOutcome {
        file: path.display().to_string(),
        action: "skipped",
        format: None,
        entries: 0,
        simulated_entries: 0,
        reason: None,
    };
    let parsed = read(path).and_then(|(bytes, hash)| {
        let text = std::str::from_utf8(&bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
        let file = ia_bench::legacy::parse(text).map_err(|e| e.to_string())?;
        Ok((file, hash))
    });
    let (file, hash) = match parsed {
        Ok(p) => p,
        Err(reason) => {
            outcome.reason = Some(reason);
            return outcome;
        }
    };
    outcome.format = Some(file.format);
    outcome.entries = file.entries.len();
    outcome.simulated_entries = file
        .entries
        .iter()
        .filter(|e| e.simulated.is_some())
        .count();
    let record = file_record(path, &hash, &file);
    let entries: Vec<LegacyEntryRecord> = file.entries.iter().map(entry_record).collect();
    let result = match store {
        Some(store) if !dry_run => store.record_legacy_file(&record, &entries),
        Some(store) => store.legacy_file_by_hash(&hash).map(|found| match found {
            Some((file_id, source_path)) => LegacyImport::AlreadyImported {
                file_id,
                source_path,
            },
            None => LegacyImport::Imported {
                file_id: 0,
                entries: entries.len(),
            },
        }),
        None => Ok(LegacyImport::Imported {
            file_id: 0,
            entries: entries.len(),
        }),
    };
    match result {
        Ok(LegacyImport::Imported { .. }) => {
            outcome.action = if dry_run { "would-import" } else { "imported" };
        }
        Ok(LegacyImport::AlreadyImported {
            file_id,
            source_path,
        }) => {
            outcome.action = "already-imported";
            outcome.reason = Some(format!(
                "same content as legacy file {file_id} ({source_path})"
            ));
        }
        Err(e) => outcome.reason = Some(format!("not stored: {e}")),
    }
    outcome
}

fn read(path: &Path) -> Result<(Vec<u8>, String), String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_FILE_BYTES {
        return Err(format!("{len} bytes, over the {MAX_FILE_BYTES}-byte limit"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let hash = hex::encode(Sha256::digest(&bytes));
    Ok((bytes, hash))
}

fn file_record(path: &Path, hash: &str, f: &LegacyFile) -> LegacyFileRecord {
    LegacyFileRecord {
        source_path: path
            .canonicalize()
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string(),
        content_sha256: hash.to_string(),
        format: f.format.to_string(),
        file_timestamp: f.timestamp.clone(),
        host: f.host.clone(),
        simulated_hardware: f.simulated_hardware.clone(),
        warning: f.warning.clone(),
    }
}

fn entry_record(e: &LegacyEntry) -> LegacyEntryRecord {
    let stats = e.stats.as_ref();
    LegacyEntryRecord {
        entry_path: e.path.clone(),
        kind: e.kind.as_str().to_string(),
        model: e.model.clone(),
        family: e.family.clone(),
        hardware: e.hardware.clone(),
        batch_size: e.batch_size,
        seq_len: e.seq_len,
        precision: e.precision.clone(),
        detail: e.detail.clone(),
        status: e.status.to_string(),
        error: e.error.clone(),
        implementation_type: e.implementation_type.clone(),
        simulation_marker: e.simulated.clone(),
        has_figures: e.has_figures(),
        measured_at: e.timestamp.clone(),
        samples_ms: e.samples_ms.clone(),
        // The file's own mean where it states one; else the mean of its raw samples.
        latency_mean_ms: e.mean_latency_ms.or(stats.map(|s| s.mean_ms)),
        latency_p50_ms: stats.map(|s| s.p50_ms),
        latency_p90_ms: stats.map(|s| s.p90_ms),
        latency_p99_ms: stats.map(|s| s.p99_ms),
        latency_min_ms: stats.map(|s| s.min_ms),
        latency_max_ms: stats.map(|s| s.max_ms),
        throughput_items_per_s: e.throughput_items_per_s,
        memory_mb: e.memory_mb,
        load_time_s: e.load_time_s,
        execution_time_s: e.execution_time_s,
        iterations: e.iterations,
        relative_value: e.relative_value,
    }
}

fn print_summary(outcomes: &[FileOutcome]) {
    println!(
        "{:<17} {:<30} {:>7} {:>9}  FILE",
        "ACTION", "FORMAT", "ENTRIES", "SIMULATED"
    );
    for o in outcomes {
        println!(
            "{:<17} {:<30} {:>7} {:>9}  {}{}",
            o.action,
            o.format.unwrap_or("-"),
            o.entries,
            o.simulated_entries,
            o.file,
            o.reason
                .as_ref()
                .map(|r| format!("\n{:>17} {r}", "reason:"))
                .unwrap_or_default()
        );
    }
    let count = |a: &str| outcomes.iter().filter(|o| o.action == a).count();
    println!(
        "{} files: {} imported, {} would be imported, {} already imported, {} skipped; {} entries ({} simulated)",
        outcomes.len(),
        count("imported"),
        count("would-import"),
        count("already-imported"),
        count("skipped"),
        outcomes
            .iter()
            .filter(|o| matches!(o.action, "imported" | "would-import"))
            .map(|o| o.entries)
            .sum::<usize>(),
        outcomes
            .iter()
            .filter(|o| matches!(o.action, "imported" | "would-import"))
            .map(|o| o.simulated_entries)
            .sum::<usize>(),
    );
}
