//! `db trend`, `db regressions` and `db compare`: series and runs read from the store, the
//! statistics from `ia_analysis`.

use crate::predict::rows;
use anyhow::bail;
use ia_analysis::changepoint::{self, ChangePoint, Options};
use ia_analysis::compare::{self, Verdict};
use ia_db::Store;
use ia_serve::results::AnalysisParams;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The metrics a series can follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// p50 latency, ms
    P50,
    /// items per second
    Throughput,
    /// time to first token (p50), ms
    Ttft,
    /// decode tokens per second
    Decode,
    /// peak resident memory, MiB
    Memory,
}

impl Metric {
    fn column(self) -> &'static str {
        match self {
            Metric::P50 => "latency_p50_ms",
            Metric::Throughput => "throughput_items_per_s",
            Metric::Ttft => "ttft_p50_ms",
            Metric::Decode => "decode_tokens_per_s",
            Metric::Memory => "peak_rss_mb",
        }
    }

    fn lower_is_better(self) -> bool {
        matches!(self, Metric::P50 | Metric::Ttft | Metric::Memory)
    }

    fn name(self) -> &'static str {
        match self {
            Metric::P50 => "p50",
            Metric::Throughput => "throughput",
            Metric::Ttft => "ttft",
            Metric::Decode => "decode",
            Metric::Memory => "memory",
        }
    }
}

/// What `db trend` and `db regressions` take.
#[derive(clap::Args)]
pub struct SeriesArgs {
    #[arg(long, value_enum, default_value = "p50")]
    metric: Metric,
    /// Only series of models whose name contains this
    #[arg(long)]
    model: Option<String>,
    /// Only series on this platform (cpu, openvino, wasm, webgpu, ...)
    #[arg(long)]
    platform: Option<String>,
    /// Points per window of the change-point search
    #[arg(long, default_value_t = 64, value_parser = crate::limits::count((8, 100_000)))]
    window: usize,
    /// A change point's t-test p-value must be below this
    #[arg(long, default_value_t = 0.001, value_parser = probability)]
    p_value: f64,
    /// A change point must move the mean by at least this share (0.05 = 5%)
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    min_magnitude: f64,
    #[arg(long)]
    json: bool,
}

impl SeriesArgs {
    /// From the results service's query, with the checks of the flags.
    pub fn from_query(q: &AnalysisParams) -> Result<Self, String> {
        let metric = match &q.metric {
            Some(m) => <Metric as clap::ValueEnum>::from_str(m, true).map_err(|_| {
                format!("unknown metric '{m}' (p50, throughput, ttft, decode, memory)")
            })?,
            None => Metric::P50,
        };
        let window = match &q.window {
            Some(w) => match w.parse::<usize>() {
                Ok(n) if (8..=100_000).contains(&n) => n,
                _ => return Err(format!("window '{w}' is not a count in 8..=100000")),
            },
            None => 64,
        };
        Ok(Self {
            metric,
            model: q.model.clone(),
            platform: q.platform.clone(),
            window,
            p_value: q.p_value.as_deref().map_or(Ok(0.001), probability)?,
            min_magnitude: q.min_magnitude.as_deref().map_or(Ok(0.0), share)?,
            json: true,
        })
    }
}

impl CompareArgs {
    /// From the results service's query, with the checks of the flags.
    pub fn from_query(q: &AnalysisParams) -> Result<Self, String> {
        let run = |name: &str, v: &Option<String>| -> Result<i64, String> {
            v.as_deref()
                .ok_or_else(|| format!("compare needs {name}=RUN"))?
                .parse()
                .map_err(|_| format!("{name} is not a run id"))
        };
        Ok(Self {
            baseline: run("baseline", &q.baseline)?,
            candidate: run("candidate", &q.candidate)?,
            threshold: q.threshold.as_deref().map_or(Ok(0.05), share)?,
            json: true,
        })
    }
}

fn probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p > 0.0 && p < 1.0 => Ok(p),
        _ => Err(format!(
            "'{s}' is not a probability between 0 and 1 (exclusive)"
        )),
    }
}

fn share(s: &str) -> Result<f64, String> {
    let v = s.trim_end_matches('%');
    let scale = if v.len() < s.len() { 0.01 } else { 1.0 };
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x * scale),
        _ => Err(format!("'{s}' is not a non-negative share (0.05 or 5%)")),
    }
}

/// A row's combination (from `ia_db::trend::COMBINATION_COLUMNS`): a series, or what two runs share.
fn combination(r: &Value) -> Value {
    json!({
        "model": r["model"], "engine": r["engine"], "platform": r["platform"],
        "precision": r["precision"], "scenario": r["scenario"],
        "batch_size": r["batch_size"], "seq_len": r["seq_len"],
        "hardware_fingerprint": r["fingerprint"],
    })
}

/// One series: a combination on one machine, and its points in run order.
struct Series {
    key: Value,
    points: Vec<Value>,
}

fn series(store: &Store, args: &SeriesArgs) -> anyhow::Result<Vec<Series>> {
    let sql = ia_db::trend::series_sql(
        args.metric.column(),
        args.model.as_deref(),
        args.platform.as_deref(),
    );
    let mut by_key: BTreeMap<String, Series> = BTreeMap::new();
    for r in rows(store, &sql)? {
        let key = combination(&r);
        by_key
            .entry(key.to_string())
            .or_insert_with(|| Series {
                key,
                points: Vec::new(),
            })
            .points
            .push(r);
    }
    Ok(by_key.into_values().collect())
}

/// What differs between the runs on either side of a change: its likely cause.
fn environment_diff(before: &Value, after: &Value) -> Value {
    let mut diff = serde_json::Map::new();
    for field in [
        "engine_version",
        "git_commit",
        "command_line",
        "tool_version",
        "host",
        "device",
        "fingerprint",
    ] {
        if before[field] != after[field] {
            diff.insert(
                field.into(),
                json!({"before": before[field], "after": after[field]}),
            );
        }
    }
    Value::Object(diff)
}

fn change_json(metric: Metric, s: &Series, c: &ChangePoint) -> Value {
    let worse = if metric.lower_is_better() {
        c.magnitude > 0.0
    } else {
        c.magnitude < 0.0
    };
    let (before, after) = (&s.points[c.index - 1], &s.points[c.index]);
    json!({
        "series": s.key, "metric": metric.name(),
        "direction": if worse { "regression" } else { "improvement" },
        "before_mean": c.before_mean, "after_mean": c.after_mean,
        "magnitude": c.magnitude, "p_value": c.p_value,
        "before_points": c.before_points, "after_points": c.after_points,
        "last_before": {"run_id": before["run_id"], "result_id": before["result_id"],
                        "started_at": before["started_at"]},
        "first_after": {"run_id": after["run_id"], "result_id": after["result_id"],
                        "started_at": after["started_at"]},
        "environment_diff": environment_diff(before, after),
    })
}

fn detect(s: &Series, args: &SeriesArgs) -> Vec<ChangePoint> {
    let values: Vec<f64> = s
        .points
        .iter()
        .map(|p| p["value"].as_f64().unwrap_or(f64::NAN))
        .collect();
    changepoint::detect(
        &values,
        &Options {
            window: args.window,
            max_p_value: args.p_value,
            min_magnitude: args.min_magnitude,
        },
    )
}

fn describe(key: &Value) -> String {
    format!(
        "{} [{} {}] {} {} b={}{} @{}",
        key["model"].as_str().unwrap_or(""),
        key["engine"].as_str().unwrap_or(""),
        key["platform"].as_str().unwrap_or(""),
        key["precision"].as_str().unwrap_or(""),
        key["scenario"].as_str().unwrap_or(""),
        key["batch_size"],
        match key["seq_len"].as_i64() {
            Some(l) => format!(" seq={l}"),
            None => String::new(),
        },
        key["hardware_fingerprint"].as_str().unwrap_or("")
    )
}

/// `db trend`: every matching series with its points and change points.
pub fn trend(store: &Store, args: &SeriesArgs) -> anyhow::Result<()> {
    let out = trend_rows(store, args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for s in &out {
        let values: Vec<String> = s["points"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{:.4}", p["value"].as_f64().unwrap_or(f64::NAN)))
            .collect();
        println!(
            "{} {}: {} points, {} change point(s)\n  {}",
            describe(&s["series"]),
            args.metric.name(),
            values.len(),
            s["change_points"].as_array().map_or(0, Vec::len),
            values.join(" ")
        );
    }
    Ok(())
}

/// The series of `db trend` as JSON (also the results service's `/api/analysis/trend`).
pub fn trend_rows(store: &Store, args: &SeriesArgs) -> anyhow::Result<Vec<Value>> {
    let all = series(store, args)?;
    if all.is_empty() {
        bail!("no stored results match (metric {})", args.metric.name());
    }
    Ok(all
        .iter()
        .map(|s| {
            let changes: Vec<Value> = detect(s, args)
                .iter()
                .map(|c| change_json(args.metric, s, c))
                .collect();
            let points: Vec<Value> = s
                .points
                .iter()
                .map(|p| {
                    json!({"run_id": p["run_id"], "result_id": p["result_id"],
                           "started_at": p["started_at"], "value": p["value"]})
                })
                .collect();
            json!({"series": s.key, "label": describe(&s.key), "metric": args.metric.name(),
                   "points": points, "change_points": changes})
        })
        .collect())
}

/// `db regressions`: the change points of every matching series, regressions first.
pub fn regressions(store: &Store, args: &SeriesArgs) -> anyhow::Result<()> {
    let out = regression_report(store, args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let changes = out["change_points"].as_array().cloned().unwrap_or_default();
    println!(
        "{} series of {}; change points at p < {} (E-Divisive means + Student t-test):",
        out["series"],
        args.metric.name(),
        args.p_value
    );
    if changes.is_empty() {
        println!("  none");
    }
    for c in &changes {
        println!(
            "  {:<11} {}: {:.4} -> {:.4} ({:+.1}%, p = {:.2e}) between run {} and run {}",
            c["direction"].as_str().unwrap_or(""),
            describe(&c["series"]),
            c["before_mean"].as_f64().unwrap_or(f64::NAN),
            c["after_mean"].as_f64().unwrap_or(f64::NAN),
            c["magnitude"].as_f64().unwrap_or(f64::NAN) * 100.0,
            c["p_value"].as_f64().unwrap_or(f64::NAN),
            c["last_before"]["run_id"],
            c["first_after"]["run_id"]
        );
        if let Some(diff) = c["environment_diff"].as_object() {
            for (field, d) in diff {
                println!("      {field}: {} -> {}", d["before"], d["after"]);
            }
        }
    }
    Ok(())
}

/// The change points of `db regressions` as JSON (also `/api/analysis/regressions`).
pub fn regression_report(store: &Store, args: &SeriesArgs) -> anyhow::Result<Value> {
    let all = series(store, args)?;
    if all.is_empty() {
        bail!("no stored results match (metric {})", args.metric.name());
    }
    let mut changes: Vec<Value> = all
        .iter()
        .flat_map(|s| {
            detect(s, args)
                .into_iter()
                .map(|c| change_json(args.metric, s, &c))
                .collect::<Vec<_>>()
        })
        .collect();
    changes.sort_by_key(|c| c["direction"] != "regression");
    Ok(json!({
        "series": all.len(), "metric": args.metric.name(),
        "p_value_threshold": args.p_value, "min_magnitude": args.min_magnitude,
        "window": args.window, "change_points": changes,
    }))
}

/// What `db compare` takes.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// The run compared against
    #[arg(long)]
    baseline: i64,
    #[arg(long)]
    candidate: i64,
    /// A change smaller than this share of the baseline is no regression (5% or 0.05)
    #[arg(long, default_value = "5%", value_parser = share)]
    threshold: f64,
    #[arg(long)]
    json: bool,
}

/// Raw latency samples of every passing result of a run, by combination.
fn run_samples(store: &Store, run: i64) -> anyhow::Result<BTreeMap<String, (Value, Vec<f64>)>> {
    let exists = rows(
        store,
        &format!("SELECT count(*) AS n FROM runs WHERE run_id = {run}"),
    )?;
    if exists.first().and_then(|r| r["n"].as_i64()) != Some(1) {
        bail!("run {run} is not in the store (db query --sql 'SELECT * FROM runs' lists them)");
    }
    let sql = ia_db::trend::run_samples_sql(run);
    let mut out: BTreeMap<String, (Value, Vec<f64>)> = BTreeMap::new();
    let mut latest: BTreeMap<String, i64> = BTreeMap::new();
    for r in rows(store, &sql)? {
        let key = combination(&r);
        let k = key.to_string();
        let id = r["result_id"].as_i64().unwrap_or(0);
        // A combination measured twice in one run: its latest result.
        if latest.get(&k).is_some_and(|&l| l != id) {
            out.remove(&k);
        }
        latest.insert(k.clone(), id);
        out.entry(k)
            .or_insert_with(|| (key, Vec::new()))
            .1
            .push(r["latency_ms"].as_f64().unwrap_or(f64::NAN));
    }
    Ok(out)
}

/// `db compare`: per common combination, the candidate's latency against the baseline's;
/// an error (non-zero exit) when a significant regression beyond the threshold exists.
pub fn compare_runs(store: &Store, args: &CompareArgs) -> anyhow::Result<()> {
    let out = comparison(store, args)?;
    let rows = out["combinations"].as_array().cloned().unwrap_or_default();

    let regressions = rows
        .iter()
        .filter(|r| r["verdict"] == json!(Verdict::Regression))
        .count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "run {} vs run {}: latency ratio of medians (candidate / baseline), bootstrap 95% CI, \
             Mann-Whitney U p-values with Holm's correction, threshold {:.1}%",
            args.candidate,
            args.baseline,
            args.threshold * 100.0
        );
        for r in &rows {
            println!(
                "  {:<22} {}: {:.3}x [{:.3}..{:.3}], p = {:.2e} (Holm {:.2e})",
                r["verdict"].as_str().unwrap_or(""),
                describe(&r["combination"]),
                r["ratio"].as_f64().unwrap_or(f64::NAN),
                r["ratio_ci95"][0].as_f64().unwrap_or(f64::NAN),
                r["ratio_ci95"][1].as_f64().unwrap_or(f64::NAN),
                r["mann_whitney_p"].as_f64().unwrap_or(f64::NAN),
                r["holm_adjusted_p"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    if regressions > 0 {
        bail!(
            "{regressions} significant regression(s) beyond {:.1}% in run {} against run {}",
            args.threshold * 100.0,
            args.candidate,
            args.baseline
        );
    }
    Ok(())
}

/// The comparison of `db compare` as JSON (also `/api/analysis/compare`).
pub fn comparison(store: &Store, args: &CompareArgs) -> anyhow::Result<Value> {
    let base = run_samples(store, args.baseline)?;
    let cand = run_samples(store, args.candidate)?;
    let common: Vec<(&Value, &[f64], &[f64])> = base
        .iter()
        .filter_map(|(k, (key, b))| Some((key, b.as_slice(), cand.get(k)?.1.as_slice())))
        .collect();
    if common.is_empty() {
        bail!(
            "runs {} and {} have no combination with raw samples in common",
            args.baseline,
            args.candidate
        );
    }
    let compared: Vec<(&Value, compare::Comparison)> = common
        .iter()
        .filter_map(|(key, b, c)| Some((*key, compare::compare(b, c, 0)?)))
        .collect();
    let p: Vec<f64> = compared.iter().map(|(_, c)| c.mann_whitney_p).collect();
    let adjusted = compare::holm(&p);
    let rows: Vec<Value> = compared
        .iter()
        .zip(&adjusted)
        .map(|((key, c), &adj)| {
            let verdict = compare::verdict(c, adj, args.threshold, true);
            json!({"combination": key, "baseline_median_ms": c.baseline_median,
                   "candidate_median_ms": c.candidate_median, "ratio": c.ratio,
                   "ratio_ci95": [c.ratio_ci95.0, c.ratio_ci95.1],
                   "mann_whitney_p": c.mann_whitney_p, "holm_adjusted_p": adj,
                   "verdict": verdict})
        })
        .collect();
    Ok(json!({
        "baseline": args.baseline, "candidate": args.candidate,
        "threshold": args.threshold, "correction": "holm", "alpha": compare::ALPHA,
        "metric": "latency (raw samples)", "combinations": rows,
    }))
}
