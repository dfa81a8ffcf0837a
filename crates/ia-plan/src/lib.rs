//! Distributed training plans for the engines people train with: the memory each rank needs
//! under PyTorch DDP, FSDP (full or gradient/optimizer sharding, CPU offload) and DeepSpeed
//! ZeRO 1/2/3 (CPU offload), with and without activation checkpointing; the cheapest of them
//! that fits the GPUs; and the launch files that run it (`torchrun` + a training script, or a
//! DeepSpeed config + the `deepspeed` launcher). We plan; torch.distributed or DeepSpeed
//! executes.
//!
//! The memory model is the standard accounting of mixed-precision Adam training (Rajbhandari et
//! al., "ZeRO", 2020): with Ψ parameters, PyTorch keeps fp32 parameters (4Ψ), fp32 gradients
//! (4Ψ) and Adam's two fp32 moments (8Ψ) and computes in bf16 through autocast or FSDP's
//! mixed-precision policy; DeepSpeed keeps 16-bit parameters and gradients (2Ψ each) and an
//! fp32 master copy with the moments (12Ψ). Sharding divides a term by the number of ranks N.
//! Activations per layer follow Korthikanti et al. 2022 ("Reducing Activation Recomputation"):
//! s·b·h·(34 + 5·a·s/h) bytes at 16 bits for a micro-batch b of s positions, hidden size h and
//! a heads; with activation checkpointing each layer keeps its 2·s·b·h-byte input and one layer
//! is recomputed at a time. Every term of a plan carries its formula (`--explain`).

use ia_models::cost::Shape;
use ia_models::{footprint, Model, ModelClass};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Request(String),
    #[error("no training plan for {0}")]
    Unsupported(String),
    #[error("writing the launch files: {0}")]
    Io(#[from] std::io::Error),
}

/// Compute precision: bf16 or fp16 mixed precision (fp32 master weights), or fp32 throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Bf16,
    Fp16,
    Fp32,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
            Precision::Fp32 => "fp32",
        }
    }

    /// Bytes of a value in the compute precision.
    fn bytes(self) -> f64 {
        match self {
            Precision::Fp32 => 4.0,
            _ => 2.0,
        }
    }
}

/// How the ranks share the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// PyTorch DistributedDataParallel: everything replicated.
    Ddp,
    /// DeepSpeed ZeRO stage 1: optimizer states sharded.
    Zero1,
    /// PyTorch FSDP, gradients and optimizer states sharded, parameters gathered from forward
    /// to backward (SHARD_GRAD_OP; FSDP2 `reshard_after_forward=False`).
    FsdpGradOp,
    /// DeepSpeed ZeRO stage 2: gradients and optimizer states sharded.
    Zero2,
    /// PyTorch FSDP, everything sharded, each block gathered when used (FULL_SHARD).
    FsdpFull,
    /// DeepSpeed ZeRO stage 3: everything sharded.
    Zero3,
    /// ZeRO-2 with the optimizer (fp32 master weights, moments, gradients) in CPU memory.
    Zero2Offload,
    /// FSDP full sharding with parameters, gradients and optimizer in CPU memory.
    FsdpFullOffload,
    /// ZeRO-3 with parameters and optimizer in CPU memory.
    Zero3Offload,
}

impl Strategy {
    pub const ALL: [Strategy; 9] = [
        Strategy::Ddp,
        Strategy::Zero1,
        Strategy::FsdpGradOp,
        Strategy::Zero2,
        Strategy::FsdpFull,
        Strategy::Zero3,
        Strategy::Zero2Offload,
        Strategy::FsdpFullOffload,
        Strategy::Zero3Offload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Ddp => "ddp",
            Strategy::Zero1 => "zero1",
            Strategy::FsdpGradOp => "fsdp-grad-op",
            Strategy::Zero2 => "zero2",
            Strategy::FsdpFull => "fsdp-full",
            Strategy::Zero3 => "zero3",
            Strategy::Zero2Offload => "zero2-offload",
            Strategy::FsdpFullOffload => "fsdp-full-offload",
            Strategy::Zero3Offload => "zero3-offload",
        }
    }

    /// "torch" (torchrun) or "deepspeed".
    pub fn engine(self) -> &'static str {
        match self {
            Strategy::Ddp
            | Strategy::FsdpGradOp
            | Strategy::FsdpFull
            | Strategy::FsdpFullOffload => "torch",
            _ => "deepspeed",
        }
    }

    fn zero_stage(self) -> Option<u8> {
        match self {
            Strategy::Zero1 => Some(1),
            Strategy::Zero2 | Strategy::Zero2Offload => Some(2),
            Strategy::Zero3 | Strategy::Zero3Offload => Some(3),
            _ => None,
        }
    }

    /// Gathers each block's parameters when it is used (1.5x DDP's communication volume).
    fn full_shard(self) -> bool {
        matches!(
            self,
            Strategy::FsdpFull
                | Strategy::Zero3
                | Strategy::FsdpFullOffload
                | Strategy::Zero3Offload
        )
    }

    fn offload(self) -> bool {
        matches!(
            self,
            Strategy::Zero2Offload | Strategy::FsdpFullOffload | Strategy::Zero3Offload
        )
    }
}

/// What is asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub gpus_per_node: usize,
    pub nodes: usize,
    pub gpu_memory_bytes: u64,
    pub seq_len: usize,
    pub global_batch: usize,
    pub precision: Precision,
    /// Only this strategy (and these checkpointing settings) instead of the cheapest.
    pub strategy: Option<Strategy>,
    pub checkpointing: Option<bool>,
}

impl Request {
    pub fn world(&self) -> usize {
        self.gpus_per_node * self.nodes
    }
}

/// Memory each GPU keeps for the CUDA context and NCCL, outside the allocator's figures.
pub const RUNTIME_RESERVE: u64 = 1 << 30;
/// DDP's gradient bucket size (its default), MiB.
const DDP_BUCKET_MB: u64 = 25;
/// DeepSpeed's reduce / all-gather bucket, elements (its defaults are 5e8: 1 GB at 16 bits).
const ZERO_BUCKET: u64 = 50_000_000;
const ZERO_BUCKET_ELEMENTS: f64 = ZERO_BUCKET as f64;
/// The allocator's and communication's workspace: a fixed part and a share of the states.
const WORKSPACE_FIXED: f64 = 64.0 * 1024.0 * 1024.0;
const WORKSPACE_SHARE: f64 = 0.05;

/// One term of the memory of a rank.
#[derive(Debug, Clone, Serialize)]
pub struct Term {
    pub name: &'static str,
    pub bytes: f64,
    pub formula: String,
}

/// One strategy at one micro-batch, with its memory per rank.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub strategy: Strategy,
    pub engine: &'static str,
    pub activation_checkpointing: bool,
    pub micro_batch: usize,
    pub gradient_accumulation: usize,
    /// GPU memory per rank, by term.
    pub gpu: Vec<Term>,
    pub gpu_bytes: f64,
    /// CPU memory per rank the offloaded states take.
    pub host_bytes: f64,
    pub fits: bool,
}

/// The model quantities a plan needs.
#[derive(Debug, Clone, Serialize)]
pub struct ModelShape {
    pub parameters: f64,
    /// The largest block FSDP / ZeRO-3 gathers at once, and what stays outside the blocks
    /// (embeddings, head, final norm: FSDP's root unit).
    pub block: f64,
    pub root: f64,
    pub hidden: f64,
    pub heads: f64,
    /// Layers whose activations are kept (an encoder-decoder's decoder layers count 1.5: their
    /// cross-attention).
    pub layers: f64,
    /// Logit width of the loss (the vocabulary of a language model; the labels of a classifier).
    pub outputs: f64,
    /// Positions per sample (a ViT's patches and class token; else the sequence length).
    pub positions: usize,
    /// The transformers class the training script builds.
    pub auto_class: &'static str,
}

impl ModelShape {
    pub fn of(model: &Model, seq_len: usize) -> Result<Self, PlanError> {
        let config = model.config();
        let auto_class = match model.class {
            ModelClass::Bert => "AutoModelForMaskedLM",
            ModelClass::Vit => "AutoModelForImageClassification",
            ModelClass::Llama | ModelClass::Qwen if config.get("vision_config").is_none() => {
                "AutoModelForCausalLM"
            }
            ModelClass::T5 => "AutoModelForSeq2SeqLM",
            other => {
                return Err(PlanError::Unsupported(format!(
                    "{} (class {}): training plans cover BERT, ViT, LLaMA/Qwen/OPT and T5",
                    model.name,
                    other.as_str()
                )))
            }
        };
        let shape = Shape::of(config, None).ok_or_else(|| {
            PlanError::Unsupported(format!("{}: config.json has no hidden size", model.name))
        })?;
        // The checkpoint's own count; from the config, the cost model's (gated MLPs and
        // untied heads counted).
        let parameters = match &model.source {
            ia_models::ModelSource::Checkpoint(c) if !c.safetensors.is_empty() => {
                footprint::safetensors_elements(&c.safetensors)
                    .map_err(|e| PlanError::Request(e.to_string()))? as f64
            }
            _ => shape.parameters(model.generates_text()) as f64,
        };
        let block = shape.layer_weights(false).max(if shape.decoder_layers > 0 {
            shape.layer_weights(true)
        } else {
            0.0
        });
        let in_blocks = shape.layers as f64 * shape.layer_weights(false)
            + shape.decoder_layers as f64 * shape.layer_weights(true);
        let positions = match model.class {
            ModelClass::Vit => {
                let int = |k: &str| config.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
                (int("image_size") / int("patch_size").max(1)).pow(2) + 1
            }
            _ => seq_len,
        };
        let outputs = match model.class {
            ModelClass::Vit => config
                .get("id2label")
                .and_then(Value::as_object)
                .map_or(2.0, |m| m.len() as f64),
            _ => shape.vocab as f64,
        };
        Ok(Self {
            parameters,
            block,
            root: (parameters - in_blocks).max(0.0),
            hidden: shape.hidden as f64,
            heads: shape.heads as f64,
            layers: shape.layers as f64 + 1.5 * shape.decoder_layers as f64,
            outputs,
            positions,
            auto_class,
        })
    }
}

/// Every candidate considered, and the chosen one.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub model: String,
    /// "checkpoint": the script loads the checkpoint's weights; "random": it initialises them
    /// from the config.
    pub weights: &'static str,
    pub request: Request,
    pub shape: ModelShape,
    /// GPU memory a rank's plan may use: the GPU's less [`RUNTIME_RESERVE`].
    pub usable_bytes: f64,
    pub chosen: Option<Candidate>,
    /// Why nothing fits (the smallest candidate's need), when nothing does.
    pub why_none: Option<String>,
    /// The preference order the choice walked, cheapest first.
    pub order: Vec<String>,
    pub candidates: Vec<Candidate>,
}

impl Plan {
    /// One candidate per entry of the preference order: its largest micro-batch that fits,
    /// else its smallest need.
    pub fn best_per_strategy(&self) -> Vec<&Candidate> {
        self.order
            .iter()
            .filter_map(|key| {
                let rows: Vec<&Candidate> = self
                    .candidates
                    .iter()
                    .filter(|c| c.order_key() == *key)
                    .collect();
                rows.iter()
                    .find(|c| c.fits)
                    .or_else(|| {
                        rows.iter()
                            .min_by(|a, b| a.gpu_bytes.total_cmp(&b.gpu_bytes))
                    })
                    .copied()
            })
            .collect()
    }
}

impl Candidate {
    /// Its entry in [`Plan::order`]: the strategy, "+ckpt" with activation checkpointing.
    pub fn order_key(&self) -> String {
        key(self.strategy, self.activation_checkpointing)
    }
}

fn key(strategy: Strategy, checkpointing: bool) -> String {
    format!(
        "{}{}",
        strategy.name(),
        if checkpointing { "+ckpt" } else { "" }
    )
}

fn gib(b: f64) -> String {
    format!("{:.2} GiB", b / (1u64 << 30) as f64)
}

/// The memory of one rank under `strategy`.
fn memory(
    m: &ModelShape,
    r: &Request,
    strategy: Strategy,
    checkpointing: bool,
    micro: usize,
) -> (Vec<Term>, f64) {
    let n = r.world() as f64;
    let p = m.parameters;
    let k = r.precision.bytes();
    let mixed = r.precision != Precision::Fp32;
    let mut gpu = Vec::new();
    let mut host = 0.0;
    let mut term = |name, bytes: f64, formula: String| {
        gpu.push(Term {
            name,
            bytes,
            formula,
        })
    };
    // The states: (bytes per parameter of parameters, gradients, optimizer).
    let deepspeed = strategy.engine() == "deepspeed";
    let (pb, gb, ob) = match (deepspeed, mixed) {
        (true, true) => (k, k, 12.0),
        _ => (4.0, 4.0, 8.0),
    };
    let shard = |part: bool| if part { n } else { 1.0 };
    let (p_sharded, g_sharded, o_sharded) = match strategy {
        Strategy::Ddp => (false, false, false),
        Strategy::Zero1 => (false, false, true),
        Strategy::Zero2 | Strategy::Zero2Offload | Strategy::FsdpGradOp => (false, true, true),
        _ => (true, true, true),
    };
    // FSDP keeps sharded fp32 parameters even under grad-op sharding; it gathers 16-bit copies.
    let p_sharded = p_sharded || strategy == Strategy::FsdpGradOp;
    let on_host = |what: &str| {
        strategy.offload()
            && match what {
                "optimizer" => true,
                "gradients" => true,
                "parameters" => strategy != Strategy::Zero2Offload,
                _ => false,
            }
    };
    let mut states = 0.0;
    for (name, per, sharded) in [
        ("parameters", pb, p_sharded),
        ("gradients", gb, g_sharded),
        ("optimizer", ob, o_sharded),
    ] {
        let bytes = per * p / shard(sharded);
        states += bytes;
        let formula = if sharded {
            format!("{per} B x {p:.0} params / {n} ranks")
        } else {
            format!("{per} B x {p:.0} params")
        };
        if on_host(name) {
            host += bytes;
        } else {
            term(name, bytes, formula);
        }
    }
    // What is gathered or cast beyond the shards.
    match strategy {
        Strategy::Ddp if mixed => term(
            "autocast copies",
            k * p,
            format!("{k} B x {p:.0} params (autocast's cached 16-bit weights)"),
        ),
        Strategy::FsdpGradOp => term(
            "gathered parameters",
            k * p + 4.0 * (m.root + m.block),
            format!(
                "{k} B x {p:.0} params kept from forward to backward + 4 B x ({:.0} root + {:.0} block) unsharded gradients",
                m.root, m.block
            ),
        ),
        s if s.full_shard() && s.engine() == "torch" => term(
            "gathered parameters",
            k * (m.root + 2.0 * m.block) + 4.0 * (m.root + m.block),
            format!(
                "{k} B x ({:.0} root + 2 x {:.0} block, one prefetched) + 4 B x ({:.0} + {:.0}) unsharded gradients",
                m.root, m.block, m.root, m.block
            ),
        ),
        s if s.full_shard() => term(
            "live parameters",
            k * (m.root + 2.0 * m.block) + k * ZERO_BUCKET_ELEMENTS,
            format!(
                "{k} B x ({:.0} root + 2 x {:.0} block) + {k} B x {ZERO_BUCKET_ELEMENTS:.0} prefetch bucket",
                m.root, m.block
            ),
        ),
        _ => {}
    }
    match strategy {
        Strategy::Ddp => {}
        s if s.engine() == "deepspeed" => term(
            "communication buckets",
            2.0 * k * ZERO_BUCKET_ELEMENTS,
            format!("2 x {k} B x {ZERO_BUCKET_ELEMENTS:.0} (reduce and all-gather buckets)"),
        ),
        _ => {}
    }
    // Activations of one micro-batch.
    let (s, b, h, a) = (m.positions as f64, micro as f64, m.hidden, m.heads);
    let scale = k / 2.0;
    let per_layer = s * b * h * (34.0 + 5.0 * a * s / h) * scale;
    let (bytes, formula) = if checkpointing {
        (
            m.layers * 2.0 * s * b * h * scale + per_layer,
            format!(
                "{} layers x 2 x s {s} x b {b} x h {h} x {scale} (inputs kept) + one layer recomputed {}",
                m.layers,
                gib(per_layer)
            ),
        )
    } else {
        (
            m.layers * per_layer,
            format!(
                "{} layers x s {s} x b {b} x h {h} x (34 + 5 x a {a} x s / h) x {scale}",
                m.layers
            ),
        )
    };
    term("activations", bytes, formula);
    term(
        "logits",
        s * b * m.outputs * (k + 8.0),
        format!(
            "s {s} x b {b} x {:.0} outputs x ({k} + 4 fp32 for the loss + 4 its gradient)",
            m.outputs
        ),
    );
    if strategy == Strategy::Ddp {
        term(
            "gradient buckets",
            (DDP_BUCKET_MB << 20) as f64,
            format!("{DDP_BUCKET_MB} MiB (gradients are bucket views)"),
        );
    }
    term(
        "workspace",
        WORKSPACE_FIXED + WORKSPACE_SHARE * states,
        format!(
            "64 MiB + {WORKSPACE_SHARE} x {} of states (allocator and communication workspace)",
            gib(states)
        ),
    );
    (gpu, host)
}

/// The preference order, cheapest step first: DDP, then sharding that keeps DDP's
/// communication (ZeRO-1/2, FSDP grad-op), then full sharding (1.5x the communication), then
/// CPU offload (the optimizer runs on the CPU). Activation checkpointing (a third more compute)
/// comes before full sharding across nodes, where the network is the scarce resource, and after
/// it within one node.
pub fn preference(nodes: usize) -> Vec<(Strategy, bool)> {
    let light = [
        Strategy::Ddp,
        Strategy::Zero1,
        Strategy::FsdpGradOp,
        Strategy::Zero2,
    ];
    let full = [Strategy::FsdpFull, Strategy::Zero3];
    let offload = [
        Strategy::Zero2Offload,
        Strategy::FsdpFullOffload,
        Strategy::Zero3Offload,
    ];
    let with =
        |set: &[Strategy], ckpt: bool| set.iter().map(move |&s| (s, ckpt)).collect::<Vec<_>>();
    let mut order = with(&light, false);
    if nodes > 1 {
        order.extend(with(&light, true));
        order.extend(with(&full, false));
        order.extend(with(&full, true));
    } else {
        order.extend(with(&full, false));
        order.extend(with(&light, true));
        order.extend(with(&full, true));
    }
    order.extend(with(&offload, false));
    order.extend(with(&offload, true));
    order
}

/// Plans `model` for `request`: every candidate of the preference order at every micro-batch
/// that divides a rank's share of the global batch (largest first); the first that fits wins.
pub fn plan(model: &Model, request: Request) -> Result<Plan, PlanError> {
    let world = request.world();
    if world == 0 || request.seq_len == 0 || request.global_batch == 0 {
        return Err(PlanError::Request(
            "--gpus, --nodes, --seq-len and --global-batch must be at least 1".into(),
        ));
    }
    if !request.global_batch.is_multiple_of(world) {
        return Err(PlanError::Request(format!(
            "a global batch of {} does not divide among {world} ranks",
            request.global_batch
        )));
    }
    let shape = ModelShape::of(model, request.seq_len)?;
    let usable = request.gpu_memory_bytes.saturating_sub(RUNTIME_RESERVE) as f64;
    let per_rank = request.global_batch / world;
    let micro_batches: Vec<usize> = (1..=per_rank)
        .rev()
        .filter(|m| per_rank.is_multiple_of(*m))
        .collect();
    let order: Vec<(Strategy, bool)> = preference(request.nodes)
        .into_iter()
        .filter(|(s, c)| {
            request.strategy.is_none_or(|x| x == *s)
                && request.checkpointing.is_none_or(|x| x == *c)
        })
        .collect();
    let mut candidates = Vec::new();
    for &(strategy, checkpointing) in &order {
        for &micro in &micro_batches {
            let (gpu, host) = memory(&shape, &request, strategy, checkpointing, micro);
            let gpu_bytes = gpu.iter().map(|t| t.bytes).sum::<f64>();
            candidates.push(Candidate {
                strategy,
                engine: strategy.engine(),
                activation_checkpointing: checkpointing,
                micro_batch: micro,
                gradient_accumulation: per_rank / micro,
                gpu,
                gpu_bytes,
                host_bytes: host,
                fits: gpu_bytes <= usable,
            });
        }
    }
    let chosen = candidates.iter().find(|c| c.fits).cloned();
    let why_none = match &chosen {
        Some(_) => None,
        None => candidates
            .iter()
            .min_by(|a, b| a.gpu_bytes.total_cmp(&b.gpu_bytes))
            .map(|c| {
                format!(
                    "nothing fits: the smallest, {}{} at micro-batch {}, needs {} per GPU and {} GiB GPUs leave {} (less {} for the CUDA context and NCCL)",
                    c.strategy.name(),
                    if c.activation_checkpointing { " with activation checkpointing" } else { "" },
                    c.micro_batch,
                    gib(c.gpu_bytes),
                    request.gpu_memory_bytes as f64 / (1u64 << 30) as f64,
                    gib(usable),
                    gib(RUNTIME_RESERVE as f64)
                )
            }),
    };
    Ok(Plan {
        model: model.name.clone(),
        weights: match &model.source {
            ia_models::ModelSource::Checkpoint(c) if !c.safetensors.is_empty() => "checkpoint",
            _ => "random",
        },
        request,
        shape,
        usable_bytes: usable,
        chosen,
        why_none,
        order: order.iter().map(|&(s, c)| key(s, c)).collect(),
        candidates,
    })
}

/// AdamW's settings in every emitted file.
const OPTIMIZER: (f64, [f64; 2], f64, f64) = (1e-4, [0.9, 0.999], 1e-8, 0.01);
const STEPS: usize = 100;

/// The training script every plan launches.
pub const TRAIN_PY: &str = include_str!("../templates/train.py");

/// Writes the launch files of `plan`'s chosen candidate into `dir`: plan.json (what the script
/// reads), train.py, launch.sh, the model's config.json (random weights) and, for ZeRO,
/// ds_config.json. Returns the files written.
pub fn emit(plan: &Plan, model: &Model, dir: &Path) -> Result<Vec<String>, PlanError> {
    let c = plan
        .chosen
        .as_ref()
        .ok_or_else(|| PlanError::Request(plan.why_none.clone().unwrap_or_default()))?;
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut write = |name: &str, text: String| -> Result<(), PlanError> {
        std::fs::write(dir.join(name), text)?;
        written.push(name.to_string());
        Ok(())
    };
    let model_path = match &model.source {
        ia_models::ModelSource::Checkpoint(ck) if plan.weights == "checkpoint" => {
            ck.dir.canonicalize()?.display().to_string()
        }
        _ => {
            std::fs::create_dir_all(dir.join("model"))?;
            write(
                "model/config.json",
                serde_json::to_string_pretty(model.config()).unwrap_or_default(),
            )?;
            "model".to_string()
        }
    };
    let (lr, betas, eps, weight_decay) = OPTIMIZER;
    let r = &plan.request;
    let spec = json!({
        "model": plan.model,
        "model_path": model_path,
        "weights": plan.weights,
        "auto_class": plan.shape.auto_class,
        "strategy": c.strategy.name(),
        "engine": c.engine,
        "precision": r.precision,
        "activation_checkpointing": c.activation_checkpointing,
        "world_size": r.world(),
        "nodes": r.nodes,
        "gpus_per_node": r.gpus_per_node,
        "global_batch": r.global_batch,
        "micro_batch": c.micro_batch,
        "gradient_accumulation": c.gradient_accumulation,
        "seq_len": r.seq_len,
        "steps": STEPS,
        "seed": 0,
        "bucket_mb": DDP_BUCKET_MB,
        "optimizer": {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay},
        "per_rank_bytes": c.gpu_bytes,
        "per_rank_terms": c.gpu,
        "host_bytes": c.host_bytes,
    });
    write(
        "plan.json",
        serde_json::to_string_pretty(&spec).unwrap_or_default(),
    )?;
    write("train.py", TRAIN_PY.to_string())?;
    let launch = match c.strategy.zero_stage() {
        None => format!(
            "#!/bin/sh\n# {} on {} node(s) x {} GPU(s), from `ipfs-accelerate plan-training`.\n# On each node: MASTER_ADDR=<node 0's address> NODE_RANK=<this node> sh launch.sh\ncd \"$(dirname \"$0\")\"\nexec torchrun --nnodes {} --nproc-per-node {} --node-rank \"${{NODE_RANK:-0}}\" \\\n  --master-addr \"${{MASTER_ADDR:-localhost}}\" --master-port \"${{MASTER_PORT:-29500}}\" \\\n  train.py \"$@\"\n",
            c.strategy.name(),
            r.nodes,
            r.gpus_per_node,
            r.nodes,
            r.gpus_per_node
        ),
        Some(stage) => {
            write(
                "ds_config.json",
                serde_json::to_string_pretty(&deepspeed_config(plan, c, stage))
                    .unwrap_or_default(),
            )?;
            format!(
                "#!/bin/sh\n# ZeRO-{stage} on {} node(s) x {} GPU(s), from `ipfs-accelerate plan-training`.\n# Several nodes: list them in a hostfile (`host slots=N` per line) and add --hostfile.\ncd \"$(dirname \"$0\")\"\nexec deepspeed --num_nodes {} --num_gpus {} train.py --deepspeed ds_config.json \"$@\"\n",
                r.nodes, r.gpus_per_node, r.nodes, r.gpus_per_node
            )
        }
    };
    write("launch.sh", launch)?;
    Ok(written)
}

/// DeepSpeed's JSON config for a ZeRO candidate, in its documented keys.
fn deepspeed_config(plan: &Plan, c: &Candidate, stage: u8) -> Value {
    let r = &plan.request;
    let (lr, betas, eps, weight_decay) = OPTIMIZER;
    let mut zero = json!({
        "stage": stage,
        "overlap_comm": true,
        "contiguous_gradients": true,
        "reduce_bucket_size": ZERO_BUCKET,
    });
    if stage < 3 {
        zero["allgather_bucket_size"] = json!(ZERO_BUCKET_ELEMENTS);
    } else {
        zero["stage3_prefetch_bucket_size"] = json!(ZERO_BUCKET_ELEMENTS);
        zero["stage3_max_live_parameters"] =
            json!((2.0 * plan.shape.block + plan.shape.root).ceil());
        zero["stage3_param_persistence_threshold"] = json!(1e5);
    }
    if c.strategy.offload() {
        zero["offload_optimizer"] = json!({"device": "cpu", "pin_memory": true});
        if stage == 3 {
            zero["offload_param"] = json!({"device": "cpu", "pin_memory": true});
        }
    }
    json!({
        "train_batch_size": r.global_batch,
        "train_micro_batch_size_per_gpu": c.micro_batch,
        "gradient_accumulation_steps": c.gradient_accumulation,
        "bf16": {"enabled": r.precision == Precision::Bf16},
        "fp16": {"enabled": r.precision == Precision::Fp16},
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": {
            "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}},
        "gradient_clipping": 1.0,
        "steps_per_print": 10,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(parameters: f64) -> ModelShape {
        ModelShape {
            parameters,
            block: parameters / 40.0,
            root: parameters / 20.0,
            hidden: 4096.0,
            heads: 32.0,
            layers: 32.0,
            outputs: 32000.0,
            positions: 2048,
            auto_class: "AutoModelForCausalLM",
        }
    }

    fn request(gpus: usize) -> Request {
        Request {
            gpus_per_node: gpus,
            nodes: 1,
            gpu_memory_bytes: 80 << 30,
            seq_len: 2048,
            global_batch: 8,
            precision: Precision::Bf16,
            strategy: None,
            checkpointing: None,
        }
    }

    fn state_bytes(terms: &[Term]) -> f64 {
        terms
            .iter()
            .filter(|t| matches!(t.name, "parameters" | "gradients" | "optimizer"))
            .map(|t| t.bytes)
            .sum()
    }

    /// The ZeRO paper's Figure 1 for a 7.5B model on 64 GPUs: 120 GB of model states per
    /// rank replicated, 31.4 GB under stage 1, 16.6 GB under stage 2, 1.9 GB under stage 3.
    #[test]
    fn model_states_follow_the_zero_paper() {
        let m = shape(7.5e9);
        let r = request(64);
        let gb = |s| state_bytes(&memory(&m, &r, s, false, 1).0) / 1e9;
        assert!(
            (gb(Strategy::Zero1) - 31.4).abs() < 0.1,
            "{}",
            gb(Strategy::Zero1)
        );
        assert!(
            (gb(Strategy::Zero2) - 16.6).abs() < 0.1,
            "{}",
            gb(Strategy::Zero2)
        );
        assert!(
            (gb(Strategy::Zero3) - 1.875).abs() < 0.01,
            "{}",
            gb(Strategy::Zero3)
        );
        // PyTorch's fp32 master weights: 16 bytes per parameter replicated, as the paper's 120 GB.
        assert!((gb(Strategy::Ddp) - 120.0).abs() < 0.1);
        let (gpu, host) = memory(&m, &r, Strategy::Zero3Offload, false, 1);
        assert_eq!(state_bytes(&gpu), 0.0);
        assert!((host / 1e9 - 1.875).abs() < 0.01);
    }

    /// Korthikanti et al.'s activations: checkpointing keeps 2·s·b·h per layer plus one layer.
    #[test]
    fn checkpointing_keeps_each_layers_input() {
        let m = shape(7e9);
        let r = request(8);
        let act = |ckpt| {
            memory(&m, &r, Strategy::FsdpFull, ckpt, 1)
                .0
                .iter()
                .find(|t| t.name == "activations")
                .unwrap()
                .bytes
        };
        let (s, h) = (2048.0, 4096.0);
        let layer = s * h * (34.0 + 5.0 * 32.0 * s / h);
        assert_eq!(act(false), 32.0 * layer);
        assert_eq!(act(true), 32.0 * 2.0 * s * h + layer);
    }

    #[test]
    fn preference_puts_checkpointing_before_full_sharding_across_nodes() {
        let one = preference(1);
        let many = preference(2);
        let at = |o: &[(Strategy, bool)], x| o.iter().position(|p| *p == x).unwrap();
        assert!(at(&one, (Strategy::FsdpFull, false)) < at(&one, (Strategy::Ddp, true)));
        assert!(at(&many, (Strategy::Ddp, true)) < at(&many, (Strategy::FsdpFull, false)));
        assert_eq!(one.len(), 2 * Strategy::ALL.len());
        assert_eq!(one[0], (Strategy::Ddp, false));
    }
}
