//! What every end-to-end test of the binary needs: the binary (without a store path from the
//! environment), the committed fixtures, and its output as text.
// Each test binary uses its own subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
