//! What every end-to-end test of the binary needs: the binary (without a store path from the
//! environment), the committed fixtures, and its output as text.
// Each test binary uses its own subset.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ipfs-accelerate"));
    c.env_remove("BENCHMARK_DB_PATH");
    c
}

pub fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
        .display()
        .to_string()
}

/// The shortest protocol: one batch size, no warm-up, one timed iteration, no minimum time.
pub const QUICK: [&str; 8] = [
    "--batch-sizes",
    "1",
    "--warmup",
    "0",
    "--min-iterations",
    "1",
    "--min-duration",
    "0",
];

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout then stderr.
pub fn text(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// `db query --format csv --sql SQL` against the store at `db`.
pub fn query(db: &Path, sql: &str) -> Output {
    query_with(db, &["--format", "csv"], sql)
}

/// `db query FLAGS --sql SQL` against the store at `db`.
pub fn query_with(db: &Path, flags: &[&str], sql: &str) -> Output {
    let mut args = vec!["db", "--db-path", db.to_str().unwrap(), "query"];
    args.extend(flags);
    args.extend(["--sql", sql]);
    run(&args)
}

/// The CSV of a query that must succeed.
pub fn csv(db: &Path, sql: &str) -> String {
    let o = query(db, sql);
    assert!(o.status.success(), "{sql}: {}", text(&o));
    stdout(&o)
}

/// A bench of bert-tiny over many batch sizes, slow enough to be interrupted.
pub fn long_bench(db: &Path, extra: &[&str]) -> std::process::Child {
    bin()
        .args([
            "bench",
            "--models",
            &fixture("bert-tiny"),
            "--batch-sizes",
            "1,2,3,4,5,6,7,8,9,10,11,12",
            "--seq-len",
            "16",
            "--min-iterations",
            "5",
            "--min-duration",
            "0.4",
            "--db-path",
            db.to_str().unwrap(),
        ])
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// A server process on a free port, stopped (SIGTERM) when dropped.
pub struct Served {
    pub child: Child,
    pub base: String,
    pub agent: ureq::Agent,
    pub key: Option<String>,
}

impl Served {
    pub fn start(args: &[&str]) -> Self {
        Self::start_at(0, args)
    }

    /// On `port` (0: any free one).
    pub fn start_at(port: u16, args: &[&str]) -> Self {
        let mut child = bin()
            .args(["serve", "--port", &port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("the server printed its address")
                .unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Self {
            child,
            base,
            agent,
            key: None,
        }
    }

    /// A JSON POST to `path`, with the key when the test has one.
    pub fn request(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        match &self.key {
            Some(k) => req.header("Authorization", format!("Bearer {k}")),
            None => req,
        }
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        let mut r = self.request(path).send(body).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    pub fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, text) = self.post(path, &body.to_string());
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut r = req.call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn stream(&self, path: &str, body: Value) -> Vec<String> {
        let r = self.request(path).send(body.to_string()).unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut text = String::new();
        r.into_body()
            .into_reader()
            .read_to_string(&mut text)
            .unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect()
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new token of `scope` (submit or read) in the store at `db`, made by `tokens create`.
pub fn token(db: &Path, name: &str, scope: &str) -> String {
    let o = bin()
        .args([
            "tokens", "create", "--name", name, "--scope", scope, "--json",
        ])
        .arg("--db-path")
        .arg(db)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// POSTs `body` over a raw connection, reading the answer while the body is still being
/// written (a server may answer 413 before reading the body and then close).
pub fn post_while_sending(base: &str, path: &str, key: &str, body: Vec<u8>) -> String {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        for chunk in body.chunks(16 << 10) {
            if writer.write_all(chunk).is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Everything up to the end of the JSON body.
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.ends_with(b"}") {
            break;
        }
    }
    drop(stream);
    let _ = sending.join();
    String::from_utf8_lossy(&answer).into_owned()
}
