//! `ipfs-accelerate db query|report|export`

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
    if let DbCommand::Import { file } = &args.command {
        return import(&args.db_path, file);
    }
    let store = Store::open_existing(&args.db_path)?;
    match args.command {
        DbCommand::Query { sql, format } => {
            let result = store.query(&sql)?;
            print!("{}", result.render(format));
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
        DbCommand::Import { .. } => unreachable!("handled above"),
        DbCommand::Export { format, output } => {
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
    let run = crate::bench::run_record();
    let run_id = store.begin_run(&run)?;
    for (combo, outcome) in &rows {
        let Outcome::Measured(m) = outcome else {
            unreachable!("imports are measurements")
        };
        let engine = (m.session.engine.as_str(), m.session.engine_version.clone());
        let id = crate::bench::store_outcome(
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
