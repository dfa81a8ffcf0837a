//! The page server: 127.0.0.1 only, a fixed set of routes, cross-origin isolation headers on
//! every response.
//!
//! * `/` and `/bench.js`: the benchmark page, compiled into the binary.
//! * `/ort/<file>`: onnxruntime-web's `dist/` folder, installed from npm by
//!   `scripts/fetch_web_assets.sh`. Nothing is loaded from a CDN.
//! * `/model/<key>`: only the model files a measurement registered.

use crate::BrowserError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const INDEX_HTML: &str = include_str!("../page/index.html");
const BENCH_JS: &str = include_str!("../page/bench.js");

/// Serving threads: the page fetches the wasm binary and model files while other requests
/// wait; a few threads keep one large file from stalling the rest.
const WORKERS: usize = 4;

pub struct PageServer {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    models: Arc<Mutex<HashMap<String, PathBuf>>>,
    workers: Vec<JoinHandle<()>>,
}

impl PageServer {
    /// Starts serving the page, and `ort_dist` (onnxruntime-web's dist folder) when given, on
    /// an ephemeral port.
    pub fn start(ort_dist: Option<&Path>) -> Result<Self, BrowserError> {
        let server = tiny_http::Server::http("127.0.0.1:0")
            .map_err(|e| BrowserError::Server(format!("cannot listen on 127.0.0.1: {e}")))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| BrowserError::Server("the page server has no IP address".into()))?;
        let server = Arc::new(server);
        let models = Arc::new(Mutex::new(HashMap::new()));
        let workers = (0..WORKERS)
            .map(|_| {
                let server = Arc::clone(&server);
                let models = Arc::clone(&models);
                let ort_dist = ort_dist.map(Path::to_path_buf);
                std::thread::spawn(move || {
                    while let Ok(request) = server.recv() {
                        respond(request, ort_dist.as_deref(), &models);
                    }
                })
            })
            .collect();
        Ok(Self {
            addr,
            server,
            models,
            workers,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Makes `file` available at the returned URL until [`PageServer::clear_models`].
    pub fn serve_model(&self, key: &str, file: &Path) -> String {
        self.models
            .lock()
            .expect("model table lock")
            .insert(key.to_string(), file.to_path_buf());
        self.url(&format!("/model/{key}"))
    }

    pub fn clear_models(&self) {
        self.models.lock().expect("model table lock").clear();
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        for _ in &self.workers {
            self.server.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn respond(
    request: tiny_http::Request,
    ort_dist: Option<&Path>,
    models: &Mutex<HashMap<String, PathBuf>>,
) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let response = match path.as_str() {
        "/" | "/index.html" => text(INDEX_HTML, "text/html; charset=utf-8"),
        "/bench.js" => text(BENCH_JS, "text/javascript"),
        "/favicon.ico" => not_found(),
        p => {
            let file = if let Some(name) = p.strip_prefix("/ort/") {
                ort_dist.zip(plain_file_name(name)).map(|(d, n)| d.join(n))
            } else if let Some(key) = p.strip_prefix("/model/") {
                models.lock().expect("model table lock").get(key).cloned()
            } else {
                None
            };
            match file.and_then(|f| std::fs::File::open(&f).ok().map(|h| (f, h))) {
                Some((f, handle)) => {
                    with_headers(tiny_http::Response::from_file(handle), content_type(&f))
                }
                None => not_found(),
            }
        }
    };
    let _ = request.respond(response);
}

/// A file name without directories, so `/ort/` cannot reach outside the dist folder.
fn plain_file_name(name: &str) -> Option<&str> {
    (!name.is_empty() && !name.contains(['/', '\\']) && name != ".." && name != ".").then_some(name)
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("mjs" | "js") => "text/javascript",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

type Body = Box<dyn std::io::Read + Send>;

fn with_headers<R: std::io::Read + Send + 'static>(
    response: tiny_http::Response<R>,
    content_type: &str,
) -> tiny_http::Response<Body> {
    let header = |k: &str, v: &str| {
        tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("valid header")
    };
    // Cross-origin isolation: SharedArrayBuffer for threaded wasm, and performance.now()
    // at 5 us instead of 100 us. no-store: every load reads the model from the server, so
    // load times do not depend on what an earlier combination left in the HTTP cache.
    response
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cross-Origin-Opener-Policy", "same-origin"))
        .with_header(header("Cross-Origin-Embedder-Policy", "require-corp"))
        .with_header(header("Cache-Control", "no-store"))
        .boxed()
}

fn text(body: &'static str, content_type: &str) -> tiny_http::Response<Body> {
    with_headers(
        tiny_http::Response::from_data(body.as_bytes().to_vec()),
        content_type,
    )
}

fn not_found() -> tiny_http::Response<Body> {
    with_headers(
        tiny_http::Response::from_string("not found").with_status_code(404),
        "text/plain",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ort_route_serves_only_plain_file_names() {
        assert_eq!(plain_file_name("ort.all.min.mjs"), Some("ort.all.min.mjs"));
        assert_eq!(plain_file_name("../secret"), None);
        assert_eq!(plain_file_name(".."), None);
        assert_eq!(plain_file_name(""), None);
    }
}
