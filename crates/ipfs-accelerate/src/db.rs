//! `ipfs-accelerate db query|report|export|import|migrate|trend|regressions|compare`
//!
//! query, report and export only read: the store is opened read-only with DuckDB's external
//! access, extension installing and autoloading off (export may write into its output folder
//! and nowhere else), a memory cap, and a statement timeout for queries. migrate is the one
//! command that upgrades an older store in place; bench and import write.

use anyhow::Context;
use ia_bench::Outcome;
use ia_db::export::ExportFormat;
use ia_db::report::ReportKind;
use ia_db::{OutputFormat, Store};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// DuckDB results file
    #[arg(
        long,
        global = true,
        env = "BENCHMARK_DB_PATH",
        default_value = "./benchmark_db.duckdb"
    )]
    db_path: PathBuf,
    #[command(subcommand)]
    command: DbCommand,
}

#[derive(clap::Subcommand)]
enum DbCommand {
    /// Run one SQL statement and print its result
    Query {
        #[arg(long)]
        sql: String,
        /// table, csv, json or md
        #[arg(long, default_value = "table", value_parser = parse_format)]
        format: OutputFormat,
        /// Rows printed at most (the rest are counted as cut)
        #[arg(long, default_value_t = 100_000, value_parser = crate::limits::count((1, 10_000_000)))]
        max_rows: usize,
        /// Seconds the statement may run before it is interrupted
        #[arg(long, default_value_t = 300.0, value_parser = crate::limits::seconds)]
        timeout: f64,
    },
    /// Write a performance, compatibility or web report
    Report {
        /// performance, compatibility, or web (browser platforms beside the native ones)
        #[arg(long, default_value = "performance")]
        kind: ReportKind,
        /// md, html, csv or json
        #[arg(long, default_value = "md", value_parser = parse_format)]
        format: OutputFormat,
        /// File to write; standard output when absent
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Store measurements taken by another runtime (a JSON list; see src/import.rs), with
    /// statistics computed as for our own results
    Import {
        #[arg(long)]
        file: PathBuf,
    },
    /// Bring an older store to the current schema (reads never migrate)
    Migrate,
    /// Every series (model, engine and platform, precision, scenario, batch size, length,
    /// machine) of a metric over runs, with its change points
    Trend(crate::analysis::SeriesArgs),
    /// Change points of every series (E-Divisive means + Student t-test between neighbouring
    /// segments), regressions first, each with what changed between the runs on either side
    Regressions(crate::analysis::SeriesArgs),
    /// One run against another: per common combination, the ratio of median latencies with
    /// a bootstrap 95% interval and a Mann-Whitney U p-value (Holm-corrected); exits non-zero
    /// on a significant regression beyond the threshold
    Compare(crate::analysis::CompareArgs),
    /// Export every table as parquet or csv files into a folder
    Export {
        #[arg(long, default_value = "parquet")]
        format: ExportFormat,
        #[arg(long)]
        output: PathBuf,
    },
}

fn parse_format(s: &str) -> Result<OutputFormat, String> {
    s.parse()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match &args.command {
        DbCommand::Import { file } => return import(&args.db_path, file),
        DbCommand::Migrate => {
            let (before, after) = Store::migrate(&args.db_path)?;
            println!(
                "{}: schema version {before} -> {after}",
                args.db_path.display()
            );
            return Ok(());
        }
        _ => {}
    }
    let mut options = ia_db::ReadOptions {
        // Half of what this process can still get: DuckDB spills or errors past it.
        memory_limit: ia_hardware::memory::available().map(|a| a.bytes / 2),
        allowed_directories: vec![],
    };
    if let DbCommand::Export { output, .. } = &args.command {
        std::fs::create_dir_all(output)
            .with_context(|| format!("creating {}", output.display()))?;
        options.allowed_directories = vec![output
            .canonicalize()
            .with_context(|| format!("resolving {}", output.display()))?];
    }
    let store = Store::open_read_only(&args.db_path, &options)?;
    match args.command {
        DbCommand::Query {
            sql,
            format,
            max_rows,
            timeout,
        } => {
            let result = store.query_limited(
                &sql,
                ia_db::Limits {
                    max_rows,
                    timeout: std::time::Duration::from_secs_f64(timeout),
                },
            )?;
            print!("{}", result.render(format));
            if result.truncated {
                eprintln!(
                    "note: only the first {max_rows} rows are shown (--max-rows; db export writes everything)"
                );
            }
        }
        DbCommand::Report {
            kind,
            format,
            output,
        } => {
            let text = ia_db::report::render(&store, kind, format)?;
            match output {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{text}"),
            }
        }
        DbCommand::Trend(a) => crate::analysis::trend(&store, &a)?,
        DbCommand::Regressions(a) => crate::analysis::regressions(&store, &a)?,
        DbCommand::Compare(a) => crate::analysis::compare_runs(&store, &a)?,
        DbCommand::Import { .. } | DbCommand::Migrate => unreachable!("handled above"),
        DbCommand::Export { format, output } => {
            let output = output.canonicalize()?;
            for f in ia_db::export::export(&store, format, &output)? {
                println!("{}", f.display());
            }
        }
    }
    Ok(())
}

/// All rows are validated before the run is opened, so a bad file stores nothing.
fn import(db_path: &std::path::Path, file: &std::path::Path) -> anyhow::Result<()> {
    let rows = crate::import::read(file)?
        .into_iter()
        .map(crate::import::to_outcome)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hw = ia_hardware::detect();
    let mut store = Store::open_or_create(db_path)?;
    let run = crate::results::run_record();
    let run_id = store.begin_run(&run)?;
    for (combo, outcome) in &rows {
        let Outcome::Measured(m) = outcome else {
            unreachable!("imports are measurements")
        };
        let engine = (m.session.engine.as_str(), m.session.engine_version.clone());
        let id = crate::results::store_outcome(
            &mut store, run_id, &run.host, &hw, engine, combo, outcome, None,
        )?;
        eprintln!(
            "imported {} [{}] b={} as result {id}",
            combo.model.name, m.session.engine, combo.batch_size
        );
    }
    store.end_run(run_id, "completed")?;
    Ok(())
}
