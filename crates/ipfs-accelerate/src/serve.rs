//! `ipfs-accelerate serve`: loads the models once on one target and hands them to the server
//! (`ia-serve`), which answers OpenAI-compatible requests until SIGINT / SIGTERM; with
//! `--db-path` it also runs the results service over that store (`/api/*`).

use crate::interrupt;
use crate::plan::{resolve_model, PlanOptions};
use crate::results_store::DuckResults;
use crate::target::{Engines, Target};
use anyhow::{bail, Context};
use ia_engine::{Placement, Precision};
use ia_models::ModelSource;
use ia_serve::chat::ChatTemplate;
use ia_serve::results::{ResultsService, ResultsStore};
use ia_serve::worker::Batching;
use ia_serve::{Backend, Options, ServedModel, Server};
use ia_tasks::Pipeline;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Models to serve (comma-separated): catalog keys, hub ids in the local caches or
    /// checkpoint folders; clients name them as written here
    #[arg(long, value_delimiter = ',', required_unless_present = "results_only")]
    models: Vec<String>,
    /// Also run the results service over this DuckDB file: read routes under /api and
    /// `POST /api/runs` for machines with a token (`ipfs-accelerate tokens create`). The
    /// server becomes the file's single writer
    #[arg(long)]
    db_path: Option<PathBuf>,
    /// Serve results only, no models (needs --db-path)
    #[arg(long, requires = "db_path")]
    results_only: bool,
    /// Read routes answer without a token (submissions always need one)
    #[arg(long, requires = "db_path")]
    public_read: bool,
    /// Where the models run: cpu (native engine), onnxruntime[:<platform>] or openvino
    #[arg(long, default_value = "cpu")]
    hardware: Target,
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Use the small variant of catalog entries
    #[arg(long)]
    small_models: bool,
    /// Address to bind; the default answers this machine only
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to bind (0: any free port, printed at start)
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// File whose first line is the API key every inference route then requires
    /// (Authorization: Bearer <key>)
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Requests in flight at once; more are answered 429
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_concurrent_requests: u64,
    /// Requests waiting per model; more are answered 429
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_queue: u64,
    /// Padded tokens (texts x longest text) one embedding batch may hold
    #[arg(long, default_value_t = 16_384, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_batch_tokens: u64,
    /// Run every embedding request alone (the baseline the batching gain is measured against)
    #[arg(long)]
    no_batching: bool,
    /// Largest request body, MiB; larger ones are answered 413
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_body_mb: u64,
    /// Seconds the requests in flight get to finish after SIGINT / SIGTERM (a second signal
    /// stops at once)
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    shutdown_grace: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.results_only && !args.models.is_empty() {
        bail!("--results-only serves no models; drop --models or --results-only");
    }
    let api_key = match &args.api_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the API key file {}", path.display()))?;
            let key = text.lines().next().unwrap_or("").trim().to_string();
            if key.is_empty() {
                bail!("{}: the first line holds no API key", path.display());
            }
            Some(key)
        }
        None => None,
    };
    let engines = Engines::new();
    let engine = engines.get(args.hardware.engine).with_context(|| {
        format!(
            "serve does not run in the browser ({}); use cpu, onnxruntime or openvino",
            args.hardware.platform
        )
    })?;
    let placement = Placement::new(args.hardware.platform, args.precision);
    let opts = PlanOptions {
        small: args.small_models,
        random_weights: false,
        seed: 0,
    };
    let mut models = Vec::new();
    for id in &args.models {
        let id = id.trim().to_string();
        if models.iter().any(|m: &ServedModel| m.id == id) {
            bail!("'{id}' is listed twice in --models");
        }
        let model = resolve_model(&id, &opts)?;
        let backend = if model.generates_text() {
            let tokenizer = ia_engine::tokenizer::of(&model.source)?.with_context(|| {
                format!("{id}: no tokenizer.json, so prompts cannot become tokens")
            })?;
            let chat_template = match &model.source {
                ModelSource::Checkpoint(c) => {
                    ChatTemplate::of_checkpoint(&c.dir).map_err(anyhow::Error::msg)?
                }
                ModelSource::RandomInit { .. } => None,
            };
            Backend::Generator {
                generator: engine
                    .load_generator(&model, placement)
                    .with_context(|| format!("loading {id}"))?,
                tokenizer,
                chat_template,
            }
        } else {
            Backend::Pipeline(
                Pipeline::load(engine, model, placement)
                    .with_context(|| format!("loading {id}"))?,
            )
        };
        models.push(ServedModel { id, backend });
    }
    let options = Options {
        api_key,
        max_concurrent_requests: args.max_concurrent_requests as usize,
        max_queue: args.max_queue as usize,
        batching: Batching {
            max_batch_tokens: args.max_batch_tokens as usize,
            enabled: !args.no_batching,
        },
        max_body_bytes: (args.max_body_mb as usize) << 20,
    };
    let names: Vec<String> = models.iter().map(|m| m.id.clone()).collect();
    let results = match &args.db_path {
        Some(path) => {
            let store = ia_db::Store::open_or_create(path)?;
            // Two reading connections: DuckDB already spreads one query over the cores, and
            // a second lets a short read pass a long report.
            let readers = (0..2)
                .map(|_| {
                    store
                        .reader()
                        .map(|r| Box::new(DuckResults::new(r)) as Box<dyn ResultsStore>)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let chart_library = match chart_library() {
                Ok(path) => Some(path),
                Err(why) => {
                    tracing::warn!("the dashboard draws no charts: {why}");
                    None
                }
            };
            let assets = ia_serve::dashboard::Assets::load(chart_library.as_deref())
                .context("reading the dashboard's chart library")?;
            Some(
                ResultsService::new(Box::new(DuckResults::new(store)), readers, args.public_read)
                    .with_dashboard(assets),
            )
        }
        None => None,
    };
    let server =
        Server::with_results(models, options, results).context("starting the model workers")?;
    let listener = std::net::TcpListener::bind(SocketAddr::new(args.host, args.port))
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    interrupt::cooperate(None);
    interrupt::set_grace(Duration::from_secs(args.shutdown_grace));
    if names.is_empty() {
        eprintln!("serving no models");
    } else {
        eprintln!(
            "serving {} on {} ({})",
            names.join(", "),
            args.hardware.platform,
            engine.name()
        );
    }
    if let Some(path) = &args.db_path {
        eprintln!(
            "results service over {} (reads {}; submissions need a submit token)",
            path.display(),
            if args.public_read {
                "public"
            } else {
                "need a token"
            }
        );
    }
    eprintln!(
        "listening on http://{address} (docs at /docs{})",
        if args.db_path.is_some() {
            ", dashboard at /dashboard"
        } else {
            ""
        }
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let shutdown = async {
            while !interrupt::signalled() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        server.serve(listener, shutdown).await
    })?;
    eprintln!("stopped");
    Ok(())
}

/// Chart.js's UMD build for the dashboard: `IA_CHART_JS`, else what
/// `scripts/fetch_web_assets.sh` installed under the project cache.
fn chart_library() -> Result<PathBuf, String> {
    let path = match std::env::var_os("IA_CHART_JS") {
        Some(p) => PathBuf::from(p),
        None => ia_hardware::cache_dir()
            .ok_or("no cache folder (set HOME or XDG_CACHE_HOME)")?
            .join("web/node_modules/chart.js/dist/chart.umd.js"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing (run scripts/fetch_web_assets.sh)",
            path.display()
        ))
    }
}
