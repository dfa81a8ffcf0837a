//! `ipfs-accelerate`: the thin command-line layer over the workspace crates.
//! Each subcommand lives in its own module; errors become one line on stderr and exit code 1.

mod analysis;
mod bench;
mod db;
mod generate;
mod hardware;
mod import;
mod interrupt;
mod limits;
mod maintain;
mod migrate_json;
mod models;
mod plan;
mod plan_training;
mod predict;
mod results;
mod results_store;
mod run;
mod run_store;
mod runtimes;
mod select;
mod serve;
mod submit;
mod target;
mod tokens;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ipfs-accelerate",
    version,
    about = "Hardware-aware inference and benchmarking of Hugging Face models, with results in DuckDB",
    after_help = "Run `ipfs-accelerate <command> --help` for the options of each command."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Detect the hardware platforms (cpu, cuda, rocm, mps, openvino, webgpu, webnn, wasm) and runtimes
    Hardware(hardware::Args),
    /// List the model catalog, or classify a checkpoint's config.json
    Models(models::Args),
    /// Benchmark models on platforms and store the results in DuckDB
    Bench(Box<bench::Args>),
    /// Run a model on one input: text, an image or a WAV file (embeddings, labels, zero-shot, transcripts)
    Run(run::Args),
    /// Generate text with a decoder or encoder-decoder model (KV cache, streaming)
    Generate(generate::Args),
    /// Install the optional runtimes (ONNX Runtime, OpenVINO) from PyPI, or list what is found
    Runtimes(runtimes::Args),
    /// Query, report on and export the results database
    Db(db::Args),
    /// Predict a combination's latency with a 90% interval from the stored measurements and
    /// the hardware calibration, or score the predictor on held-out results (--evaluate)
    Predict(predict::Args),
    /// Rank this machine's targets for a model and batch size (measured or predicted p50,
    /// memory estimate), with latency and memory limits
    Select(select::Args),
    /// Plan distributed training: memory per GPU under DDP, FSDP and DeepSpeed ZeRO, the
    /// cheapest strategy that fits, and its launch files (--emit)
    PlanTraining(plan_training::Args),
    /// Serve models over HTTP: OpenAI-compatible routes (embeddings, completions, chat with
    /// SSE streaming, transcriptions), task routes, WebSocket streaming, Prometheus metrics;
    /// with --db-path, the results service other machines submit runs to
    Serve(serve::Args),
    /// Create, list and revoke the tokens machines submit runs to the results service with
    Tokens(tokens::Args),
}

/// Large blocks (activations, outputs) on cache lines: the kernels' rows do not straddle them.
#[global_allocator]
static ALLOCATOR: ia_native::LargeBlocksOnCacheLines = ia_native::LargeBlocksOnCacheLines;

fn main() -> ExitCode {
    // Before any thread starts (it sets an environment variable).
    ia_native::settle_thread_count();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IPFS_ACCELERATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // `ipfs-accelerate db query ... | head`: end quietly when the reader goes away, as other
    // Unix tools do, instead of failing on the next write. SAFETY: resetting a disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    ia_bench::isolation::install_panic_hook();
    if let Err(e) = interrupt::install() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    // A panic is a bug; it still ends as one line and exit 1, never a backtrace (and bench
    // isolates each combination, so one panic does not end a run).
    let result = ia_bench::isolate(|| match cli.command {
        Command::Hardware(a) => hardware::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Select(a) => select::run(a),
        Command::PlanTraining(a) => plan_training::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Models(a) => models::run(a),
        Command::Bench(a) => bench::run(*a),
        Command::Run(a) => run::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Runtimes(a) => runtimes::run(a),
        Command::Db(a) => db::run(a),
        Command::Tokens(a) => tokens::run(a),
    })
    .unwrap_or_else(|panic| Err(anyhow::anyhow!(panic)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<interrupt::Interrupted>() => {
            eprintln!("{e}");
            ExitCode::from(interrupt::EXIT_CODE)
        }
        Err(e) => {
            // One line: the chain of causes joined, never a backtrace.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
