//! `ipfs-accelerate select`: the targets of this machine (and of every other machine the store
//! has results of) ranked for a model and batch size,
//! each with its measured or predicted p50 (`predict`), its memory estimate, and the reason it
//! is excluded when a limit rules it out.

use crate::predict::{model_for_prediction, Knowledge, SizeArgs};
use anyhow::Context;
use ia_models::Model;
use ia_predict::{size_label, Workload};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Catalog key, hub id in the local caches, or checkpoint folder
    #[arg(long, required_unless_present = "create_map")]
    model: Option<String>,
    /// inference: this machine's targets; training: the distributed training strategies for
    /// --gpus GPUs of --gpu-memory-gb (plan-training's plan; --batch-size is each GPU's share
    /// of the global batch), those that fit first, cheapest first
    #[arg(long, value_enum, default_value = "inference")]
    mode: Mode,
    #[command(flatten)]
    cluster: crate::plan_training::Cluster,
    #[command(flatten)]
    size: SizeArgs,
    /// f32, f16, bf16, int8, q8_0, q4_k; or auto: every precision each target has results at,
    /// each with the accuracy evidence the store holds for it
    #[arg(long, default_value = "f32")]
    precision: PrecisionChoice,
    /// Exclude targets whose p50 latency (measured, or the upper end of the predicted 90%
    /// interval) is above this
    #[arg(long)]
    max_latency_ms: Option<f64>,
    /// Exclude targets whose peak memory may exceed this: the upper bound of the prediction
    /// learned from measured peaks, or the footprint estimate (weights twice, as held while
    /// loading; activations; KV cache) when larger
    #[arg(long)]
    max_memory_gb: Option<f64>,
    /// What ranks first: the lowest latency, the highest throughput or the smallest memory
    #[arg(long, value_enum, default_value = "latency")]
    objective: Objective,
    #[arg(long)]
    small_models: bool,
    #[command(flatten)]
    store: crate::run_store::StoreArg,
    #[arg(long)]
    json: bool,
    /// Write the choice for every catalog model at batch sizes 1, 8 and 32 (with its figure,
    /// measured or predicted, or why there is none) as JSON
    #[arg(long)]
    create_map: bool,
    /// Where --create-map writes (standard output without it)
    #[arg(long, requires = "create_map")]
    output: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Mode {
    Inference,
    Training,
}

/// The store's training results of `model` (`bench --mode training`), oldest first; none
/// without a store.
fn training_measurements(db: &std::path::Path, model: &Model) -> anyhow::Result<Vec<Value>> {
    if !db.exists() {
        return Ok(Vec::new());
    }
    let store = ia_db::Store::open_read_only(db, &ia_db::ReadOptions::default())?;
    crate::predict::rows(
        &store,
        &format!(
            "SELECT p.result_id, h.platform, h.cpu_model, p.precision, \
                    p.gradient_checkpointing, p.batch_size, p.seq_len, \
                    p.latency_p50_ms AS step_p50_ms, p.throughput_items_per_s AS samples_per_s, \
                    p.peak_rss_mb \
             FROM performance_results p JOIN models m USING (model_id) \
                  JOIN hardware_platforms h USING (hardware_id) \
             WHERE p.mode = 'training' AND p.status = 'pass' AND m.model_name = '{}' \
             ORDER BY p.result_id",
            model.name.replace('\'', "''")
        ),
    )
}

/// What recomputing the layers in the backward costs, measured: the median over stored pairs
/// (same machine, platform, precision, batch and length; the latest of each) of the step time
/// with gradient checkpointing over the step time without.
fn measured_recompute_factor(measurements: &[Value]) -> Option<f64> {
    let mut latest: std::collections::HashMap<(String, bool), f64> = Default::default();
    for m in measurements {
        let key = [
            "platform",
            "cpu_model",
            "precision",
            "batch_size",
            "seq_len",
        ]
        .map(|k| m[k].to_string())
        .join("/");
        let ckpt = m["gradient_checkpointing"].as_bool().unwrap_or(false);
        if let Some(p50) = m["step_p50_ms"].as_f64() {
            latest.insert((key, ckpt), p50);
        }
    }
    let mut ratios: Vec<f64> = latest
        .iter()
        .filter(|((_, ckpt), _)| *ckpt)
        .filter_map(|((key, _), with)| Some(with / latest.get(&(key.clone(), false))?))
        .collect();
    ratios.sort_by(f64::total_cmp);
    (!ratios.is_empty()).then(|| ratios[ratios.len() / 2])
}

/// `--mode training`: the plan's strategies, those that fit first in the preference order,
/// then the others with what they would need; with the store's training measurements of the
/// model, and the recomputation cost they show on each strategy that checkpoints activations.
/// No GPU training step is stored, so no GPU step time is predicted.
fn select_training(args: &Args, model: &Model) -> anyhow::Result<()> {
    let measurements = training_measurements(&args.store.db_path, model)?;
    let recompute = measured_recompute_factor(&measurements);
    let gpus = args
        .cluster
        .request(args.size.seq_len, None, ia_plan::Precision::Bf16)?;
    let request = ia_plan::Request {
        global_batch: args.size.batch_size * gpus.world(),
        ..gpus
    };
    let plan = ia_plan::plan(model, request)?;
    let (fits, rest): (Vec<_>, Vec<_>) = plan.best_per_strategy().into_iter().partition(|c| c.fits);
    let usable = crate::plan_training::gib(plan.usable_bytes);
    let rows: Vec<Value> = fits
        .iter()
        .chain(&rest)
        .enumerate()
        .map(|(i, c)| {
            json!({
                "rank": c.fits.then_some(i + 1),
                "strategy": c.strategy.name(),
                "engine": c.engine,
                "activation_checkpointing": c.activation_checkpointing,
                "micro_batch": c.micro_batch,
                "gradient_accumulation": c.gradient_accumulation,
                "gpu_bytes": c.gpu_bytes,
                "host_bytes": c.host_bytes,
                "measured_recompute_factor": recompute.filter(|_| c.activation_checkpointing),
                "excluded": (!c.fits).then(|| format!(
                    "needs {} GiB per GPU, over the {usable} GiB usable",
                    crate::plan_training::gib(c.gpu_bytes)
                )),
            })
        })
        .collect();
    if args.json {
        let out = json!({"strategies": rows, "measurements": measurements});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} training on {} node(s) x {} GPU(s), {usable} GiB usable each, global batch {}, seq {}:",
        plan.model,
        plan.request.nodes,
        plan.request.gpus_per_node,
        plan.request.global_batch,
        plan.shape.positions
    );
    for (c, row) in fits.iter().chain(&rest).zip(&rows) {
        let rank = row["rank"].as_u64().map_or("-".into(), |r| format!("#{r}"));
        let memory = match row["excluded"].as_str() {
            Some(why) => format!("excluded: {why}"),
            None => format!("{} GiB per GPU", crate::plan_training::gib(c.gpu_bytes)),
        };
        let recompute = row["measured_recompute_factor"]
            .as_f64()
            .map(|f| format!(" (recomputation measured at x{f:.2} step time)"))
            .unwrap_or_default();
        println!(
            "{rank:>4} {} ({}), micro-batch {} x {}: {memory}{recompute}",
            crate::plan_training::label(c),
            c.engine,
            c.micro_batch,
            c.gradient_accumulation
        );
    }
    if measurements.is_empty() {
        println!(
            "no training measurement of {} in {} (bench --mode training)",
            plan.model,
            args.store.db_path.display()
        );
    }
    for m in &measurements {
        println!(
            "measured: result {} on {} {}, {}{}, batch {} x {}: step p50 {:.1} ms, {:.2} samples/s",
            m["result_id"],
            m["platform"].as_str().unwrap_or(""),
            m["cpu_model"].as_str().unwrap_or(""),
            m["precision"].as_str().unwrap_or(""),
            if m["gradient_checkpointing"].as_bool() == Some(true) {
                " with gradient checkpointing"
            } else {
                ""
            },
            m["batch_size"],
            m["seq_len"],
            m["step_p50_ms"].as_f64().unwrap_or(f64::NAN),
            m["samples_per_s"].as_f64().unwrap_or(f64::NAN),
        );
    }
    Ok(())
}

/// The batch sizes of `--create-map`.
const MAP_BATCH_SIZES: [usize; 3] = [1, 8, 32];

/// The targets for `model` at `work` (this machine's native engine always, and every target
/// of every machine the store has results of), best first; the excluded ones last, each with
/// its reason.
fn rank(
    args: &Args,
    knowledge: &mut Knowledge,
    model: &Model,
    work: Workload,
    fingerprint: &str,
) -> anyhow::Result<Vec<Value>> {
    let mut targets = knowledge.targets();
    let here = |machine: &str, engine: &str, platform: &str| {
        (
            machine.to_string(),
            engine.to_string(),
            platform.to_string(),
        )
    };
    if !targets.contains(&here(fingerprint, "native", "cpu")) {
        targets.push(here(fingerprint, "native", "cpu"));
    }
    let mut ranked: Vec<Value> = Vec::new();
    let mut candidates = Vec::new();
    for (machine, engine, platform) in targets {
        let precisions = match args.precision {
            PrecisionChoice::Exactly(p) => vec![p.as_str().to_string()],
            PrecisionChoice::Auto => {
                let mut p = knowledge.precisions((&machine, &engine, &platform));
                if !p.iter().any(|p| p == "f32") {
                    p.insert(0, "f32".into());
                }
                p
            }
        };
        for precision in precisions {
            candidates.push((machine.clone(), engine.clone(), platform.clone(), precision));
        }
    }
    for (machine, engine, platform, precision) in candidates {
        let case = knowledge.case_of(model, (&engine, &platform), &precision, &machine, work)?;
        let mut row = knowledge.answer(&case)?;
        if matches!(args.precision, PrecisionChoice::Auto) {
            row["accuracy_evidence"] = knowledge.accuracy_evidence(&case);
        }
        row["hardware_fingerprint"] = machine.clone().into();
        row["this_machine"] = (machine == fingerprint).into();
        // Never under-predicted: the larger of the learned upper bound of the peak (where
        // memory was measured) and the footprint estimate.
        let learned = row["peak_memory_mib"]["upper_bound"]
            .as_f64()
            .unwrap_or(0.0)
            * MIB;
        let memory = learned.max(case.footprint_bytes);
        row["memory_bound_bytes"] = memory.into();
        let high = row["interval_90"][1].as_f64().unwrap_or(f64::INFINITY);
        // The graph runtimes run a checkpoint's ONNX export; without one they cannot run it.
        let exported = matches!(&model.source, ia_models::ModelSource::Checkpoint(c)
            if c.onnx.is_some() || c.dir.join("onnx").is_dir());
        let excluded = match (args.max_latency_ms, args.max_memory_gb) {
            _ if engine != "native" && !exported => Some(format!(
                "{engine} runs ONNX exports and this checkpoint has none"
            )),
            (Some(max), _) if high > max => Some(format!(
                "p50 up to {high:.2} ms exceeds --max-latency-ms {max}"
            )),
            (_, Some(max)) if memory > max * GIB => Some(format!(
                "needs up to {:.2} GiB, over --max-memory-gb {max}",
                memory / GIB
            )),
            _ => None,
        };
        row["excluded"] = excluded.map_or(Value::Null, Value::from);
        ranked.push(row);
    }
    let score = |r: &Value| {
        let p50 = r["p50_ms"].as_f64().unwrap_or(f64::INFINITY);
        match args.objective {
            Objective::Latency => p50,
            Objective::Throughput => -r["throughput_items_per_s"].as_f64().unwrap_or(0.0),
            Objective::Memory => r["peak_memory_mib"]["value"]
                .as_f64()
                .unwrap_or(r["memory_bound_bytes"].as_f64().unwrap_or(f64::INFINITY) / MIB),
        }
    };
    ranked.sort_by(|a, b| {
        (a["excluded"].is_null() as u8)
            .cmp(&(b["excluded"].is_null() as u8))
            .reverse()
            .then(score(a).total_cmp(&score(b)))
    });
    Ok(ranked)
}

/// `--create-map`: for every catalog model at the common batch sizes, the target the ranking
/// puts first, or why there is none.
fn create_map(args: &Args, knowledge: &mut Knowledge, fingerprint: &str) -> anyhow::Result<()> {
    let mut map = Vec::new();
    for entry in ia_models::CATALOG {
        let sized = model_for_prediction(entry.key, args.small_models)
            .and_then(|m| Ok((args.size.workload(&m)?, m)));
        let (sizes, model) = match sized {
            Ok(s) => s,
            Err(e) => {
                map.push(json!({"model": entry.key, "error": format!("{e:#}")}));
                continue;
            }
        };
        for batch in MAP_BATCH_SIZES {
            let work = Workload { batch, ..sizes };
            let choice = match rank(args, knowledge, &model, work, fingerprint) {
                Ok(ranked) => match ranked.into_iter().find(|r| r["excluded"].is_null()) {
                    Some(best) => json!({"choice": best}),
                    None => json!({"error": "every target is excluded by the limits"}),
                },
                Err(e) => json!({"error": format!("{e:#}")}),
            };
            let mut row = json!({"model": entry.key, "id": model.name, "batch_size": batch});
            if let (Some(row), Some(extra)) = (row.as_object_mut(), choice.as_object()) {
                row.extend(extra.clone());
            }
            map.push(row);
        }
    }
    let text = serde_json::to_string_pretty(&map)?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, text + "\n")
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            eprintln!("wrote {} entries to {}", map.len(), path.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// `--precision`: one precision, or every precision a target has results at.
#[derive(Clone, Copy)]
enum PrecisionChoice {
    Exactly(ia_engine::Precision),
    Auto,
}

impl std::str::FromStr for PrecisionChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            p => p.parse().map(Self::Exactly).map_err(|_| {
                format!("unknown precision '{p}' (f32, f16, bf16, int8, q8_0, q4_k or auto)")
            }),
        }
    }
}

impl std::fmt::Display for PrecisionChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exactly(p) => f.write_str(p.as_str()),
            Self::Auto => f.write_str("every stored precision"),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Objective {
    Latency,
    Throughput,
    /// The smallest peak memory (measured, else predicted, else the footprint estimate)
    Memory,
}

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

pub fn run(args: Args) -> anyhow::Result<()> {
    for limit in [args.max_latency_ms, args.max_memory_gb]
        .into_iter()
        .flatten()
    {
        if !(limit.is_finite() && limit > 0.0) {
            anyhow::bail!("limits must be positive numbers, got {limit}");
        }
    }
    if args.mode == Mode::Training {
        let name = args
            .model
            .as_deref()
            .context("--mode training needs --model")?;
        return select_training(&args, &model_for_prediction(name, args.small_models)?);
    }
    let mut knowledge = Knowledge::load(&args.store.db_path)?;
    let fingerprint = ia_hardware::detect().fingerprint;
    if args.create_map {
        return create_map(&args, &mut knowledge, &fingerprint);
    }
    let name = args.model.as_deref().expect("clap requires --model");
    let model = model_for_prediction(name, args.small_models)?;
    let work = args.size.workload(&model)?;
    let ranked = rank(&args, &mut knowledge, &model, work, &fingerprint)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json!(ranked))?);
        return Ok(());
    }
    println!(
        "{} {} {} (this machine: {}), by {}:",
        name,
        size_label(work.batch, work.seq_len),
        args.precision,
        fingerprint,
        match args.objective {
            Objective::Latency => "latency",
            Objective::Throughput => "throughput",
            Objective::Memory => "memory",
        }
    );
    let number = |r: &Value, key: &str| r[key].as_f64().unwrap_or(f64::NAN);
    // The cells of varying width first, so that every row's columns line up.
    let targets: Vec<String> = ranked
        .iter()
        .map(|r| {
            let target = format!(
                "{}:{} {}",
                r["engine"].as_str().unwrap_or(""),
                r["platform"].as_str().unwrap_or(""),
                r["precision"].as_str().unwrap_or("")
            );
            if r["this_machine"] == true {
                target
            } else {
                format!(
                    "{target}@{}",
                    r["hardware_fingerprint"].as_str().unwrap_or("")
                )
            }
        })
        .collect();
    let intervals: Vec<String> = ranked
        .iter()
        .map(|r| {
            format!(
                "[{:.2}..{:.2}]",
                r["interval_90"][0].as_f64().unwrap_or(f64::NAN),
                r["interval_90"][1].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect();
    let width = |cells: &[String]| cells.iter().map(String::len).max().unwrap_or(0);
    let (target_width, interval_width) = (width(&targets), width(&intervals));
    for (i, ((r, target), interval)) in ranked.iter().zip(&targets).zip(&intervals).enumerate() {
        let (rank, why) = match r["excluded"].as_str() {
            Some(why) => ("-".to_string(), format!("; excluded: {why}")),
            None => (format!("#{}", i + 1), String::new()),
        };
        println!(
            "  {rank:<4} {target:<target_width$}  p50 {:>9.2} ms {interval:<interval_width$} \
             {:>10.1} items/s  memory <= {:>8.1} MiB  {}{why}",
            number(r, "p50_ms"),
            number(r, "throughput_items_per_s"),
            number(r, "memory_bound_bytes") / MIB,
            r["source"].as_str().unwrap_or("")
        );
        let evidence = &r["accuracy_evidence"];
        if let Some(a) = evidence["greedy_agreement_vs_f32"].as_f64() {
            println!(
                "       accuracy: greedy tokens agree with f32 at {:.1}% (result {})",
                a * 100.0,
                evidence["result_id"]
            );
        } else if let Some(none) = evidence["none"].as_str() {
            println!("       accuracy: {none}");
        }
    }
    Ok(())
}
