//! `plan-training`: the distributed training plan of a model (ia-plan), printed, explained or
//! written out as launch files.

use crate::predict::model_for_prediction;
use anyhow::{bail, Context};
use ia_plan::{Candidate, Plan, Precision, Request, Strategy};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Catalog key, hub id or checkpoint folder (a config alone is enough)
    #[arg(long)]
    model: String,
    #[command(flatten)]
    cluster: Cluster,
    /// Positions per sample (a ViT's are its patches)
    #[arg(long, default_value_t = 1024, value_parser = crate::limits::count(crate::limits::SEQ_LEN))]
    seq_len: usize,
    /// Samples per optimizer step over all ranks [default: 8 per rank]
    #[arg(long, value_parser = crate::limits::count(crate::limits::GLOBAL_BATCH))]
    global_batch: Option<usize>,
    #[arg(long, value_enum, default_value_t = Precision::Bf16)]
    precision: Precision,
    /// Plan only this strategy (default: the cheapest that fits)
    #[arg(long, value_enum)]
    strategy: Option<Strategy>,
    /// Activation checkpointing: auto (only when needed), on or off
    #[arg(long, value_enum, default_value_t = Checkpointing::Auto)]
    activation_checkpointing: Checkpointing,
    /// Show the arithmetic of the chosen plan's memory, term by term
    #[arg(long)]
    explain: bool,
    /// Write the launch files of the chosen plan into this folder (plan.json, train.py,
    /// launch.sh, ds_config.json for ZeRO)
    #[arg(long)]
    emit: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// The GPUs a training plan is for.
#[derive(clap::Args)]
pub(crate) struct Cluster {
    /// GPUs per node
    #[arg(long, value_parser = crate::limits::count(crate::limits::GPUS))]
    gpus: Option<usize>,
    /// Memory of one GPU, GiB
    #[arg(long, value_parser = crate::limits::gpu_memory_gib)]
    gpu_memory_gb: Option<f64>,
    #[arg(long, default_value_t = 1, value_parser = crate::limits::count(crate::limits::GPUS))]
    nodes: usize,
}

impl Cluster {
    /// The request for `global_batch` samples per step (default 8 per GPU) at `seq_len`.
    pub(crate) fn request(
        &self,
        seq_len: usize,
        global_batch: Option<usize>,
        precision: Precision,
    ) -> anyhow::Result<Request> {
        let (Some(gpus), Some(gib)) = (self.gpus, self.gpu_memory_gb) else {
            bail!("a training plan needs --gpus and --gpu-memory-gb");
        };
        Ok(Request {
            gpus_per_node: gpus,
            nodes: self.nodes,
            gpu_memory_bytes: (gib * (1u64 << 30) as f64) as u64,
            seq_len,
            global_batch: global_batch.unwrap_or(8 * gpus * self.nodes),
            precision,
            strategy: None,
            checkpointing: None,
        })
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Checkpointing {
    Auto,
    On,
    Off,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let model = model_for_prediction(&args.model, false)?;
    if let Some((field, max)) = ia_engine::inputs::max_text_positions(model.config()) {
        if args.seq_len as u64 > max && model.class != ia_models::ModelClass::Vit {
            bail!(
                "--seq-len {} exceeds the model's {field} {max}",
                args.seq_len
            );
        }
    }
    let mut request = args
        .cluster
        .request(args.seq_len, args.global_batch, args.precision)?;
    request.strategy = args.strategy;
    request.checkpointing = match args.activation_checkpointing {
        Checkpointing::Auto => None,
        Checkpointing::On => Some(true),
        Checkpointing::Off => Some(false),
    };
    let plan = ia_plan::plan(&model, request)?;
    let written = match &args.emit {
        Some(dir) if plan.chosen.is_some() => {
            Some(ia_plan::emit(&plan, &model, dir).with_context(|| format!("{}", dir.display()))?)
        }
        _ => None,
    };
    if args.json {
        let mut v = serde_json::to_value(&plan)?;
        if let Some(w) = &written {
            v["emitted"] = serde_json::json!(w);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_plan(&plan, args.explain);
        if let (Some(dir), Some(files)) = (&args.emit, &written) {
            println!(
                "\nwrote {} in {}: run `sh {}/launch.sh`",
                files.join(", "),
                dir.display(),
                dir.display()
            );
        }
    }
    match (&plan.chosen, &plan.why_none) {
        (None, Some(why)) => bail!("{why}"),
        _ => Ok(()),
    }
}

pub(crate) fn gib(b: f64) -> String {
    format!("{:.2}", b / (1u64 << 30) as f64)
}

pub(crate) fn label(c: &Candidate) -> String {
    format!(
        "{}{}",
        c.strategy.name(),
        if c.activation_checkpointing {
            " + activation checkpointing"
        } else {
            ""
        }
    )
}

fn print_plan(plan: &Plan, explain: bool) {
    let r = &plan.request;
    println!(
        "{} ({:.0}M parameters, {} weights) on {} node(s) x {} GPU(s) of {} GiB: seq {}, global batch {}, {}",
        plan.model,
        plan.shape.parameters / 1e6,
        plan.weights,
        r.nodes,
        r.gpus_per_node,
        gib(r.gpu_memory_bytes as f64),
        plan.shape.positions,
        r.global_batch,
        r.precision.name()
    );
    match &plan.chosen {
        Some(c) => println!(
            "chosen: {} ({}), micro-batch {} x {} accumulation step(s): {} GiB per GPU of {} usable{}",
            label(c),
            c.engine,
            c.micro_batch,
            c.gradient_accumulation,
            gib(c.gpu_bytes),
            gib(plan.usable_bytes),
            if c.host_bytes > 0.0 {
                format!(", {} GiB of CPU memory per rank", gib(c.host_bytes))
            } else {
                String::new()
            }
        ),
        None => println!("{}", plan.why_none.as_deref().unwrap_or("nothing fits")),
    }
    println!(
        "\n{:<46} {:>6} {:>10} {:>10}  fits",
        "strategy (cheapest first)", "micro", "GPU GiB", "host GiB"
    );
    for row in plan.best_per_strategy() {
        println!(
            "{:<46} {:>6} {:>10} {:>10}  {}",
            label(row),
            row.micro_batch,
            gib(row.gpu_bytes),
            gib(row.host_bytes),
            if row.fits { "yes" } else { "no" }
        );
    }
    let shown = plan.chosen.as_ref().or_else(|| {
        plan.candidates
            .iter()
            .min_by(|a, b| a.gpu_bytes.total_cmp(&b.gpu_bytes))
    });
    if let (true, Some(c)) = (explain, shown) {
        println!(
            "\nmemory per GPU of {} at micro-batch {}:",
            label(c),
            c.micro_batch
        );
        for t in &c.gpu {
            println!("  {:<22} {:>9} GiB = {}", t.name, gib(t.bytes), t.formula);
        }
        println!("  {:<22} {:>9} GiB", "total", gib(c.gpu_bytes));
        if c.host_bytes > 0.0 {
            println!(
                "  offloaded to CPU memory: {} GiB per rank",
                gib(c.host_bytes)
            );
        }
        println!(
            "  usable: {} GiB GPU less {} GiB for the CUDA context and NCCL",
            gib(r.gpu_memory_bytes as f64),
            gib(ia_plan::RUNTIME_RESERVE as f64)
        );
    }
}
