//! `ipfs-accelerate predict`: the p50 latency of a combination with a 90% interval, measured
//! when the store has it, predicted otherwise (`ia_predict`); `--evaluate` scores the
//! predictor on held-out results of the store.

use crate::plan::{resolve_model, PlanOptions};
use crate::target::{EngineKind, Engines, Target};
use anyhow::{bail, Context};
use ia_db::{OutputFormat, ReadOptions, Store};
use ia_engine::Precision;
use ia_models::Model;
use ia_predict::{Case, Ceiling, Observation, Predictor, Split, Workload};
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
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

impl SizeArgs {
    /// The sizes that apply to `model`, as bench stores them (none for the others).
    pub fn workload(&self, model: &Model) -> Workload {
        let text = model.modality == ia_models::Modality::Text;
        let audio = model.modality == ia_models::Modality::Audio;
        Workload {
            batch: self.batch_size,
            seq_len: if text { self.seq_len } else { 0 },
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
        }
    }
}

/// What predictions stand on: the store's calibrations and measured results.
pub(crate) struct Knowledge {
    ceilings: Ceilings,
    pub observations: Vec<Observation>,
    skipped: HashMap<String, usize>,
    predictor: Option<Predictor>,
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
        Ok(Self {
            ceilings,
            observations,
            skipped,
            predictor: None,
        })
    }

    /// The case of `model` on a target of the machine `fingerprint`, or why there is none.
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

    /// The measured p50 of `case` when the store has that configuration (the latest), else
    /// the prediction with its interval and the measurements it leaned on.
    pub fn answer(&mut self, case: &Case) -> anyhow::Result<Value> {
        let head = json!({
            "model": case.model, "engine": case.engine, "platform": case.platform,
            "precision": case.precision, "batch_size": case.work.batch,
            "seq_len": case.work.seq_len, "roofline_ms": case.prior_ms(),
            "calibrated": case.ceiling.is_some(),
        });
        let mut out = head;
        if let Some(o) = self
            .observations
            .iter()
            .rev()
            .find(|o| same_configuration(&o.case, case))
        {
            out["source"] = "measured".into();
            out["result_id"] = o.result_id.into();
            out["p50_ms"] = o.latency_ms.into();
            out["interval_90"] = json!([o.latency_ms, o.latency_ms]);
        } else {
            if self.predictor.is_none() {
                self.predictor = Some(Predictor::fit(&self.observations)?);
            }
            let predictor = self.predictor.as_ref().expect("fitted above");
            let p = predictor.predict(case);
            let nearest: Vec<Value> = predictor
                .nearest(case, 3)
                .iter()
                .map(|o| {
                    json!({"result_id": o.result_id, "model": o.case.model, "engine": o.case.engine,
                           "platform": o.case.platform, "batch_size": o.case.work.batch,
                           "p50_ms": o.latency_ms})
                })
                .collect();
            out["source"] = "predicted".into();
            out["p50_ms"] = p.p50_ms.into();
            out["interval_90"] = json!([p.low_ms, p.high_ms]);
            out["nearest_measurements"] = nearest.into();
        }
        let p50 = out["p50_ms"].as_f64().unwrap_or(f64::NAN);
        out["throughput_items_per_s"] = (case.work.batch as f64 / p50 * 1e3).into();
        Ok(out)
    }

    /// The engine and platform pairs the store has results of on the machine `fingerprint`.
    pub fn targets(&self, fingerprint: &str) -> Vec<(String, String)> {
        let mut t: Vec<(String, String)> = self
            .observations
            .iter()
            .filter(|o| o.case.hardware == fingerprint)
            .map(|o| (o.case.engine.clone(), o.case.platform.clone()))
            .collect();
        t.sort();
        t.dedup();
        t
    }
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
        return evaluate(&knowledge.observations, &knowledge.skipped, args.json);
    }
    let name = args
        .model
        .as_deref()
        .expect("clap requires --model without --evaluate");
    let model = model_for_prediction(name, args.small_models)?;
    let fingerprint = ia_hardware::detect().fingerprint;
    let work = args.size.workload(&model);
    let case = knowledge.case_of(
        &model,
        (
            engine_name(args.hardware.engine),
            args.hardware.platform.as_str(),
        ),
        args.size.precision.as_str(),
        &fingerprint,
        work,
    )?;
    let out = knowledge.answer(&case)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let what = format!(
        "{} on {} ({}) {} b={}",
        case.model, case.platform, case.engine, case.precision, work.batch
    );
    match out["source"].as_str() {
        Some("measured") => println!(
            "{what}: p50 {:.2} ms, measured (result {})",
            out["p50_ms"].as_f64().unwrap_or(f64::NAN),
            out["result_id"]
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
                println!(
                    "  result {}: {} on {} ({}) b={}: {:.2} ms",
                    n["result_id"],
                    n["model"].as_str().unwrap_or(""),
                    n["platform"].as_str().unwrap_or(""),
                    n["engine"].as_str().unwrap_or(""),
                    n["batch_size"],
                    n["p50_ms"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
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
/// precision) and memory bandwidth by fingerprint (the latest of each).
struct Ceilings {
    matmul: HashMap<(String, String, String, String), f64>,
    bandwidth: HashMap<String, f64>,
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
            bandwidth: HashMap::new(),
        };
        for r in rows {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            let value = r["value"].as_f64().unwrap_or(0.0);
            match r["kind"].as_str() {
                Some("memory-bandwidth") => {
                    c.bandwidth.insert(s("fingerprint"), value);
                }
                _ => {
                    c.matmul.insert(
                        (s("fingerprint"), s("platform"), s("engine"), s("precision")),
                        value,
                    );
                }
            }
        }
        Ok(c)
    }

    /// The ceiling of an engine on a platform of a machine: its own calibration, else the
    /// native engine's on the CPU of the same machine at that precision, else at f32 (the
    /// web and graph runtimes here compute on that CPU); none without a bandwidth figure.
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
        Some(Ceiling {
            flops_per_s: flops,
            bytes_per_s: *self.bandwidth.get(fingerprint)?,
        })
    }
}

/// A query's rows as JSON objects.
fn rows(store: &Store, sql: &str) -> anyhow::Result<Vec<Value>> {
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
        let costs = ia_predict::iteration_costs(
            model.config(),
            model.class,
            model.generates_text(),
            work,
            precision,
        )?;
        Some(Case {
            model: model.name.clone(),
            class: model.class.as_str().into(),
            engine: engine.into(),
            platform: platform.into(),
            precision: precision.into(),
            hardware: fingerprint.into(),
            work,
            costs,
            ceiling: self.of(fingerprint, platform, engine, precision),
        })
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
                p.latency_p50_ms \
         FROM performance_results p JOIN models m USING (model_id) \
              JOIN hardware_platforms h USING (hardware_id) \
         WHERE p.status = 'pass' AND p.latency_p50_ms > 0 \
         ORDER BY p.result_id",
    )?;
    let mut models: HashMap<(String, String), Option<Model>> = HashMap::new();
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
                resolve_model(&name, &opts).ok()
            });
        let Some(model) = model.as_ref() else {
            *skipped
                .entry("model not found on this machine".into())
                .or_default() += 1;
            continue;
        };
        let num = |k: &str| r[k].as_f64().unwrap_or(0.0);
        let work = Workload {
            batch: num("batch_size") as usize,
            seq_len: num("seq_len") as usize,
            new_tokens: num("new_tokens") as usize,
            audio_seconds: num("audio_seconds"),
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
            result_id: r["result_id"].as_i64().unwrap_or(0),
        });
    }
    Ok((out, skipped))
}

fn evaluate(
    observations: &[Observation],
    skipped: &HashMap<String, usize>,
    json_out: bool,
) -> anyhow::Result<()> {
    let reports: Vec<_> = Split::ALL
        .iter()
        .map(|&s| ia_predict::evaluate(observations, s))
        .collect();
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "observations": observations.len(),
                "left_out": skipped,
                "coverage_target": ia_predict::COVERAGE,
                "splits": reports,
            }))?
        );
        return Ok(());
    }
    println!(
        "{} measured results ({} left out: {:?}); 90% intervals, held-out points only\n",
        observations.len(),
        skipped.values().sum::<usize>(),
        skipped
    );
    println!(
        "{:<14} {:>6} {:>6} {:>8} {:>10} {:>9} {:>10} {:>7} {:>9}",
        "HELD OUT",
        "FOLDS",
        "PREDS",
        "MAPE %",
        "WITHIN 10%",
        "COVERAGE",
        "SELECTION",
        "TOP-1",
        "LOSS %"
    );
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0}%", v * 100.0));
    for r in &reports {
        println!(
            "{:<14} {:>6} {:>6} {:>8} {:>10} {:>9} {:>10} {:>7} {:>9}",
            serde_json::to_value(r.split)?.as_str().unwrap_or(""),
            r.folds,
            r.predictions,
            r.mape.map_or("-".into(), |m| format!("{m:.1}")),
            pct(r.within_10pct),
            pct(r.coverage),
            r.selection_cases,
            pct(r.top1),
            r.mean_loss_pct.map_or("-".into(), |l| format!("{l:.1}"))
        );
    }
    Ok(())
}
