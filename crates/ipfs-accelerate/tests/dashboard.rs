//! The dashboard in real headless Chromium over a known store: every page loads with no
//! console errors, the charts draw as many marks as their definitions hold (and as many as
//! this store should give), filters change the rows shown, the compatibility matrix covers
//! every class with reasons on hover, and a screenshot of each page is saved for a person to
//! look at (`<target>/tmp/dashboard/*.png`).

mod common;

use common::{token, Served};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// One combination of the known store. `p50` None: did not pass, `error` says why.
struct Case<'a> {
    model: &'a str,
    class: &'a str,
    host: &'a str,
    platform: &'a str,
    engine: &'a str,
    precision: &'a str,
    batch: i32,
    p50: Option<f64>,
    status: &'a str,
    error: Option<&'a str>,
}

fn record(c: &Case) -> Value {
    let pass = c.status == "pass";
    let p50 = c.p50.unwrap_or(0.0);
    json!({
        "model": {"model_name": c.model, "class": c.class, "family": c.class,
                  "task": "feature-extraction", "modality": "text", "parameter_count": 4_000_000,
                  "source": "test", "weights": "trained"},
        "hardware": {"fingerprint": format!("fp-{}", c.host), "platform": c.platform,
                     "device": c.platform, "host": c.host, "cpu_model": "test cpu",
                     "details_json": "{}"},
        "performance": {"engine": c.engine, "engine_version": "1", "device": c.platform,
                        "precision": c.precision, "scenario": "single-stream",
                        "batch_size": c.batch, "status": c.status, "error": c.error,
                        "iterations": if pass { json!(2) } else { Value::Null },
                        "latency_p50_ms": c.p50,
                        "latency_p99_ms": c.p50.map(|v| v * 1.1),
                        "throughput_items_per_s": c.p50.map(|v| 1000.0 * c.batch as f64 / v),
                        "peak_rss_mb": c.p50.map(|_| 100.0 + c.batch as f64),
                        "peak_rss_per_combination": c.p50.map(|_| true)},
        "samples_ms": if pass { json!([p50 * 0.9, p50 * 1.1]) } else { json!([]) },
        "compatibility": {"platform": c.platform, "engine": c.engine, "precision": c.precision,
                          "status": c.status, "error": c.error}
    })
}

fn submit(s: &Served, token: &str, host: &str, cases: &[Case]) {
    let run = json!({
        "run": {"git_commit": null, "command_line": "ipfs-accelerate bench", "host": host,
                "tool_version": "test"},
        "status": "completed",
        "results": cases.iter().map(record).collect::<Vec<_>>(),
    });
    let mut r = s
        .agent
        .post(format!("{}/api/runs", s.base))
        .header("Authorization", format!("Bearer {token}"))
        .send(run.to_string())
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(status, 201, "{}", r.body_mut().read_to_string().unwrap());
}

#[allow(clippy::too_many_arguments)]
fn case<'a>(
    model: &'a str,
    host: &'a str,
    platform: &'a str,
    engine: &'a str,
    precision: &'a str,
    batch: i32,
    p50: Option<f64>,
    error: Option<&'a str>,
) -> Case<'a> {
    let status = match (p50, error) {
        (Some(_), _) => "pass",
        (None, Some(e)) if e.contains("out of memory") => "fail",
        _ => "unavailable",
    };
    Case {
        model,
        class: if model.starts_with("bert") {
            "bert"
        } else {
            "vit"
        },
        host,
        platform,
        engine,
        precision,
        batch,
        p50,
        status,
        error,
    }
}

/// Two machines, two models; a laptop run with CPU, browser, a failure and two unavailable
/// platforms; a GPU box run; twelve laptop runs of one series whose p50 doubles half-way.
fn fill(s: &Served, token: &str) {
    let web = "onnxruntime-web";
    submit(
        s,
        token,
        "laptop",
        &[
            case(
                "bert-a",
                "laptop",
                "cpu",
                "candle",
                "f32",
                1,
                Some(2.0),
                None,
            ),
            case(
                "bert-a",
                "laptop",
                "cpu",
                "candle",
                "f32",
                4,
                Some(6.0),
                None,
            ),
            case("bert-a", "laptop", "wasm", web, "f32", 1, Some(5.0), None),
            case(
                "bert-a",
                "laptop",
                "cuda",
                "candle",
                "f32",
                1,
                None,
                Some("no NVIDIA driver (libnvidia-ml.so.1 not found)"),
            ),
            case(
                "vit-b",
                "laptop",
                "cpu",
                "candle",
                "f32",
                1,
                Some(10.0),
                None,
            ),
            case(
                "vit-b",
                "laptop",
                "cpu",
                "candle",
                "f32",
                4,
                None,
                Some("out of memory: 4 images need 9 GiB"),
            ),
            case(
                "vit-b",
                "laptop",
                "webgpu",
                web,
                "f32",
                1,
                None,
                Some("Chromium 148: no WebGPU adapter"),
            ),
        ],
    );
    submit(
        s,
        token,
        "gpu-box",
        &[
            case(
                "bert-a",
                "gpu-box",
                "cuda",
                "candle",
                "f16",
                1,
                Some(0.5),
                None,
            ),
            case(
                "bert-a",
                "gpu-box",
                "cuda",
                "candle",
                "f16",
                4,
                Some(0.8),
                None,
            ),
            case(
                "vit-b",
                "gpu-box",
                "cuda",
                "candle",
                "f16",
                1,
                Some(1.5),
                None,
            ),
        ],
    );
    for i in 0..12 {
        let p50 = if i < 6 { 1.0 } else { 2.0 } + 0.001 * (i % 3) as f64;
        submit(
            s,
            token,
            "laptop",
            &[case(
                "bert-a",
                "laptop",
                "cpu",
                "candle",
                "f32",
                8,
                Some(p50),
                None,
            )],
        );
    }
}

/// Marks a chart definition holds: points of its lines, bars of its bars.
fn marks_in(chart: &Value) -> u64 {
    let body = &chart["body"];
    match body["type"].as_str().unwrap() {
        "lines" => body["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["points"].as_array().unwrap().len() as u64)
            .sum(),
        "bars" => body["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["bars"].as_array().unwrap().len() as u64)
            .sum(),
        other => panic!("{other} has no marks"),
    }
}

/// Waits for the page to draw, then returns what `facts` (a JS expression) says.
const WAIT: &str = "for (let i = 0; i < 200 && !(window.dashboard && window.dashboard.ready); i++)
                      await new Promise((r) => setTimeout(r, 50));
                    await window.dashboard.ready;";

#[test]
fn every_page_draws_the_known_store_without_console_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.duckdb");
    let fleet = token(&db, "fleet", "submit");
    let s = Served::start(&[
        "--results-only",
        "--public-read",
        "--db-path",
        db.to_str().unwrap(),
    ]);
    fill(&s, &fleet);
    let chart = |kind: &str, query: &str| -> Value {
        let (status, text) = s.get(&format!("/api/charts/{kind}{query}"));
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    };
    // The store gives these marks (see fill): one definition, checked here and in the browser.
    let latency = marks_in(&chart("latency-vs-batch", ""));
    let throughput = marks_in(&chart("throughput-by-platform", ""));
    let web_vs_native = marks_in(&chart("web-vs-native", ""));
    assert_eq!((latency, throughput, web_vs_native), (8, 5, 2));
    let latency_cuda = marks_in(&chart("latency-vs-batch", "?platform=cuda"));
    assert_eq!(latency_cuda, 3);
    let (status, page) = s.get("/dashboard");
    assert_eq!(status, 200);
    assert!(
        !page.contains("https://") && !page.contains("http://"),
        "nothing from elsewhere"
    );
    let (status, _) = s.get("/dashboard/nope");
    assert_eq!(status, 404);

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let viewer = ia_browser::Viewer::start(1400, 1000).unwrap();
    let look = |page: &str, facts: &str| -> Value {
        viewer
            .open(&format!("{}/dashboard/{page}", s.base))
            .unwrap();
        let v = viewer
            .eval(&format!("{WAIT} return {facts};"), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        let png = viewer.screenshot().unwrap();
        assert!(png.len() > 5000, "{page}: a blank screenshot");
        let name = page.split('?').next().unwrap();
        std::fs::write(shots.join(format!("{name}.png")), png).unwrap();
        let errors = viewer.console_errors().unwrap();
        assert!(errors.is_empty(), "{page}: console errors {errors:?}");
        assert_eq!(v["errors"], 0, "{page}: an error banner: {v}");
        v
    };
    let common = "errors: document.querySelectorAll('.error').length,
                  rows: window.dashboard.rows(), marks: window.dashboard.marks(),
                  text: document.getElementById('page').innerText";

    // Overview: the latest run of each machine, best platforms, failures.
    let v = look("overview", &format!("{{{common}}}"));
    let text = v["text"].as_str().unwrap();
    for expected in ["laptop", "gpu-box", "out of memory", "no WebGPU adapter"] {
        assert!(text.contains(expected), "overview lacks {expected}: {text}");
    }

    // The results explorer: all 22 results, both charts with every mark; a filter narrows
    // the rows and the charts alike.
    let v = look("results", &format!("{{{common}}}"));
    assert_eq!(v["rows"], 22, "{v}");
    assert_eq!(v["marks"]["latency-vs-batch"], latency, "{v}");
    assert_eq!(v["marks"]["throughput-by-platform"], throughput, "{v}");
    let v = viewer
        .eval(
            &format!(
                "{WAIT}
                 document.querySelector('#filters input[name=platform]').value = 'cuda';
                 document.getElementById('filters').requestSubmit();
                 await window.dashboard.ready;
                 return {{{common}, search: location.search}};"
            ),
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(v["rows"], 4, "{v}");
    assert_eq!(v["marks"]["latency-vs-batch"], latency_cuda, "{v}");
    assert_eq!(v["search"], "?platform=cuda");
    // Sortable: a click on a heading orders the rows by it, a second click reverses them.
    let v = viewer
        .eval(
            "const th = document.querySelector('th[data-column=latency_p50_ms]');
             const column = [...th.parentNode.children].indexOf(th);
             const first = () => document.querySelector('tr.row').children[column].innerText;
             th.click();
             const up = first();
             th.click();
             return [up, first()];",
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(v, json!(["0.500", "1.500"]));
    assert!(viewer.console_errors().unwrap().is_empty());

    // One model on every platform.
    let v = look("model?model=vit-b", &format!("{{{common}}}"));
    assert_eq!(
        v["marks"]["latency-vs-batch"],
        marks_in(&chart("latency-vs-batch", "?model=vit-b")),
        "{v}"
    );
    assert!(v["text"].as_str().unwrap().contains("vit-b"), "{v}");

    // The compatibility matrix: 13 classes x 8 platforms, reasons on hover.
    let v = look(
        "compatibility",
        &format!(
            "{{{common}, classes: document.querySelectorAll('#matrix tr').length - 1,
               cells: [...document.querySelectorAll('#matrix td')].map((td) => td.dataset.status),
               hover: [...document.querySelectorAll('#matrix td[title]')].map((td) => td.title).join('\\n')}}"
        ),
    );
    assert_eq!(v["classes"], 13, "{v}");
    let cells: Vec<&str> = v["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cells.len(), 13 * 8);
    let count = |s: &str| cells.iter().filter(|c| **c == s).count();
    assert_eq!(
        (
            count("pass"),
            count("fail"),
            count("unavailable"),
            count("untried")
        ),
        (4, 1, 1, 98),
        "{v}"
    );
    let hover = v["hover"].as_str().unwrap();
    for reason in [
        "no WebGPU adapter",
        "out of memory",
        "libnvidia-ml.so.1 not found",
    ] {
        assert!(hover.contains(reason), "no '{reason}' on hover: {hover}");
    }

    // Trends: db plot's trend chart, one chart per series, the change point marked.
    let v = look(
        "trends",
        &format!(
            "{{{common}, series: document.querySelectorAll('#series-charts figure').length,
               changes: [...document.querySelectorAll('#page section:last-child tr.row')].map((r) => r.innerText)}}"
        ),
    );
    assert!(v["series"].as_u64().unwrap() >= 1, "{v}");
    let changes = v["changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c.as_str().unwrap().contains("bert-a")),
        "no change point of bert-a's batch-8 series: {v}"
    );
    assert!(
        v["marks"]["trend"].as_u64().unwrap() >= marks_in(&chart("trend", "")),
        "{v}"
    );

    // Web vs native and the hardware inventory.
    let v = look("web", &format!("{{{common}}}"));
    assert_eq!(v["marks"]["web-vs-native"], web_vs_native, "{v}");
    assert!(v["text"].as_str().unwrap().contains("no WebGPU adapter"));
    let v = look("hardware", &format!("{{{common}}}"));
    assert_eq!(v["rows"], 5, "{v}");

    // The console check is live: a failed load is an error it sees.
    viewer
        .eval(
            "await fetch('/dashboard/assets/missing.js');",
            Duration::from_secs(10),
        )
        .unwrap();
    let errors = viewer.console_errors().unwrap();
    assert!(
        errors.iter().any(|e| e.contains("404")),
        "the console check saw nothing: {errors:?}"
    );

    // Reads behind tokens: the page says a token is needed, and reads with the one given.
    s.stop();
    let reader = token(&db, "viewer", "read");
    let s = Served::start(&["--results-only", "--db-path", db.to_str().unwrap()]);
    viewer
        .open(&format!("{}/dashboard/hardware", s.base))
        .unwrap();
    let v = viewer
        .eval(
            &format!("{WAIT} return {{{common}}};"),
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(v["errors"], 1, "{v}");
    assert!(
        v["text"].as_str().unwrap().contains("Enter a read token"),
        "{v}"
    );
    viewer.console_errors().unwrap();
    viewer
        .eval(
            &format!(
                "document.getElementById('token').value = '{reader}';
                 document.getElementById('token-form').requestSubmit();"
            ),
            Duration::from_secs(10),
        )
        .unwrap();
    let v = viewer
        .eval(
            &format!("await new Promise((r) => setTimeout(r, 500)); {WAIT} return {{{common}}};"),
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(
        (v["errors"].clone(), v["rows"].clone()),
        (json!(0), json!(5)),
        "{v}"
    );
    let errors = viewer.console_errors().unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    eprintln!("screenshots in {}", shots.display());
}
