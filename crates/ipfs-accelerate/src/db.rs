//! `ipfs-accelerate db query|report|plot|export|import|migrate|migrate-json|maintain|trend|regressions|compare`
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
    #[command(flatten)]
    store: crate::run_store::StoreArg,
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
    /// Write a report: performance, compatibility, web, hardware, summary or legacy
    Report {
        /// performance (latest result per combination), compatibility (model x platform),
        /// web (browser platforms beside the native ones), hardware (one --model on every
        /// platform, speedup vs CPU), summary (what was measured where, best platform per
        /// model, failures), legacy (imported Python-framework results)
        #[arg(long, default_value = "performance")]
        kind: ReportKind,
        #[command(flatten)]
        filter: FilterArgs,
        /// Legacy report: also list entries their files mark as simulated
        #[arg(long)]
        include_simulated: bool,
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
    /// Import folders of the Python framework's JSON results (every known format) into the
    /// legacy tables, with their provenance and simulation markers; files already imported
    /// are skipped, unknown or broken ones are skipped with a reason (exit status 1)
    MigrateJson(crate::migrate_json::MigrateJsonArgs),
    /// Integrity checks, statistics, vacuum, verified backups with retention, and the
    /// transactional purge of old runs (with no option: integrity and statistics)
    Maintain(crate::maintain::MaintainArgs),
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
    /// Draw a chart of the stored results as SVG or PNG (by the --output extension)
    Plot {
        /// latency-vs-batch, throughput-by-platform, trend, memory, compatibility or
        /// web-vs-native
        #[arg(long)]
        kind: ia_charts::Kind,
        /// File to write: .svg or .png
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print what was drawn as JSON
        #[arg(long)]
        json: bool,
    },
    /// Export every table as parquet or csv files into a folder
    Export {
        #[arg(long, default_value = "parquet")]
        format: ExportFormat,
        #[arg(long)]
        output: PathBuf,
    },
}

/// Which results a chart or report covers.
#[derive(clap::Args, Clone, Default)]
pub struct FilterArgs {
    /// Only models whose name contains this (case-insensitive)
    #[arg(long)]
    model: Option<String>,
    /// Only this platform (cpu, openvino, wasm, webgpu, ...) or engine
    #[arg(long)]
    platform: Option<String>,
    /// Only this precision (f32, f16, bf16, int8, ...)
    #[arg(long)]
    precision: Option<String>,
    /// Only this run id
    #[arg(long)]
    run: Option<i64>,
}

impl FilterArgs {
    pub fn to_filter(&self) -> ia_db::charts::ChartFilter {
        ia_db::charts::ChartFilter {
            model: self.model.clone(),
            platform: self.platform.clone(),
            precision: self.precision.clone(),
            run: self.run,
            ..Default::default()
        }
    }
}

fn parse_format(s: &str) -> Result<OutputFormat, String> {
    s.parse()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match &args.command {
        DbCommand::Import { file } => return import(&args.store.db_path, file),
        DbCommand::MigrateJson(a) => return crate::migrate_json::run(&args.store.db_path, a),
        DbCommand::Maintain(a) => return crate::maintain::run(&args.store.db_path, a),
        DbCommand::Migrate => {
            let (before, after) = Store::migrate(&args.store.db_path)?;
            println!(
                "{}: schema version {before} -> {after}",
                args.store.db_path.display()
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
    let store = Store::open_read_only(&args.store.db_path, &options)?;
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
            filter,
            include_simulated,
            format,
            output,
        } => {
            let options = ia_db::report::ReportOptions {
                filter: filter.to_filter(),
                include_simulated,
            };
            let text = ia_db::report::render(&store, kind, format, &options)?;
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
        DbCommand::Import { .. }
        | DbCommand::Migrate
        | DbCommand::MigrateJson(_)
        | DbCommand::Maintain(_) => {
            unreachable!("handled above")
        }
        DbCommand::Plot {
            kind,
            output,
            filter,
            json,
        } => plot(&store, kind, &output, &filter, json)?,
        DbCommand::Export { format, output } => {
            let output = output.canonicalize()?;
            for f in ia_db::export::export(&store, format, &output)? {
                println!("{}", f.display());
            }
        }
    }
    Ok(())
}

fn plot(
    store: &Store,
    kind: ia_charts::Kind,
    output: &std::path::Path,
    filter: &FilterArgs,
    json: bool,
) -> anyhow::Result<()> {
    let png = match output.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("svg") => false,
        Some(e) if e.eq_ignore_ascii_case("png") => true,
        _ => anyhow::bail!(
            "--output {}: expected a .svg or .png file",
            output.display()
        ),
    };
    let filter = filter.to_filter();
    let chart = ia_db::charts::chart(store, kind, &filter)?;
    if chart.is_empty() {
        let asked = format!("--kind {} {}", kind.as_str(), filter.flags());
        anyhow::bail!(
            "no stored results match {} (nothing written)",
            asked.trim_end()
        );
    }
    let svg = chart.svg();
    let bytes = if png {
        ia_charts::png(&svg)?
    } else {
        svg.into_bytes()
    };
    std::fs::write(output, &bytes).with_context(|| format!("writing {}", output.display()))?;
    if json {
        let (series, groups) = match &chart.body {
            ia_charts::Body::Lines { series, .. } => (series.len(), 0),
            ia_charts::Body::Bars { series, groups, .. } => (series.len(), groups.len()),
            ia_charts::Body::Grid { columns, rows, .. } => (columns.len(), rows.len()),
        };
        println!(
            "{}",
            serde_json::json!({
                "kind": kind.as_str(), "output": output.display().to_string(),
                "format": if png { "png" } else { "svg" }, "bytes": bytes.len(),
                "title": chart.title, "note": chart.note,
                "series": series, "groups_or_rows": groups,
            })
        );
    } else {
        eprintln!("wrote {}", output.display());
    }
    Ok(())
}

/// All rows are validated before the run is opened, and stored in one transaction, so a bad
/// file or a failed write stores no result of it.
fn import(db_path: &std::path::Path, file: &std::path::Path) -> anyhow::Result<()> {
    let rows = crate::import::read(file)?
        .into_iter()
        .map(crate::import::to_outcome)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hw = ia_hardware::detect();
    let run = crate::results::run_record();
    let mut records = Vec::with_capacity(rows.len());
    let mut labels = Vec::with_capacity(rows.len());
    for (combo, outcome) in &rows {
        let Outcome::Measured(m) = outcome else {
            unreachable!("imports are measurements")
        };
        let engine = (m.session.engine.as_str(), m.session.engine_version.clone());
        records.push(crate::results::combination_records(
            &run.host, &hw, engine, combo, outcome, None,
        )?);
        labels.push(format!(
            "{} [{}] b={}",
            combo.model.name, m.session.engine, combo.batch_size
        ));
    }
    let mut store = Store::open_or_create(db_path)?;
    let run_id = store.begin_run(&run)?;
    let ids = match store.record_combinations(run_id, &records) {
        Ok(ids) => ids,
        Err(e) => {
            store.end_run(run_id, "failed")?;
            return Err(e.into());
        }
    };
    for (label, id) in labels.iter().zip(ids) {
        eprintln!("imported {label} as result {id}");
    }
    store.end_run(run_id, "completed")?;
    Ok(())
}
