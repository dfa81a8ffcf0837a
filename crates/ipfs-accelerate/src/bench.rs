//! `ipfs-accelerate bench`: plan the combinations, measure each, commit each to DuckDB as it
//! finishes, print the table.

use crate::limits;
use crate::plan::{resolve_model, PlanOptions};
use crate::results::{combination_records, run_record, scenario_name, text_seq_len};
use crate::run_store::{JsonOutput, RunStore};
use crate::target::{Engines, Target, WebArgs};
use ia_bench::stats::STEADY_WINDOW_SPREAD;
use ia_bench::{Combination, Measurement, Mode, Outcome, Protocol, Scenario};
use ia_db::submissions::Submission;
use ia_db::CombinationRecords;
use ia_engine::{LoadVariant, Precision};
use ia_hardware::{HardwareReport, Platform};
use ia_models::Model;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Models: catalog keys (see `ipfs-accelerate models`), hub ids in the local caches, or
    /// checkpoint folders
    #[arg(long, value_delimiter = ',', default_value = "bert,vit")]
    models: Vec<String>,
    /// Platforms to run on: cpu, cuda, rocm, mps on the native engine;
    /// `onnxruntime` (ONNX exports on ONNX Runtime's CPU execution provider) or
    /// `onnxruntime:<platform>` (the provider that drives it: cuda, rocm, mps, openvino);
    /// `openvino` (ONNX exports / IR on OpenVINO's CPU device); webgpu, webnn, wasm
    /// (onnxruntime-web in a headless browser). Unavailable ones are recorded with the reason
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    hardware: Vec<Target>,
    /// Browser for webgpu, webnn and wasm (Chromium: CHROMIUM_PATH or Debian's chromium,
    /// driven by chromedriver)
    #[arg(long, default_value = "chromium", value_parser = parse_browser)]
    browser: String,
    /// Web platforms: compile the WebGPU pipelines at load time (one run on placeholder inputs
    /// of the real shapes) before the first request; `false,true` measures both
    #[arg(long, value_delimiter = ',', default_value = "false")]
    precompile: Vec<bool>,
    /// Web platforms: create a multi-part model's sessions in parallel; `false,true` measures
    /// both
    #[arg(long, value_delimiter = ',', default_value = "false")]
    parallel_load: Vec<bool>,
    #[command(flatten)]
    web: WebArgs,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8", value_parser = limits::count(limits::BATCH))]
    batch_sizes: Vec<usize>,
    /// Tokens per sequence for text models
    #[arg(long, default_value_t = 128, value_parser = limits::count(limits::SEQ_LEN))]
    seq_len: usize,
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    precision: Vec<Precision>,
    /// Tokens generated per iteration by text-generation models (prompt = --seq-len tokens)
    #[arg(long, default_value_t = 32, value_parser = limits::count(limits::NEW_TOKENS))]
    new_tokens: usize,
    /// Seconds of audio per input for audio models (Whisper pads to its 30-s window; past it,
    /// decodes window by window)
    #[arg(long, default_value_t = 5.0, value_parser = limits::audio_seconds)]
    audio_seconds: f32,
    /// Feed audio models this WAV recording (resampled to the model's rate) instead of the
    /// synthetic speech-like signal
    #[arg(long)]
    audio_file: Option<std::path::PathBuf>,
    /// single-stream (latency) and/or offline (throughput)
    #[arg(long, value_delimiter = ',', default_value = "single-stream")]
    scenarios: Vec<Scenario>,
    /// inference, or training: each timed iteration is one optimiser step (forward, loss,
    /// backward, AdamW) on a synthetic labelled batch of --batch-sizes samples (--seq-len
    /// tokens each for text models), on the native engine; --precision bf16 trains with bf16
    /// autocast over f32 weights
    #[arg(long, default_value = "inference", value_parser = ["inference", "training"])]
    mode: String,
    /// Training: recompute each layer in the backward instead of keeping its activations;
    /// `false,true` measures both
    #[arg(long, value_delimiter = ',', num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    gradient_checkpointing: Vec<bool>,
    /// Use each catalog model's small variant
    #[arg(long)]
    small_models: bool,
    /// Where no checkpoint is found, build the model from its config with seeded random
    /// weights (stored and reported as weights = random)
    #[arg(long)]
    random_weights: bool,
    /// Seed of --random-weights
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Untimed iterations after the first inference
    #[arg(long, default_value_t = 3, value_parser = limits::count(limits::WARMUP))]
    warmup: usize,
    /// Timed iterations continue until both this count ...
    #[arg(long, default_value_t = 10, value_parser = limits::count(limits::ITERATIONS))]
    min_iterations: usize,
    /// ... and this many seconds are reached
    #[arg(long, default_value_t = 2.0, value_parser = limits::seconds)]
    min_duration: f64,
    /// Timed iterations stop here whatever the duration
    #[arg(long, default_value_t = 100_000, value_parser = limits::count(limits::ITERATIONS))]
    max_iterations: usize,
    #[command(flatten)]
    store: crate::run_store::StoreArg,
    /// Do not store results
    #[arg(long)]
    no_db: bool,
    /// Also write every result (with raw samples) to this JSON file
    #[arg(long)]
    output_json: Option<PathBuf>,
    /// Print the results as JSON on stdout instead of the table
    #[arg(long)]
    json: bool,
    /// Also send the run to this results service (`serve --db-path` elsewhere) when it ends;
    /// a run it cannot take now is spooled and sent with the next --submit
    #[arg(long, requires = "token")]
    submit: Option<String>,
    /// Token for --submit (`ipfs-accelerate tokens create` on the server's machine)
    #[arg(long, env = "IPFS_ACCELERATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn parse_browser(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "chromium" | "chrome" => Ok("chromium".into()),
        other => Err(format!(
            "unsupported browser '{other}' (supported: {}; Firefox and Safari have no driver here)",
            ia_browser::BROWSERS.join(", ")
        )),
    }
}

/// One finished combination, as printed and written to --output-json.
#[derive(Serialize)]
struct ResultRow {
    model: String,
    weights: &'static str,
    engine: String,
    platform: Platform,
    precision: Precision,
    scenario: &'static str,
    batch_size: usize,
    seq_len: Option<usize>,
    outcome: Outcome,
    /// How a web result was obtained (browser, adapter, where the nodes ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    web: Option<ia_browser::WebDetails>,
    result_id: Option<i64>,
    /// The rows as a results service receives them (with --submit).
    #[serde(skip)]
    records: Option<CombinationRecords>,
}

/// What runs a combination under the harness: an in-process engine, or the browser page.
#[derive(Clone, Copy)]
enum Runner<'e> {
    Engine(&'e dyn ia_engine::Engine),
    Browser,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(f) = &args.audio_file {
        ia_preprocess::audio::Waveform::open(f)?;
    }
    let opts = PlanOptions {
        small: args.small_models,
        random_weights: args.random_weights,
        seed: args.seed,
    };
    let models = args
        .models
        .iter()
        .map(|m| resolve_model(m, &opts))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let protocol = Protocol {
        warmup_iterations: args.warmup,
        min_iterations: args.min_iterations,
        min_duration: Duration::from_secs_f64(args.min_duration),
        max_iterations: args.max_iterations,
    };
    let mut hw = ia_hardware::detect();
    let engines = Engines::new();
    let combos = combinations(&models, &args, &engines);
    let run = run_record();
    let store = if args.no_db {
        None
    } else {
        Some(RunStore::begin(&args.store.db_path, &run)?)
    };
    crate::interrupt::cooperate(store.as_ref().map(RunStore::interrupt_hook));
    let output = args
        .output_json
        .as_deref()
        .map(JsonOutput::create)
        .transpose()?;
    let mut rows = Vec::with_capacity(combos.len());
    let measured = measure_all(
        &args,
        &combos,
        &mut hw,
        &protocol,
        store.as_ref(),
        output.as_ref(),
        &mut rows,
    );
    let interrupted = crate::interrupt::signalled();
    let failed = rows.iter().filter(|r| r.outcome.status() == "fail").count();
    let status = if interrupted {
        "interrupted"
    } else if measured.is_err() || failed > 0 {
        "failed"
    } else {
        "completed"
    };
    if let Some(s) = &store {
        s.end(status)?;
    }
    measured?;
    if let (Some(url), Some(token)) = (&args.submit, &args.token) {
        let results: Vec<CombinationRecords> =
            rows.iter_mut().filter_map(|r| r.records.take()).collect();
        if results.is_empty() {
            eprintln!("nothing to submit: no combination finished");
        } else {
            crate::submit::submit(
                url,
                token,
                Submission {
                    run: run.clone(),
                    status: status.into(),
                    results,
                },
            )?;
        }
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", results_table(&rows));
        if let Some(s) = &store {
            println!(
                "\nResults stored in {} (run {}, {status}).",
                s.path().display(),
                s.run_id()
            );
        }
    }
    if interrupted {
        return Err(crate::interrupt::Interrupted(format!(
            "{} of {} combinations finished and were kept",
            rows.len(),
            combos.len()
        ))
        .into());
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} combinations failed (the notes above say why; stored with status fail)",
            combos.len()
        );
    }
    Ok(())
}

/// Measures every combination in order, storing and writing out each as it finishes. A panic
/// inside one becomes its failed outcome; a signal stops the loop and abandons the combination
/// it interrupted.
#[allow(clippy::too_many_arguments)]
fn measure_all(
    args: &Args,
    combos: &[(Combination, Runner<'_>)],
    hw: &mut HardwareReport,
    protocol: &Protocol,
    store: Option<&RunStore>,
    output: Option<&JsonOutput>,
    rows: &mut Vec<ResultRow>,
) -> anyhow::Result<()> {
    // The browser platforms are probed inside the browser, which then stays up for the run.
    let mut web = combos
        .iter()
        .any(|(_, runner)| matches!(runner, Runner::Browser))
        .then(|| ia_browser::WebBench::from_probe(ia_browser::probe(hw), args.web.options()));
    let pb = ProgressBar::new(combos.len() as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
            .expect("valid template"),
    );
    for (i, (combo, runner)) in combos.iter().enumerate() {
        if crate::interrupt::signalled() {
            break;
        }
        let engine_name = match runner {
            Runner::Engine(e) => e.name(),
            Runner::Browser => ia_browser::ENGINE_NAME,
        };
        let variant = combo.load_variant;
        let label = format!(
            "{} ({engine_name}{}{})",
            describe(combo),
            if variant.precompile {
                ", precompiled"
            } else {
                ""
            },
            if variant.parallel_load {
                ", parallel load"
            } else {
                ""
            }
        );
        pb.set_message(label.clone());
        let available = platform_available(hw, combo.platform);
        let asked = match (runner, web.as_ref()) {
            (Runner::Engine(engine), _) => (engine.name(), engine.version()),
            (Runner::Browser, Some(web)) => (engine_name, web.engine_version()),
            (Runner::Browser, None) => (engine_name, String::new()),
        };
        let measured = ia_bench::isolate(|| {
            // Fault injection for the tests of panic isolation (no other use).
            if let Ok(m) = std::env::var("IPFS_ACCELERATE_TEST_PANIC_IN") {
                if !m.is_empty() && combo.model.name.contains(&m) {
                    panic!("injected test panic in {}", combo.model.name);
                }
            }
            match runner {
                Runner::Engine(engine) => {
                    (ia_bench::measure(*engine, combo, available, protocol), None)
                }
                Runner::Browser if combo.mode != Mode::Inference => (
                    Outcome::Unavailable {
                        reason: "the browser runtimes run inference only: training steps run \
                                 on the native engine"
                            .into(),
                    },
                    None,
                ),
                Runner::Browser => {
                    // Started with the platform probe above whenever a browser runner exists.
                    let web = web.get_or_insert_with(|| {
                        ia_browser::WebBench::new(ia_browser::WebOptions::default())
                    });
                    let available = web.availability(available);
                    let (outcome, target) =
                        ia_bench::measure_with(combo, available, protocol, |prepared| {
                            web.load(&web_request(combo, &prepared))
                        });
                    (outcome, target.map(|t| t.details()))
                }
            }
        });
        let (outcome, web_details) = measured.unwrap_or_else(|error| {
            (
                Outcome::Failed {
                    stage: "panic".into(),
                    error,
                },
                None,
            )
        });
        if crate::interrupt::signalled() {
            // The signal cut this combination short: what it measured is not a result.
            break;
        }
        let host = store.map_or_else(crate::results::host_name, |s| s.host().to_string());
        let records = combination_records(
            &host,
            hw,
            (asked.0, asked.1.clone()),
            combo,
            &outcome,
            web_details.as_ref(),
        )?;
        let result_id = match store {
            Some(s) => {
                Some(s.write(|store, run_id| Ok(store.record_combination(run_id, &records)?))?)
            }
            None => None,
        };
        let line = format!(
            "[{}/{}] {label}: {}{}",
            i + 1,
            combos.len(),
            outcome.status(),
            result_id
                .map(|id| format!(" (stored as result {id})"))
                .unwrap_or_default()
        );
        if pb.is_hidden() {
            eprintln!("{line}");
        } else {
            pb.println(line);
        }
        pb.inc(1);
        rows.push(ResultRow {
            model: combo.model.name.clone(),
            weights: combo.model.source.weights_kind().as_str(),
            engine: engine_name.to_string(),
            platform: combo.platform,
            precision: combo.precision,
            scenario: scenario_name(combo),
            batch_size: combo.batch_size,
            seq_len: text_seq_len(combo),
            outcome,
            web: web_details,
            result_id,
            records: args.submit.is_some().then_some(records),
        });
        if let Some(out) = output {
            out.write(rows)?;
        }
    }
    pb.finish_and_clear();
    Ok(())
}

/// The combinations to measure, each with what runs it: an engine, or on the web platforms
/// the browser with each of the requested precompile / parallel-load variants.
fn combinations<'e>(
    models: &[Model],
    args: &Args,
    engines: &'e Engines,
) -> Vec<(Combination, Runner<'e>)> {
    let mut web_variants = Vec::new();
    for &precompile in &args.precompile {
        for &parallel_load in &args.parallel_load {
            web_variants.push(LoadVariant {
                precompile,
                parallel_load,
            });
        }
    }
    let modes: Vec<Mode> = if args.mode == "training" {
        args.gradient_checkpointing
            .iter()
            .map(|&gradient_checkpointing| Mode::Training {
                gradient_checkpointing,
            })
            .collect()
    } else {
        vec![Mode::Inference]
    };
    let mut out = Vec::new();
    for model in models {
        let single_part = ia_browser::model_parts(&model.source, model.class)
            .map_or(true, |parts| parts.len() < 2);
        for &Target { platform, engine } in &args.hardware {
            let runners: Vec<(Runner, LoadVariant)> = match engines.get(engine) {
                Some(e) => vec![(Runner::Engine(e), LoadVariant::default())],
                // Loading in parallel means nothing for a model of one part.
                None if single_part => web_variants
                    .iter()
                    .filter(|v| !v.parallel_load || args.parallel_load == [true])
                    .map(|&v| (Runner::Browser, v))
                    .collect(),
                None => web_variants.iter().map(|&v| (Runner::Browser, v)).collect(),
            };
            for &precision in &args.precision {
                for &scenario in &args.scenarios {
                    for &batch_size in &args.batch_sizes {
                        for &(runner, load_variant) in &runners {
                            for &mode in &modes {
                                out.push((
                                    Combination {
                                        model: model.clone(),
                                        platform,
                                        batch_size,
                                        seq_len: args.seq_len,
                                        precision,
                                        scenario,
                                        new_tokens: args.new_tokens,
                                        audio_seconds: args.audio_seconds,
                                        audio_file: args.audio_file.clone(),
                                        load_variant,
                                        mode,
                                    },
                                    runner,
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// What the page loads for a combination and what each iteration does.
fn web_request<'a>(
    combo: &'a Combination,
    prepared: &'a ia_bench::Prepared,
) -> ia_browser::WebRequest<'a> {
    let work = match prepared {
        ia_bench::Prepared::Forward(inputs) => ia_browser::WebWork::Forward {
            inputs: std::slice::from_ref(inputs),
            text_len: combo.seq_len,
        },
        ia_bench::Prepared::Generation { prompt, .. } => ia_browser::WebWork::Generation {
            prompt,
            batch: combo.batch_size,
            new_tokens: combo.new_tokens,
        },
    };
    ia_browser::WebRequest {
        model: &combo.model,
        platform: combo.platform,
        precision: combo.precision,
        variant: combo.load_variant,
        work,
    }
}

fn describe(c: &Combination) -> String {
    format!(
        "{} [{}] {} {} {} b={}{}",
        c.model.name,
        c.model.source.weights_kind().as_str(),
        c.platform,
        c.precision,
        scenario_name(c),
        c.batch_size,
        text_seq_len(c)
            .map(|s| format!(" seq={s}"))
            .unwrap_or_default()
    )
}

fn platform_available(hw: &HardwareReport, p: Platform) -> Result<(), String> {
    let s = hw.status(p);
    if s.available {
        Ok(())
    } else {
        Err(format!("{p} unavailable: {}", s.detail))
    }
}

fn results_table(rows: &[ResultRow]) -> String {
    let header = [
        "model",
        "weights",
        "engine",
        "platform",
        "prec",
        "scenario",
        "batch",
        "status",
        "n",
        "mean ms",
        "± sd",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "items/s",
        "tokens/s",
        "ttft ms",
        "decode tok/s",
        "RTF",
        "peak MB",
        "load ms",
        "first ms",
    ];
    let mut cells: Vec<Vec<String>> = Vec::new();
    let mut notes = Vec::new();
    for r in rows {
        let mut row = vec![
            r.model.clone(),
            r.weights.into(),
            r.engine.clone(),
            r.platform.to_string(),
            r.precision.to_string(),
            r.scenario.into(),
            r.batch_size.to_string(),
            r.outcome.status().into(),
        ];
        if let Outcome::Measured(m) = &r.outcome {
            if let Some(t) = &m.training {
                let mb = |b: u64| format!("{:.0}", b as f64 / (1 << 20) as f64);
                notes.push(format!(
                    "{} b={} {}: step memory MB: weights {}, gradients {}, optimiser {}, \
                     activations and temporaries {}; loss {:.4} -> {:.4}",
                    r.model,
                    r.batch_size,
                    r.scenario,
                    mb(t.memory.weights),
                    mb(t.memory.gradients),
                    mb(t.memory.optimizer_state),
                    t.activations_bytes.map_or("?".into(), mb),
                    t.loss_first,
                    t.loss_last
                ));
            }
        }
        match &r.outcome {
            Outcome::Measured(m) => {
                let l = &m.latency;
                let est = |v: f64, e: bool| format!("{}{v:.3}", if e { "~" } else { "" });
                row.extend([
                    l.count.to_string(),
                    format!("{:.3}", l.mean_ms),
                    format!("{:.3}", l.stdev_ms),
                    format!("{:.3}", l.p50_ms),
                    est(l.p90_ms, l.p90_is_estimate),
                    est(l.p99_ms, l.p99_is_estimate),
                    format!("{:.2}", m.throughput_items_per_s),
                    m.throughput_tokens_per_s
                        .map(|t| format!("{t:.0}"))
                        .unwrap_or_default(),
                    m.generation
                        .as_ref()
                        .map(|g| format!("{:.2}", g.ttft.p50_ms))
                        .unwrap_or_default(),
                    m.generation
                        .as_ref()
                        .map(|g| format!("{:.1}", g.decode_tokens_per_s))
                        .unwrap_or_default(),
                    m.real_time_factor
                        .map(|r| format!("{r:.3}"))
                        .unwrap_or_default(),
                    m.peak_rss_bytes
                        .map(|b| format!("{:.0}", b as f64 / (1 << 20) as f64))
                        .unwrap_or_default(),
                    format!("{:.1}", m.load_time_ms),
                    format!("{:.2}", m.first_inference_ms),
                ]);
            }
            Outcome::Unavailable { reason } => {
                notes.push(format!("{}/{}: {reason}", r.model, r.platform))
            }

            Outcome::Failed { stage, error } => notes.push(format!(
                "{}/{} b={}: {stage}: {error}",
                r.model, r.platform, r.batch_size
            )),
        }
        if let Some(w) = &r.web {
            let mb =
                |b: Option<u64>| b.map_or("?".to_string(), |b| format!("{:.0}", b as f64 / 1e6));
            notes.push(format!(
                "{}/{} b={}: {}; nodes ran on {}{}{}{}; peak MB: renderer {}, GPU process {}",
                r.model,
                r.platform,
                r.batch_size,
                match &w.adapter {
                    Some(a) => format!(
                        "{} {}, adapter {}",
                        w.browser,
                        w.browser_version,
                        a.summary()
                    ),
                    None => format!("{} {}", w.browser, w.browser_version),
                },
                w.executed_ep,
                if w.fell_back { " (fell back)" } else { "" },
                if w.precompiled { ", precompiled" } else { "" },
                match (w.parallel_load, w.concurrent_sessions) {
                    (false, _) => "",
                    (true, true) => ", parallel load",
                    (true, false) => ", parallel fetch (sessions one at a time)",
                },
                mb(w.memory.renderer_peak_bytes),
                mb(w.memory.gpu_process_peak_bytes),
            ));
        }
        row.resize(header.len(), String::new());
        cells.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let fmt_row = |vals: Vec<String>| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = fmt_row(header.iter().map(|s| s.to_string()).collect()) + "\n";
    for r in cells {
        out.push_str(&fmt_row(r));
        out.push('\n');
    }
    if rows
        .iter()
        .any(|r| matches!(&r.outcome, Outcome::Measured(m) if m.latency.p90_is_estimate))
    {
        out.push_str("~ = estimate: fewer samples than the percentile needs (p90: 64, p99: 662)\n");
    }
    let measured: Vec<&Measurement> = rows
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Measured(m) => Some(m.as_ref()),
            _ => None,
        })
        .collect();
    let unsteady = measured
        .iter()
        .filter(|m| m.window_spread.is_some_and(|s| s > STEADY_WINDOW_SPREAD))
        .count();
    if unsteady > 0 {
        out.push_str(&format!(
            "unsteady: {unsteady} of {} measured combinations changed speed while timed (the \
             medians of their quarters differ by more than {:.0}%: window_spread in --json and \
             the store); the machine was not steady, rerun to compare\n",
            measured.len(),
            STEADY_WINDOW_SPREAD * 100.0
        ));
    }
    if let Some(m) = measured.first() {
        out.push_str(&format!(
            "harness overhead: {:.0} ns per timed iteration (not subtracted)\n",
            m.harness_overhead_ns
        ));
    }
    for n in notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}
