//! Result files of the Python framework this project replaces (ipfs_accelerate_py), as
//! `ipfs-accelerate db migrate-json` reads them. Each file is recognised by its top-level keys
//! (never by its name or folder) as one of the 22 formats described in
//! `../shared/legacy-results/README.md`, and flattened into [`LegacyEntry`] rows.
//!
//! Nothing is invented: a figure the file does not hold stays `None` (no raw latencies means
//! no percentiles, not a copy of the mean); units are converted only where the format documents
//! them (`avg_latency`, `latencies`, `mean_latency`, `elapsed_time`, `execution_time` and
//! `model_load_time` are seconds). Simulation is recorded where the file marks it
//! (`is_simulation`, `platform_support.simulated`, `simulated_hardware` / simulation warnings,
//! a top-level `WARNING`, `is_simulated`, `MOCK` or `SIMULATED` implementation types), with the
//! marker that said so; every legacy entry is unverified whatever it claims.

use crate::stats::LatencyStats;
use serde_json::{Map, Value};

/// What a legacy entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Latency, throughput or memory figures of one model on one hardware type.
    Measurement,
    /// A "compatible" verdict, with or without figures behind it.
    Compatibility,
    /// A functional test run (a test script, a handler, an example).
    Test,
    /// A benchmark driver's progress log line (no figures).
    Progress,
    /// A ratio or percentage against something else (speedup vs cpu, shader improvement).
    Comparison,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Measurement => "measurement",
            EntryKind::Compatibility => "compatibility",
            EntryKind::Test => "test",
            EntryKind::Progress => "progress",
            EntryKind::Comparison => "comparison",
        }
    }
}

/// One row of a legacy file: a measurement, a verdict or a test outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyEntry {
    /// Where the entry sits in the file (JSON pointer), so a reader can find it again.
    pub path: String,
    pub kind: EntryKind,
    pub model: Option<String>,
    pub family: Option<String>,
    pub hardware: Option<String>,
    pub batch_size: Option<i64>,
    pub seq_len: Option<i64>,
    pub precision: Option<String>,
    /// What else names the configuration: `audio_5s`, a test case, a browser setting.
    pub detail: Option<String>,
    /// ok | failed | skipped | compatible | incompatible | unknown
    pub status: &'static str,
    pub error: Option<String>,
    pub implementation_type: Option<String>,
    /// The marker that says the entry was simulated; `None` when the file marks nothing.
    pub simulated: Option<String>,
    /// ISO-8601 (`YYYY-MM-DD HH:MM:SS[.ffffff]`, UTC where the file says so, else as written).
    pub timestamp: Option<String>,
    /// Per-iteration latencies when the file holds them, in milliseconds.
    pub samples_ms: Vec<f64>,
    /// Statistics of `samples_ms` (the harness's own), `None` without samples.
    pub stats: Option<LatencyStats>,
    pub mean_latency_ms: Option<f64>,
    pub throughput_items_per_s: Option<f64>,
    pub memory_mb: Option<f64>,
    pub load_time_s: Option<f64>,
    /// Wall time of the whole test or run the entry describes.
    pub execution_time_s: Option<f64>,
    pub iterations: Option<i64>,
    /// Speedup ratio or improvement percentage of a comparison entry.
    pub relative_value: Option<f64>,
}

impl LegacyEntry {
    fn new(path: String, kind: EntryKind) -> Self {
        Self {
            path,
            kind,
            model: None,
            family: None,
            hardware: None,
            batch_size: None,
            seq_len: None,
            precision: None,
            detail: None,
            status: "unknown",
            error: None,
            implementation_type: None,
            simulated: None,
            timestamp: None,
            samples_ms: vec![],
            stats: None,
            mean_latency_ms: None,
            throughput_items_per_s: None,
            memory_mb: None,
            load_time_s: None,
            execution_time_s: None,
            iterations: None,
            relative_value: None,
        }
    }

    /// Whether the entry holds any figure (a "compatible" without one is a claim, not a
    /// measurement).
    pub fn has_figures(&self) -> bool {
        !self.samples_ms.is_empty()
            || self.mean_latency_ms.is_some()
            || self.throughput_items_per_s.is_some()
            || self.memory_mb.is_some()
    }
}

/// A parsed legacy file.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyFile {
    pub format: &'static str,
    pub timestamp: Option<String>,
    pub host: Option<String>,
    /// Hardware types the file itself lists as simulated.
    pub simulated_hardware: Vec<String>,
    /// A file-wide warning (the top-level `WARNING` block's message).
    pub warning: Option<String>,
    pub entries: Vec<LegacyEntry>,
}

/// Why a file is not imported.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LegacyError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a known legacy result format (top-level keys: {0})")]
    UnknownFormat(String),
    #[error("{format}: {what}")]
    Malformed { format: &'static str, what: String },
}

type Result<T> = std::result::Result<T, LegacyError>;

/// Recognises the format of `text` and flattens it.
pub fn parse(text: &str) -> Result<LegacyFile> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| LegacyError::NotJson(e.to_string()))?;
    let format = detect(&root)?;
    let mut ctx = Context::new(format, &root);
    let entries = ctx.walk(&root)?;
    for e in &entries {
        check(format, e)?;
    }
    Ok(LegacyFile {
        format,
        timestamp: ctx.file_timestamp,
        host: ctx.host,
        simulated_hardware: ctx.simulated_hardware,
        warning: ctx.warning,
        entries,
    })
}

/// The format name, from the top-level keys.
pub fn detect(root: &Value) -> Result<&'static str> {
    if let Value::Array(rows) = root {
        if !rows.is_empty()
            && rows
                .iter()
                .all(|r| r.get("model_name").is_some() && r.get("hardware_type").is_some())
        {
            return Ok("performance_record_list");
        }
        return Err(LegacyError::UnknownFormat("a list of unknown rows".into()));
    }
    let Value::Object(o) = root else {
        return Err(LegacyError::UnknownFormat("not an object".into()));
    };
    let has = |k: &str| o.contains_key(k);
    let obj = |k: &str| o.get(k).is_some_and(Value::is_object);
    let format = if has("performance_benchmarks") && has("functionality_verification") {
        "suite_benchmark_results"
    } else if obj("benchmarks") && has("system_info") {
        "hardware_benchmark_run"
    } else if obj("model_families") && has("performance_comparison") {
        "benchmark_summary"
    } else if obj("model_families") && has("hardware_types") {
        "hardware_compatibility_matrix"
    } else if has("stats") && has("model_results") {
        "model_functionality"
    } else if obj("batch_sizes") && has("model") && has("hardware") {
        "model_hardware_benchmark"
    } else if obj("results") && has("models") && has("batch_sizes") {
        "batch_benchmarks"
    } else if obj("batch_results") && has("model") {
        "direct_benchmark"
    } else if has("completed_benchmarks") || has("failed_benchmarks") {
        "benchmark_progress"
    } else if has("inference") && has("training") && has("hardware_compatibility") {
        "aggregated_benchmarks"
    } else if has("model_key") && has("platform") && (has("metrics") || has("status")) {
        "web_platform_result"
    } else if o.get("results").is_some_and(Value::is_array) && has("platform") {
        "web_platform_batch"
    } else if obj("results_by_modality") {
        "web_platform_comparison"
    } else if o.get("tests").is_some_and(Value::is_array) && has("model") {
        "browser_shader_comparison"
    } else if obj("skill_tests") {
        "performance_test_skills"
    } else if o
        .get("metadata")
        .is_some_and(|m| m.get("test_files").is_some())
        && obj("results")
    {
        "performance_test_results"
    } else if o
        .get("metadata")
        .is_some_and(|m| m.get("test_file").is_some())
        && obj("results")
    {
        "hf_skill_performance"
    } else if has("test_file") && has("return_code") {
        "skill_test_run"
    } else if has("test_timestamp") && obj("model_results") {
        "critical_model_tests"
    } else if has("model") && has("platform") && has("success") {
        "real_vs_sim_test"
    } else if obj("results") && has("metadata") {
        "hardware_test_result"
    } else {
        let mut keys: Vec<&str> = o.keys().map(String::as_str).take(8).collect();
        if o.len() > 8 {
            keys.push("...");
        }
        return Err(LegacyError::UnknownFormat(keys.join(", ")));
    };
    Ok(format)
}

/// Every figure is a finite, non-negative number: a negative latency is a broken file, not a
/// measurement to keep.
fn check(format: &'static str, e: &LegacyEntry) -> Result<()> {
    let figures = [
        ("latency", e.mean_latency_ms),
        ("throughput", e.throughput_items_per_s),
        ("memory", e.memory_mb),
        ("load time", e.load_time_s),
        ("execution time", e.execution_time_s),
    ];
    for (name, v) in figures
        .into_iter()
        .chain(e.samples_ms.iter().map(|v| ("latency sample", Some(*v))))
    {
        if let Some(v) = v {
            if !v.is_finite() || v < 0.0 {
                return Err(LegacyError::Malformed {
                    format,
                    what: format!("{}: {name} {v} is not a non-negative number", e.path),
                });
            }
        }
    }
    for (name, v) in [("batch size", e.batch_size), ("iterations", e.iterations)] {
        if v.is_some_and(|v| !(0..=1 << 31).contains(&v)) {
            return Err(LegacyError::Malformed {
                format,
                what: format!("{}: {name} {v:?} out of range", e.path),
            });
        }
    }
    Ok(())
}

struct Context {
    format: &'static str,
    simulated_hardware: Vec<String>,
    warning: Option<String>,
    file_timestamp: Option<String>,
    host: Option<String>,
}

fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn join(path: &str, key: &str) -> String {
    format!("{path}/{}", pointer_escape(key))
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn integer(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn seconds_to_ms(v: Option<f64>) -> Option<f64> {
    v.map(|s| s * 1e3)
}

/// The last non-empty line of a traceback or log: the error itself.
fn last_line(v: Option<&Value>) -> Option<String> {
    let s = v?.as_str()?;
    s.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(500).collect())
}

/// `YYYYMMDD_HHMMSS`, ISO-8601, or Unix epoch seconds, as `YYYY-MM-DD HH:MM:SS[.ffffff]`.
pub fn normalise_timestamp(v: &Value) -> Option<String> {
    use chrono::{DateTime, NaiveDateTime};
    match v {
        Value::Number(n) => {
            let secs = n.as_f64()?;
            if !(0.0..1e11).contains(&secs) {
                return None;
            }
            let t = DateTime::from_timestamp(secs.trunc() as i64, (secs.fract() * 1e9) as u32)?;
            Some(t.naive_utc().format("%Y-%m-%d %H:%M:%S%.f").to_string())
        }
        Value::String(s) => {
            let s = s.trim();
            let t = NaiveDateTime::parse_from_str(s, "%Y%m%d_%H%M%S")
                .ok()
                .or_else(|| DateTime::parse_from_rfc3339(s).ok().map(|t| t.naive_utc()))
                .or_else(|| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok())
                .or_else(|| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").ok())?;
            Some(t.format("%Y-%m-%d %H:%M:%S%.f").to_string())
        }
        _ => None,
    }
}

fn timestamp(v: Option<&Value>) -> Option<String> {
    normalise_timestamp(v?)
}

/// `batch_4_seq_128`, `batch_1_audio_5s`, `batch_8`: batch size, sequence length and the rest.
fn parse_config(name: &str) -> (Option<i64>, Option<i64>, Option<String>) {
    let parts: Vec<&str> = name.split('_').collect();
    let (mut batch, mut seq, mut rest) = (None, None, vec![]);
    let mut i = 0;
    while i < parts.len() {
        match (
            parts[i],
            parts.get(i + 1).and_then(|p| p.parse::<i64>().ok()),
        ) {
            ("batch", Some(n)) => {
                batch = Some(n);
                i += 2;
            }
            ("seq", Some(n)) => {
                seq = Some(n);
                i += 2;
            }
            (p, _) => {
                rest.push(p);
                i += 1;
            }
        }
    }
    let rest = (!rest.is_empty()).then(|| rest.join("_"));
    (batch, seq, rest)
}

fn status_of(success: Option<bool>) -> &'static str {
    match success {
        Some(true) => "ok",
        Some(false) => "failed",
        None => "unknown",
    }
}

fn status_text(s: &str) -> &'static str {
    let l = s.to_ascii_lowercase();
    if l.starts_with("success") || l == "completed" || l == "passed" || l == "ok" {
        "ok"
    } else if l.starts_with("fail") || l == "error" {
        "failed"
    } else if l.starts_with("skip") {
        "skipped"
    } else {
        "unknown"
    }
}

impl Context {
    fn new(format: &'static str, root: &Value) -> Self {
        let mut simulated_hardware: Vec<String> = vec![];
        let mut add = |list: Option<&Value>| {
            for h in list.and_then(Value::as_array).into_iter().flatten() {
                if let Some(h) = h.as_str() {
                    let h = h.to_ascii_lowercase();
                    if !simulated_hardware.contains(&h) {
                        simulated_hardware.push(h);
                    }
                }
            }
        };
        add(root.get("simulated_hardware"));
        for w in root
            .get("warnings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if w.get("type").and_then(Value::as_str) == Some("simulation") {
                add(w.get("affected_hardware"));
            }
        }
        let warning = root.get("WARNING").map(|w| {
            text(w.get("message")).unwrap_or_else(|| "WARNING block without a message".into())
        });
        let file_timestamp = ["timestamp", "test_timestamp"]
            .iter()
            .find_map(|k| timestamp(root.get(*k)))
            .or_else(|| timestamp(root.pointer("/metadata/timestamp")))
            .or_else(|| timestamp(root.pointer("/stats/timestamp")));
        let host = text(root.pointer("/system_info/hostname"));
        Self {
            format,
            simulated_hardware,
            warning,
            file_timestamp,
            host,
        }
    }

    /// The marker that makes an entry simulated, checked after its fields are filled.
    fn mark(&self, e: &mut LegacyEntry, node: &Value) {
        if e.simulated.is_some() {
            return;
        }
        let implementation = e.implementation_type.clone().unwrap_or_default();
        e.simulated = if node.get("is_simulation").and_then(Value::as_bool) == Some(true) {
            Some("is_simulation".into())
        } else if node
            .pointer("/platform_support/simulated")
            .and_then(Value::as_bool)
            == Some(true)
        {
            Some("platform_support.simulated".into())
        } else if node.get("is_simulated").and_then(Value::as_bool) == Some(true) {
            Some("is_simulated".into())
        } else if implementation.to_ascii_uppercase().contains("MOCK")
            || implementation.to_ascii_uppercase().contains("SIMULATED")
        {
            Some(format!("implementation_type {implementation}"))
        } else if let Some(h) = e
            .hardware
            .as_ref()
            .filter(|h| self.simulated_hardware.contains(&h.to_ascii_lowercase()))
        {
            Some(format!("{h} listed in simulated_hardware"))
        } else {
            self.warning.as_ref().map(|w| format!("file WARNING: {w}"))
        };
    }

    fn finish(&self, mut e: LegacyEntry, node: &Value) -> LegacyEntry {
        if !e.samples_ms.is_empty() {
            e.stats = Some(LatencyStats::from_samples(&e.samples_ms));
        }
        if e.timestamp.is_none() {
            e.timestamp = timestamp(node.get("timestamp")).or_else(|| self.file_timestamp.clone());
        }
        self.mark(&mut e, node);
        e
    }

    fn malformed(&self, path: &str, what: &str) -> LegacyError {
        LegacyError::Malformed {
            format: self.format,
            what: format!("{}: {what}", if path.is_empty() { "/" } else { path }),
        }
    }

    fn object<'v>(&self, v: &'v Value, path: &str) -> Result<&'v Map<String, Value>> {
        v.as_object()
            .ok_or_else(|| self.malformed(path, "expected an object"))
    }

    fn walk(&mut self, root: &Value) -> Result<Vec<LegacyEntry>> {
        let mut out = vec![];
        match self.format {
            "suite_benchmark_results" => self.suite(root, "", &mut out)?,
            "hardware_benchmark_run" => self.hardware_run(root, "", &mut out)?,
            "benchmark_summary" => self.summary(root, &mut out)?,
            "hardware_compatibility_matrix" => self.compatibility_matrix(root, &mut out)?,
            "model_functionality" => self.functionality(root, "", &mut out)?,
            "model_hardware_benchmark" => self.model_hardware(root, &mut out)?,
            "batch_benchmarks" => self.batch(root, &mut out)?,
            "direct_benchmark" => self.direct(root, "", &mut out)?,
            "benchmark_progress" => self.progress(root, &mut out)?,
            "aggregated_benchmarks" => self.aggregated(root)?,
            "performance_record_list" => self.record_list(root, &mut out)?,
            "web_platform_result" => self.web_result(root, "", None, &mut out)?,
            "web_platform_batch" => {
                let platform = text(root.get("platform"));
                for (i, r) in root["results"].as_array().into_iter().flatten().enumerate() {
                    self.web_result(r, &format!("/results/{i}"), platform.clone(), &mut out)?;
                }
            }
            "web_platform_comparison" => self.web_comparison(root, &mut out)?,
            "browser_shader_comparison" => self.shader_comparison(root, &mut out)?,
            "hf_skill_performance" => {
                let model = text(root.pointer("/metadata/model"));
                self.skill_results(&root["results"], "/results", model, &mut out)
            }
            "performance_test_results" => self.test_results(root, &mut out)?,
            "performance_test_skills" => {
                for (file, run) in self.object(&root["skill_tests"], "/skill_tests")? {
                    self.skill_run(run, &join("/skill_tests", file), &mut out)?;
                }
            }
            "skill_test_run" => self.skill_run(root, "", &mut out)?,
            "critical_model_tests" => self.critical(root, &mut out)?,
            "real_vs_sim_test" => {
                let mut e = LegacyEntry::new(String::new(), EntryKind::Test);
                e.model = text(root.get("model"));
                e.hardware = text(root.get("platform"));
                e.status = status_of(root.get("success").and_then(Value::as_bool));
                e.error = text(root.get("error"));
                e.execution_time_s = number(root.get("total_execution_time"))
                    .or_else(|| number(root.get("execution_time")));
                out.push(self.finish(e, root));
            }
            "hardware_test_result" => self.hardware_test(root, &mut out)?,
            _ => unreachable!("detect returns only the formats above"),
        }
        Ok(out)
    }

    fn suite(&mut self, root: &Value, path: &str, out: &mut Vec<LegacyEntry>) -> Result<()> {
        let names: Vec<(String, String)> = root
            .get("models")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), text(v.get("name"))?)))
                    .collect()
            })
            .unwrap_or_default();
        let fv = join(path, "functionality_verification");
        for (hw, report) in self.object(&root["functionality_verification"], &fv)? {
            let start = out.len();
            self.functionality(report, &join(&fv, hw), out)?;
            // Functionality reports name models by key; the suite knows their checkpoints.
            for e in &mut out[start..] {
                if let Some((_, name)) = names.iter().find(|(k, _)| Some(k) == e.model.as_ref()) {
                    e.model = Some(name.clone());
                }
            }
        }
        let pb = join(path, "performance_benchmarks");
        for (family, run) in self.object(&root["performance_benchmarks"], &pb)? {
            let p = join(&pb, family);
            if run.get("benchmarks").is_some() {
                self.hardware_run(run, &p, out)?;
            } else {
                let mut e = LegacyEntry::new(p, EntryKind::Measurement);
                e.family = Some(family.clone());
                e.status = run
                    .get("status")
                    .and_then(Value::as_str)
                    .map_or("unknown", status_text);
                e.error = last_line(run.get("error"));
                out.push(self.finish(e, run));
            }
        }
        Ok(())
    }

    fn hardware_run(&mut self, root: &Value, path: &str, out: &mut Vec<LegacyEntry>) -> Result<()> {
        if self.host.is_none() {
            self.host = text(root.pointer("/system_info/hostname"));
        }
        let bp = join(path, "benchmarks");
        for (family, models) in self.object(&root["benchmarks"], &bp)? {
            let fp = join(&bp, family);
            for (model, hws) in self.object(models, &fp)? {
                let mp = join(&fp, model);
                for (hw, run) in self.object(hws, &mp)? {
                    let hp = join(&mp, hw);
                    let base = |p: String| {
                        let mut e = LegacyEntry::new(p, EntryKind::Measurement);
                        e.model = text(run.get("model_name")).or_else(|| Some(model.clone()));
                        e.family = Some(family.clone());
                        e.hardware = Some(hw.clone());
                        e.load_time_s = number(run.get("model_load_time"));
                        e.timestamp = timestamp(run.get("timestamp"));
                        e
                    };
                    let configs = run.get("benchmark_results").and_then(Value::as_object);
                    if configs.is_none_or(|c| c.is_empty()) {
                        let mut e = base(hp.clone());
                        e.status = run
                            .get("status")
                            .and_then(Value::as_str)
                            .map_or("unknown", status_text);
                        e.error = last_line(run.get("error"));
                        if e.status == "ok" {
                            // Completed without a single configuration: nothing was measured.
                            e.status = "unknown";
                        }
                        out.push(self.finish(e, run));
                        continue;
                    }
                    for (config, r) in configs.into_iter().flatten() {
                        let mut e = base(join(&join(&hp, "benchmark_results"), config));
                        (e.batch_size, e.seq_len, e.detail) = parse_config(config);
                        e.status = r
                            .get("status")
                            .and_then(Value::as_str)
                            .map_or("unknown", status_text);
                        e.error = last_line(r.get("error"));
                        // This format's latencies are seconds.
                        e.samples_ms = r
                            .get("latencies")
                            .and_then(Value::as_array)
                            .map(|l| {
                                l.iter()
                                    .filter_map(Value::as_f64)
                                    .map(|s| s * 1e3)
                                    .collect()
                            })
                            .unwrap_or_default();
                        e.mean_latency_ms = seconds_to_ms(number(r.get("avg_latency")));
                        e.throughput_items_per_s = number(r.get("throughput"));
                        e.execution_time_s = number(r.get("total_time"));
                        e.iterations = integer(r.get("iterations"));
                        out.push(self.finish(e, r));
                    }
                }
            }
        }
        Ok(())
    }

    fn summary(&self, root: &Value, out: &mut Vec<LegacyEntry>) -> Result<()> {
        for (family, f) in self.object(&root["model_families"], "/model_families")? {
            let fp = join("/model_families", family);
            let models: Vec<String> = f
                .get("models_tested")
                .and_then(Value::as_array)
                .map(|m| m.iter().filter_map(|v| text(Some(v))).collect())
                .unwrap_or_default();
            let Some(results) = f.get("hardware_results").and_then(Value::as_object) else {
                continue;
            };
            for (hw, r) in results {
                let list = |k: &str| -> Vec<Option<f64>> {
                    r.get(k)
                        .and_then(Value::as_array)
                        .map(|l| l.iter().map(|v| v.as_f64()).collect())
                        .unwrap_or_default()
                };
                let (lat, thr) = (list("latency_ms"), list("throughput"));
                // One value per completed model: the names line up only when every model
                // completed; otherwise the value is kept without a model name.
                let named = lat.len() == models.len();
                for i in 0..lat.len().max(thr.len()) {
                    let mut e = LegacyEntry::new(
                        format!(
                            "{}/latency_ms/{i}",
                            join(&join(&fp, "hardware_results"), hw)
                        ),
                        EntryKind::Measurement,
                    );
                    e.family = Some(family.clone());
                    e.model = named.then(|| models.get(i).cloned()).flatten();
                    e.hardware = Some(hw.clone());
                    e.status = "ok";
                    e.mean_latency_ms = lat.get(i).copied().flatten();
                    e.throughput_items_per_s = thr.get(i).copied().flatten();
                    out.push(self.finish(e, r));
                }
            }
        }
        if let Some(cmp) = root
            .get("performance_comparison")
            .and_then(Value::as_object)
        {
            for (family, c) in cmp {
                for (hw, v) in c
                    .get("relative_latency_speedup")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let mut e = LegacyEntry::new(
                        join(
                            &join(
                                &join("/performance_comparison", family),
                                "relative_latency_speedup",
                            ),
                            hw,
                        ),
                        EntryKind::Comparison,
                    );
                    e.family = Some(family.clone());
                    e.hardware = Some(hw.clone());
                    e.detail = Some("latency speedup vs cpu".into());
                    e.status = "ok";
                    e.relative_value = v.as_f64();
                    out.push(self.finish(e, c));
                }
            }
        }
        Ok(())
    }

    fn compatibility_matrix(&self, root: &Value, out: &mut Vec<LegacyEntry>) -> Result<()> {
        for (family, f) in self.object(&root["model_families"], "/model_families")? {
            let fp = join(&join("/model_families", family), "hardware_compatibility");
            let Some(hws) = f.get("hardware_compatibility").and_then(Value::as_object) else {
                continue;
            };
            for (hw, c) in hws {
                let hp = join(&fp, hw);
                let base = |p: String| {
                    let mut e = LegacyEntry::new(p, EntryKind::Compatibility);
                    e.family = Some(family.clone());
                    e.hardware = Some(hw.clone());
                    e.status = match c.get("compatible").and_then(Value::as_bool) {
                        Some(true) => "compatible",
                        Some(false) => "incompatible",
                        None => "unknown",
                    };
                    e.detail = text(c.get("performance_rating")).map(|r| format!("rating {r}"));
                    e
                };
                let runs = c.get("benchmark_results").and_then(Value::as_array);
                if runs.is_none_or(|r| r.is_empty()) {
                    out.push(self.finish(base(hp), c));
                    continue;
                }
                for (i, r) in runs.into_iter().flatten().enumerate() {
                    let mut e = base(format!("{hp}/benchmark_results/{i}"));
                    e.model = text(r.get("model_name"));
                    e.mean_latency_ms = seconds_to_ms(number(r.get("mean_latency")));
                    e.throughput_items_per_s = number(r.get("mean_throughput"));
                    out.push(self.finish(e, r));
                }
            }
        }
        Ok(())
    }

    fn functionality(&self, root: &Value, path: &str, out: &mut Vec<LegacyEntry>) -> Result<()> {
        if let Some(rows) = root.get("detailed_results").and_then(Value::as_array) {
            for (i, r) in rows.iter().enumerate() {
                let mut e = LegacyEntry::new(
                    format!("{}/{i}", join(path, "detailed_results")),
                    EntryKind::Test,
                );
                e.model = text(r.get("model"));
                e.hardware = text(r.get("hardware"));
                e.status = status_of(r.get("success").and_then(Value::as_bool));
                if e.status == "failed" {
                    e.error = last_line(r.get("stderr")).or_else(|| {
                        integer(r.get("return_code")).map(|c| format!("return code {c}"))
                    });
                }
                out.push(self.finish(e, r));
            }
            return Ok(());
        }
        let mp = join(path, "model_results");
        for (model, hws) in self.object(&root["model_results"], &mp)? {
            for (hw, ok) in self.object(hws, &join(&mp, model))? {
                let mut e = LegacyEntry::new(join(&join(&mp, model), hw), EntryKind::Test);
                e.model = Some(model.clone());
                e.hardware = Some(hw.clone());
                e.status = status_of(ok.as_bool());
                out.push(self.finish(e, root));
            }
        }
        Ok(())
    }

    fn model_hardware(&self, root: &Value, out: &mut Vec<LegacyEntry>) -> Result<()> {
        for (batch, r) in self.object(&root["batch_sizes"], "/batch_sizes")? {
            let mut e = LegacyEntry::new(join("/batch_sizes", batch), EntryKind::Measurement);
            e.model = text(root.get("model_path")).or_else(|| text(root.get("model")));
            e.family = text(root.get("model_category"));
            e.hardware = text(root.get("hardware_key")).or_else(|| text(root.get("hardware")));
            e.batch_size = batch.parse().ok();
            e.status = status_of(r.get("success").and_then(Value::as_bool));
            e.mean_latency_ms = number(r.get("latency_ms"));
            e.throughput_items_per_s = number(r.get("throughput"));
            e.memory_mb = number(r.get("memory_usage_mb"));
            e.timestamp = timestamp(root.get("timestamp"));
            out.push(self.finish(e, r));
        }
        Ok(())
    }

    fn batch(&self, root: &Value, out: &mut Vec<LegacyEntry>) -> Result<()> {
        for (model, r) in self.object(&root["results"], "/results")? {
            let rp = join("/results", model);
            if let Some(data) = r.get("benchmark_data").filter(|d| d.is_object()) {
                self.direct(data, &join(&rp, "benchmark_data"), out)?;
                continue;
            }
            if let Some(summary) = r.get("summary").and_then(Value::as_object) {
                for (batch, s) in summary {
                    let mut e = LegacyEntry::new(
                        join(&join(&rp, "summary"), batch),
                        EntryKind::Measurement,
                    );
                    e.model = Some(model.clone());
                    e.hardware = text(r.get("hardware")).or_else(|| text(root.get("hardware")));
                    e.batch_size = batch.parse().ok();
                    e.status = "ok";
                    e.mean_latency_ms = number(s.get("latency_ms"));
                    e.throughput_items_per_s = number(s.get("throughput"));
                    e.memory_mb = number(s.get("memory_mb"));
                    out.push(self.finish(e, r));
                }
                continue;
            }
            let mut e = LegacyEntry::new(rp, EntryKind::Measurement);
            e.model = Some(model.clone());
            e.hardware = text(r.get("hardware")).or_else(|| text(root.get("hardware")));
            e.status = match r.get("success").and_then(Value::as_bool) {
                Some(true) => "unknown",
                other => status_of(other),
            };
            e.error = last_line(r.get("stderr")).or_else(|| text(r.get("error")));
            out.push(self.finish(e, r));
        }
        Ok(())
    }

    fn direct(&self, root: &Value, path: &str, out: &mut Vec<LegacyEntry>) -> Result<()> {
        let bp = join(path, "batch_results");
        for (batch, r) in self.object(&root["batch_results"], &bp)? {
            let mut e = LegacyEntry::new(join(&bp, batch), EntryKind::Measurement);
            e.model = text(root.get("model"));
            e.hardware = text(root.get("hardware"));
            e.batch_size = integer(r.get("batch_size")).or_else(|| batch.parse().ok());
            e.status = status_of(r.get("success").and_then(Value::as_bool));
            e.error = text(r.get("error"));
            e.samples_ms = r
                .get("latencies_ms")
                .and_then(Value::as_array)
                .map(|l| l.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            e.mean_latency_ms = number(r.get("avg_latency_ms"));
            e.throughput_items_per_s = number(r.get("throughput_items_per_second"));
            e.memory_mb = number(r.get("memory_mb"));
            e.detail = text(r.get("device")).map(|d| format!("device {d}"));
            out.push(self.finish(e, r));
        }
        Ok(())
    }

    fn progress(&self, root: &Value, out: &mut Vec<LegacyEntry>) -> Result<()> {
        for (key, status) in [
            ("completed_benchmarks", "ok"),
            ("failed_benchmarks", "failed"),
            ("skipped_benchmarks", "skipped"),
        ] {
            for (i, r) in root
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let mut e = LegacyEntry::new(format!("/{key}/{i}"), EntryKind::Progress);
                e.model = text(r.get("model_type"));
                e.hardware = text(r.get("hardware_type"));
                e.status = status;
                e.error = text(r.get("error"))
                    .map(|m| m.lines().next().unwrap_or_default().to_string())
                    .or_else(|| last_line(r.get("stderr")));
                out.push(self.finish(e, r));
            }
        }
        Ok(())
    }

    fn aggregated(&self, root: &Value) -> Result<()> {
        for key in ["inference", "training", "hardware_compatibility"] {
            if root[key].as_object().is_some_and(|o| !o.is_empty())
                || root[key].as_array().is_some_and(|a| !a.is_empty())
            {
                // Every upstream file has these empty; what a filled one holds is undocumented,
                // and guessing would invent meaning.
                return Err(self.malformed(
                    &format!("/{key}"),
                    "section is not empty and its layout is undocumented",
                ));
            }
        }
        Ok(())
    }

    fn record_list(&self, root: &Value, out: &mut Vec<LegacyEntry>) -> Result<()> {
        for (i, r) in root.as_array().into_iter().flatten().enumerate() {
            let mut e = LegacyEntry::new(format!("/{i}"), EntryKind::Measurement);
            e.model = text(r.get("model_name"));
            e.family = text(r.get("model_family"));
            e.hardware = text(r.get("hardware_type"));
            e.batch_size = integer(r.get("batch_size"));
            e.precision = text(r.get("precision"));
            e.detail = [
                text(r.get("test_case")),
                text(r.get("device_name")).map(|d| format!("device {d}")),
            ]
            .into_iter()
            .flatten()
            .reduce(|a, b| format!("{a}; {b}"));
            e.status = "ok";
            e.mean_latency_ms = number(r.get("average_latency_ms"));
            e.throughput_items_per_s = number(r.get("throughput_items_per_second"));
            e.memory_mb = number(r.get("memory_peak_mb"));
            e.execution_time_s = number(r.get("total_time_seconds"));
            e.iterations = integer(r.get("iterations"));
            out.push(self.finish(e, r));
        }
        Ok(())
    }

    fn web_result(
        &self,
        r: &Value,
        path: &str,
        platform: Option<String>,
        out: &mut Vec<LegacyEntry>,
    ) -> Result<()> {
        self.object(r, path)?;
        let mut e = LegacyEntry::new(path.to_string(), EntryKind::Measurement);
        e.model = text(r.get("model_name")).or_else(|| text(r.get("model_key")));
        e.family = text(r.get("modality"));
        e.hardware = text(r.get("platform")).or(platform);
        e.status = r
            .get("status")
            .and_then(Value::as_str)
            .map_or("unknown", status_text);
        e.error = text(r.get("error"));
        e.implementation_type = text(r.get("implementation_type"));
        e.mean_latency_ms = number(r.pointer("/metrics/inference_time_ms"));
        e.load_time_s = number(r.pointer("/metrics/load_time_ms")).map(|ms| ms / 1e3);
        e.memory_mb = number(r.pointer("/metrics/memory_mb"));
        e.throughput_items_per_s = number(r.pointer("/metrics/throughput_items_per_second"));
        out.push(self.finish(e, r));
        Ok(())
    }

    fn web_comparison(&self, root: &Value, out: &mut Vec<LegacyEntry>) -> Result<()> {
        let mp = "/results_by_modality";
        for (modality, rows) in self.object(&root["results_by_modality"], mp)? {
            for (i, row) in rows.as_array().into_iter().flatten().enumerate() {
                for (platform, r) in row.as_object().into_iter().flatten() {
                    if !r.is_object() {
                        continue;
                    }
                    let mut e = LegacyEntry::new(
                        format!("{}/{i}/{}", join(mp, modality), pointer_escape(platform)),
                        EntryKind::Measurement,
                    );
                    e.model = text(row.get("model"));
                    e.family = Some(modality.clone());
                    e.hardware = Some(platform.clone());
                    e.status = status_of(r.get("success").and_then(Value::as_bool));
                    e.error = text(r.get("error"));
                    e.implementation_type = text(r.get("implementation"));
                    e.mean_latency_ms = number(r.get("time_ms"));
                    e.memory_mb = number(r.get("memory_mb"));
                    out.push(self.finish(e, r));
                }
            }
        }
        Ok(())
    }

    fn shader_comparison(&self, root: &Value, out: &mut Vec<LegacyEntry>) -> Result<()> {
        for (i, t) in root["tests"].as_array().into_iter().flatten().enumerate() {
            let mut e = LegacyEntry::new(format!("/tests/{i}"), EntryKind::Comparison);
            e.model = text(t.get("model")).or_else(|| text(root.get("model")));
            let shaders = match t.get("compute_shaders").and_then(Value::as_bool) {
                Some(true) => "compute shaders on",
                Some(false) => "compute shaders off",
                None => "compute shaders unknown",
            };
            e.detail = Some(format!(
                "{}, {shaders}: improvement percent",
                text(t.get("browser")).unwrap_or_else(|| "browser unknown".into())
            ));
            e.status = status_of(t.get("success").and_then(Value::as_bool));
            e.relative_value = number(t.pointer("/performance/improvement_percentage"));
            out.push(self.finish(e, t));
        }
        Ok(())
    }

    /// One example object of a test script's output: platform, implementation, time.
    fn example(&self, x: &Value, path: String, model: Option<String>) -> LegacyEntry {
        let mut e = LegacyEntry::new(path, EntryKind::Test);
        e.model = model;
        e.hardware = text(x.get("platform")).map(|p| p.to_ascii_lowercase());
        e.implementation_type =
            text(x.get("implementation_type")).or_else(|| text(x.get("implementation")));
        e.status = "ok";
        e.execution_time_s = number(x.get("elapsed_time"))
            .or_else(|| number(x.pointer("/performance/inference_time")));
        self.finish(e, x)
    }

    /// A test script's results: `{status, examples}` or a flat map with `*_example` objects.
    fn skill_results(
        &self,
        results: &Value,
        path: &str,
        model: Option<String>,
        out: &mut Vec<LegacyEntry>,
    ) {
        let model = text(results.pointer("/metadata/model_name"))
            .or_else(|| text(results.get("model_name")))
            .or(model);
        if let Some(examples) = results.get("examples").and_then(Value::as_array) {
            for (i, x) in examples.iter().enumerate() {
                out.push(self.example(x, format!("{path}/examples/{i}"), model.clone()));
            }
        }
        for (k, x) in results.as_object().into_iter().flatten() {
            if k.ends_with("_example") && x.is_object() {
                out.push(self.example(x, join(path, k), model.clone()));
            }
        }
    }

    fn test_results(&self, root: &Value, out: &mut Vec<LegacyEntry>) -> Result<()> {
        for (file, r) in self.object(&root["results"], "/results")? {
            let rp = join("/results", file);
            let mut e = LegacyEntry::new(rp.clone(), EntryKind::Test);
            e.detail = Some(file.clone());
            e.status = r
                .get("status")
                .and_then(Value::as_str)
                .map_or("unknown", status_text);
            e.error = text(r.get("error"));
            e.execution_time_s = number(r.get("execution_time"));
            out.push(self.finish(e, r));
            for (platform, m) in r
                .get("performance_metrics")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let pp = join(&join(&rp, "performance_metrics"), platform);
                for (k, x) in m.as_object().into_iter().flatten() {
                    if k.ends_with("_example") && x.is_object() {
                        let mut x = self.example(x, join(&pp, k), None);
                        x.hardware.get_or_insert_with(|| platform.clone());
                        x.detail = Some(file.clone());
                        out.push(x);
                    }
                }
            }
        }
        Ok(())
    }

    fn skill_run(&self, r: &Value, path: &str, out: &mut Vec<LegacyEntry>) -> Result<()> {
        self.object(r, path)?;
        let mut e = LegacyEntry::new(path.to_string(), EntryKind::Test);
        e.detail = text(r.get("test_file"));
        e.status = match integer(r.get("return_code")) {
            Some(0) => "ok",
            Some(_) => "failed",
            None => "unknown",
        };
        e.error = text(r.get("json_parse_error"))
            .map(|m| format!("json_parse_error: {m}"))
            .or_else(|| {
                (e.status == "failed")
                    .then(|| last_line(r.get("stderr")))
                    .flatten()
            });
        e.execution_time_s = number(r.get("elapsed_time"));
        let model = text(r.pointer("/json_result/model_name"));
        e.model = model.clone();
        out.push(self.finish(e, r));
        if let Some(j) = r.get("json_result").filter(|j| j.is_object()) {
            self.skill_results(j, &join(path, "json_result"), model, out);
        }
        Ok(())
    }

    fn critical(&self, root: &Value, out: &mut Vec<LegacyEntry>) -> Result<()> {
        for (model, r) in self.object(&root["model_results"], "/model_results")? {
            let rp = join("/model_results", model);
            let mut e = LegacyEntry::new(rp.clone(), EntryKind::Test);
            e.model = Some(model.clone());
            e.status = r
                .get("status")
                .and_then(Value::as_str)
                .map_or("unknown", status_text);
            if e.status == "failed" {
                e.error = last_line(r.get("stderr"));
            }
            e.execution_time_s = number(r.get("elapsed_time"));
            out.push(self.finish(e, r));
            if let Some(data) = r.get("structured_data").filter(|d| d.is_object()) {
                self.skill_results(
                    data,
                    &join(&rp, "structured_data"),
                    Some(model.clone()),
                    out,
                );
            }
        }
        Ok(())
    }

    fn hardware_test(&self, root: &Value, out: &mut Vec<LegacyEntry>) -> Result<()> {
        let model = text(root.pointer("/metadata/model_id"));
        for (hw, r) in self.object(&root["results"], "/results")? {
            let mut e = LegacyEntry::new(join("/results", hw), EntryKind::Test);
            e.model = model.clone();
            e.hardware = Some(hw.clone());
            e.status = status_of(r.get("success").and_then(Value::as_bool));
            e.error = text(r.get("error"));
            e.implementation_type = text(r.get("implementation_type"));
            e.execution_time_s = number(r.get("execution_time"));
            e.timestamp = timestamp(root.pointer("/metadata/timestamp"));
            out.push(self.finish(e, r));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_names_give_batch_and_length() {
        assert_eq!(parse_config("batch_4_seq_128"), (Some(4), Some(128), None));
        assert_eq!(
            parse_config("batch_1_audio_5s"),
            (Some(1), None, Some("audio_5s".into()))
        );
    }

    #[test]
    fn timestamps_of_every_style_are_normalised() {
        let t = |v: Value| normalise_timestamp(&v);
        assert_eq!(t("20250305_202703".into()).unwrap(), "2025-03-05 20:27:03");
        assert_eq!(
            t("2025-03-05T20:27:03.137713".into()).unwrap(),
            "2025-03-05 20:27:03.137713"
        );
        assert_eq!(
            t("2025-03-02T12:00:00Z".into()).unwrap(),
            "2025-03-02 12:00:00"
        );
        assert_eq!(t(1740730783.0.into()).unwrap(), "2025-02-28 08:19:43");
        assert_eq!(t("yesterday".into()), None);
    }

    #[test]
    fn raw_latencies_give_percentiles_and_a_mean_alone_gives_none() {
        let with = r#"{"model": "m", "hardware": "cpu", "success": true, "batch_results": {
            "1": {"success": true, "avg_latency_ms": 2.0, "latencies_ms": [1.0, 2.0, 3.0]},
            "2": {"success": true, "avg_latency_ms": 5.0}}}"#;
        let f = parse(with).unwrap();
        assert_eq!(f.format, "direct_benchmark");
        let stats = f.entries[0].stats.as_ref().unwrap();
        assert_eq!(stats.p50_ms, 2.0);
        assert!(f.entries[1].stats.is_none());
        assert_eq!(f.entries[1].mean_latency_ms, Some(5.0));
    }

    #[test]
    fn simulation_markers_are_kept_with_what_said_so() {
        let f = parse(
            r#"{"model_key": "bert", "model_name": "bert-base", "platform": "webgpu",
                "status": "success", "implementation_type": "REAL_WEBGPU", "is_simulation": true,
                "metrics": {"inference_time_ms": 80}}"#,
        )
        .unwrap();
        assert_eq!(f.entries[0].simulated.as_deref(), Some("is_simulation"));
        let f = parse(
            r#"{"model_families": {"vision": {"hardware_compatibility": {
                "rocm": {"compatible": true}, "cpu": {"compatible": true}}}},
                "hardware_types": ["cpu", "rocm"], "simulated_hardware": ["rocm"]}"#,
        )
        .unwrap();
        let rocm = f
            .entries
            .iter()
            .find(|e| e.hardware.as_deref() == Some("rocm"));
        assert!(rocm.unwrap().simulated.is_some());
        let cpu = f
            .entries
            .iter()
            .find(|e| e.hardware.as_deref() == Some("cpu"));
        assert!(cpu.unwrap().simulated.is_none());
        assert!(!cpu.unwrap().has_figures());
    }

    #[test]
    fn unknown_and_broken_files_are_refused_with_a_reason() {
        assert!(matches!(
            parse("{\"a\": 1}"),
            Err(LegacyError::UnknownFormat(_))
        ));
        assert!(matches!(parse("{"), Err(LegacyError::NotJson(_))));
        let negative = r#"{"model": "m", "hardware": "cpu", "batch_results": {
            "1": {"success": true, "avg_latency_ms": -2.0}}}"#;
        let e = parse(negative).unwrap_err().to_string();
        assert!(e.contains("/batch_results/1") && e.contains("-2"), "{e}");
    }
}
