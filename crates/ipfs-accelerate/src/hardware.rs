//! `ipfs-accelerate hardware`: what this machine has, why a platform is absent, and with
//! `--calibrate` what its engines sustain (matmul FLOP/s per precision, memory bandwidth: the
//! fastest of rounds a pass over the engines apart) and what dispatching a call and an
//! operation costs them, stored in the results store for the predictor.

use crate::results::{hardware_record, host_name};
use crate::target::Engines;
use anyhow::Context;
use ia_db::{CalibrationRecord, ReadOptions, Store};
use ia_engine::calibration::{BANDWIDTH_ROUNDS, DISPATCH_OPS, STREAM_OPS};
use ia_engine::{Bandwidth, DispatchCost, EngineError, MatmulRate, Placement, Precision};
use ia_hardware::{HardwareReport, Platform, RuntimeLibrary};
use std::path::Path;

#[derive(clap::Args)]
pub struct Args {
    /// Print the full report as JSON
    #[arg(long)]
    json: bool,
    /// Skip the in-browser probe of webgpu, webnn and wasm (it starts headless Chromium)
    #[arg(long)]
    no_browser: bool,
    /// Measure each available platform's engines with short micro-benchmarks (dense matmul
    /// FLOP/s per precision, memory bandwidth, the cost of a call and of each operation in
    /// it) and store them in the results database
    #[arg(long)]
    calibrate: bool,
    /// Internal to `--calibrate`: load ENGINE's runtime on PLATFORM in this fresh process, run
    /// its dispatch calibration and print the process's peak resident bytes
    #[arg(long, hide = true, num_args = 2, value_names = ["ENGINE", "PLATFORM"])]
    program_memory_of: Option<Vec<String>>,
    #[command(flatten)]
    store: crate::run_store::StoreArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some([engine, platform]) = args.program_memory_of.as_deref() {
        println!("{}", program_peak(engine, platform.parse()?)?);
        return Ok(());
    }
    let mut report = ia_hardware::detect();
    report.runtimes = with_execution_providers(report.runtimes);
    if !args.no_browser {
        // The web platforms are what the browser itself reports: its WebGPU adapter and
        // WebNN contexts, or its own error text.
        let _ = ia_browser::probe(&mut report);
    }
    let mut refused = Vec::new();
    if args.calibrate {
        refused = calibrate(&report, &args.store.db_path)?;
    }
    // The report stands without the store: an unreadable or older store is only a note.
    let stored =
        stored_calibrations(&args.store.db_path, &report.fingerprint).unwrap_or_else(|e| {
            eprintln!("note: stored calibrations not shown: {e:#}");
            serde_json::Value::Array(vec![])
        });
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["calibrations"] = serde_json::to_value(&stored)?;
        v["calibration_refusals"] = serde_json::to_value(&refused)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&report));
        print!("{}", render_calibrations(&stored, &refused));
    }
    Ok(())
}

/// A calibration an engine could not make, and why.
#[derive(Debug, serde::Serialize)]
pub struct Refusal {
    pub platform: Platform,
    pub engine: String,
    /// "matmul", "dispatch", both for an engine that refuses the platform, or
    /// "program-memory".
    pub kind: &'static str,
    pub precision: Option<Precision>,
    pub reason: String,
}

/// The precisions a matmul calibration is tried at: the floating-point ones, int8, and the
/// block-quantised weights whose products multiply 8-bit integers (the native engine's
/// quantised decoders), each engine refusing what it does not run.
const CALIBRATED_PRECISIONS: [Precision; 6] = [
    Precision::F32,
    Precision::F16,
    Precision::Bf16,
    Precision::Int8,
    Precision::Q8_0,
    Precision::Q4K,
];

/// Bytes of each of the triad's three arrays: far beyond any cache of this class of machine.
const TRIAD_ARRAY_BYTES: u64 = 128 << 20;

/// The calibration kind of a program's resident memory with an engine's runtime loaded and
/// run (bytes): what a model's peak comes on top of, which a target without measurements has
/// only from here.
pub(crate) const PROGRAM_MEMORY: &str = "program-memory";
/// The kind of a memory-bandwidth figure: the host's STREAM triad (engine `stream-triad`, on
/// the CPU platform's row), or an engine's own on a device with memory of its own.
pub(crate) const MEMORY_BANDWIDTH: &str = "memory-bandwidth";
/// The engine name of the host's STREAM triad figure.
pub(crate) const HOST_BANDWIDTH: &str = "stream-triad";

/// The peak resident bytes of this process, a fresh one that has detected the hardware and
/// opened a store as a benchmark process does, while `engine`'s runtime loads on `platform`
/// and runs its dispatch calibration's tiny MatMuls: what a benchmark process holds before
/// its model.
fn program_peak(engine: &str, platform: Platform) -> anyhow::Result<u64> {
    let engines = Engines::new();
    let engine = engines
        .all()
        .into_iter()
        .find(|e| e.name() == engine)
        .ok_or_else(|| anyhow::anyhow!("no engine named {engine}"))?;
    // What a benchmark process does before its first model: detect the hardware, open and
    // write the store (a scratch one here, which the calibrating process does not hold).
    let _ = ia_hardware::detect();
    let scratch = std::env::temp_dir().join(format!("ia-program-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let opened = Store::open_or_create(&scratch.join("scratch.duckdb")).map(drop);
    let _ = std::fs::remove_dir_all(&scratch);
    opened?;
    // The peak from here on, as a benchmark counts it from its model's load.
    ia_bench::memory::reset_peak_rss();
    engine.calibrate_dispatch(Placement::new(platform, Precision::F32))?;
    ia_bench::memory::peak_rss_bytes().context("the OS reports no peak resident memory")
}

/// Child processes a program-memory figure is the median of: one process's peak varied from
/// 86 to 94 MiB from the next (the native engine).
const PROGRAM_SAMPLES: usize = 3;

/// [`program_peak`] of `engine` on `platform`, the median of [`PROGRAM_SAMPLES`] child
/// processes of this program: in the calibrating process, hardware detection and the engines
/// calibrated before have loaded libraries that a benchmark process of one engine never holds
/// (the native engine's program came out at 112 MiB there, where a tiny model's whole run
/// peaks at 96-99 MiB).
fn program_memory(engine: &str, platform: Platform) -> anyhow::Result<u64> {
    let mut peaks = (0..PROGRAM_SAMPLES)
        .map(|_| {
            let out = std::process::Command::new(std::env::current_exe()?)
                .args(["hardware", "--program-memory-of", engine, platform.as_str()])
                .stdin(std::process::Stdio::null())
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(String::from_utf8_lossy(&out.stdout).trim().parse::<u64>()?)
        })
        .collect::<anyhow::Result<Vec<u64>>>()?;
    peaks.sort_unstable();
    Ok(peaks[PROGRAM_SAMPLES / 2])
}

/// Calibrates every available platform with every in-process engine at every precision it
/// takes, plus the host's memory bandwidth; stores what was measured (one transaction per
/// platform) and returns what was refused, with the reasons.
fn calibrate(report: &HardwareReport, db_path: &Path) -> anyhow::Result<Vec<Refusal>> {
    let engines = Engines::new();
    let host = host_name();
    let mut store = Store::open_or_create(db_path)?;
    let mut refused = Vec::new();
    for status in report.platforms.iter().filter(|s| s.available) {
        let mut figures = Vec::new();
        let mut device = status
            .devices
            .first()
            .cloned()
            .unwrap_or_else(|| "none".into());
        // The matmul rates, every engine and precision in turn, in rounds: the fastest
        // round of each is kept.
        let mut rates: Vec<Vec<Option<MatmulRate>>> =
            vec![vec![None; CALIBRATED_PRECISIONS.len()]; engines.all().len()];
        let mut engine_refusals: Vec<Vec<Refusal>> = engines.all().iter().map(|_| vec![]).collect();
        for round in 0..RATE_ROUNDS {
            for (i, engine) in engines.all().into_iter().enumerate() {
                for (k, &precision) in CALIBRATED_PRECISIONS.iter().enumerate() {
                    if round > 0 && rates[i][k].is_none() {
                        continue; // refused in the first round
                    }
                    let at = Placement::new(status.platform, precision);
                    match engine.calibrate_matmul(at) {
                        Ok(rate) => rates[i][k] = Some(faster(rates[i][k].take(), rate)),
                        Err(EngineError::Unsupported(reason)) if round == 0 => engine_refusals[i]
                            .push(Refusal {
                                platform: status.platform,
                                engine: engine.name().into(),
                                kind: "matmul",
                                precision: Some(precision),
                                reason,
                            }),
                        Err(e) => anyhow::bail!(
                            "calibrating {} on {} at {precision}: {e}",
                            engine.name(),
                            status.platform
                        ),
                    }
                }
            }
        }
        for ((engine, engine_rates), mut engine_refused) in
            engines.all().into_iter().zip(rates).zip(engine_refusals)
        {
            for (&precision, rate) in CALIBRATED_PRECISIONS.iter().zip(engine_rates) {
                if let Some(rate) = rate {
                    figures.push(matmul_figure(
                        status.platform,
                        engine.name(),
                        engine.version(),
                        precision,
                        &rate,
                        RATE_ROUNDS,
                    ));
                    device = rate.device;
                }
            }
            // An engine that refuses the platform outright says so once.
            let all_alike = engine_refused.len() == CALIBRATED_PRECISIONS.len()
                && engine_refused
                    .iter()
                    .all(|r| r.reason == engine_refused[0].reason);
            if all_alike {
                engine_refused.truncate(1);
                engine_refused[0].precision = None;
                engine_refused[0].kind = "matmul, dispatch";
            }
            refused.extend(engine_refused);
            if all_alike {
                continue;
            }
            // Dispatch costs do not depend on the precision of the arithmetic: f32 only.
            let at = Placement::new(status.platform, Precision::F32);
            let dispatch = engine.calibrate_dispatch(at);
            if let Some(cost) = calibrated(dispatch, at, engine.name(), "dispatch", &mut refused)? {
                figures.extend(dispatch_figures(
                    status.platform,
                    engine.name(),
                    engine.version(),
                    &cost,
                ));
            }
            if status.platform.has_own_memory() {
                let bandwidth = engine.calibrate_bandwidth(at);
                if let Some(b) =
                    calibrated(bandwidth, at, engine.name(), MEMORY_BANDWIDTH, &mut refused)?
                {
                    figures.push(bandwidth_figure(
                        status.platform,
                        engine.name(),
                        engine.version(),
                        &b,
                    ));
                }
            }
            match program_memory(engine.name(), status.platform) {
                Ok(bytes) => figures.push(program_figure(
                    status.platform,
                    engine.name(),
                    engine.version(),
                    bytes,
                )),
                Err(e) => refused.push(Refusal {
                    platform: status.platform,
                    engine: engine.name().into(),
                    kind: PROGRAM_MEMORY,
                    precision: None,
                    reason: format!("{e:#}"),
                }),
            }
        }
        if matches!(
            status.platform,
            Platform::Wasm | Platform::Webgpu | Platform::Webnn
        ) {
            // A fresh browser per platform, as the benchmark starts one per combination.
            let mut web = ia_browser::WebBench::new(ia_browser::WebOptions::default());
            let (platform, engine) = (status.platform, ia_browser::ENGINE_NAME);
            let mut refuse = |kind, precision, e: ia_browser::BrowserError| {
                refused.push(Refusal {
                    platform,
                    engine: engine.into(),
                    kind,
                    precision,
                    reason: e.to_string(),
                })
            };
            match web.calibrate_matmul(platform) {
                Ok(rate) => figures.push(matmul_figure(
                    platform,
                    engine,
                    web.engine_version(),
                    Precision::F32,
                    &rate,
                    1,
                )),
                Err(e) => refuse("matmul", Some(Precision::F32), e),
            }
            match web.calibrate_dispatch(platform) {
                Ok(cost) => figures.extend(dispatch_figures(
                    platform,
                    engine,
                    web.engine_version(),
                    &cost,
                )),
                Err(e) => refuse("dispatch", None, e),
            }
            if platform.has_own_memory() {
                match web.calibrate_bandwidth(platform) {
                    Ok(b) => {
                        figures.push(bandwidth_figure(platform, engine, web.engine_version(), &b))
                    }
                    Err(e) => refuse(MEMORY_BANDWIDTH, None, e),
                }
            }
        }
        if status.platform == Platform::Cpu {
            // The fastest of rounds apart in time, like the matmul rates; each round is
            // already the best of its repetitions.
            let b = (0..RATE_ROUNDS)
                .map(|_| ia_hardware::bandwidth::measure(TRIAD_ARRAY_BYTES, 5))
                .max_by(|a, b| a.bytes_per_s.total_cmp(&b.bytes_per_s))
                .expect("at least one round");
            eprintln!(
                "cpu memory bandwidth: {:.1} GB/s (STREAM triad, 3 x {} MiB, {} threads)",
                b.bytes_per_s / 1e9,
                b.array_bytes >> 20,
                b.threads
            );
            figures.push(CalibrationRecord {
                engine: HOST_BANDWIDTH.into(),
                engine_version: env!("CARGO_PKG_VERSION").into(),
                kind: MEMORY_BANDWIDTH.into(),
                precision: None,
                size: b.array_bytes as i64,
                value: b.bytes_per_s,
                samples: b.repetitions as i32,
            });
        }
        if !figures.is_empty() {
            let hardware = hardware_record(report, status.platform, device, &host)?;
            store.record_calibrations(&hardware, &figures)?;
        }
    }
    Ok(refused)
}

/// Rounds of the matmul rates (and of the memory bandwidth) a calibration keeps the fastest
/// of. A shared machine's slow spells last seconds, longer than one engine's half-second
/// window but rarely a whole pass over the engines: one window read the native engine's f32
/// products at 110 GFLOP/s on a 2-core Zen 4 where the other calibrations of the day read
/// 173-221. There, five calibrations of one round read the native engine's f32 at 173-218,
/// ONNX Runtime's at 133-186 and OpenVINO's at 107-215; five of three rounds, alternating
/// with them, at 212-221, 163-192 and 200-215.
const RATE_ROUNDS: usize = 3;

/// The faster of two rounds' rates, with the products both timed.
fn faster(kept: Option<MatmulRate>, new: MatmulRate) -> MatmulRate {
    match kept {
        None => new,
        Some(kept) => {
            let samples = kept.samples + new.samples;
            let mut best = if new.flops_per_s > kept.flops_per_s {
                new
            } else {
                kept
            };
            best.samples = samples;
            best
        }
    }
}

/// One matmul figure: printed once measured, and the row stored for it.
fn matmul_figure(
    platform: Platform,
    engine: &str,
    engine_version: String,
    precision: Precision,
    rate: &MatmulRate,
    rounds: usize,
) -> CalibrationRecord {
    eprintln!(
        "{platform} {engine} {precision}: {:.1} GFLOP/s ({}x{} matmul, {}{} products)",
        rate.flops_per_s / 1e9,
        rate.size,
        rate.size,
        if rounds > 1 {
            format!("the fastest of {rounds} rounds, ")
        } else {
            String::new()
        },
        rate.samples
    );
    CalibrationRecord {
        engine: engine.into(),
        engine_version,
        kind: "matmul".into(),
        precision: Some(precision.as_str().into()),
        size: rate.size as i64,
        value: rate.flops_per_s,
        samples: rate.samples as i32,
    }
}

/// The program-memory figure of an engine: printed, and the row stored for it.
fn program_figure(
    platform: Platform,
    engine: &str,
    engine_version: String,
    bytes: u64,
) -> CalibrationRecord {
    eprintln!(
        "{platform} {engine} program: {:.1} MiB resident with the runtime loaded and run",
        bytes as f64 / (1u64 << 20) as f64
    );
    CalibrationRecord {
        engine: engine.into(),
        engine_version,
        kind: PROGRAM_MEMORY.into(),
        precision: None,
        size: 0,
        value: bytes as f64,
        samples: PROGRAM_SAMPLES as i32,
    }
}

/// An in-process engine's calibration of `kind` at `at`: the figure, or none with the engine's
/// reason for refusing it recorded in `refused`; any other failure is an error.
fn calibrated<T>(
    result: Result<T, EngineError>,
    at: Placement,
    engine: &str,
    kind: &'static str,
    refused: &mut Vec<Refusal>,
) -> anyhow::Result<Option<T>> {
    match result {
        Ok(figure) => Ok(Some(figure)),
        Err(EngineError::Unsupported(reason)) => {
            refused.push(Refusal {
                platform: at.platform,
                engine: engine.into(),
                kind,
                precision: None,
                reason,
            });
            Ok(None)
        }
        Err(e) => anyhow::bail!("calibrating {engine}'s {kind} on {}: {e}", at.platform),
    }
}

/// The bandwidth an engine's additions stream through a device's own memory: printed as it is
/// measured, and the row stored for it.
fn bandwidth_figure(
    platform: Platform,
    engine: &str,
    engine_version: String,
    b: &Bandwidth,
) -> CalibrationRecord {
    eprintln!(
        "{platform} {engine} memory bandwidth: {:.1} GB/s (chains of 1 and {STREAM_OPS} \
         additions of {} MiB arrays, the fastest of {BANDWIDTH_ROUNDS} rounds, {} calls)",
        b.bytes_per_s / 1e9,
        b.array_bytes >> 20,
        b.samples
    );
    CalibrationRecord {
        engine: engine.into(),
        engine_version,
        kind: MEMORY_BANDWIDTH.into(),
        precision: None,
        size: b.array_bytes as i64,
        value: b.bytes_per_s,
        samples: b.samples as i32,
    }
}

/// The two dispatch figures (seconds of a call, seconds of an operation): printed as they are
/// measured, and the rows stored for them.
fn dispatch_figures(
    platform: Platform,
    engine: &str,
    engine_version: String,
    cost: &DispatchCost,
) -> [CalibrationRecord; 2] {
    eprintln!(
        "{platform} {engine} dispatch: {:.1} us a call, {:.2} us an operation \
         (chains of 1 and {DISPATCH_OPS} tiny products, {} calls)",
        cost.call_seconds * 1e6,
        cost.op_seconds * 1e6,
        cost.samples
    );
    [
        ("dispatch-call", cost.call_seconds),
        ("dispatch-op", cost.op_seconds),
    ]
    .map(|(kind, value)| CalibrationRecord {
        engine: engine.into(),
        engine_version: engine_version.clone(),
        kind: kind.into(),
        precision: None,
        size: DISPATCH_OPS as i64,
        value,
        samples: cost.samples as i32,
    })
}

/// The latest calibration of each (platform, engine, kind, precision) of this machine in
/// the store at `db_path`; none when there is no store yet.
fn stored_calibrations(db_path: &Path, fingerprint: &str) -> anyhow::Result<serde_json::Value> {
    if !db_path.exists() {
        return Ok(serde_json::Value::Array(vec![]));
    }
    let store = Store::open_read_only(db_path, &ReadOptions::default())?;
    let fingerprint = fingerprint.replace('\'', "''");
    let result = store.query(&format!(
        "SELECT h.platform, c.engine, c.engine_version, c.kind, c.precision, c.size, c.value, \
                c.samples, CAST(c.created_at AS VARCHAR) AS created_at \
         FROM calibrations c JOIN hardware_platforms h USING (hardware_id) \
         WHERE h.fingerprint = '{fingerprint}' \
         QUALIFY row_number() OVER (PARTITION BY h.platform, c.engine, c.kind, c.precision \
                                    ORDER BY c.created_at DESC, c.calibration_id DESC) = 1 \
         ORDER BY h.platform, c.kind, c.engine, c.precision"
    ))?;
    Ok(serde_json::from_str(
        &result.render(ia_db::OutputFormat::Json),
    )?)
}

fn render_calibrations(stored: &serde_json::Value, refused: &[Refusal]) -> String {
    let rows = stored.as_array().map(Vec::as_slice).unwrap_or_default();
    if rows.is_empty() && refused.is_empty() {
        return "\nCALIBRATION\nnone stored for this machine (run `hardware --calibrate`)\n".into();
    }
    // [platform, engine, kind, precision, value, measured or the reason]
    let mut cells: Vec<[String; 6]> = vec![[
        "PLATFORM".into(),
        "ENGINE".into(),
        "KIND".into(),
        "PREC".into(),
        "VALUE".into(),
        "MEASURED".into(),
    ]];
    for r in rows {
        let value = r["value"].as_f64().unwrap_or(f64::NAN);
        let shown = match r["kind"].as_str() {
            Some(MEMORY_BANDWIDTH) => format!("{:.1} GB/s", value / 1e9),
            Some("dispatch-call" | "dispatch-op") => format!("{:.2} us", value * 1e6),
            Some(PROGRAM_MEMORY) => format!("{:.1} MiB", value / (1u64 << 20) as f64),
            _ => format!("{:.1} GFLOP/s", value / 1e9),
        };
        let text = |key: &str, none: &str| r[key].as_str().unwrap_or(none).to_string();
        cells.push([
            text("platform", ""),
            text("engine", ""),
            text("kind", ""),
            text("precision", "-"),
            shown,
            text("created_at", ""),
        ]);
    }
    for r in refused {
        cells.push([
            r.platform.as_str().into(),
            r.engine.clone(),
            r.kind.into(),
            r.precision.map_or("-", |p| p.as_str()).into(),
            "unavailable".into(),
            r.reason.clone(),
        ]);
    }
    let width = |i: usize| cells.iter().map(|c| c[i].len()).max().unwrap_or(0);
    let widths = [width(0), width(1), width(2), width(3), width(4)];
    let mut out = "\nCALIBRATION\n".to_string();
    for [platform, engine, kind, precision, value, last] in &cells {
        out.push_str(&format!(
            "{platform:<w0$}  {engine:<w1$}  {kind:<w2$}  {precision:<w3$}  {value:>w4$}  {last}\n",
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        ));
    }
    out
}

/// ONNX Runtime's "devices" are the execution providers the loaded library offers; listing
/// them needs the library loaded, which only the engine does.
pub fn with_execution_providers(mut found: Vec<RuntimeLibrary>) -> Vec<RuntimeLibrary> {
    for rt in found
        .iter_mut()
        .filter(|r| r.name == "onnxruntime" && r.usable())
    {
        match ia_ort::available_providers() {
            Ok(eps) => rt.devices = eps,
            Err(e) => rt.error = Some(e.to_string()),
        }
    }
    found
}

pub fn render(r: &HardwareReport) -> String {
    let mut out = format!(
        "Hardware fingerprint: {}  ({} / {})\nCPU: {} | {} physical / {} logical cores | {:.1} GiB | {}\n\n",
        r.fingerprint,
        r.os,
        r.arch,
        r.cpu.model_name,
        r.cpu.physical_cores,
        r.cpu.logical_cores,
        r.cpu.memory_bytes as f64 / (1u64 << 30) as f64,
        if r.cpu.isa_extensions.is_empty() {
            "no notable ISA extensions".to_string()
        } else {
            r.cpu.isa_extensions.join(" ")
        }
    );
    out.push_str(&format!(
        "{:<10} {:<12} {}\n",
        "PLATFORM", "STATUS", "DETAIL"
    ));
    for s in &r.platforms {
        out.push_str(&format!(
            "{:<10} {:<12} {}\n",
            s.platform.as_str(),
            if s.available {
                "available"
            } else {
                "unavailable"
            },
            s.detail
        ));
    }
    out.push_str("\nRUNTIMES\n");
    for rt in &r.runtimes {
        let status = match (&rt.version, &rt.error) {
            (Some(v), None) => format!(
                "{v} at {}{}",
                rt.path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                if rt.devices.is_empty() {
                    String::new()
                } else if rt.name == "onnxruntime" {
                    // Each provider with the platform it drives (`bench --hardware
                    // onnxruntime:<platform>`).
                    let eps: Vec<String> = rt
                        .devices
                        .iter()
                        .map(|ep| match ia_ort::platform_of(ep) {
                            Some(p) => format!("{ep} -> {p}"),
                            None => ep.clone(),
                        })
                        .collect();
                    format!(" (execution providers: {})", eps.join(", "))
                } else {
                    format!(" (devices: {})", rt.devices.join(", "))
                }
            ),
            (_, Some(e)) => format!("not usable: {e}"),
            _ => "not found".into(),
        };
        out.push_str(&format!("{:<12} {}\n", rt.name, status));
    }
    let web = match (ia_browser::ort_web_version(), ia_browser::find_ort_web()) {
        (Some(v), Ok(dist)) => format!("{v} at {}", dist.display()),
        (_, Err(e)) => format!("not found: {e}"),
        (None, Ok(dist)) => format!("found at {} (no version in package.json)", dist.display()),
    };
    out.push_str(&format!("{:<12} {web}\n", "ort-web"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_columns_line_up_whatever_the_names() {
        let stored = serde_json::json!([
            {"platform": "cpu", "engine": "native", "kind": "matmul", "precision": "f32",
             "value": 2.0e11, "created_at": "2026-12-07 19:00:00"},
            {"platform": "wasm", "engine": "onnxruntime-web", "kind": "dispatch-call",
             "value": 1.0e-4, "created_at": "2026-12-07 19:00:01"},
        ]);
        let refused = [Refusal {
            platform: Platform::Wasm,
            engine: "onnxruntime".into(),
            kind: "matmul, dispatch",
            precision: None,
            reason: "no execution provider for wasm".into(),
        }];
        let text = render_calibrations(&stored, &refused);
        let lines: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(lines.len(), 4, "{text}");
        // Each column starts where the header's does, and the values end together.
        let header = lines[0];
        for (column, example) in [("KIND", "matmul"), ("PREC", "f32")] {
            let at = header.find(column).unwrap();
            assert_eq!(lines[1].find(example), Some(at), "{text}");
        }
        let value_end = |l: &str, v: &str| l.find(v).map(|i| i + v.len());
        let end = value_end(header, "VALUE");
        assert_eq!(value_end(lines[1], "200.0 GFLOP/s"), end, "{text}");
        assert_eq!(value_end(lines[2], "100.00 us"), end, "{text}");
        assert_eq!(value_end(lines[3], "unavailable"), end, "{text}");
    }
}
