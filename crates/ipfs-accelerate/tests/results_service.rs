//! The results service end to end: tokens made by the CLI, `bench --submit` against a server
//! that is down (the run is spooled) and then up (the spool is sent first), every refusal a
//! submission can get (and that it stores nothing), idempotent retries, and the read routes.

mod common;

use common::{bin, fixture, post_while_sending, stderr, token, Served, QUICK};
use serde_json::{json, Value};
use std::path::Path;

fn bench_submit(url: &str, token: &str, spool: &Path) -> std::process::Output {
    bin()
        .args([
            "bench",
            "--models",
            &fixture("bert-tiny"),
            "--seq-len",
            "8",
            "--no-db",
        ])
        .args(QUICK)
        .args(["--submit", url, "--token", token])
        .env("IPFS_ACCELERATE_SPOOL", spool)
        .output()
        .unwrap()
}

fn spooled(spool: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(spool)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

impl Served {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut r = match (method, body) {
            ("GET", _) => {
                let mut req = self.agent.get(url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call().unwrap()
            }
            (_, body) => {
                let mut req = self
                    .agent
                    .post(url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(body.unwrap_or_default()).unwrap()
            }
        };
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

#[test]
fn runs_are_submitted_with_tokens_spooled_while_down_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("results.duckdb");
    let spool = dir.path().join("spool");
    let runner = token(&db, "runner-1", "submit");
    let reader = token(&db, "dashboard", "read");
    let old = token(&db, "old-runner", "submit");
    let o = bin()
        .args(["tokens", "revoke", "old-runner", "--db-path"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // The server is down: the run is measured, spooled, and the command succeeds.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let o = bench_submit(&url, &runner, &spool);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("spooled"), "{}", stderr(&o));
    let files = spooled(&spool);
    assert_eq!(files.len(), 1, "{files:?}");
    let spooled_run: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    let submission = spooled_run["submission"].clone();
    assert_eq!(submission["results"][0]["model"]["weights"], "random");

    let s = Served::start_at(
        port,
        &[
            "--results-only",
            "--db-path",
            db.to_str().unwrap(),
            "--max-body-mb",
            "1",
        ],
    );
    assert_eq!(s.base, url);

    // Reads need a token unless --public-read; any valid one reads.
    let (status, body) = s.call("GET", "/api/runs", None, None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["type"], "authentication_error");
    let (status, runs) = s.call("GET", "/api/runs", Some(&reader), None);
    assert_eq!((status, runs.clone()), (200, json!([])));

    // Every refusal answers 4xx with the reason, and stores nothing.
    let good = serde_json::to_vec(&submission).unwrap();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut v = submission.clone();
        edit(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    // (what, token, body, status, the reason says)
    type Refusal<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let refusals: Vec<Refusal> = vec![
        ("no token", None, good.clone(), 401, "needs a token"),
        (
            "unknown token",
            Some("iat_nope"),
            good.clone(),
            401,
            "unknown token",
        ),
        ("revoked token", Some(&old), good.clone(), 401, "revoked"),
        (
            "read token",
            Some(&reader),
            good.clone(),
            403,
            "may read but not submit",
        ),
        (
            "malformed JSON",
            Some(&runner),
            b"{\"run\":".to_vec(),
            422,
            "not a valid submission",
        ),
        (
            "unknown field",
            Some(&runner),
            with(&|v| v["surprise"] = json!(1)),
            422,
            "unknown field",
        ),
        (
            "negative latency",
            Some(&runner),
            with(&|v| v["results"][0]["performance"]["latency_mean_ms"] = json!(-1.0)),
            422,
            "latency_mean_ms is -1",
        ),
        (
            "p50 above p99",
            Some(&runner),
            with(&|v| v["results"][0]["performance"]["latency_p50_ms"] = json!(1e9)),
            422,
            "is above",
        ),
        (
            "samples that disagree",
            Some(&runner),
            with(&|v| v["results"][0]["samples_ms"] = json!([])),
            422,
            "no samples_ms",
        ),
    ];
    for (what, token, body, want, says) in refusals {
        let (status, answer) = s.call("POST", "/api/runs", token, Some(&body));
        assert_eq!(status, want, "{what}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{what}: {message}");
    }
    // Too large: the server answers before it has read the body and closes, so the answer is
    // read while the body is still being sent (a client that sends it all first may see the
    // connection closed instead).
    let answer = post_while_sending(&s.base, "/api/runs", &runner, vec![b' '; 2 << 20]);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "oversized body: {answer}"
    );
    assert!(answer.contains("larger than"), "oversized body: {answer}");
    let (_, runs) = s.call("GET", "/api/runs", Some(&reader), None);
    assert_eq!(runs, json!([]), "a refused submission stored nothing");

    // The server is up: the spooled run goes first, then the new one; the spool empties.
    assert_eq!(
        spooled(&spool).len(),
        1,
        "the refusals left the spool alone"
    );
    let o = bench_submit(&s.base, &runner, &spool);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("sent the spooled run"),
        "{}",
        stderr(&o)
    );
    assert!(spooled(&spool).is_empty());
    let (_, runs) = s.call("GET", "/api/runs", Some(&reader), None);
    let runs = runs.as_array().unwrap().clone();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs
        .iter()
        .all(|r| r["submitted_by"] == "runner-1" && r["results"] == 1));

    // A retry with the same idempotency key stores nothing twice.
    let post_keyed = |key: &str| {
        let mut r = s
            .agent
            .post(format!("{}/api/runs", s.base))
            .header("Authorization", format!("Bearer {runner}"))
            .header("Idempotency-Key", key)
            .send(&good[..])
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        (status, v)
    };
    let (first, receipt) = post_keyed("retry-me");
    assert_eq!(first, 201, "{receipt}");
    let (again, same) = post_keyed("retry-me");
    assert_eq!(again, 200, "{same}");
    assert_eq!(same["run_id"], receipt["run_id"]);
    assert_eq!(same["duplicate"], true);
    let (_, runs) = s.call("GET", "/api/runs", Some(&reader), None);
    assert_eq!(runs.as_array().unwrap().len(), 3);

    // Read routes: filtered results with provenance, raw samples, hardware, reports.
    let (status, results) = s.call(
        "GET",
        "/api/results?model=bert&limit=2",
        Some(&reader),
        None,
    );
    assert_eq!(status, 200, "{results}");
    let rows = results.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .all(|r| r["engine"] == "native" && r["status"] == "pass"));
    let id = rows[0]["result_id"].as_i64().unwrap();
    let (status, samples) = s.call(
        "GET",
        &format!("/api/results/{id}/samples"),
        Some(&reader),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        samples.as_array().unwrap().len() as i64,
        rows[0]["iterations"].as_i64().unwrap()
    );
    let (status, _) = s.call("GET", "/api/results?model=vit", Some(&reader), None);
    assert_eq!(status, 200);
    let (status, e) = s.call("GET", "/api/results?since=yesterday", Some(&reader), None);
    assert_eq!(status, 422, "{e}");
    let (status, e) = s.call("GET", "/api/results?colour=red", Some(&reader), None);
    assert_eq!(status, 400, "{e}");
    assert_eq!(
        s.call("GET", "/api/results/999999/samples", Some(&reader), None)
            .0,
        404
    );
    let (status, hw) = s.call("GET", "/api/hardware", Some(&reader), None);
    assert_eq!(status, 200);
    assert_eq!(hw[0]["platform"], "cpu");
    let (status, report) = s.call("GET", "/api/reports/performance", Some(&reader), None);
    assert_eq!(status, 200, "{report}");
    assert!(!report.as_array().unwrap().is_empty());
    assert_eq!(
        s.call("GET", "/api/reports/bogus", Some(&reader), None).0,
        404
    );

    // The analyses of `db trend|regressions|compare` over the submitted runs.
    let (status, trend) = s.call("GET", "/api/analysis/trend?model=bert", Some(&reader), None);
    assert_eq!(status, 200, "{trend}");
    assert_eq!(trend[0]["points"].as_array().unwrap().len(), 3, "{trend}");
    let (status, regressions) = s.call("GET", "/api/analysis/regressions", Some(&reader), None);
    assert_eq!(status, 200, "{regressions}");
    assert!(regressions["change_points"].is_array());
    let (_, runs) = s.call("GET", "/api/runs", Some(&reader), None);
    let (a, b) = (&runs[0]["run_id"], &runs[1]["run_id"]);
    let (status, compared) = s.call(
        "GET",
        &format!("/api/analysis/compare?baseline={b}&candidate={a}&threshold=10%25"),
        Some(&reader),
        None,
    );
    assert_eq!(status, 200, "{compared}");
    assert_eq!(compared["correction"], "holm");
    for (path, want) in [
        ("/api/analysis/compare", 422),
        ("/api/analysis/trend?metric=speed", 422),
        ("/api/analysis/trend?model=no-such-model", 404),
        ("/api/analysis/forecast", 404),
    ] {
        let (status, e) = s.call("GET", path, Some(&reader), None);
        assert_eq!(status, want, "{path}: {e}");
    }

    // The tokens list names each token's use, never the token.
    drop(s);
    let o = bin()
        .args(["tokens", "list", "--json", "--db-path"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        !text.contains(&runner[12..]),
        "the token itself is not stored"
    );
    let list: Value = serde_json::from_str(&text).unwrap();
    let row = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(row("runner-1")["submissions"], 3);
    assert_eq!(row("old-runner")["state"], "revoked");
    assert_eq!(row("dashboard")["scope"], "read");
}

/// A small valid run: `n` combinations, the first measured (two samples), the others
/// unavailable with the reason.
fn small_run(tag: &str, n: usize) -> Value {
    let results: Vec<Value> = (0..n)
        .map(|i| {
            let pass = i == 0;
            json!({
                "model": {"model_name": format!("model-{tag}-{i}"), "class": "bert",
                          "family": "bert", "task": "feature-extraction", "modality": "text",
                          "parameter_count": 1000, "source": "test", "weights": "random"},
                "hardware": {"fingerprint": format!("fp-{tag}"), "platform": "cpu",
                             "device": "cpu", "host": tag, "cpu_model": "test cpu",
                             "details_json": "{}"},
                "performance": {"engine": "native", "engine_version": "0", "device": "cpu",
                                "precision": "f32", "scenario": "single-stream",
                                "batch_size": 1, "status": if pass { "pass" } else { "unavailable" },
                                "error": if pass { Value::Null } else { json!("no such device") },
                                "iterations": if pass { json!(2) } else { Value::Null },
                                "latency_p50_ms": if pass { json!(1.5) } else { Value::Null },
                                "latency_p99_ms": if pass { json!(2.0) } else { Value::Null }},
                "samples_ms": if pass { json!([1.0, 2.0]) } else { json!([]) },
                "compatibility": {"platform": "cpu", "engine": "native", "precision": "f32",
                                  "status": if pass { "pass" } else { "unavailable" },
                                  "error": if pass { Value::Null } else { json!("no such device") }}
            })
        })
        .collect();
    json!({
        "run": {"git_commit": null, "command_line": "test", "host": tag, "tool_version": "0"},
        "status": "completed",
        "results": results
    })
}

fn post_run(s: &Served, token: &str, key: &str, run: &Value) -> Option<i64> {
    let r = s
        .agent
        .post(format!("{}/api/runs", s.base))
        .header("Authorization", format!("Bearer {token}"))
        .header("Idempotency-Key", key)
        .send(run.to_string());
    let mut r = r.ok()?;
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
    (r.status().as_u16() == 201)
        .then(|| v["run_id"].as_i64())
        .flatten()
}

#[test]
fn concurrent_runners_and_a_killed_server_lose_no_acknowledged_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("results.duckdb");
    let runner = token(&db, "runner-a", "submit");
    let db_arg = db.to_str().unwrap().to_string();
    let s = Served::start(&["--results-only", "--db-path", &db_arg, "--public-read"]);

    // Two runners at once: every run stored whole, none interleaved.
    std::thread::scope(|scope| {
        for tag in ["a", "b"] {
            let (s, runner) = (&s, &runner);
            scope.spawn(move || {
                for i in 0..10 {
                    let id = post_run(s, runner, &format!("{tag}-{i}"), &small_run(tag, 3));
                    assert!(id.is_some(), "runner {tag} submission {i}");
                }
            });
        }
    });
    let (_, runs) = s.call("GET", "/api/runs", None, None);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 20);
    assert!(runs.iter().all(|r| r["results"] == 3), "{runs:?}");
    let (_, results) = s.call("GET", "/api/results", None, None);
    for r in results.as_array().unwrap() {
        // A run's rows all come from one runner (its host).
        let run = runs.iter().find(|x| x["run_id"] == r["run_id"]).unwrap();
        assert_eq!(run["host"], r["host"], "{r}");
    }

    // kill -9 during a stream of submissions: every acknowledged run survives, the store
    // opens cleanly afterwards.
    let acknowledged = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..10_000 {
                match post_run(&s, &runner, &format!("k-{i}"), &small_run("k", 20)) {
                    Some(id) => acknowledged.lock().unwrap().push(id),
                    None => break,
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(1500));
        unsafe { libc::kill(s.child.id() as i32, libc::SIGKILL) };
    });
    drop(s);
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(
        !acknowledged.is_empty(),
        "some runs were acknowledged before the kill"
    );
    let s = Served::start(&["--results-only", "--db-path", &db_arg, "--public-read"]);
    let (status, runs) = s.call("GET", "/api/runs", None, None);
    assert_eq!(status, 200, "{runs}");
    let stored: Vec<i64> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_i64().unwrap())
        .collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged run {id} was lost");
    }
    assert!(runs
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["results"] == 3 || r["results"] == 20));
}
