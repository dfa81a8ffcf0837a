//! `ipfs-accelerate db query|report|export`

use anyhow::Context;
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
    /// Write a performance or compatibility report
    Report {
        /// performance or compatibility
        #[arg(long, default_value = "performance")]
        kind: ReportKind,
        /// md, html, csv or json
        #[arg(long, default_value = "md", value_parser = parse_format)]
        format: OutputFormat,
        /// File to write; standard output when absent
        #[arg(long)]
        output: Option<PathBuf>,
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
        DbCommand::Export { format, output } => {
            for f in ia_db::export::export(&store, format, &output)? {
                println!("{}", f.display());
            }
        }
    }
    Ok(())
}
