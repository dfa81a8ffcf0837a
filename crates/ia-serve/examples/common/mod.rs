//! What the examples share: opening a model by name, and serving in-process on loopback.

use ia_models::checkpoint::{self, Checkpoint};
use ia_models::model::Model;
use ia_models::ModelSource;
use ia_serve::Server;
use std::path::Path;

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
