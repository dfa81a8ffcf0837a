//! `ipfs-accelerate select`: the targets of this machine ranked for a model and batch size,
//! each with its measured or predicted p50 (`predict`), its memory estimate, and the reason it
//! is excluded when a limit rules it out.

use crate::predict::{model_for_prediction, Knowledge, SizeArgs};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Catalog key, hub id in the local caches, or checkpoint folder
    #[arg(long)]
    model: String,
    #[command(flatten)]
    size: SizeArgs,
    /// Exclude targets whose p50 latency (measured, or the upper end of the predicted 90%
    /// interval) is above this
    #[arg(long)]
    max_latency_ms: Option<f64>,
    /// Exclude targets whose memory estimate (weights, activations and KV cache; an upper
    /// bound) is above this
    #[arg(long)]
    max_memory_gb: Option<f64>,
    /// What ranks first: the lowest latency or the highest throughput
    #[arg(long, value_enum, default_value = "latency")]
    objective: Objective,
    #[arg(long)]
    small_models: bool,
    #[command(flatten)]
    store: crate::run_store::StoreArg,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Objective {
    Latency,
    Throughput,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(limit) = args.max_latency_ms.or(args.max_memory_gb) {
        if !(limit.is_finite() && limit > 0.0) {
            anyhow::bail!("limits must be positive numbers, got {limit}");
        }
    }
    let mut knowledge = Knowledge::load(&args.store.db_path)?;
    let model = model_for_prediction(&args.model, args.small_models)?;
    let fingerprint = ia_hardware::detect().fingerprint;
    let work = args.size.workload(&model);
    let bytes_per_weight = ia_predict::bytes_per_weight(args.size.precision.as_str()) as u64;
    let memory = ia_models::footprint::estimate(
        &model.source,
        bytes_per_weight.max(1),
        ia_models::footprint::Workload {
            batch: work.batch,
            positions: work.seq_len.max(1),
            cached_positions: work.seq_len + work.new_tokens,
            beams: 1,
        },
    )?
    .total();
    let mut targets = knowledge.targets(&fingerprint);
    if !targets.iter().any(|(e, p)| e == "native" && p == "cpu") {
        targets.push(("native".into(), "cpu".into()));
    }
    let mut ranked: Vec<Value> = Vec::new();
    for (engine, platform) in targets {
        let case = knowledge.case_of(
            &model,
            (&engine, &platform),
            args.size.precision.as_str(),
            &fingerprint,
            work,
        )?;
        let mut row = knowledge.answer(&case)?;
        row["memory_estimate_bytes"] = memory.into();
        let high = row["interval_90"][1].as_f64().unwrap_or(f64::INFINITY);
        let excluded = match (args.max_latency_ms, args.max_memory_gb) {
            (Some(max), _) if high > max => Some(format!(
                "p50 up to {high:.2} ms exceeds --max-latency-ms {max}"
            )),
            (_, Some(max)) if memory as f64 > max * (1u64 << 30) as f64 => Some(format!(
                "needs about {:.2} GiB, over --max-memory-gb {max}",
                memory as f64 / (1u64 << 30) as f64
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
        }
    };
    ranked.sort_by(|a, b| {
        (a["excluded"].is_null() as u8)
            .cmp(&(b["excluded"].is_null() as u8))
            .reverse()
            .then(score(a).total_cmp(&score(b)))
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json!(ranked))?);
        return Ok(());
    }
    println!(
        "{} b={} {} on this machine ({}), by {}:",
        model.name,
        work.batch,
        args.size.precision,
        fingerprint,
        match args.objective {
            Objective::Latency => "latency",
            Objective::Throughput => "throughput",
        }
    );
    for (i, r) in ranked.iter().enumerate() {
        let (rank, why) = match r["excluded"].as_str() {
            Some(why) => ("-".to_string(), format!("; excluded: {why}")),
            None => (format!("#{}", i + 1), String::new()),
        };
        let target = format!(
            "{}:{}",
            r["engine"].as_str().unwrap_or(""),
            r["platform"].as_str().unwrap_or("")
        );
        println!(
            "  {rank:<4} {target:<24} p50 {:>9.2} ms [{:.2}..{:.2}] {:>10.1} items/s  {}{why}",
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["interval_90"][0].as_f64().unwrap_or(f64::NAN),
            r["interval_90"][1].as_f64().unwrap_or(f64::NAN),
            r["throughput_items_per_s"].as_f64().unwrap_or(f64::NAN),
            r["source"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
