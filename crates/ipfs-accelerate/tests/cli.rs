//! End-to-end tests of the `ipfs-accelerate` binary on the committed tiny fixtures.

mod common;

use common::{bin, csv, fixture, query, run, stderr, stdout, QUICK};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Output;

/// A failed command: non-zero exit and exactly one line on stderr that names the problem.
fn assert_one_line_error(o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "expected failure, got success: {}",
        stdout(o)
    );
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(err.contains(needle), "'{needle}' not in: {err}");
}

fn quick_bench(db: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "bench",
        "--models",
        "PLACEHOLDER",
        "--batch-sizes",
        "1,2",
        "--seq-len",
        "16",
        "--warmup",
        "1",
        "--min-iterations",
        "5",
        "--min-duration",
        "0.05",
        "--db-path",
        db.to_str().unwrap(),
    ];
    let models = format!("{},{}", fixture("bert-tiny"), fixture("vit-tiny"));
    args[2] = &models;
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn hardware_lists_all_eight_platforms() {
    let o = run(&["hardware", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let platforms = v["platforms"].as_array().unwrap();
    let names: Vec<&str> = platforms
        .iter()
        .map(|p| p["platform"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["cpu", "cuda", "rocm", "mps", "openvino", "webgpu", "webnn", "wasm"]
    );
    for p in platforms {
        if !p["available"].as_bool().unwrap() {
            assert!(!p["detail"].as_str().unwrap().is_empty());
        }
    }
    assert_eq!(v["fingerprint"].as_str().unwrap().len(), 16);
    let text = stdout(&run(&["hardware"]));
    assert!(
        text.contains("PLATFORM") && text.contains("webnn"),
        "{text}"
    );
}

#[test]
fn models_lists_and_classifies() {
    let o = run(&["models", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 17);
    let o = run(&["models", "classify", &fixture("vit-tiny")]);
    assert!(stdout(&o).contains("class=vit") && stdout(&o).contains("task=image-classification"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type":"mamba","architectures":["MambaForCausalLM"]}"#,
    )
    .unwrap();
    assert_one_line_error(
        &run(&["models", "classify", dir.path().to_str().unwrap()]),
        "unknown model_type 'mamba'",
    );
    std::fs::write(dir.path().join("config.json"), "{oops").unwrap();
    assert_one_line_error(
        &run(&["models", "classify", dir.path().to_str().unwrap()]),
        "invalid JSON",
    );
}

#[test]
fn bench_json_without_db() {
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("unused.duckdb");
    let o = quick_bench(&path, &["--no-db", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!path.exists(), "--no-db must not create a database");
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for r in rows {
        assert_eq!(r["outcome"]["status"], "pass", "{r}");
        let lat = &r["outcome"]["latency"];
        let n = lat["count"].as_u64().unwrap();
        assert!(n >= 5);
        assert_eq!(lat["p90_is_estimate"], n < 64, "{lat}");
        assert_eq!(lat["p99_is_estimate"], n < 662, "{lat}");
        assert!(r["outcome"]["harness_overhead_ns"].as_f64().unwrap() > 0.0);
        // How far the run's quarters differ: known wherever a quarter has two samples.
        match r["outcome"]["window_spread"].as_f64() {
            Some(spread) => assert!(spread >= 0.0 && n >= 8, "{r}"),
            None => assert!(n < 8, "{r}"),
        }
        // The fixtures are random-initialised (weights_provenance.json says so).
        assert_eq!(r["weights"], "random");
    }
}

#[test]
fn bench_to_db_then_query_report_export() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("results.duckdb");
    let json_out = dir.path().join("out.json");
    let o = quick_bench(
        &db,
        &[
            "--hardware",
            "cpu,mps",
            "--output-json",
            json_out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("mean ms"), "{}", stdout(&o));
    assert!(json_out.is_file());
    let dbs = db.to_str().unwrap();

    // Every measured combination is in the store with its raw samples.
    let q = |sql: &str, fmt: &str| {
        run(&[
            "db",
            "--db-path",
            dbs,
            "query",
            "--sql",
            sql,
            "--format",
            fmt,
        ])
    };
    let o = q(
        "SELECT status, count(*) AS n FROM performance_results GROUP BY status ORDER BY status",
        "json",
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"status": "pass", "n": 4}, {"status": "unavailable", "n": 4}])
    );
    let o = q(
        "SELECT count(*) AS bad FROM performance_results p WHERE status = 'pass' AND iterations <> \
         (SELECT count(*) FROM raw_samples r WHERE r.result_id = p.result_id)",
        "csv",
    );
    assert_eq!(stdout(&o), "bad\n0\n");
    let o = q("SELECT status, ended_at IS NOT NULL AS ended, git_commit IS NOT NULL AS has_commit FROM runs", "csv");
    assert_eq!(stdout(&o), "status,ended,has_commit\ncompleted,true,true\n");
    let o = q(
        "SELECT DISTINCT error FROM compatibility_results WHERE platform = 'mps'",
        "csv",
    );
    assert!(stdout(&o).contains("mps unavailable"), "{}", stdout(&o));
    let o = q("SELECT model_name, weights FROM models ORDER BY 1", "md");
    assert!(
        stdout(&o).starts_with("| model_name | weights |"),
        "{}",
        stdout(&o)
    );

    // Reports.
    let report = dir.path().join("perf.md");
    let o = run(&[
        "db",
        "--db-path",
        dbs,
        "report",
        "--kind",
        "performance",
        "--format",
        "md",
        "--output",
        report.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(
        md.contains("bert-tiny") && md.contains("| weights |") && md.contains("| random |"),
        "{md}"
    );
    let o = run(&[
        "db",
        "--db-path",
        dbs,
        "report",
        "--kind",
        "compatibility",
        "--format",
        "html",
    ]);
    let html = stdout(&o);
    assert!(
        html.contains("<table>") && html.contains("unavailable") && html.contains("pass"),
        "{html}"
    );
    for fmt in ["csv", "json"] {
        let o = run(&[
            "db",
            "--db-path",
            dbs,
            "report",
            "--kind",
            "performance",
            "--format",
            fmt,
        ]);
        assert!(o.status.success() && !o.stdout.is_empty(), "{}", stderr(&o));
    }

    // Exports.
    for fmt in ["parquet", "csv"] {
        let out = dir.path().join(format!("export-{fmt}"));
        let o = run(&[
            "db",
            "--db-path",
            dbs,
            "export",
            "--format",
            fmt,
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(out.join(format!("performance_results.{fmt}")).is_file());
        assert!(out.join(format!("raw_samples.{fmt}")).is_file());
    }
}

#[test]
fn failing_combination_is_recorded_and_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.duckdb");
    // bert-tiny has 64 positions: seq 100 fails for BERT, ViT ignores seq-len and runs.
    let o = run(&[
        "bench",
        "--models",
        &format!("{},{}", fixture("bert-tiny"), fixture("vit-tiny")),
        "--batch-sizes",
        "1",
        "--seq-len",
        "100",
        "--min-iterations",
        "2",
        "--min-duration",
        "0",
        "--db-path",
        db.to_str().unwrap(),
        "--json",
    ]);
    assert_failed_run(&o, 1, 2);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows[0]["outcome"]["status"], "fail");
    assert!(rows[0]["outcome"]["error"]
        .as_str()
        .unwrap()
        .contains("max_position_embeddings"));
    assert_eq!(rows[1]["outcome"]["status"], "pass");
    let o = query(
        &db,
        "SELECT status FROM compatibility_results ORDER BY compat_id",
    );
    assert_eq!(stdout(&o), "status\nfail\npass\n");
    let o = query(&db, "SELECT status FROM runs");
    assert_eq!(stdout(&o), "status\nfailed\n");
}

/// A run in which some combinations failed still measures and stores the others, prints its
/// results, then exits 1 with one line saying how many failed; its run row ends `failed`.
fn assert_failed_run(o: &Output, failed: usize, total: usize) {
    assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
    let err = stderr(o);
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "error: {failed} of {total} combinations failed (the notes above say why; stored with status fail)"
        ),
        "{err}"
    );
}

#[test]
fn bad_database_inputs_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.duckdb");
    assert_one_line_error(
        &run(&[
            "db",
            "--db-path",
            missing.to_str().unwrap(),
            "query",
            "--sql",
            "SELECT 1",
        ]),
        "not found",
    );

    let corrupt = dir.path().join("corrupt.duckdb");
    std::fs::write(&corrupt, vec![0x5a; 10_000]).unwrap();
    assert_one_line_error(
        &run(&[
            "db",
            "--db-path",
            corrupt.to_str().unwrap(),
            "query",
            "--sql",
            "SELECT 1",
        ]),
        "cannot open",
    );

    let db = dir.path().join("ok.duckdb");
    let o = quick_bench(&db, &["--batch-sizes", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dbs = db.to_str().unwrap();
    assert_one_line_error(
        &run(&["db", "--db-path", dbs, "query", "--sql", "SELEC wrong FROM"]),
        "SQL error",
    );
    assert_one_line_error(
        &run(&[
            "db",
            "--db-path",
            dbs,
            "query",
            "--sql",
            "SELECT * FROM no_such_table",
        ]),
        "no_such_table",
    );

    // A store written by a newer version of the program.
    {
        let conn = duckdb::Connection::open(&db).unwrap();
        conn.execute_batch("INSERT INTO schema_version (version) VALUES (99)")
            .unwrap();
    }
    assert_one_line_error(
        &run(&["db", "--db-path", dbs, "query", "--sql", "SELECT 1"]),
        "newer than this program supports",
    );
    assert_one_line_error(
        &quick_bench(&db, &["--batch-sizes", "1"]),
        "newer than this program supports",
    );

    // A DuckDB file that is not ours.
    let foreign = dir.path().join("foreign.duckdb");
    duckdb::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x INT)")
        .unwrap();
    assert_one_line_error(
        &run(&[
            "db",
            "--db-path",
            foreign.to_str().unwrap(),
            "query",
            "--sql",
            "SELECT 1",
        ]),
        "not an ipfs-accelerate results store",
    );
}

#[test]
fn bad_bench_arguments_give_one_line_errors() {
    assert_one_line_error(
        &run(&["bench", "--models", "no-such-model", "--no-db"]),
        "unknown model 'no-such-model'",
    );
    let o = run(&["bench", "--hardware", "tpu", "--no-db"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("tpu"));
    let o = run(&["bench", "--precision", "fp7", "--no-db"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("fp7"));
}

#[test]
fn random_weights_need_the_flag_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let empty_cache = dir.path().join("cache");
    let hf = dir.path().join("hf");
    let go = |extra: &[&str]| {
        let mut c = bin();
        c.env("IPFS_ACCELERATE_CACHE", &empty_cache)
            .env("HF_HOME", &hf)
            .env_remove("HF_HUB_CACHE");
        c.args([
            "bench",
            "--models",
            "vit",
            "--small-models",
            "--batch-sizes",
            "1",
            "--min-iterations",
            "1",
            "--min-duration",
            "0",
            "--warmup",
            "0",
            "--no-db",
            "--json",
        ]);
        c.args(extra);
        c.output().unwrap()
    };
    assert_one_line_error(&go(&[]), "--random-weights");
    let o = go(&["--random-weights"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows[0]["weights"], "random");
    assert_eq!(rows[0]["model"], "WinKawaks/vit-tiny-patch16-224");
    assert_eq!(rows[0]["outcome"]["session"]["weights"], "random");
    // vit-tiny: 5.7M parameters (patch embed, 12 blocks, 1000-way head).
    let params = rows[0]["outcome"]["session"]["parameter_count"]
        .as_u64()
        .unwrap();
    assert!((5_000_000..6_500_000).contains(&params), "{params}");
}

/// Killing the process mid-run keeps every combination that finished (each is committed in
/// its own transaction) and loses only the one in flight.
#[test]
fn killed_run_keeps_finished_results() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("killed.duckdb");
    let mut child = common::long_bench(&db, &[]);
    let mut stored = 0;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        if line.unwrap().contains("stored as result") {
            stored += 1;
            if stored == 2 {
                break;
            }
        }
    }
    assert_eq!(stored, 2, "the run ended before two results were stored");
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();

    let o = run(&["db", "--db-path", db.to_str().unwrap(), "query", "--sql",
        "SELECT (SELECT count(*) FROM performance_results) AS results, \
                (SELECT count(*) FROM performance_results p WHERE iterations = \
                   (SELECT count(*) FROM raw_samples r WHERE r.result_id = p.result_id)) AS complete, \
                (SELECT status FROM runs) AS run_status, \
                (SELECT ended_at IS NULL FROM runs) AS unfinished",
        "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = &v[0];
    let results = row["results"].as_i64().unwrap();
    assert!((2..12).contains(&results), "{row}");
    assert_eq!(
        row["complete"], row["results"],
        "a stored result lost raw samples: {row}"
    );
    assert_eq!(row["run_status"], "running");
    assert_eq!(row["unfinished"], true);

    // SIGKILL cannot be handled; the next program that writes the store on this host sees
    // the run's process is gone and closes it as interrupted.
    let o = quick_bench(&db, &["--batch-sizes", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = query(
        &db,
        "SELECT status, ended_at IS NOT NULL AS ended FROM runs ORDER BY run_id",
    );
    assert_eq!(
        stdout(&o),
        "status,ended\ninterrupted,true\ncompleted,true\n"
    );
}

#[test]
fn generate_streams_the_greedy_continuation() {
    let model = fixture("llama-tiny");
    let base = [
        "generate",
        "--model",
        model.as_str(),
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "8",
        "--ignore-eos",
    ];
    let o = run(&[&base[..], &["--json"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The first 8 of transformers' generate(do_sample=False) tokens for this prompt
    // (fixtures/llama-tiny/reference.safetensors, prompt0_greedy).
    assert_eq!(
        v["token_ids"],
        serde_json::json!([289, 105, 16, 296, 297, 129, 237, 167])
    );
    assert_eq!(v["weights"], "random");
    assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    let o = run(&[&base[..], &["--stream"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim_end_matches('\n'),
        v["text"].as_str().unwrap()
    );
    assert!(stderr(&o).contains("TTFT"), "{}", stderr(&o));

    let long_prompt = "once upon a time ".repeat(60);
    assert_one_line_error(
        &run(&[
            "generate",
            "--model",
            model.as_str(),
            "--prompt",
            &long_prompt,
        ]),
        "context is 128",
    );
}

/// LLaVA through the CLI: `generate --image` and `run --prompt` give transformers' greedy
/// tokens (fixtures/llava-tiny/reference.safetensors, case1_greedy), a prompt without the image
/// token is a one-line error, and `bench` stores the image tokens and encode time.
#[test]
fn llava_generates_from_an_image() {
    let model = fixture("llava-tiny");
    let image = fixture("media/gray.png");
    let prompt = "<image>\nDescribe the quick brown fox.";
    let expected = serde_json::json!([199, 123, 89, 121, 252, 32, 204, 151]);
    let o = run(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        prompt,
        "--image",
        &image,
        "--max-new-tokens",
        "8",
        "--ignore-eos",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["token_ids"], expected);
    assert_eq!(v["image_tokens"], 16);
    assert!(v["vision_encode_ms"].as_f64().unwrap() > 0.0);
    let o = run(&[
        "run", "--model", &model, "--input", &image, "--prompt", prompt, "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["token_ids"].as_array().unwrap()[..8],
        expected.as_array().unwrap()[..]
    );
    assert_one_line_error(
        &run(&[
            "generate",
            "--model",
            &model,
            "--prompt",
            "no image here",
            "--image",
            &image,
        ]),
        "write <image> in the prompt",
    );

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("llava.duckdb");
    let o = run(&[
        "bench",
        "--models",
        &model,
        "--batch-sizes",
        "1,2",
        "--seq-len",
        "8",
        "--new-tokens",
        "4",
        "--warmup",
        "0",
        "--min-iterations",
        "2",
        "--min-duration",
        "0",
        "--db-path",
        db.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for r in rows.as_array().unwrap() {
        let g = &r["outcome"]["generation"];
        assert_eq!(g["image_tokens"], 16, "{r}");
        assert_eq!(g["prompt_tokens"], 8 + 16, "{r}");
        assert!(g["image_encode_mean_ms"].as_f64().unwrap() > 0.0, "{r}");
    }
    let o = run(&[
        "db",
        "--db-path",
        db.to_str().unwrap(),
        "query",
        "--sql",
        "SELECT min(image_tokens), count(image_encode_ms) FROM performance_results",
        "--format",
        "csv",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("16,2"), "{}", stdout(&o));
}

/// LLaVA-NeXT through the CLI: a tall picture becomes 5 tiles and 56 image tokens, and the
/// greedy tokens are transformers' (fixtures/llava-next-tiny, case1_greedy).
#[test]
fn llava_next_generates_from_a_tiled_image() {
    let o = run(&[
        "generate",
        "--model",
        &fixture("llava-next-tiny"),
        "--prompt",
        "<image>\nDescribe the quick brown fox.",
        "--image",
        &fixture("media/tall.png"),
        "--max-new-tokens",
        "8",
        "--ignore-eos",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["token_ids"],
        serde_json::json!([67, 289, 124, 9, 294, 15, 128, 144])
    );
    assert_eq!(v["image_tokens"], 56);
}

#[test]
fn bench_measures_generation_models() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gen.duckdb");
    let o = run(&[
        "bench",
        "--models",
        &format!("{},{}", fixture("opt-tiny"), fixture("t5-tiny")),
        "--batch-sizes",
        "1,2",
        "--seq-len",
        "16",
        "--new-tokens",
        "8",
        "--warmup",
        "1",
        "--min-iterations",
        "3",
        "--min-duration",
        "0",
        "--db-path",
        db.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for r in rows.as_array().unwrap() {
        assert_eq!(r["outcome"]["status"], "pass", "{r}");
        let g = &r["outcome"]["generation"];
        assert_eq!(g["new_tokens"], 8);
        assert_eq!(g["tpot"]["count"], 3 * 7, "{g}");
        assert!(g["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(g["ttft"]["mean_ms"].as_f64().unwrap() > 0.0);
    }
    let o = run(&[
        "db",
        "--db-path",
        db.to_str().unwrap(),
        "report",
        "--kind",
        "performance",
        "--format",
        "csv",
    ]);
    let csv = stdout(&o);
    assert!(
        csv.lines().next().unwrap().contains("decode_tok_s"),
        "{csv}"
    );
}

#[test]
fn quantised_generation_is_benchmarked_with_memory_and_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.duckdb");
    let o = run(&[
        "bench",
        "--models",
        &fixture("llama-tiny"),
        "--precision",
        "f32,q8_0,q4_k",
        "--batch-sizes",
        "1,2",
        "--seq-len",
        "8",
        "--new-tokens",
        "4",
        "--warmup",
        "0",
        "--min-iterations",
        "2",
        "--min-duration",
        "0",
        "--db-path",
        db.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["db", "--db-path", db.to_str().unwrap(), "query", "--format", "json", "--sql",
        "SELECT precision, weight_mb, greedy_agreement_vs_f32 AS agreement, decode_tokens_per_s > 0 AS decoded \
         FROM performance_results ORDER BY result_id"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Rows: f32 b1, f32 b2, q8_0 b1, q8_0 b2, q4_k b1, q4_k b2; every one measured.
    assert_eq!(v.as_array().unwrap().len(), 6);
    assert!(
        v.as_array().unwrap().iter().all(|r| r["decoded"] == true),
        "{v}"
    );
    let v = serde_json::Value::Array(v.as_array().unwrap().iter().step_by(2).cloned().collect());
    assert_eq!(v[0]["precision"], "f32");
    assert!(v[0]["agreement"].is_null());
    for q in [&v[1], &v[2]] {
        assert!(
            q["weight_mb"].as_f64().unwrap() < v[0]["weight_mb"].as_f64().unwrap() / 3.0,
            "{v}"
        );
        let a = q["agreement"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{v}");
        assert_eq!(q["decoded"], true);
    }
    assert_eq!(v[1]["precision"], "q8_0");
    assert_eq!(v[2]["precision"], "q4_k");
}

#[test]
fn external_results_are_imported_with_their_engine() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ext.duckdb");
    let file = dir.path().join("ext.json");
    let row = serde_json::json!([{
        "model": fixture("bert-tiny"), "engine": "pytorch", "engine_version": "2.15.0",
        "platform": "cpu", "device": "cpu", "precision": "f32", "scenario": "single-stream",
        "batch_size": 2, "seq_len": 16, "parameter_count": 23000, "load_time_ms": 12.5,
        "first_inference_ms": 3.0, "warmup_iterations": 1, "samples_ms": [1.0, 2.0, 3.0, 4.0],
        "peak_rss_bytes": null, "generation": null
    }]);
    std::fs::write(&file, row.to_string()).unwrap();
    let dbs = db.to_str().unwrap();
    let o = run(&[
        "db",
        "--db-path",
        dbs,
        "import",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["db", "--db-path", dbs, "query", "--format", "json", "--sql",
        "SELECT engine, engine_version, iterations, latency_p50_ms, throughput_items_per_s, weights, \
                (SELECT count(*) FROM raw_samples) AS samples \
         FROM performance_results JOIN models USING (model_id)"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["engine"], "pytorch");
    assert_eq!(v[0]["engine_version"], "2.15.0");
    assert_eq!(v[0]["iterations"], 4);
    assert_eq!(v[0]["latency_p50_ms"], 2.5);
    assert_eq!(v[0]["throughput_items_per_s"], 2.0 / 2.5e-3);
    assert_eq!(v[0]["weights"], "random");
    assert_eq!(v[0]["samples"], 4);

    std::fs::write(&file, r#"[{"model": "x"}]"#).unwrap();
    assert_one_line_error(
        &run(&[
            "db",
            "--db-path",
            dbs,
            "import",
            "--file",
            file.to_str().unwrap(),
        ]),
        "not a list of external results",
    );
    let mut bad = row.clone();
    bad[0]["samples_ms"] = serde_json::json!([1.0, -2.0]);
    std::fs::write(&file, bad.to_string()).unwrap();
    assert_one_line_error(
        &run(&[
            "db",
            "--db-path",
            dbs,
            "import",
            "--file",
            file.to_str().unwrap(),
        ]),
        "negative",
    );
    let o = query(Path::new(dbs), "SELECT count(*) AS n FROM runs");
    assert_eq!(stdout(&o), "n\n1\n", "a rejected file must store nothing");
}

/// Vision and audio families are benchmarked into the database: items/s for images, a
/// real-time factor for audio.
#[test]
fn bench_covers_vision_and_audio_families() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("media.duckdb");
    let models = [
        "clip-tiny",
        "detr-tiny",
        "whisper-tiny",
        "wav2vec2-tiny",
        "clap-tiny",
    ]
    .map(fixture)
    .join(",");
    let o = run(&[
        "bench",
        "--models",
        &models,
        "--batch-sizes",
        "1",
        "--warmup",
        "0",
        "--min-iterations",
        "2",
        "--min-duration",
        "0",
        "--audio-seconds",
        "1",
        "--db-path",
        db.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let q = query(
        &db,
        "SELECT regexp_extract(model_name, '[^/]+$') AS m, status, \
                real_time_factor IS NOT NULL AS rtf, throughput_items_per_s > 0 AS items \
         FROM performance_results JOIN models USING (model_id) ORDER BY m",
    );
    assert!(q.status.success(), "{}", stderr(&q));
    assert_eq!(
        stdout(&q),
        "m,status,rtf,items\nclap-tiny,pass,true,true\nclip-tiny,pass,false,true\n\
         detr-tiny,pass,false,true\nwav2vec2-tiny,pass,true,true\nwhisper-tiny,pass,true,true\n"
    );
}

#[test]
fn run_scores_a_clip_of_frames_against_labels() {
    let labels = "a red ball rolling,a person dancing,an empty room";
    let o = run(&[
        "run",
        "--model",
        &fixture("xclip-tiny"),
        "--input",
        &fixture("media/clip-frames"),
        "--labels",
        labels,
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["task"], "zero-shot-video-classification");
    // The softmax of the fixture's reference logits_per_video (transformers, first clip).
    let expected = [
        ("an empty room", 0.5365),
        ("a person dancing", 0.2918),
        ("a red ball rolling", 0.1717),
    ];
    let got = v["results"][0]["result"]["output"]["labels"]
        .as_array()
        .unwrap();
    assert_eq!(got.len(), 3);
    for (g, (label, score)) in got.iter().zip(expected) {
        assert_eq!(g["label"], label);
        assert!((g["score"].as_f64().unwrap() - score).abs() < 1e-3, "{g}");
    }

    // Text alone, and a clip shorter than the model reads: one-line errors.
    let o = run(&["run", "--model", &fixture("xclip-tiny"), "--input", "a dog"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("a folder of frames or a video file"),
        "{}",
        stderr(&o)
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("media/clip-frames/frame_000.png"),
        dir.path().join("0.png"),
    )
    .unwrap();
    let o = run(&[
        "run",
        "--model",
        &fixture("xclip-tiny"),
        "--input",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the clip has 1 frames; the model reads 4"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_prints_task_results_and_rejects_bad_inputs() {
    let o = run(&[
        "run",
        "--model",
        &fixture("clip-tiny"),
        "--input",
        &fixture("media/photo.png"),
        "--labels",
        "cat,dog",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["task"], "zero-shot-image-classification");
    assert_eq!(v["provenance"]["weights"], "random");
    assert_eq!(
        v["results"][0]["result"]["output"]["labels"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let o = run(&[
        "run",
        "--model",
        &fixture("wav2vec2-tiny"),
        "--input",
        &fixture("media/speech-22k.wav"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("transcript (3.44 s of audio)"),
        "{}",
        stdout(&o)
    );

    assert_one_line_error(
        &run(&[
            "run",
            "--model",
            &fixture("vit-tiny"),
            "--input",
            &fixture("media/speech-16k.wav"),
        ]),
        "takes an image file",
    );
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("cut.png");
    std::fs::write(
        &corrupt,
        &std::fs::read(fixture("media/photo.png")).unwrap()[..200],
    )
    .unwrap();
    assert_one_line_error(
        &run(&[
            "run",
            "--model",
            &fixture("vit-tiny"),
            "--input",
            corrupt.to_str().unwrap(),
        ]),
        "cut.png is not a PNG or JPEG image file",
    );
    assert_one_line_error(
        &run(&[
            "run",
            "--model",
            &fixture("whisper-tiny"),
            "--input",
            "missing.wav",
        ]),
        "no such file: missing.wav",
    );
}

#[test]
fn runtimes_install_names_a_missing_python() {
    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .env("IPFS_ACCELERATE_CACHE", dir.path())
        .args(["runtimes", "install", "--python", "/nonexistent/python3"])
        .output()
        .unwrap();
    assert_one_line_error(&o, "/nonexistent/python3");
    let o = bin()
        .env("IPFS_ACCELERATE_CACHE", dir.path())
        .args(["runtimes", "list", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["onnxruntime", "openvino"]);
}

/// `run --hardware` takes the targets bench and generate take: the same embedding from the
/// native engine, ONNX Runtime, OpenVINO and onnxruntime-web in Chromium (the browser the
/// suite installs), the same CLIP zero-shot scores natively and in the browser; what the
/// browser only benchmarks is refused with the reason.
#[test]
fn run_takes_the_same_hardware_targets_as_bench() {
    // `run --json` of `model` on `input` (and `extra` flags): the engine and the output.
    let output = |model: &str, input: &str, extra: &[&str], hardware: &str| {
        let mut args = vec!["run", "--model", model, "--input", input];
        args.extend(extra);
        args.extend(["--hardware", hardware, "--json"]);
        let o = run(&args);
        assert!(o.status.success(), "{hardware}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let engine = v["provenance"]["engine"].as_str().unwrap().to_string();
        (engine, v["results"][0]["result"]["output"].clone())
    };
    let numbers = |v: &serde_json::Value, key: &str| -> Vec<f64> {
        let list = v.as_array().unwrap_or_else(|| panic!("{v}"));
        list.iter()
            .map(|x| x[key].as_f64().unwrap_or(0.0))
            .collect()
    };
    let bert = fixture("bert-tiny");
    let embed = |hardware: &str| {
        let (engine, out) = output(&bert, "a short sentence", &[], hardware);
        let values = out["values"].as_array().unwrap();
        (
            engine,
            values
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect::<Vec<_>>(),
        )
    };
    let (engine, native) = embed("cpu");
    assert_eq!(engine, "native");
    for (hardware, want) in [
        ("onnxruntime", "onnxruntime"),
        ("openvino", "openvino"),
        ("wasm", "onnxruntime-web"),
    ] {
        let (engine, values) = embed(hardware);
        assert_eq!(engine, want);
        let d = native
            .iter()
            .zip(&values)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-4, "{hardware}: max abs diff {d}");
    }
    // CLIP runs the tower of the input in the page; zero-shot scores use the checkpoint's
    // trained temperature, as natively.
    let (clip, photo) = (fixture("clip-tiny"), fixture("media/photo.png"));
    let zero_shot =
        |hardware: &str| output(&clip, &photo, &["--labels", "cat,dog,car"], hardware).1;
    let (native, web) = (
        zero_shot("cpu")["labels"].clone(),
        zero_shot("wasm")["labels"].clone(),
    );
    assert_eq!(native.as_array().map(Vec::len), Some(3));
    assert_eq!(
        native
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["label"])
            .collect::<Vec<_>>(),
        web.as_array()
            .unwrap()
            .iter()
            .map(|l| &l["label"])
            .collect::<Vec<_>>()
    );
    for (x, y) in numbers(&native, "score").iter().zip(numbers(&web, "score")) {
        assert!((x - y).abs() < 1e-4, "native {x}, wasm {y}");
    }
    // DETR's export in a page detects what the native engine detects (at a threshold low
    // enough for the random fixture to report boxes).
    let detr = fixture("detr-tiny");
    let detect = |hardware: &str| {
        output(&detr, &photo, &["--threshold", "0.1"], hardware).1["detections"].clone()
    };
    let (native, web) = (detect("cpu"), detect("wasm"));
    assert!(!native.as_array().unwrap().is_empty(), "{native}");
    assert_eq!(
        native.as_array().map(Vec::len),
        web.as_array().map(Vec::len)
    );
    for (x, y) in numbers(&native, "score").iter().zip(numbers(&web, "score")) {
        assert!((x - y).abs() < 1e-4, "native {x}, wasm {y}");
    }
}

#[test]
fn bench_runs_onnx_exports_on_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ort.duckdb");
    let o = run(&[
        "bench",
        "--models",
        &fixture("vit-tiny"),
        "--hardware",
        "cpu,onnxruntime",
        "--batch-sizes",
        "1",
        "--warmup",
        "0",
        "--min-iterations",
        "2",
        "--min-duration",
        "0",
        "--db-path",
        db.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let q = query(
        &db,
        "SELECT engine, starts_with(engine_version, engine) AS versioned, status \
         FROM performance_results ORDER BY engine",
    );
    assert_eq!(
        stdout(&q),
        "engine,versioned,status\nnative,false,pass\nonnxruntime,true,pass\n"
    );
}

/// The browser platforms through the binary (Chromium and onnxruntime-web as scripts/test.sh
/// installs them): results, how they were obtained, and the web report beside the native
/// platform.
#[test]
fn web_platforms_are_benchmarked_stored_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("web.duckdb");
    let dbs = db.to_str().unwrap();
    let bert = fixture("bert-tiny");
    let o = run(&[
        "bench",
        "--models",
        &bert,
        "--hardware",
        "cpu,wasm,webgpu,webnn",
        "--precompile",
        "false,true",
        "--batch-sizes",
        "1",
        "--seq-len",
        "16",
        "--warmup",
        "1",
        "--min-iterations",
        "3",
        "--min-duration",
        "0",
        "--db-path",
        dbs,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("onnxruntime-web"), "{}", stdout(&o));
    let q = |sql: &str| csv(Path::new(dbs), sql);
    // wasm and webgpu, each without and with precompiling, ran and say where.
    assert_eq!(
        q("SELECT h.platform, w.requested_ep, w.executed_ep LIKE w.requested_ep || '%' AS ran_there, \
           w.fell_back, w.precompiled, p.iterations, p.engine \
           FROM web_results w JOIN performance_results p USING (result_id) \
           JOIN hardware_platforms h USING (hardware_id) ORDER BY 1, w.precompiled"),
        "platform,requested_ep,ran_there,fell_back,precompiled,iterations,engine\n\
         wasm,wasm,true,false,false,3,onnxruntime-web\n\
         wasm,wasm,true,false,true,3,onnxruntime-web\n\
         webgpu,webgpu,true,false,false,3,onnxruntime-web\n\
         webgpu,webgpu,true,false,true,3,onnxruntime-web\n"
    );
    assert_eq!(
        q("SELECT count(*) AS n FROM web_results WHERE precompiled = (precompile_ms IS NOT NULL) \
           AND browser_version <> '' AND json_array_length(part_load_ms) = 1 \
           AND renderer_peak_rss_bytes > 0 AND gpu_process_peak_rss_bytes > 0"),
        "n\n4\n"
    );
    // WebNN: the browser's own words, whether it ran or not.
    let webnn = q(
        "SELECT status, error FROM performance_results WHERE device LIKE '%' \
                   AND result_id IN (SELECT result_id FROM performance_results p JOIN \
                   hardware_platforms h USING (hardware_id) WHERE h.platform = 'webnn')",
    );
    assert!(webnn.contains("pass") || webnn.contains("WebNN"), "{webnn}");
    let o = run(&[
        "db",
        "--db-path",
        dbs,
        "report",
        "--kind",
        "web",
        "--format",
        "md",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = stdout(&o);
    assert!(
        md.contains("# Web platforms report")
            && md.contains("cpu / native")
            && md.contains("| webgpu |"),
        "{md}"
    );
    // A decoder export generates in the page and its LLM metrics land in the same columns
    // as the native engines'.
    let llama = fixture("llama-tiny");
    let o = run(&[
        "bench",
        "--models",
        &llama,
        "--hardware",
        "wasm",
        "--batch-sizes",
        "1",
        "--seq-len",
        "8",
        "--new-tokens",
        "4",
        "--warmup",
        "0",
        "--min-iterations",
        "2",
        "--min-duration",
        "0",
        "--db-path",
        dbs,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        q(
            "SELECT p.status, p.prompt_tokens, p.new_tokens, p.ttft_p50_ms > 0 AS ttft, \
           p.decode_tokens_per_s > 0 AS decode FROM performance_results p \
           JOIN models m USING (model_id) WHERE m.model_name LIKE '%llama-tiny'"
        ),
        "status,prompt_tokens,new_tokens,ttft,decode\npass,8,4,true,true\n"
    );
}

/// A browser that is installed but does not start: a failed combination with the reason,
/// and the run goes on.
#[test]
fn a_browser_that_does_not_start_is_a_failed_combination() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("chromium");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'Chromium 1.0'; exit 0; }\necho 'no display' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.path().join("r.duckdb");
    let o = bin()
        .env("CHROMIUM_PATH", &fake)
        .args([
            "bench",
            "--models",
            &fixture("bert-tiny"),
            "--hardware",
            "wasm,cpu",
            "--batch-sizes",
            "1",
            "--seq-len",
            "16",
            "--min-iterations",
            "2",
            "--min-duration",
            "0",
            "--db-path",
            db.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert_failed_run(&o, 1, 2);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let wasm = &rows[0]["outcome"];
    assert_eq!(wasm["status"], "fail", "{wasm}");
    assert_eq!(wasm["stage"], "browser-start", "{wasm}");
    assert!(!wasm["error"].as_str().unwrap().contains('\n'));
    assert_eq!(rows[1]["outcome"]["status"], "pass");
}

/// bf16 on OpenVINO where the CPU cannot compute it (oneDNN capped to AVX2: what an AVX2-only
/// CPU does): bench stores the combination unavailable with the reason, f32 still passes, and
/// the store never holds an f32 result under a bf16 label.
#[test]
fn bf16_without_cpu_support_is_unavailable_in_bench_and_db() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bf16.duckdb");
    let o = bin()
        .env("ONEDNN_MAX_CPU_ISA", "AVX2")
        .args([
            "bench",
            "--models",
            &fixture("bert-tiny"),
            "--hardware",
            "openvino",
            "--precision",
            "f32,bf16",
            "--batch-sizes",
            "1",
            "--seq-len",
            "16",
            "--warmup",
            "0",
            "--min-iterations",
            "2",
            "--min-duration",
            "0",
            "--db-path",
            db.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let q = query(&db, "SELECT p.precision, p.status, c.status AS compat, \
                contains(p.error, 'bf16 is not available on this CPU') AS says_why \
         FROM performance_results p JOIN compatibility_results c USING (run_id, model_id, hardware_id) \
         WHERE c.precision = p.precision ORDER BY p.precision");
    assert_eq!(
        stdout(&q),
        "precision,status,compat,says_why\nbf16,unavailable,unavailable,true\nf32,pass,pass,\n"
    );
}

/// `hardware --calibrate` measures each in-process engine's matmul per precision it computes
/// in (the native engine's q8_0 and q4_k products too), its dispatch costs, the host's memory
/// bandwidth and WebGPU's own, stores them against this machine's fingerprint, and `hardware` shows the stored
/// figures later; what an engine cannot calibrate is listed with the reason.
#[test]
fn hardware_calibration_is_measured_stored_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cal.duckdb");
    let hardware = |extra: &[&str]| {
        let mut args = vec!["hardware", "--json", "--db-path"];
        args.push(db.to_str().unwrap());
        args.extend(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let before = hardware(&["--no-browser"]);
    assert_eq!(before["calibrations"], serde_json::json!([]));
    // With the browser: the web platforms are probed and calibrated in a page.
    let v = hardware(&["--calibrate"]);
    let figures = v["calibrations"].as_array().unwrap();
    let find = |kind: &str, engine: Option<&str>, precision: Option<&str>| {
        figures
            .iter()
            .find(|c| {
                c["kind"] == kind
                    && c["precision"].as_str() == precision
                    && (engine.is_none() || c["engine"].as_str() == engine)
            })
            .unwrap_or_else(|| panic!("no {kind} {engine:?} {precision:?} in {v}"))
    };
    // Every in-process engine the suite installs runs the same product: candle's, and ONNX
    // Runtime's and OpenVINO's on a one-MatMul graph.
    for (engine, platform) in [
        ("native", "cpu"),
        ("onnxruntime", "cpu"),
        ("openvino", "openvino"),
    ] {
        let f32 = find("matmul", Some(engine), Some("f32"));
        assert_eq!(f32["platform"].as_str(), Some(platform), "{f32}");
        assert!(f32["value"].as_f64().unwrap() > 1e8, "{f32}");
    }
    // The native engine's quantised products (8-bit integers, on every CPU: VNNI, AVX2 or
    // plain Rust) have rates of their own, which its q8_0 and q4_k decoders' rooflines read.
    for precision in ["q8_0", "q4_k"] {
        let q = find("matmul", Some("native"), Some(precision));
        assert_eq!(q["platform"].as_str(), Some("cpu"), "{q}");
        assert!(q["value"].as_f64().unwrap() > 1e8, "{q}");
    }
    // wasm is calibrated in a page (onnxruntime-web, timed by performance.now()), not
    // given the CPU's figure.
    let wasm = figures
        .iter()
        .find(|c| {
            c["platform"] == "wasm" && c["engine"] == "onnxruntime-web" && c["kind"] == "matmul"
        })
        .unwrap_or_else(|| panic!("no wasm calibration in {v}"));
    assert_eq!(wasm["size"].as_i64(), Some(512), "{wasm}");
    assert!(wasm["value"].as_f64().unwrap() > 1e8, "{wasm}");
    // The CPU's memory is the host's: its STREAM triad. WebGPU's adapter streams at a rate of
    // its own (a GPU's memory; here a software adapter's), from chains of additions of 32 MiB
    // arrays made on the device, timed in a page.
    let triad = find("memory-bandwidth", Some("stream-triad"), None);
    assert_eq!(triad["platform"], "cpu", "{triad}");
    assert!(triad["value"].as_f64().unwrap() > 1e8, "{triad}");
    let webgpu = figures
        .iter()
        .find(|c| c["platform"] == "webgpu" && c["kind"] == "memory-bandwidth")
        .unwrap_or_else(|| panic!("no WebGPU bandwidth in {v}"));
    assert_eq!(webgpu["engine"], "onnxruntime-web", "{webgpu}");
    assert_eq!(webgpu["size"].as_i64(), Some(32 << 20), "{webgpu}");
    assert!(webgpu["value"].as_f64().unwrap() > 1e7, "{webgpu}");
    let own = figures
        .iter()
        .filter(|c| c["kind"] == "memory-bandwidth")
        .count();
    assert_eq!(own, 2, "the CPU platforms measure none of their own: {v}");
    // Dispatch: what a call and each of its operations cost beyond the arithmetic, from
    // chains of 1 and 64 tiny products, once per engine and platform (no precision).
    for (engine, platform) in [
        ("native", "cpu"),
        ("onnxruntime", "cpu"),
        ("openvino", "openvino"),
        ("onnxruntime-web", "wasm"),
    ] {
        for kind in ["dispatch-call", "dispatch-op"] {
            let f = figures
                .iter()
                .find(|c| c["kind"] == kind && c["engine"] == engine && c["platform"] == platform)
                .unwrap_or_else(|| panic!("no {kind} of {engine} on {platform} in {v}"));
            assert_eq!(f["size"].as_i64(), Some(64), "{f}");
            assert!(f["precision"].is_null(), "{f}");
            let seconds = f["value"].as_f64().unwrap();
            assert!((0.0..1.0).contains(&seconds), "{f}");
        }
    }
    // Program memory: what the process holds with each in-process runtime loaded and run.
    for (engine, platform) in [
        ("native", "cpu"),
        ("onnxruntime", "cpu"),
        ("openvino", "openvino"),
    ] {
        let f = figures
            .iter()
            .find(|c| {
                c["kind"] == "program-memory" && c["engine"] == engine && c["platform"] == platform
            })
            .unwrap_or_else(|| panic!("no program memory of {engine} on {platform} in {v}"));
        assert!(f["precision"].is_null(), "{f}");
        let bytes = f["value"].as_f64().unwrap();
        assert!((1e6..64e9).contains(&bytes), "{f}");
    }
    let refused = v["calibration_refusals"].as_array().unwrap();
    assert!(
        refused
            .iter()
            .any(|r| r["precision"] == "bf16" && r["reason"].as_str().unwrap().contains("bf16")),
        "{refused:?}"
    );
    // Stored against this machine: shown again without measuring.
    let again = hardware(&["--no-browser"]);
    assert_eq!(again["calibrations"], v["calibrations"]);
    assert_eq!(
        csv(
            &db,
            "SELECT count(*) > 0 AS stored FROM calibrations JOIN hardware_platforms USING (hardware_id) \
             WHERE fingerprint = (SELECT max(fingerprint) FROM hardware_platforms)"
        ),
        "stored\ntrue\n"
    );
}

/// `predict` learns from a store's real results (here: bert-tiny and vit-tiny on the native
/// engine and ONNX Runtime at three batch sizes, measured during the test): a stored
/// configuration is reported as measured with its result, an unmeasured one is predicted with
/// a 90% interval and the measurements it leaned on, and `--evaluate` scores the predictor on
/// held-out results only.
#[test]
fn predict_learns_from_stored_results_and_scores_itself_on_held_out_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.duckdb");
    let db_arg = db.to_str().unwrap();
    let bert = fixture("bert-tiny");
    assert_one_line_error(
        &run(&["predict", "--model", &bert, "--db-path", db_arg]),
        "no results store",
    );
    let o = run(&[
        "hardware",
        "--no-browser",
        "--calibrate",
        "--db-path",
        db_arg,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    bench_two_models_on_two_engines(db_arg);
    let predict = |extra: &[&str]| {
        let mut args = vec!["predict", "--db-path", db_arg, "--json"];
        args.extend(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let measured = predict(&["--model", &bert, "--batch-size", "2", "--seq-len", "16"]);
    assert_eq!(measured["source"], "measured", "{measured}");
    assert!(measured["result_id"].as_i64().unwrap() > 0);
    assert_eq!(measured["runs"], 1, "{measured}");
    let predicted = predict(&["--model", &bert, "--batch-size", "3", "--seq-len", "16"]);
    assert_eq!(predicted["source"], "predicted", "{predicted}");
    let (p50, low, high) = (
        predicted["p50_ms"].as_f64().unwrap(),
        predicted["interval_90"][0].as_f64().unwrap(),
        predicted["interval_90"][1].as_f64().unwrap(),
    );
    assert!(low <= p50 && p50 <= high && low > 0.0, "{predicted}");
    assert_eq!(predicted["calibrated"], true);
    assert_eq!(
        predicted["nearest_measurements"].as_array().unwrap().len(),
        3
    );
    // Peak memory: measured with the stored configuration, predicted (with the bound a fit
    // decision uses) for the other.
    assert_eq!(
        measured["peak_memory_mib"]["source"], "measured",
        "{measured}"
    );
    let memory = &predicted["peak_memory_mib"];
    assert_eq!(memory["source"], "predicted", "{predicted}");
    let (value, bound) = (
        memory["value"].as_f64().unwrap(),
        memory["upper_bound"].as_f64().unwrap(),
    );
    assert!(value > 0.0 && bound >= value, "{memory}");

    let report = predict(&["--evaluate"]);
    assert_eq!(report["observations"], 12, "{report}");
    assert_eq!(report["with_peak_memory"], 12, "{report}");
    let all = report["splits"].as_array().unwrap();
    let of = |quantity: &str| -> Vec<&serde_json::Value> {
        all.iter().filter(|s| s["quantity"] == quantity).collect()
    };
    let memory = of("peak-memory");
    assert_eq!(memory.len(), 4);
    for s in &memory {
        assert!(s["above_upper_bound"].as_u64().unwrap() <= s["predictions"].as_u64().unwrap());
        assert_eq!(s["selection_cases"], 0, "selection is scored on latency");
    }
    let splits = of("latency");
    let names: Vec<&str> = splits
        .iter()
        .map(|s| s["split"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["configuration", "batch-size", "model", "platform"]);
    let configuration = splits[0];
    // Every result is predicted by a model fitted without it.
    assert_eq!(configuration["folds"], 12);
    assert_eq!(configuration["predictions"], 12);
    for s in splits.iter().chain(&memory) {
        if s["predictions"] == 0 {
            // Holding out one of two models leaves too little to fit: said, not scored.
            assert_eq!(s["skipped_folds"], s["folds"], "{s}");
            assert!(s["coverage"].is_null() && s["mape"].is_null(), "{s}");
            continue;
        }
        let coverage = s["coverage"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&coverage), "{s}");
        // The held-out measurements of runs that kept one speed (latency only), scored apart.
        let steady = s["steady_predictions"].as_u64().unwrap();
        assert!(steady <= s["predictions"].as_u64().unwrap(), "{s}");
        assert_eq!(s["steady_mape"].is_null(), steady == 0, "{s}");
        if s["quantity"] == "peak-memory" {
            assert_eq!(steady, 0, "{s}");
        }
        assert!(s["mape"].as_f64().unwrap().is_finite(), "{s}");
        // Scored again per configuration, against the median of its repeats: each
        // configuration was measured once, so the figures agree.
        assert_eq!(s["configurations"], s["predictions"], "{s}");
        let by_configuration = s["configuration_mape"].as_f64().unwrap();
        assert!(
            (by_configuration - s["mape"].as_f64().unwrap()).abs() < 1e-9,
            "{s}"
        );
        // The furthest held-out predictions, worst first, their errors as the figures say.
        let worst = s["worst"].as_array().unwrap();
        let predictions = s["predictions"].as_u64().unwrap() as usize;
        assert_eq!(worst.len(), predictions.min(5), "{s}");
        let errors: Vec<f64> = worst
            .iter()
            .map(|w| {
                let (m, p) = (
                    w["measured"].as_f64().unwrap(),
                    w["predicted"].as_f64().unwrap(),
                );
                let e = w["error_pct"].as_f64().unwrap();
                assert!((e - (p - m).abs() / m * 100.0).abs() < 1e-6, "{w}");
                e
            })
            .collect();
        assert!(errors.windows(2).all(|e| e[0] >= e[1]), "{s}");
        // Each scored group's own figures: its predictions add up to the split's, and its
        // MAPE and coverage average to the split's over them.
        let groups = s["groups"].as_array().unwrap();
        let scored = s["folds"].as_u64().unwrap() - s["skipped_folds"].as_u64().unwrap();
        assert_eq!(groups.len() as u64, scored, "{s}");
        let count = |g: &serde_json::Value| g["predictions"].as_f64().unwrap();
        let total: f64 = groups.iter().map(count).sum();
        assert_eq!(total as usize, predictions, "{s}");
        let weighted = |key: &str| -> f64 {
            groups
                .iter()
                .map(|g| g[key].as_f64().unwrap() * count(g))
                .sum::<f64>()
                / total
        };
        assert!(
            (weighted("mape") - s["mape"].as_f64().unwrap()).abs() < 1e-6,
            "{s}"
        );
        assert!((weighted("coverage") - coverage).abs() < 1e-9, "{s}");
        for g in groups {
            assert!(g["median_ratio"].as_f64().unwrap() > 0.0, "{g}");
            assert!(!g["group"].as_str().unwrap().is_empty(), "{g}");
        }
    }
    // Two targets per (model, batch): a selection case each; every miss names both targets
    // and what the choice cost, the costliest few (WORST) when more missed (all six can, on runs
    // as short and as crowded as this test's).
    assert_eq!(configuration["selection_cases"], 6);
    let top1 = configuration["top1"].as_f64().unwrap();
    let misses = configuration["selection_misses"].as_array().unwrap();
    assert_eq!(
        misses.len(),
        (((1.0 - top1) * 6.0).round() as usize).min(ia_predict::WORST),
        "{configuration}"
    );
    let losses: Vec<f64> = misses
        .iter()
        .map(|m| m["loss_pct"].as_f64().unwrap())
        .collect();
    assert!(losses.windows(2).all(|l| l[0] >= l[1]), "{configuration}");
    for m in misses {
        assert_ne!(m["chosen"], m["best"], "{m}");
        assert!(m["loss_pct"].as_f64().unwrap() > 0.0, "{m}");
    }
    // Each configuration was measured once: no repeats, so no noise floor is claimed.
    for r in report["repeatability"].as_array().unwrap() {
        assert_eq!(r["configurations"], 0, "{r}");
        assert!(r["mape"].is_null(), "{r}");
    }
}

/// `select` ranks this machine's targets for a model from the store (measured where it can,
/// predicted otherwise) and lists the ones a limit excludes with the reason.
#[test]
fn select_ranks_targets_and_names_what_a_limit_excludes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.duckdb");
    let db_arg = db.to_str().unwrap();
    let bert = fixture("bert-tiny");
    bench_two_models_on_two_engines(db_arg);
    let select = |extra: &[&str]| {
        let mut args = vec![
            "select",
            "--model",
            &bert,
            "--seq-len",
            "16",
            "--db-path",
            db_arg,
        ];
        args.extend(extra);
        args.push("--json");
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let ranked = select(&["--batch-size", "2"]);
    let rows = ranked.as_array().unwrap();
    let targets: Vec<&str> = rows.iter().map(|r| r["engine"].as_str().unwrap()).collect();
    assert_eq!(targets.len(), 2, "{ranked}");
    assert!(rows.iter().all(|r| r["source"] == "measured"));
    assert!(rows[0]["p50_ms"].as_f64() <= rows[1]["p50_ms"].as_f64());
    // The table names the size asked for, and its columns line up whatever the targets' names.
    let o = run(&[
        "select",
        "--model",
        &bert,
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--db-path",
        db_arg,
    ]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        text.lines().next().unwrap().contains("b=2 seq=16 f32"),
        "{text}"
    );
    let ranked_lines: Vec<&str> = text.lines().filter(|l| l.contains(" p50 ")).collect();
    assert_eq!(ranked_lines.len(), 2, "{text}");
    for column in [" p50 ", " items/s", " memory <="] {
        let at: Vec<Option<usize>> = ranked_lines.iter().map(|l| l.find(column)).collect();
        assert!(
            at[0].is_some() && at.iter().all(|a| *a == at[0]),
            "{column}: {text}"
        );
    }
    // A limit below every measurement excludes both, each with its reason.
    let none = select(&["--batch-size", "2", "--max-latency-ms", "0.000001"]);
    for r in none.as_array().unwrap() {
        assert!(
            r["excluded"].as_str().unwrap().contains("--max-latency-ms"),
            "{r}"
        );
    }
    // An unmeasured batch size is predicted on both targets.
    let predicted = select(&["--batch-size", "3"]);
    assert!(predicted
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["source"] == "predicted"));
    // Ranked by memory, each with the bound its fit decision used; a limit below it excludes.
    let by_memory = select(&["--batch-size", "2", "--objective", "memory"]);
    for r in by_memory.as_array().unwrap() {
        assert!(r["memory_bound_bytes"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["this_machine"], true);
    }
    let tight = select(&["--batch-size", "2", "--max-memory-gb", "0.001"]);
    for r in tight.as_array().unwrap() {
        assert!(
            r["excluded"].as_str().unwrap().contains("--max-memory-gb"),
            "{r}"
        );
    }
    // auto: every precision each target has results at (f32 here), with its evidence.
    let auto = select(&["--batch-size", "2", "--precision", "auto"]);
    for r in auto.as_array().unwrap() {
        assert_eq!(r["precision"], "f32");
        assert_eq!(r["accuracy_evidence"]["reference"], true, "{r}");
    }
    assert_one_line_error(
        &run(&[
            "select",
            "--model",
            &bert,
            "--max-memory-gb",
            "0",
            "--db-path",
            db_arg,
        ]),
        "positive",
    );
}

/// A real store for the prediction tests: bert-tiny and vit-tiny on the native engine and
/// ONNX Runtime at batch sizes 1, 2 and 4 (12 results).
fn bench_two_models_on_two_engines(db: &str) {
    let models = format!("{},{}", fixture("bert-tiny"), fixture("vit-tiny"));
    let o = run(&[
        "bench",
        "--models",
        &models,
        "--hardware",
        "cpu,onnxruntime",
        "--batch-sizes",
        "1,2,4",
        "--seq-len",
        "16",
        "--warmup",
        "0",
        "--min-iterations",
        "3",
        "--min-duration",
        "0",
        "--db-path",
        db,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `select --create-map` writes a choice (or the reason there is none) for every catalog model
/// at batch sizes 1, 8 and 32.
#[test]
fn select_create_map_covers_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.duckdb");
    let db_arg = db.to_str().unwrap();
    bench_two_models_on_two_engines(db_arg);
    let map = dir.path().join("map.json");
    let o = run(&[
        "select",
        "--create-map",
        "--output",
        map.to_str().unwrap(),
        "--db-path",
        db_arg,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&map).unwrap()).unwrap();
    let rows = v.as_array().unwrap();
    for entry in ia_models::CATALOG {
        let of_model: Vec<_> = rows.iter().filter(|r| r["model"] == entry.key).collect();
        assert!(!of_model.is_empty(), "{} missing", entry.key);
        for r in of_model {
            assert!(
                r["choice"]["p50_ms"].as_f64().is_some() || r["error"].is_string(),
                "{r}"
            );
        }
    }
}

/// `db compare` and `db regressions` on runs whose samples are known (imported: each import is
/// a run): a 20% slower candidate is a significant regression (non-zero exit, Holm-corrected
/// p-value, bootstrap interval above 1); identical runs are no change; the series of p50 over
/// the runs has its change point where the slowdown began, with what changed.
#[test]
fn runs_are_compared_and_series_have_their_change_points() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("trend.duckdb");
    let dbs = db.to_str().unwrap();
    let file = dir.path().join("run.json");
    let import = |center: f64, version: &str| {
        let samples: Vec<f64> = (0..30)
            .map(|i| center * (1.0 + 0.01 * ((i * 7 % 11) as f64 - 5.0) / 5.0))
            .collect();
        let row = serde_json::json!([{
            "model": fixture("bert-tiny"), "engine": "pytorch", "engine_version": version,
            "platform": "cpu", "device": "cpu", "precision": "f32", "scenario": "single-stream",
            "batch_size": 1, "seq_len": 16, "parameter_count": 23000, "load_time_ms": 1.0,
            "first_inference_ms": 1.0, "warmup_iterations": 1, "samples_ms": samples,
            "peak_rss_bytes": null, "generation": null
        }]);
        std::fs::write(&file, row.to_string()).unwrap();
        let o = run(&[
            "db",
            "--db-path",
            dbs,
            "import",
            "--file",
            file.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    // Runs 1-8 at 10 ms on 2.0, runs 9-16 at 12 ms on 2.1.
    for i in 0..16 {
        if i < 8 {
            import(10.0, "2.0");
        } else {
            import(12.0, "2.1");
        }
    }
    let compare = |baseline: &str, candidate: &str| {
        run(&[
            "db",
            "--db-path",
            dbs,
            "compare",
            "--baseline",
            baseline,
            "--candidate",
            candidate,
            "--json",
        ])
    };
    let slower = compare("1", "16");
    assert!(!slower.status.success(), "a regression fails the command");
    assert!(
        stderr(&slower).contains("1 significant regression"),
        "{}",
        stderr(&slower)
    );
    let v: serde_json::Value = serde_json::from_slice(&slower.stdout).unwrap();
    assert_eq!(v["correction"], "holm");
    let row = &v["combinations"][0];
    assert_eq!(row["verdict"], "regression", "{row}");
    assert!((row["ratio"].as_f64().unwrap() - 1.2).abs() < 0.01, "{row}");
    assert!(row["ratio_ci95"][0].as_f64().unwrap() > 1.0);
    let same = compare("1", "2");
    assert!(same.status.success(), "{}", stderr(&same));
    let v: serde_json::Value = serde_json::from_slice(&same.stdout).unwrap();
    assert_eq!(v["combinations"][0]["verdict"], "no-significant-change");
    assert_one_line_error(&compare("1", "99"), "run 99 is not in the store");

    let o = run(&["db", "--db-path", dbs, "regressions", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let changes = v["change_points"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{v}");
    let c = &changes[0];
    assert_eq!(c["direction"], "regression");
    assert_eq!(
        (c["before_points"].as_u64(), c["after_points"].as_u64()),
        (Some(8), Some(8))
    );
    assert_eq!(c["first_after"]["run_id"], 9);
    assert_eq!(
        c["environment_diff"]["engine_version"]["after"], "2.1",
        "{c}"
    );
    // Throughput falls at the same place: for it, lower is the regression.
    let o = run(&[
        "db",
        "--db-path",
        dbs,
        "regressions",
        "--metric",
        "throughput",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["change_points"][0]["direction"], "regression", "{v}");
    let o = run(&["db", "--db-path", dbs, "trend", "--model", "no-such-model"]);
    assert_one_line_error(&o, "no stored results match");
    let o = run(&["db", "--db-path", dbs, "regressions", "--p-value", "2"]);
    assert!(!o.status.success() && stderr(&o).contains("not a probability"));
}

/// The seeds' 13 classes (OPT and LLaMA one class; Qwen2, Qwen3 and the three Qwen-VL one) each
/// measured on the CPU: one fixture per architecture through `bench`, every cell of the compatibility matrix
/// a pass.
#[test]
fn the_compatibility_matrix_shows_every_class_on_cpu() {
    let fixtures = [
        "bert-tiny",
        "t5-tiny",
        "opt-tiny",
        "llama-tiny",
        "clip-tiny",
        "vit-tiny",
        "clap-tiny",
        "whisper-tiny",
        "wav2vec2-tiny",
        "llava-tiny",
        "llava-next-tiny",
        "xclip-tiny",
        "qwen2-tiny",
        "qwen3-tiny",
        "qwen2-vl-tiny",
        "qwen2.5-vl-tiny",
        "qwen3-vl-tiny",
        "detr-tiny",
    ];
    let models: Vec<String> = fixtures.iter().map(|f| fixture(f)).collect();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.duckdb");
    let db = db.to_str().unwrap();
    let models = models.join(",");
    let o = bin()
        .args([
            "bench",
            "--models",
            &models,
            "--hardware",
            "cpu",
            "--db-path",
            db,
        ])
        .args(QUICK)
        .args([
            "--seq-len",
            "16",
            "--new-tokens",
            "4",
            "--audio-seconds",
            "1",
        ])
        .args(["--max-iterations", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "db",
        "report",
        "--kind",
        "compatibility",
        "--format",
        "json",
        "--db-path",
        db,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cells: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(cells.len(), fixtures.len(), "{cells:?}");
    for cell in &cells {
        assert_eq!(cell["platform"], "cpu", "{cell}");
        assert_eq!(cell["status"], "pass", "{cell}");
    }
}

/// Qwen-VL has no quantised path: q8_0 is refused, not run (and recorded) as f32.
#[test]
fn qwen_vl_refuses_quantised_precisions() {
    let o = run(&[
        "generate",
        "--model",
        &fixture("qwen2-vl-tiny"),
        "--image",
        &fixture("media/photo.png"),
        "--prompt",
        "<|vision_start|><|image_pad|><|vision_end|>What?",
        "--precision",
        "q8_0",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("precision q8_0 is not available"),
        "{}",
        stderr(&o)
    );
}
