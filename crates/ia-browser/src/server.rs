//! The page server: 127.0.0.1 only, GET and HEAD on a fixed set of routes, cross-origin
//! isolation headers on every response.
//!
//! * `/` and `/bench.js`: the benchmark page, compiled into the binary.
//! * `/ort/<file>`: onnxruntime-web's `dist/` folder, installed from npm by
//!   `scripts/fetch_web_assets.sh`. Nothing is loaded from a CDN.
//! * `/model/<key>`: only the model files a measurement registered.
//!
//! It only ever talks to the browser it started, and refuses everything else: a request whose
//! `Host` is not this server's address (a page elsewhere resolving its name to 127.0.0.1), a
//! request line or headers over [`MAX_HEAD_BYTES`], a body, a client that stalls longer than
//! [`IO_TIMEOUT`], and connections beyond [`MAX_CONNECTIONS`] at once. One request per
//! connection (`Connection: close`).

use crate::BrowserError;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const INDEX_HTML: &str = include_str!("../page/index.html");
const BENCH_JS: &str = include_str!("../page/bench.js");

/// Request line plus headers.
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// How long a client may take to send its request or accept bytes of the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once (the page fetches the wasm binary and model parts in parallel).
pub const MAX_CONNECTIONS: usize = 32;

struct Shared {
    addr: SocketAddr,
    ort_dist: Option<PathBuf>,
    models: Mutex<HashMap<String, PathBuf>>,
    open: AtomicUsize,
    stop: AtomicBool,
}

pub struct PageServer {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl PageServer {
    /// Starts serving the page, and `ort_dist` (onnxruntime-web's dist folder) when given, on
    /// an ephemeral port.
    pub fn start(ort_dist: Option<&Path>) -> Result<Self, BrowserError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| BrowserError::Server(format!("cannot listen on 127.0.0.1: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| BrowserError::Server(format!("the page server has no address: {e}")))?;
        let shared = Arc::new(Shared {
            addr,
            ort_dist: ort_dist.map(Path::to_path_buf),
            models: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                if s.open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    s.open.fetch_sub(1, Ordering::SeqCst);
                    let _ = answer(&stream, 503, "text/plain", b"busy", false);
                    continue;
                }
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    serve(stream, &s);
                    s.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self {
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.shared.addr)
    }

    /// Makes `file` available at the returned URL until [`PageServer::clear_models`].
    pub fn serve_model(&self, key: &str, file: &Path) -> String {
        self.shared
            .models
            .lock()
            .expect("model table lock")
            .insert(key.to_string(), file.to_path_buf());
        self.url(&format!("/model/{key}"))
    }

    pub fn clear_models(&self) {
        self.shared.models.lock().expect("model table lock").clear();
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.shared.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// A parsed request head: method, path (query dropped) and the Host header.
#[derive(Debug, PartialEq)]
struct Head {
    method: String,
    path: String,
    host: Option<String>,
    has_body: bool,
}

/// Reads the request head, at most [`MAX_HEAD_BYTES`]; Err is the status to answer with.
fn read_head(reader: &mut impl BufRead) -> Result<Head, u16> {
    let mut lines = Vec::new();
    let mut total = 0usize;
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((MAX_HEAD_BYTES - total + 1) as u64)
            .read_until(b'\n', &mut line)
            .map_err(|_| 408u16)?;
        total += n;
        if total > MAX_HEAD_BYTES {
            return Err(431);
        }
        if n == 0 {
            return Err(400);
        }
        let text = String::from_utf8(line).map_err(|_| 400u16)?;
        let text = text.trim_end_matches(['\r', '\n']).to_string();
        if text.is_empty() {
            break;
        }
        lines.push(text);
    }
    let mut first = lines.first().ok_or(400u16)?.split_whitespace();
    let (method, target) = (first.next().ok_or(400u16)?, first.next().ok_or(400u16)?);
    let header = |name: &str| {
        lines[1..].iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let has_body =
        header("content-length").is_some_and(|v| v != "0") || header("transfer-encoding").is_some();
    Ok(Head {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or("").to_string(),
        host: header("host"),
        has_body,
    })
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let head = match read_head(&mut reader) {
        Ok(h) => h,
        Err(status) => {
            let _ = answer(&stream, status, "text/plain", b"bad request", false);
            drain(&stream, reader);
            return;
        }
    };
    let head_only = head.method == "HEAD";
    let expected_host = shared.addr.to_string();
    let refused = if head.method != "GET" && !head_only {
        Some(405)
    } else if head.has_body {
        Some(413)
    } else if head.host.as_deref() != Some(expected_host.as_str()) {
        // DNS rebinding: another site's page reaching this port under its own name.
        Some(421)
    } else {
        None
    };
    if let Some(status) = refused {
        let _ = answer(&stream, status, "text/plain", b"refused", head_only);
        drain(&stream, reader);
        return;
    }
    let _ = match head.path.as_str() {
        "/" | "/index.html" => answer(
            &stream,
            200,
            "text/html; charset=utf-8",
            INDEX_HTML.as_bytes(),
            head_only,
        ),
        "/bench.js" => answer(
            &stream,
            200,
            "text/javascript",
            BENCH_JS.as_bytes(),
            head_only,
        ),
        p => {
            let file = if let Some(name) = p.strip_prefix("/ort/") {
                shared
                    .ort_dist
                    .as_deref()
                    .zip(plain_file_name(name))
                    .map(|(d, n)| d.join(n))
            } else if let Some(key) = p.strip_prefix("/model/") {
                shared
                    .models
                    .lock()
                    .expect("model table lock")
                    .get(key)
                    .cloned()
            } else {
                None
            };
            match file.and_then(|f| std::fs::File::open(&f).ok().map(|h| (f, h))) {
                Some((f, handle)) => send_file(&stream, &f, handle, head_only),
                None => answer(&stream, 404, "text/plain", b"not found", head_only),
            }
        }
    };
}

/// Closes our side after an early answer and reads (a bounded amount of) what the client still
/// sends, so the answer is not lost to a reset.
fn drain(stream: &TcpStream, mut reader: BufReader<TcpStream>) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = std::io::copy(&mut reader.by_ref().take(1 << 20), &mut std::io::sink());
}

/// The headers every response carries. Cross-origin isolation: SharedArrayBuffer for threaded
/// wasm, and performance.now() at 5 us instead of 100 us. no-store: every load reads the model
/// from the server, so load times do not depend on what an earlier combination left in the
/// HTTP cache.
fn header_block(status: u16, content_type: &str, length: u64) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
         Cross-Origin-Opener-Policy: same-origin\r\nCross-Origin-Embedder-Policy: require-corp\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
}

fn answer(
    mut stream: &TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    stream.write_all(header_block(status, content_type, body.len() as u64).as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn send_file(
    mut stream: &TcpStream,
    path: &Path,
    mut file: std::fs::File,
    head_only: bool,
) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    stream.write_all(header_block(200, content_type(path), len).as_bytes())?;
    if !head_only {
        std::io::copy(&mut file, &mut stream)?;
    }
    stream.flush()
}

/// A file name without directories, so `/ort/` cannot reach outside the dist folder.
fn plain_file_name(name: &str) -> Option<&str> {
    (!name.is_empty() && !name.contains(['/', '\\', '%']) && name != ".." && name != ".")
        .then_some(name)
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("mjs" | "js") => "text/javascript",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ort_route_serves_only_plain_file_names() {
        assert_eq!(plain_file_name("ort.all.min.mjs"), Some("ort.all.min.mjs"));
        assert_eq!(plain_file_name("../secret"), None);
        assert_eq!(plain_file_name("..%2fsecret"), None);
        assert_eq!(plain_file_name(".."), None);
        assert_eq!(plain_file_name(""), None);
    }

    fn request(server: &PageServer, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(server.shared.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(raw);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn serves_the_page_to_its_own_host_only() {
        let server = PageServer::start(None).unwrap();
        let host = server.shared.addr.to_string();
        let ok = request(
            &server,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.contains("bench.js"),
            "{ok}"
        );
        assert!(ok.contains("Cross-Origin-Embedder-Policy: require-corp"));
        let rebound = request(&server, b"GET / HTTP/1.1\r\nHost: evil.example:80\r\n\r\n");
        assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");
        let no_host = request(&server, b"GET / HTTP/1.1\r\n\r\n");
        assert!(no_host.starts_with("HTTP/1.1 421"), "{no_host}");
        let post = request(
            &server,
            format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\nabc").as_bytes(),
        );
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let body = request(
            &server,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello").as_bytes(),
        );
        assert!(body.starts_with("HTTP/1.1 413"), "{body}");
        let missing = request(
            &server,
            format!("GET /model/nothing HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    }

    #[test]
    fn oversized_heads_are_refused() {
        let server = PageServer::start(None).unwrap();
        let mut raw = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 10));
        raw.extend(b"\r\n\r\n");
        let r = request(&server, &raw);
        assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(80)]);
    }

    #[test]
    fn model_files_are_served_once_registered() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.onnx");
        std::fs::write(&f, b"onnx bytes").unwrap();
        let server = PageServer::start(None).unwrap();
        let url = server.serve_model("k", &f);
        let host = server.shared.addr.to_string();
        let path = url.split(&host).nth(1).unwrap().to_string();
        let r = request(
            &server,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert!(
            r.ends_with("onnx bytes") && r.contains("Content-Length: 10"),
            "{r}"
        );
        server.clear_models();
        let r = request(
            &server,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    }
}
