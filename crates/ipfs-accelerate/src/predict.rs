//! `ipfs-accelerate predict`: the p50 latency of a combination with a 90% interval, measured
//! when the store has it, predicted otherwise (`ia_predict`); `--evaluate` scores the
//! predictor on held-out results of the store.

use crate::hardware::{HOST_BANDWIDTH, MEMORY_BANDWIDTH, PROGRAM_MEMORY};
use crate::plan::{resolve_model, PlanOptions};
use crate::target::{EngineKind, Engines, Target};
use anyhow::{bail, Context};
use ia_db::{OutputFormat, ReadOptions, Store};
use ia_engine::Precision;
use ia_models::cost::ImageWork;
use ia_models::Model;
use ia_predict::{size_label, Case, Ceiling, Observation, Predictor, Quantity, Split, Workload};
use serde_json::{json, Value};
use std::collections::HashMap;

#[derive(clap::Args)]
pub struct Args {
    /// Catalog key, hub id in the local caches, or checkpoint folder (a catalog model without
    /// a checkpoint is described by its built-in config)
    #[arg(long, required_unless_present = "evaluate")]
    model: Option<String>,
    /// Target as bench takes it: cpu, onnxruntime[:<platform>], openvino, wasm, webgpu
    #[arg(long, default_value = "cpu")]
    hardware: Target,
    #[command(flatten)]
    size: SizeArgs,
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Use the small variant of a catalog entry
    #[arg(long)]
    small_models: bool,
    /// Score the predictor on the store's results, holding out configurations, batch sizes,
    /// models and platforms in turn
    #[arg(long)]
    evaluate: bool,
    #[command(flatten)]
    store: crate::run_store::StoreArg,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// The size and precision of an iteration: what `predict` and `select` ask about.
#[derive(clap::Args)]
pub(crate) struct SizeArgs {
    #[arg(long, default_value_t = 1, value_parser = crate::limits::count(crate::limits::BATCH))]
    pub batch_size: usize,
    /// Text length (the prompt of a generation)
    #[arg(long, default_value_t = 128, value_parser = crate::limits::count(crate::limits::SEQ_LEN))]
    pub seq_len: usize,
    /// Tokens a generation adds (text-generation models)
    #[arg(long, default_value_t = 32, value_parser = crate::limits::count(crate::limits::NEW_TOKENS))]
    pub new_tokens: usize,
    /// Seconds of audio per input (audio models)
    #[arg(long, default_value_t = 5.0, value_parser = crate::limits::audio_seconds)]
    pub audio_seconds: f32,
}

impl SizeArgs {
    /// The sizes that apply to `model`, as bench stores them (none for the others).
    pub fn workload(&self, model: &Model) -> anyhow::Result<Workload> {
        let audio = model.modality == ia_models::Modality::Audio;
        Ok(Workload {
            batch: self.batch_size,
            seq_len: if model.has_text_length() {
                self.seq_len
            } else {
                0
            },
            new_tokens: if model.generates_text() {
                self.new_tokens
            } else {
                0
            },
            audio_seconds: if audio {
                f64::from(self.audio_seconds)
            } else {
                0.0
            },
            image: ia_engine::inputs::test_image_work(model)?,
        })
    }
}

/// (machine, model, engine, platform, precision).
type AgreementKey = (String, String, String, String, String);

/// What predictions stand on: the store's calibrations and measured results.
pub(crate) struct Knowledge {
    ceilings: Ceilings,
    pub observations: Vec<Observation>,
    skipped: HashMap<String, usize>,
    latency: Option<Result<Predictor, String>>,
    memory: Option<Result<Predictor, String>>,
    /// Greedy-token agreement with f32 of lower-precision generations, by (machine, model,
    /// engine, platform, precision): the accuracy evidence of a precision.
    agreement: HashMap<AgreementKey, (f64, i64)>,
}

impl Knowledge {
    pub fn load(db_path: &std::path::Path) -> anyhow::Result<Self> {
        if !db_path.exists() {
            bail!(
                "{}: no results store (run `bench` first; predictions learn from measurements)",
                db_path.display()
            );
        }
        let store = Store::open_read_only(db_path, &ReadOptions::default())?;
        let ceilings = Ceilings::load(&store)?;
        let (observations, skipped) = observations(&store, &ceilings)?;
        let mut agreement = HashMap::new();
        for r in rows(
            &store,
            "SELECT h.fingerprint, m.model_name, p.engine, h.platform, p.precision, \
                    p.greedy_agreement_vs_f32 AS agreement, p.result_id \
             FROM performance_results p JOIN models m USING (model_id) \
                  JOIN hardware_platforms h USING (hardware_id) \
             WHERE p.greedy_agreement_vs_f32 IS NOT NULL ORDER BY p.result_id",
        )? {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            agreement.insert(
                (
                    s("fingerprint"),
                    s("model_name"),
                    s("engine"),
                    s("platform"),
                    s("precision"),
                ),
                (
                    r["agreement"].as_f64().unwrap_or(f64::NAN),
                    r["result_id"].as_i64().unwrap_or(0),
                ),
            );
        }
        Ok(Self {
            agreement,
            ceilings,
            observations,
            skipped,
            latency: None,
            memory: None,
        })
    }

    /// The case of `model` on an engine and platform of the machine `fingerprint`, or why
    /// there is none.
    pub fn case_of(
        &self,
        model: &Model,
        target: (&str, &str),
        precision: &str,
        fingerprint: &str,
        work: Workload,
    ) -> anyhow::Result<Case> {
        let (engine, platform) = target;
        self.ceilings
            .case(model, engine, platform, precision, fingerprint, work)
            .with_context(|| format!("{}: no cost model for {}", model.name, model.class.as_str()))
    }

    /// The measured p50 and peak memory of `case` when the store has that configuration (its
    /// median run), else the predictions with their intervals and the measurements they leaned
    /// on.
    pub fn answer(&mut self, case: &Case) -> anyhow::Result<Value> {
        let mut out = json!({
            "model": case.model, "engine": case.engine, "platform": case.platform,
            "precision": case.precision, "batch_size": case.work.batch,
            "seq_len": case.work.seq_len, "roofline_ms": case.prior_ms(),
            "footprint_bytes": case.footprint_bytes,
            "calibrated": case.ceiling.is_some(),
        });
        // A configuration measured more than once answers with its median run (of an even
        // count, the faster of the middle two): a pass that a slow spell of the machine caught
        // does not move it, as it does not move the figure `--evaluate` scores it by.
        let mut runs: Vec<&Observation> = self
            .observations
            .iter()
            .filter(|o| same_configuration(&o.case, case))
            .collect();
        runs.sort_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms));
        let measured = runs
            .get(runs.len().saturating_sub(1) / 2)
            .map(|&o| o.clone());
        if let Some(o) = &measured {
            out["source"] = "measured".into();
            out["result_id"] = o.result_id.into();
            out["runs"] = runs.len().into();
            out["p50_ms"] = o.latency_ms.into();
            out["interval_90"] = json!([o.latency_ms, o.latency_ms]);
        } else {
            let predictor = self.predictor(Quantity::Latency)?;
            let p = predictor.predict(case);
            out["source"] = "predicted".into();
            out["p50_ms"] = p.p50.into();
            out["interval_90"] = json!([p.low, p.high]);
            out["extrapolates_to"] = json!(p.novelty);
            out["nearest_measurements"] = nearest(predictor, case);
        }
        let p50 = out["p50_ms"].as_f64().unwrap_or(f64::NAN);
        out["throughput_items_per_s"] = (case.work.batch as f64 / p50 * 1e3).into();
        out["peak_memory_mib"] = match measured
            .as_ref()
            .and_then(|o| Some((o, o.peak_memory_mib?)))
        {
            Some((o, mib)) => json!({"source": "measured", "result_id": o.result_id, "value": mib,
                                     "upper_bound": mib}),
            None => match self.predictor(Quantity::PeakMemory) {
                Ok(predictor) => {
                    let p = predictor.predict(case);
                    json!({"source": "predicted", "value": p.p50, "interval_90": [p.low, p.high],
                           "upper_bound": p.upper_bound, "extrapolates_to": p.novelty})
                }
                Err(e) => json!({"source": "none", "reason": format!("{e:#}")}),
            },
        };
        Ok(out)
    }

    /// The predictor of `quantity`, fitted the first time it is asked for.
    fn predictor(&mut self, quantity: Quantity) -> anyhow::Result<&Predictor> {
        let slot = match quantity {
            Quantity::Latency => &mut self.latency,
            Quantity::PeakMemory => &mut self.memory,
        };
        if slot.is_none() {
            *slot = Some(Predictor::fit(&self.observations, quantity).map_err(|e| e.to_string()));
        }
        match slot.as_ref().expect("set above") {
            Ok(p) => Ok(p),
            Err(e) => bail!("{e}"),
        }
    }

    /// The accuracy evidence for running `case` at its precision instead of f32: the latest
    /// stored greedy-token agreement with f32 of that model on that target, or what is
    /// missing.
    pub fn accuracy_evidence(&self, case: &Case) -> Value {
        if case.precision == "f32" {
            return json!({"reference": true});
        }
        let key = (
            case.hardware.clone(),
            case.model.clone(),
            case.engine.clone(),
            case.platform.clone(),
            case.precision.clone(),
        );
        match self.agreement.get(&key) {
            Some((a, id)) => json!({"greedy_agreement_vs_f32": a, "result_id": id}),
            None => json!({"none": format!(
                "no parity or greedy agreement of {} at {} on {} is stored (bench a \
                 text-generation model at this precision to record its agreement with f32)",
                case.model, case.precision, case.engine
            )}),
        }
    }

    /// The precisions the store has results at on a machine's engine and platform.
    pub fn precisions(&self, target: (&str, &str, &str)) -> Vec<String> {
        let mut p: Vec<String> = self
            .observations
            .iter()
            .filter(|o| {
                (
                    o.case.hardware.as_str(),
                    o.case.engine.as_str(),
                    o.case.platform.as_str(),
                ) == target
            })
            .map(|o| o.case.precision.clone())
            .collect();
        p.sort();
        p.dedup();
        p
    }

    /// The machines (hardware fingerprints) and their engine and platform pairs the store has
    /// results of.
    pub fn targets(&self) -> Vec<(String, String, String)> {
        let mut t: Vec<(String, String, String)> = self
            .observations
            .iter()
            .map(|o| {
                (
                    o.case.hardware.clone(),
                    o.case.engine.clone(),
                    o.case.platform.clone(),
                )
            })
            .collect();
        t.sort();
        t.dedup();
        t
    }
}

/// The fitted measurements a prediction leaned on, as JSON.
fn nearest(predictor: &Predictor, case: &Case) -> Value {
    predictor
        .nearest(case, 3)
        .iter()
        .map(|o| {
            json!({"result_id": o.result_id, "model": o.case.model, "engine": o.case.engine,
                   "platform": o.case.platform, "batch_size": o.case.work.batch,
                   "seq_len": o.case.work.seq_len, "p50_ms": o.latency_ms,
                   "peak_memory_mib": o.peak_memory_mib})
        })
        .collect()
}

/// The model a prediction is for: catalog models without a checkpoint by their built-in config.
pub(crate) fn model_for_prediction(name: &str, small: bool) -> anyhow::Result<Model> {
    resolve_model(
        name,
        &PlanOptions {
            small,
            random_weights: true,
            seed: 0,
        },
    )
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut knowledge = Knowledge::load(&args.store.db_path)?;
    if args.evaluate {
        let store = Store::open_read_only(&args.store.db_path, &ReadOptions::default())?;
        mark_steady(&store, &mut knowledge.observations)?;
        return evaluate(&knowledge.observations, &knowledge.skipped, args.json);
    }
    let name = args
        .model
        .as_deref()
        .expect("clap requires --model without --evaluate");
    let model = model_for_prediction(name, args.small_models)?;
    let fingerprint = ia_hardware::detect().fingerprint;
    let work = args.size.workload(&model)?;
    let case = knowledge.case_of(
        &model,
        (
            engine_name(args.hardware.engine),
            args.hardware.platform.as_str(),
        ),
        args.precision.as_str(),
        &fingerprint,
        work,
    )?;
    let out = knowledge.answer(&case)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let what = format!(
        "{} on {} ({}) {} {}",
        case.model,
        case.platform,
        case.engine,
        case.precision,
        size_label(work.batch, work.seq_len)
    );
    match out["source"].as_str() {
        Some("measured") => println!(
            "{what}: p50 {:.2} ms, measured (result {}{})",
            out["p50_ms"].as_f64().unwrap_or(f64::NAN),
            out["result_id"],
            match out["runs"].as_u64() {
                Some(n) if n > 1 => format!(", the median of {n} runs"),
                _ => String::new(),
            }
        ),
        _ => {
            println!(
                "{what}: p50 {:.2} ms predicted, 90% interval {:.2}..{:.2} ms \
                 (roofline {:.2} ms{})",
                out["p50_ms"].as_f64().unwrap_or(f64::NAN),
                out["interval_90"][0].as_f64().unwrap_or(f64::NAN),
                out["interval_90"][1].as_f64().unwrap_or(f64::NAN),
                case.prior_ms(),
                if case.ceiling.is_some() {
                    ""
                } else {
                    "; this platform is not calibrated: run `hardware --calibrate`"
                }
            );
            println!("nearest measurements:");
            for n in out["nearest_measurements"].as_array().into_iter().flatten() {
                let size = |key: &str| n[key].as_u64().unwrap_or(0) as usize;
                println!(
                    "  result {}: {} on {} ({}) {}: {:.2} ms",
                    n["result_id"],
                    n["model"].as_str().unwrap_or(""),
                    n["platform"].as_str().unwrap_or(""),
                    n["engine"].as_str().unwrap_or(""),
                    size_label(size("batch_size"), size("seq_len")),
                    n["p50_ms"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
    }
    let memory = &out["peak_memory_mib"];
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    match memory["source"].as_str() {
        Some("measured") => println!(
            "peak memory {:.1} MiB, measured (result {})",
            num(&memory["value"]),
            memory["result_id"]
        ),
        Some("predicted") => println!(
            "peak memory {:.1} MiB predicted, 90% interval {:.1}..{:.1} MiB, at most {:.1} MiB \
             (the bound a fit decision uses)",
            num(&memory["value"]),
            num(&memory["interval_90"][0]),
            num(&memory["interval_90"][1]),
            num(&memory["upper_bound"])
        ),
        _ => println!(
            "peak memory: not predicted ({})",
            memory["reason"].as_str().unwrap_or("")
        ),
    }
    Ok(())
}

fn engine_name(kind: EngineKind) -> &'static str {
    match Engines::new().get(kind) {
        Some(engine) => engine.name(),
        None => ia_browser::ENGINE_NAME,
    }
}

fn same_configuration(a: &Case, b: &Case) -> bool {
    (&a.model, &a.engine, &a.platform, &a.precision, &a.hardware)
        == (&b.model, &b.engine, &b.platform, &b.precision, &b.hardware)
        && a.work == b.work
}

/// The calibrations in the store: matmul FLOP/s by (fingerprint, platform, engine,
/// precision), the host's memory bandwidth by fingerprint, and an engine's own bandwidth on a
/// device with memory of its own, the dispatch costs (seconds of a call, of an operation) and
/// program memory (bytes) by (fingerprint, platform, engine); the latest of each.
struct Ceilings {
    matmul: HashMap<(String, String, String, String), f64>,
    host_bandwidth: HashMap<String, f64>,
    bandwidth: HashMap<(String, String, String), f64>,
    dispatch: HashMap<(String, String, String), (f64, f64)>,
    program: HashMap<(String, String, String), f64>,
}

impl Ceilings {
    fn load(store: &Store) -> anyhow::Result<Self> {
        let rows = rows(
            store,
            "SELECT h.fingerprint, h.platform, c.engine, c.kind, coalesce(c.precision, '') AS precision, \
                    c.value \
             FROM calibrations c JOIN hardware_platforms h USING (hardware_id) \
             QUALIFY row_number() OVER (PARTITION BY h.fingerprint, h.platform, c.engine, c.kind, c.precision \
                                        ORDER BY c.created_at DESC, c.calibration_id DESC) = 1",
        )?;
        let mut c = Self {
            matmul: HashMap::new(),
            host_bandwidth: HashMap::new(),
            bandwidth: HashMap::new(),
            dispatch: HashMap::new(),
            program: HashMap::new(),
        };
        for r in rows {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            let value = r["value"].as_f64().unwrap_or(0.0);
            match r["kind"].as_str() {
                Some(MEMORY_BANDWIDTH) if s("engine") == HOST_BANDWIDTH => {
                    c.host_bandwidth.insert(s("fingerprint"), value);
                }
                Some(MEMORY_BANDWIDTH) => {
                    c.bandwidth
                        .insert((s("fingerprint"), s("platform"), s("engine")), value);
                }
                Some(kind @ ("dispatch-call" | "dispatch-op")) => {
                    let costs = c
                        .dispatch
                        .entry((s("fingerprint"), s("platform"), s("engine")))
                        .or_default();
                    if kind == "dispatch-call" {
                        costs.0 = value;
                    } else {
                        costs.1 = value;
                    }
                }
                Some(PROGRAM_MEMORY) => {
                    c.program
                        .insert((s("fingerprint"), s("platform"), s("engine")), value);
                }
                Some("matmul") => {
                    c.matmul.insert(
                        (s("fingerprint"), s("platform"), s("engine"), s("precision")),
                        value,
                    );
                }
                // A kind a newer version stored.
                _ => {}
            }
        }
        Ok(c)
    }

    /// The ceiling of an engine on a platform of a machine: its own calibration (the browser
    /// engines' since they are calibrated in a page too), else the native engine's on the CPU
    /// of the same machine at that precision, else at f32 (a store calibrated before the
    /// runtimes were); the target's own bandwidth on a device with memory of its own, else the
    /// host's, none without either. Dispatch costs are the target's own, or none (0) in a store
    /// calibrated before they were measured.
    fn of(
        &self,
        fingerprint: &str,
        platform: &str,
        engine: &str,
        precision: &str,
    ) -> Option<Ceiling> {
        let key = |p: &str, e: &str, x: &str| {
            (
                fingerprint.to_string(),
                p.to_string(),
                e.to_string(),
                x.to_string(),
            )
        };
        let flops = [
            key(platform, engine, precision),
            key("cpu", "native", precision),
            key("cpu", "native", "f32"),
        ]
        .iter()
        .find_map(|k| self.matmul.get(k).copied())?;
        let target = (fingerprint.into(), platform.into(), engine.into());
        let (call_seconds, op_seconds) = self.dispatch.get(&target).copied().unwrap_or_default();
        let bytes_per_s = match self.bandwidth.get(&target) {
            Some(own) => *own,
            None => *self.host_bandwidth.get(fingerprint)?,
        };
        Some(Ceiling {
            flops_per_s: flops,
            bytes_per_s,
            call_seconds,
            op_seconds,
            program_bytes: self.program.get(&target).copied().unwrap_or_default(),
        })
    }
}

/// A query's rows as JSON objects.
pub(crate) fn rows(store: &Store, sql: &str) -> anyhow::Result<Vec<Value>> {
    let result = store.query(sql)?;
    let v: Value = serde_json::from_str(&result.render(OutputFormat::Json))?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

impl Ceilings {
    /// The case of `model` on an engine and platform of the machine `fingerprint`; none for a
    /// class without a cost model.
    fn case(
        &self,
        model: &Model,
        engine: &str,
        platform: &str,
        precision: &str,
        fingerprint: &str,
        work: Workload,
    ) -> Option<Case> {
        let ceiling = self.of(fingerprint, platform, engine, precision);
        Case::new(
            model,
            (engine, platform),
            precision,
            fingerprint,
            work,
            ceiling,
        )
    }
}

/// The store's measured results as observations; the models are resolved from their names
/// (each once). Results whose model cannot be resolved here, or whose class has no cost
/// model, are left out and counted by reason.
fn observations(
    store: &Store,
    ceilings: &Ceilings,
) -> anyhow::Result<(Vec<Observation>, HashMap<String, usize>)> {
    let rows = rows(
        store,
        "SELECT p.result_id, m.model_name, m.weights, p.engine, h.platform, h.fingerprint, \
                p.precision, p.batch_size, coalesce(p.prompt_tokens, p.seq_len, 0) AS seq_len, \
                coalesce(p.new_tokens, 0) AS new_tokens, coalesce(p.audio_seconds, 0) AS audio_seconds, \
                p.latency_p50_ms, \
                CASE WHEN p.peak_rss_per_combination THEN p.peak_rss_mb END AS peak_rss_mb \
         FROM performance_results p JOIN models m USING (model_id) \
              JOIN hardware_platforms h USING (hardware_id) \
         WHERE p.status = 'pass' AND p.latency_p50_ms > 0 AND p.mode = 'inference' \
         ORDER BY p.result_id",
    )?;
    // Each model once, with what bench's test picture costs it (image-text generators).
    type Resolved = Option<(Model, Result<Option<ImageWork>, ()>)>;
    let mut models: HashMap<(String, String), Resolved> = HashMap::new();
    let mut out = Vec::new();
    let mut skipped: HashMap<String, usize> = HashMap::new();
    for r in rows {
        let name = r["model_name"].as_str().unwrap_or("").to_string();
        let weights = r["weights"].as_str().unwrap_or("").to_string();
        let model = models
            .entry((name.clone(), weights.clone()))
            .or_insert_with(|| {
                let opts = PlanOptions {
                    small: false,
                    random_weights: weights == "random",
                    seed: 0,
                };
                resolve_model(&name, &opts).ok().map(|m| {
                    let image = ia_engine::inputs::test_image_work(&m).map_err(|_| ());
                    (m, image)
                })
            });
        let Some((model, image)) = model.as_ref() else {
            *skipped
                .entry("model not found on this machine".into())
                .or_default() += 1;
            continue;
        };
        let num = |k: &str| r[k].as_f64().unwrap_or(0.0);
        // bench's image-text generators all see its test picture.
        let Ok(image) = *image else {
            *skipped
                .entry("the model's image processor fails on the test picture".into())
                .or_default() += 1;
            continue;
        };
        let work = Workload {
            batch: num("batch_size") as usize,
            seq_len: num("seq_len") as usize,
            new_tokens: num("new_tokens") as usize,
            audio_seconds: num("audio_seconds"),
            image,
        };
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        let Some(case) = ceilings.case(
            model,
            &s("engine"),
            &s("platform"),
            &s("precision"),
            &s("fingerprint"),
            work,
        ) else {
            *skipped
                .entry(format!("no cost model for {}", model.class.as_str()))
                .or_default() += 1;
            continue;
        };
        out.push(Observation {
            case,
            latency_ms: num("latency_p50_ms"),
            peak_memory_mib: r["peak_rss_mb"].as_f64(),
            result_id: r["result_id"].as_i64().unwrap_or(0),
            // Only the evaluation reads it ([`mark_steady`]).
            steady: None,
        });
    }
    Ok((out, skipped))
}

/// Whether each observation's run kept one speed, from its raw samples (results stored before
/// the store kept a window spread have them too). Only the evaluation reads it, so only it
/// reads every sample of the store.
fn mark_steady(store: &Store, observations: &mut [Observation]) -> anyhow::Result<()> {
    let samples = store.samples_by_result()?;
    for o in observations {
        o.steady = samples
            .get(&o.result_id)
            .and_then(|s| ia_bench::stats::window_spread(s))
            .map(|spread| spread <= ia_bench::stats::STEADY_WINDOW_SPREAD);
    }
    Ok(())
}

/// A split's or a quantity's name as the JSON gives it.
fn json_name(value: impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn evaluate(
    observations: &[Observation],
    skipped: &HashMap<String, usize>,
    json_out: bool,
) -> anyhow::Result<()> {
    // Each split refits the predictor once per held-out group (a minute or two on a store of
    // `scripts/predict_data.sh`): a bar on standard error says which is running.
    let evaluations: Vec<(Quantity, Split)> = Quantity::ALL
        .iter()
        .flat_map(|&q| Split::ALL.iter().map(move |&s| (q, s)))
        .collect();
    let bar = indicatif::ProgressBar::new(evaluations.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
            .expect("valid template"),
    );
    let reports: Vec<_> = evaluations
        .into_iter()
        .map(|(q, s)| {
            bar.set_message(format!("{} held out ({})", json_name(s), json_name(q)));
            let report = ia_predict::evaluate(observations, s, q);
            bar.inc(1);
            report
        })
        .collect();
    bar.finish_and_clear();
    let repeats: Vec<_> = Quantity::ALL
        .iter()
        .map(|&q| ia_predict::repeatability(observations, q))
        .collect();
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "observations": observations.len(),
                "repeatability": repeats,
                "with_peak_memory": observations.iter().filter(|o| o.peak_memory_mib.is_some()).count(),
                "left_out": skipped,
                "coverage_target": ia_predict::COVERAGE,
                "splits": reports,
            }))?
        );
        return Ok(());
    }
    println!(
        "{} measured results ({} with their own peak memory; {} left out: {:?}); 90% intervals, \
         held-out points only",
        observations.len(),
        observations
            .iter()
            .filter(|o| o.peak_memory_mib.is_some())
            .count(),
        skipped.values().sum::<usize>(),
        skipped
    );
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0}%", v * 100.0));
    // "split figure" for each split of `quantity` that `figure` has a figure for.
    let per_split = |quantity: Quantity,
                     figure: &dyn Fn(&ia_predict::SplitReport) -> Option<String>|
     -> Vec<String> {
        reports
            .iter()
            .filter(|r| r.quantity == quantity)
            .filter_map(|r| Some(format!("{} {}", json_name(r.split), figure(r)?)))
            .collect()
    };
    for quantity in Quantity::ALL {
        println!(
            "\n{}",
            match quantity {
                Quantity::Latency => "p50 latency",
                Quantity::PeakMemory =>
                    "peak memory (ABOVE BOUND: measured above the upper bound a fit decision uses)",
            }
        );
        println!(
            "{:<14} {:>6} {:>6} {:>8} {:>10} {:>9} {:>11} {:>10} {:>7} {:>9}",
            "HELD OUT",
            "FOLDS",
            "PREDS",
            "MAPE %",
            "WITHIN 10%",
            "COVERAGE",
            "ABOVE BOUND",
            "SELECTION",
            "TOP-1",
            "LOSS %"
        );
        for r in reports.iter().filter(|r| r.quantity == quantity) {
            println!(
                "{:<14} {:>6} {:>6} {:>8} {:>10} {:>9} {:>11} {:>10} {:>7} {:>9}",
                json_name(r.split),
                r.folds,
                r.predictions,
                r.mape.map_or("-".into(), |m| format!("{m:.1}")),
                pct(r.within_10pct),
                pct(r.coverage),
                r.above_upper_bound,
                r.selection_cases,
                pct(r.top1),
                r.mean_loss_pct.map_or("-".into(), |l| format!("{l:.1}"))
            );
        }
        if let Some(r) = repeats.iter().find(|r| r.quantity == quantity) {
            match r.mape {
                Some(mape) => println!(
                    "repeats: {} configurations measured more than once ({} measurements) differ \
                     from the mean of their other measurements by {mape:.1}% (MAPE), {} within 10%: \
                     the floor under any prediction's error here",
                    r.configurations,
                    r.measurements,
                    pct(r.within_10pct)
                ),
                None => println!(
                    "repeats: no configuration measured twice, so the measurement noise is unknown"
                ),
            }
        }
        if quantity == Quantity::Latency {
            let steady = per_split(quantity, &|r| {
                Some(format!(
                    "{:.1}% ({} of {})",
                    r.steady_mape?, r.steady_predictions, r.predictions
                ))
            });
            if !steady.is_empty() {
                println!(
                    "held out from runs that kept one speed (the medians of their quarters within \
                     {:.0}%), MAPE: {}",
                    ia_bench::stats::STEADY_WINDOW_SPREAD * 100.0,
                    steady.join(", ")
                );
            }
        }
        let by_configuration = per_split(quantity, &|r| {
            Some(format!(
                "{:.1}% ({} configurations)",
                r.configuration_mape?, r.configurations
            ))
        });
        if !by_configuration.is_empty() {
            println!(
                "against the median of each held-out configuration's repeats, MAPE: {}",
                by_configuration.join(", ")
            );
        }
        let unit = match quantity {
            Quantity::Latency => "ms",
            Quantity::PeakMemory => "MiB",
        };
        println!("furthest held-out predictions, {unit} (measured, predicted [90% interval]):");
        for r in reports.iter().filter(|r| r.quantity == quantity) {
            for w in &r.worst {
                println!(
                    "  {:<13} {} on {} ({}) {} {}: {:.1}, {:.1} [{:.1}, {:.1}], {:.0}% off",
                    json_name(r.split),
                    w.model,
                    w.platform,
                    w.engine,
                    w.precision,
                    size_label(w.batch_size, w.seq_len),
                    w.measured,
                    w.predicted,
                    w.low,
                    w.high,
                    w.error_pct
                );
            }
        }
        if quantity == Quantity::Latency {
            println!(
                "costliest selection misses, ms (chosen: measured, predicted; fastest: measured, \
                 predicted):"
            );
            for r in reports.iter().filter(|r| r.quantity == quantity) {
                for m in &r.selection_misses {
                    println!(
                        "  {:<13} {}: {} {:.3}, {:.3}; {} {:.3}, {:.3}; {:.0}% slower",
                        json_name(r.split),
                        m.case,
                        m.chosen,
                        m.chosen_measured,
                        m.chosen_predicted,
                        m.best,
                        m.best_measured,
                        m.best_predicted,
                        m.loss_pct
                    );
                }
            }
        }
        // One line per configuration would bury the rest; the JSON has them.
        println!(
            "held-out groups (measured / predicted: the median ratio, above 1 predicted too low):"
        );
        for r in reports
            .iter()
            .filter(|r| r.quantity == quantity && r.split != Split::Configuration)
        {
            for g in &r.groups {
                println!(
                    "  {:<13} {}: {} predictions, MAPE {:.1}%, median ratio {:.2}, coverage {}",
                    json_name(r.split),
                    g.group,
                    g.predictions,
                    g.mape,
                    g.median_ratio,
                    pct(Some(g.coverage))
                );
            }
        }
    }
    Ok(())
}
