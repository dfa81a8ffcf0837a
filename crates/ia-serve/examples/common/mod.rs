//! What the examples share: their flags, opening a model and its tokenizer by name, serving
//! in-process on loopback, an HTTP client, and the percentile they report.
// Each example uses its own subset.
#![allow(dead_code)]

use ia_models::checkpoint::{self, Checkpoint};
use ia_models::model::Model;
use ia_models::ModelSource;
use ia_serve::worker::Batching;
use ia_serve::{Options, ServedModel, Server};
use std::path::Path;
use std::time::Duration;
use tokenizers::Tokenizer;

/// The value after `name` on the command line.
pub fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Nearest-rank percentile `q` of `v` (sorted in place); None when empty.
pub fn percentile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64) * q).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// The tokenizer of `model`, or of the checkpoint `--tokenizer DIR` names (a random-weight
/// model built from a config has none).
pub fn tokenizer(model: &Model) -> Tokenizer {
    let source = match flag("--tokenizer") {
        Some(dir) => open(&dir).source,
        None => model.source.clone(),
    };
    ia_engine::tokenizer::of(&source)
        .expect("tokenizer")
        .expect("a tokenizer.json (give --tokenizer DIR for a random-weight model)")
}

/// Serves `models` in-process on a free loopback port, batching on, with room for
/// `in_flight` requests; returns the base URL.
pub fn serve(models: Vec<ServedModel>, in_flight: usize) -> String {
    let options = Options {
        api_key: None,
        max_concurrent_requests: in_flight,
        max_queue: in_flight,
        batching: Batching {
            max_batch_tokens: 16_384,
            enabled: true,
        },
        max_body_bytes: 1 << 20,
    };
    start(Server::new(models, options).expect("server"))
}

/// A client for measurements: an error status fails the request, so it is never timed as
/// an answer.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

/// A checkpoint folder, a cached hub id, a catalog key (its built-in config with seeded
/// random weights) or a config.json file (random weights at the size it describes).
pub fn open(name: &str) -> Model {
    let source = if name.ends_with(".json") {
        let text = std::fs::read_to_string(name).expect("config file");
        ModelSource::RandomInit {
            config: serde_json::from_str(&text).expect("valid config"),
            seed: 0,
        }
    } else if Path::new(name).exists() {
        ModelSource::Checkpoint(Checkpoint::open(Path::new(name)).expect("checkpoint"))
    } else if let Ok(ckpt) = checkpoint::resolve(name) {
        ModelSource::Checkpoint(ckpt)
    } else {
        let entry =
            ia_models::catalog::lookup(name).expect("a folder, a cached hub id or a catalog key");
        let config = entry.builtin_config(false).expect("a built-in config");
        ModelSource::RandomInit {
            config: serde_json::from_str(config).expect("valid config"),
            seed: 0,
        }
    };
    Model::resolve(name, source).expect("classified")
}

/// Serves `server` on a free loopback port from a thread of its own; returns the base URL.
pub fn start(server: Server) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                server
                    .serve(listener, std::future::pending())
                    .await
                    .expect("serve")
            })
    });
    base
}
