//! How a run ends and what it leaves behind: SIGTERM mid-run (no child process left, the run
//! marked `interrupted`, every finished result kept in the store and in --output-json), a run
//! killed outright (closed by the next writer), and the store's read paths during and after a
//! run (read-only, local, no migration, no extensions, tables that are tables, a lock named).

mod common;

use common::{bin, csv, fixture, long_bench, query, query_with, text, QUICK};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Reads the child's stderr until `n` results were stored; returns the rest of its stderr
/// as it comes (for later reading).
fn wait_for_results(
    child: &mut Child,
    n: usize,
) -> std::io::Lines<BufReader<std::process::ChildStderr>> {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stored = 0;
    for line in lines.by_ref() {
        if line.unwrap().contains("stored as result") {
            stored += 1;
            if stored == n {
                return lines;
            }
        }
    }
    panic!("the run ended before {n} results were stored");
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "the process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every process descended from `root`, from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
            // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
            if let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok())
            {
                parent.insert(pid, ppid);
            }
        }
    }
    parent
        .keys()
        .copied()
        .filter(|&p| {
            let mut at = p;
            for _ in 0..64 {
                match parent.get(&at) {
                    Some(&pp) if pp == root => return true,
                    Some(&pp) if pp > 1 => at = pp,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes; /proc/<pid>/stat says Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn sigterm_mid_run_keeps_finished_results_and_marks_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (db, json) = (dir.path().join("t.duckdb"), dir.path().join("t.json"));
    let mut child = long_bench(&db, &["--output-json", json.to_str().unwrap()]);
    let _rest = wait_for_results(&mut child, 2);
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{status:?}");
    let out = csv(
        &db,
        "SELECT (SELECT status FROM runs) AS run, (SELECT ended_at IS NOT NULL FROM runs) AS ended, \
         (SELECT count(*) FROM performance_results) AS results",
    );
    let row: Vec<&str> = out.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(&row[..2], ["interrupted", "true"], "{out}");
    let results: usize = row[2].parse().unwrap();
    assert!((2..12).contains(&results), "{out}");
    // --output-json holds exactly what the store holds.
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), results);
}

/// A bench on the web platforms: SIGTERM while the browser runs leaves no chromedriver, no
/// Chromium process and no browser profile behind.
#[test]
fn sigterm_leaves_no_browser_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args([
            "bench",
            "--models",
            &fixture("bert-tiny"),
            "--hardware",
            "wasm",
            "--batch-sizes",
            "1,2,3,4",
            "--seq-len",
            "16",
            "--min-iterations",
            "5",
            "--min-duration",
            "2",
            "--no-db",
        ])
        .env("TMPDIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the browser to be up (or for the bench to end, where there is no browser).
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut browser_up = false;
    while start.elapsed() < Duration::from_secs(90) {
        seen = descendants(child.id());
        // Chromium itself (its renderer), not only chromedriver.
        browser_up = seen.iter().any(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("--type=renderer"))
                .unwrap_or(false)
        });
        if browser_up || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        browser_up && child.try_wait().unwrap().is_none(),
        "no browser came up while the bench ran (is chromium installed? scripts/install_browser.sh)"
    );
    std::thread::sleep(Duration::from_millis(500));
    seen.extend(descendants(child.id()));
    assert!(
        seen.len() >= 3,
        "chromedriver and Chromium's processes: {seen:?}"
    );
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{status:?}");
    std::thread::sleep(Duration::from_millis(300));
    let left: Vec<u32> = seen.iter().copied().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "processes left after SIGTERM: {left:?}");
    // Neither the browser's profile nor its own temporary folders (which it leaves when
    // killed: they go inside the profile).
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

fn quick_store(dir: &Path) -> PathBuf {
    let db = dir.join("r.duckdb");
    let o = bin()
        .args(["bench", "--models", &fixture("bert-tiny"), "--seq-len", "8"])
        .args(QUICK)
        .args(["--db-path", db.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    db
}

fn digest(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Reading cannot write the file, reach other files or the network, or load extensions.
#[test]
fn read_paths_are_read_only_and_local() {
    let dir = tempfile::tempdir().unwrap();
    let db = quick_store(dir.path());
    let before = digest(&db);
    let outside = dir.path().join("leak.csv");
    for sql in [
        format!("COPY (SELECT 1) TO '{}'", outside.display()),
        "SELECT * FROM read_csv('/etc/passwd')".to_string(),
        "INSTALL httpfs".to_string(),
        "LOAD httpfs".to_string(),
        "SET enable_external_access = true".to_string(),
        format!(
            "ATTACH '{}' AS other",
            dir.path().join("other.duckdb").display()
        ),
        "CREATE TABLE t (x INT)".to_string(),
        "UPDATE runs SET status = 'x'".to_string(),
    ] {
        let o = query(&db, &sql);
        assert!(!o.status.success(), "{sql} was allowed: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{sql}: {err}");
    }
    assert!(!outside.exists() && !dir.path().join("other.duckdb").exists());
    assert_eq!(before, digest(&db), "a read changed the file");
}

#[test]
fn an_older_store_is_read_only_after_db_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v5.duckdb");
    {
        let c = duckdb::Connection::open(&db).unwrap();
        ia_db::schema::migrate_to(&c, &db, 5).unwrap();
    }
    let before = digest(&db);
    let o = query(&db, "SELECT 1");
    assert!(!o.status.success());
    assert!(text(&o).contains("db migrate"), "{}", text(&o));
    assert_eq!(before, digest(&db), "reading migrated the store");
    let o = bin()
        .args(["db", "--db-path", db.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let current = ia_db::schema::CURRENT_VERSION;
    assert!(
        text(&o).contains(&format!("5 -> {current}")),
        "{}",
        text(&o)
    );
    assert_eq!(
        csv(&db, "SELECT max(version) AS v FROM schema_version"),
        format!("v\n{current}\n")
    );
}

#[test]
fn reports_refuse_tables_replaced_by_views_and_export_writes_every_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = quick_store(dir.path());
    let out = dir.path().join("export");
    let o = bin()
        .args([
            "db",
            "--db-path",
            db.to_str().unwrap(),
            "export",
            "--format",
            "csv",
            "--output",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for t in ia_db::schema::TABLES {
        assert!(out.join(format!("{t}.csv")).is_file(), "{t} not exported");
    }
    {
        let c = duckdb::Connection::open(&db).unwrap();
        c.execute_batch(
            "ALTER TABLE compatibility_results RENAME TO compat_real;
             CREATE VIEW compatibility_results AS SELECT * FROM compat_real WHERE status = 'pass';",
        )
        .unwrap();
    }
    for args in [
        vec!["report", "--kind", "compatibility"],
        vec![
            "export",
            "--format",
            "csv",
            "--output",
            out.to_str().unwrap(),
        ],
    ] {
        let o = bin()
            .args(["db", "--db-path", db.to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("compatibility_results is a VIEW"),
            "{}",
            text(&o)
        );
    }
}

#[test]
fn a_locked_store_names_the_process_holding_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = quick_store(dir.path());
    let holder = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,time; f=open(sys.argv[1],'r+b'); import fcntl; fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            db.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .spawn();
    // DuckDB's own lock comes from another DuckDB process; python's lockf is the same
    // fcntl lock DuckDB takes, which is what it reports.
    let mut holder = holder.unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let o = bin()
        .env("IPFS_ACCELERATE_LOCK_WAIT_S", "1")
        .args([
            "db",
            "--db-path",
            db.to_str().unwrap(),
            "query",
            "--sql",
            "SELECT 1",
        ])
        .output()
        .unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(!o.status.success());
    let err = text(&o);
    assert!(
        err.contains("is locked by process") && err.contains(&holder.id().to_string()),
        "{err}"
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).lines().count(),
        1,
        "{err}"
    );
}

/// `db query` works while a bench writes the same store: the bench holds the file only while
/// it commits a combination.
#[test]
fn the_store_is_readable_during_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let (db, json) = (dir.path().join("live.duckdb"), dir.path().join("live.json"));
    let mut child = long_bench(&db, &["--output-json", json.to_str().unwrap()]);
    let _rest = wait_for_results(&mut child, 1);
    for _ in 0..3 {
        let out = csv(&db, "SELECT count(*) >= 1 AS some FROM performance_results");
        assert_eq!(out, "some\ntrue\n");
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn queries_are_capped_in_rows_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = quick_store(dir.path());
    let o = query_with(
        &db,
        &["--format", "csv", "--max-rows", "3"],
        "SELECT * FROM range(1000000000)",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 4);
    assert!(String::from_utf8_lossy(&o.stderr).contains("first 3 rows"));
    let start = Instant::now();
    let o = query_with(
        &db,
        &["--timeout", "1"],
        "SELECT count(*) FROM range(100000000000) a",
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("interrupted"), "{}", text(&o));
    assert!(start.elapsed() < Duration::from_secs(30));
}
