//! Performance prediction for combinations nobody has measured: p50 latency and peak memory.
//!
//! * The latency prior is a roofline: each phase of an iteration (a forward pass; a prefill
//!   and the decode steps of a generation) takes at least `FLOPs / peak FLOP/s` and at least
//!   `bytes moved / memory bandwidth` (the device's own on a GPU, else the host's), from the
//!   cost model ([`ia_models::cost`]) and the machine's calibration (`hardware --calibrate`).
//!   The memory prior is the footprint estimate (`ia_models::footprint`: weights, activations,
//!   KV cache) with the weights counted twice, for the two copies held while a model loads;
//!   on a graph runtime the export's graphs in place of the weights, and on ONNX Runtime the
//!   activations twice (`held_in_memory`).
//! * A per-target line (for latency: call overhead + slowdown x roofline, the overhead of a
//!   pass over an input and of a decode step apart, and a cost per input row of each call,
//!   where the points tell those apart; for memory: the program's own memory + a factor x
//!   footprint, the factor 1 where the footprints of the points do not span the memory
//!   measured) is fitted first; a model's own latency line with Huber's loss (`Fit::Robust`),
//!   so that a repeat a slow spell of the machine caught does not pull it. A target without
//!   measurements gets the line fitted over all targets through the roofline plus its
//!   calibrated dispatch cost (a call, and each operation beyond the arithmetic: the cost
//!   model's operations, or the graph's nodes on a runtime that runs the model's ONNX
//!   export; on a software GPU that is most of a small model's time), with a cost per input
//!   row and per position, and is predicted at no less than its roofline times the slope of
//!   real work on the measured targets (`PointModel::least`); for memory, through the
//!   footprint plus its calibrated program memory (its runtime loaded and run). A target's
//!   latency line fitted on no real work (the tiny fixtures alone) goes on beyond its
//!   points' priors at the slope of real work elsewhere (`Affine::beyond_reach`). Then a
//!   gradient-boosted model ([`forust_ml`]; `perpetual`, its successor, needs a nightly
//!   compiler) learns the log ratio of the measurement to that line: how far each engine,
//!   platform, precision and class stays from it at each size. Learning a ratio, not the
//!   value, lets the trees (which cannot extrapolate) serve batch sizes and lengths outside
//!   the measured range. The line is the model's own on its target
//!   where it has one, and for latency that line alone is the prediction; for latency, a
//!   model without one starts from the target's line, corrected by a second learner fitted
//!   against that line, unless the target ran models of real work and its line reads the
//!   model's roofline as at least half its time: then the prediction is the roofline times
//!   the median of those models' time over their roofline (`Affine::real_work_ratio`).
//! * The 90% interval is cross-conformal: the configurations are dealt into four folds, each
//!   fold is predicted by a fit on the other three, and the 90th percentile of those absolute
//!   log errors widens every prediction of the model fitted on all of them. A case of an
//!   unmeasured model or target is widened by the errors of holding each model or target out
//!   in turn. The upper bound (what a memory fit decision uses) is
//!   10% above the prediction times the largest held-out under-prediction.
//! * [`evaluate`] holds out configurations, batch sizes, models or whole platforms in turn,
//!   and counts measurements above their upper bound.

use forust_ml::objective::ObjectiveType;
use forust_ml::{GradientBooster, Matrix};
use ia_models::cost::{Cost, ImageWork, Phase, Shape};
use ia_models::graph_weights::GraphOperations;
use ia_models::{footprint, Model, ModelClass};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("{0}")]
    NotEnoughData(String),
    #[error("the learner failed: {0}")]
    Learner(String),
}

/// What a platform and engine sustain, and what their program holds (from the calibration).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ceiling {
    pub flops_per_s: f64,
    /// The host's memory bandwidth, or the target's own on a device with memory of its own
    /// (a GPU).
    pub bytes_per_s: f64,
    /// Seconds of a call beyond its operations (0 where not calibrated).
    pub call_seconds: f64,
    /// Seconds of each operation beyond its arithmetic (0 where not calibrated).
    pub op_seconds: f64,
    /// Resident bytes of the program with the engine's runtime loaded and run, before any
    /// model (0 where not calibrated).
    pub program_bytes: f64,
}

/// Bytes each weight takes at a precision (the block formats' scales included). The block
/// formats count the native kernel's layout, which holds more than a GGUF file (34 / 32 and
/// 144 / 256): an f32 scale per block of 32, and Q4_K's f32 min, so memory is not
/// under-predicted.
pub fn bytes_per_weight(precision: &str) -> f64 {
    match precision {
        "f16" | "bf16" => 2.0,
        "int8" => 1.0,
        "q8_0" => 36.0 / 32.0,
        "q4_k" => 24.0 / 32.0,
        _ => 4.0,
    }
}

/// The size of one iteration of a benchmark combination.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Workload {
    pub batch: usize,
    /// Text length (prompt length of a generation).
    pub seq_len: usize,
    /// Tokens a generation adds (0 for a forward pass).
    pub new_tokens: usize,
    /// Seconds of audio per input.
    pub audio_seconds: f64,
    /// An image-text generator's picture per input (bench's test picture).
    pub image: Option<ImageWork>,
}

/// A case's size as tables and reports name it: `b=8 seq=64`, or `b=8` for inputs without a
/// length.
pub fn size_label(batch: usize, seq_len: usize) -> String {
    match seq_len {
        0 => format!("b={batch}"),
        len => format!("b={batch} seq={len}"),
    }
}

/// The tower the cost model follows and the positions one forward pass of it attends over;
/// `None` for classes without a cost model (DETR's convolutional backbone, CLAP's Swin
/// tower).
fn tower_positions(
    config: &Value,
    class: ModelClass,
    work: Workload,
) -> Option<(Option<&'static str>, usize)> {
    Some(match class {
        ModelClass::Bert => (None, work.seq_len),
        // The language model over the prompt and the picture's image tokens (no prediction
        // rather than a text-only one when the picture is unknown). Qwen2-VL's and Qwen2.5-VL's
        // configs are the language model's at the top level, Qwen3-VL's in text_config.
        ModelClass::Qwen if config.get("vision_config").is_some() => {
            let tower = config.get("text_config").map(|_| "text_config");
            (tower, work.seq_len + work.image?.tokens)
        }
        ModelClass::Llava | ModelClass::LlavaNext => {
            (Some("text_config"), work.seq_len + work.image?.tokens)
        }
        ModelClass::Llama | ModelClass::Qwen | ModelClass::T5 => (None, work.seq_len),
        ModelClass::Vit => (None, patches(config)?),
        ModelClass::Clip => (
            Some("vision_config"),
            patches(config.get("vision_config")?)?,
        ),
        // The encoder always sees a 30-s window: 1500 positions after its stride-2 conv.
        ModelClass::Whisper => (None, 1500),
        // 20 ms per position after the convolutional feature encoder.
        ModelClass::Wav2vec2 => (None, (work.audio_seconds * 50.0).round().max(1.0) as usize),
        // Every frame's patches, its class token and the cross-frame message token.
        ModelClass::Xclip => (
            Some("vision_config"),
            patches(config.get("vision_config")?)? + 1,
        ),
        _ => return None,
    })
}

/// Rows the tower runs per input: an X-CLIP clip's frames.
fn rows_per_input(config: &Value, class: ModelClass) -> usize {
    match class {
        ModelClass::Xclip => ia_models::defaults::video_frames(config).max(1),
        _ => 1,
    }
}

/// The vision tower's pass an image-text generator makes before its prefill: LLaVA's CLIP over
/// each tile, Qwen-VL's vision transformer over the patches.
fn image_encode_cost(
    config: &Value,
    class: ModelClass,
    work: Workload,
    bytes: f64,
) -> Option<Cost> {
    let image = work.image?;
    let shape = match class {
        ModelClass::Llava | ModelClass::LlavaNext => Shape::of(config, Some("vision_config"))?,
        ModelClass::Qwen => Shape::of_qwen_vl_vision(config)?,
        _ => return None,
    };
    let rows = work.batch * image.tiles;
    Some(shape.cost(Phase::Forward, false, rows, image.tower_positions, bytes))
}

/// The phases of one iteration and their costs: one forward pass, or a prefill and
/// `new_tokens - 1` decode steps. `None` for classes without a cost model.
pub fn iteration_costs(
    config: &Value,
    class: ModelClass,
    generates_text: bool,
    work: Workload,
    precision: &str,
) -> Option<Vec<Cost>> {
    let bytes = bytes_per_weight(precision);
    let (tower, positions) = tower_positions(config, class, work)?;
    let shape = Shape::of(config, tower)?;
    if class == ModelClass::Whisper {
        return Some(whisper_costs(shape, work.batch, positions, bytes));
    }
    if !generates_text {
        return Some(vec![shape.cost(
            Phase::Forward,
            false,
            work.batch * rows_per_input(config, class),
            positions,
            bytes,
        )]);
    }
    let mut costs: Vec<Cost> = image_encode_cost(config, class, work, bytes)
        .into_iter()
        .collect();
    costs.push(shape.cost(Phase::Prefill, true, work.batch, positions, bytes));
    for step in 1..work.new_tokens {
        let cached = positions + step;
        costs.push(shape.cost(Phase::Decode { cached }, true, work.batch, 1, bytes));
    }
    Some(costs)
}

/// A Whisper iteration is a transcription: the encoder once over its window, then the decoder
/// over its prompt, attending to the encoder's states. Counting the decoder stack over the
/// window's 1,500 positions, as one forward pass of both stacks would, put whisper-tiny.en at
/// 91 GFLOP an input instead of 35, and its prediction at twice its measurement with the
/// model held out. The tokens it then writes depend on the audio, so the decode steps are
/// left to the learned stages: each costs the decoder alone, about a thousandth of the
/// encoder's FLOPs.
fn whisper_costs(shape: Shape, batch: usize, window: usize, bytes: f64) -> Vec<Cost> {
    let encoder = Shape {
        decoder_layers: 0,
        ..shape
    };
    let decoder = Shape { layers: 0, ..shape };
    vec![
        encoder.cost(Phase::Forward, false, batch, window, bytes),
        decoder.cost(
            Phase::Prefill,
            true,
            batch,
            footprint::DECODER_PROMPT,
            bytes,
        ),
    ]
}

/// Image positions of a ViT-style tower: patches plus the class token.
fn patches(config: &Value) -> Option<usize> {
    let image = config.get("image_size")?.as_u64()?;
    let patch = config.get("patch_size")?.as_u64()?.max(1);
    Some(((image / patch).pow(2) + 1) as usize)
}

/// A configuration, with what the prediction depends on.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub model: String,
    pub class: String,
    pub engine: String,
    pub platform: String,
    pub precision: String,
    /// The machine (hardware fingerprint).
    pub hardware: String,
    pub work: Workload,
    /// The phases of one iteration.
    #[serde(skip)]
    pub costs: Vec<Cost>,
    pub ceiling: Option<Ceiling>,
    /// What the model and one iteration need in memory on the case's engine, bytes: weights
    /// (twice, held while loading), activations and KV cache (`ia_models::footprint::estimate`,
    /// as [`held_in_memory`] counts them for the engine); the prior of the peak-memory
    /// prediction.
    pub footprint_bytes: f64,
    /// Transformer layers one call runs through (an encoder-decoder's both stacks): with the
    /// calls of an iteration, how many kernel launches it makes, which dominate a tiny model
    /// where dispatching an operation costs more than computing it.
    pub layers: u64,
    /// The operations one call dispatches where the engine runs the model's ONNX export, in
    /// place of the cost model's count: a runtime's calibrated cost of an operation is that of
    /// a graph node, and an export has more nodes than the cost model counts operations (its
    /// shape arithmetic and mask building; llama-tiny's more than bert-tiny's). See
    /// [`graph_operations`].
    pub graph_operations: Option<f64>,
}

/// Engines that run a model's ONNX export: ONNX Runtime, OpenVINO (which reads it where no
/// IR is beside it) and ONNX Runtime Web.
const GRAPH_ENGINES: [&str; 3] = ["onnxruntime", "openvino", "onnxruntime-web"];

/// [`Case::graph_operations`] of `model` on an engine and platform: the export's nodes over
/// values and shapes ([`ia_models::graph_weights::onnx_operations`]); on WebGPU those over
/// values alone, which its provider runs, each a GPU dispatch (the shape arithmetic stays on
/// the CPU). None for an engine of its own graph, a model without an export, or one whose
/// iteration runs several graphs (an encoder-decoder, an image encoder before a prefill).
/// Each file is read once per process.
///
/// On three stores of `scripts/predict_data.sh` (Zen 4, 2026-12-06) the held-out-platform
/// top-1 rose from 14, 14 and 8% to 86, 86 and 81%, its mean loss fell from 113.7, 78.5 and
/// 90.5% to 52.8, 37.7 and 49.8%, and its MAPE went 43.3 -> 42.0, 37.9 -> 40.0 and 41.2 ->
/// 32.1%. Counting all of WebGPU's nodes put its held-out measurements at 0.42 of their
/// prediction.
fn graph_operations(
    model: &Model,
    (engine, platform): (&str, &str),
    work: Workload,
) -> Option<f64> {
    type Counted = HashMap<PathBuf, Option<GraphOperations>>;
    static COUNTED: OnceLock<Mutex<Counted>> = OnceLock::new();
    if !GRAPH_ENGINES.contains(&engine)
        || work.image.is_some()
        || model.class == ModelClass::Whisper
    {
        return None;
    }
    let ia_models::ModelSource::Checkpoint(c) = &model.source else {
        return None;
    };
    let path = c.onnx.as_ref()?;
    let mut counted = COUNTED.get_or_init(Default::default).lock().ok()?;
    let operations = (*counted
        .entry(path.clone())
        .or_insert_with(|| ia_models::graph_weights::onnx_operations(path).ok()))?;
    Some(match platform {
        "webgpu" => operations.on_values,
        _ => operations.on_values + operations.on_shapes,
    } as f64)
}

/// What `engine` holds of `footprint` at its peak, bytes, the memory prior of a case:
///
/// * The weights twice: a model's peak often comes while it loads (MiniLM's stays at
///   273-281 MB from batch 1 to 8 on the native engine: about the program's own memory plus
///   its 90 MB of weights twice). Counted once, every held-out measurement of MiniLM was above
///   its upper bound on `scripts/predict_data.sh`'s store of 2026-12-04. A graph runtime
///   loads the export's weights, not the checkpoint's ([`export_bytes`]).
/// * On ONNX Runtime the activations twice: its arena keeps the tensors the first run
///   allocated one by one, and every later run allocates the memory pattern's one block for
///   all of them on top (microsoft/onnxruntime#2835). whisper-tiny.en's peak there grew by
///   311 MiB an input from a batch of 1 to 8 (865-871 -> 3,042-3,051 MiB), 2.4 times the
///   footprint's activations (130 MiB an input); with the memory pattern off, by 193 MiB
///   (719-742 -> 2,085 MiB), but the tiny fixtures' fastest iteration took 3-23% longer, so
///   the engine keeps ONNX Runtime's default. Counting the export's weights but these
///   activations once, four held-out-platform measurements of whisper-tiny.en on ONNX
///   Runtime were above their upper bound on `scripts/predict_data.sh`'s store of
///   2026-12-07 (with both, none).
fn held_in_memory(footprint: &footprint::Footprint, model: &Model, engine: &str) -> f64 {
    let weights = export_bytes(model, engine).unwrap_or(footprint.weights) as f64;
    let activations =
        footprint.activations as f64 * if engine == "onnxruntime" { 2.0 } else { 1.0 };
    2.0 * weights + activations + footprint.kv_cache.saturating_add(footprint.tables) as f64
}

/// Bytes of the graphs an engine that runs `model`'s ONNX export loads (every graph of an
/// encoder-decoder's export: the encoder, the decoder and the decoder with past, whose
/// weights each graph holds again); None for an engine of its own graph or a model without
/// an export. whisper-tiny.en's export is 424 MB in three graphs, against 151 MB of
/// parameters: its decoder's 80 MB vocabulary projection is untied from the embedding, and
/// both decoder graphs carry both. Counted from the parameters, 8 of its 16 held-out-model
/// measurements on ONNX Runtime and OpenVINO (865-3,051 and 960-1,792 MiB) were above their
/// upper bound on `scripts/predict_data.sh`'s store of 2026-12-07; counted from the
/// export, none.
fn export_bytes(model: &Model, engine: &str) -> Option<u64> {
    if !GRAPH_ENGINES.contains(&engine) {
        return None;
    }
    let files = ia_engine::exported_seq2seq::export_graphs(&model.source, model.class).ok()?;
    Some(
        files
            .iter()
            .map(|(_, file)| ia_models::graph_weights::graph_file_bytes(file))
            .sum(),
    )
}

/// A compute rate standing in for an uncalibrated platform (100 GFLOP/s, 20 GB/s): the
/// learned ratio absorbs how far off it is.
const NOMINAL: Ceiling = Ceiling {
    flops_per_s: 1e11,
    bytes_per_s: 2e10,
    call_seconds: 0.0,
    op_seconds: 0.0,
    program_bytes: 0.0,
};

impl Case {
    /// The case of `model` on an engine and platform of the machine `hardware`, with that
    /// target's ceiling (None: uncalibrated); `None` for a class without a cost model.
    pub fn new(
        model: &Model,
        target: (&str, &str),
        precision: &str,
        hardware: &str,
        work: Workload,
        ceiling: Option<Ceiling>,
    ) -> Option<Self> {
        let config = model.config();
        let costs = iteration_costs(config, model.class, model.generates_text(), work, precision)?;
        let (tower, positions) = tower_positions(config, model.class, work)?;
        let shape = Shape::of(config, tower)?;
        let footprint = footprint::estimate(
            &model.source,
            bytes_per_weight(precision).ceil() as u64,
            footprint::Workload {
                batch: work.batch * rows_per_input(config, model.class),
                positions,
                cached_positions: if model.generates_text() {
                    positions + work.new_tokens
                } else {
                    0
                },
                beams: 1,
            },
        )
        .ok()?;
        Some(Self {
            model: model.name.clone(),
            class: model.class.as_str().into(),
            engine: target.0.into(),
            platform: target.1.into(),
            precision: precision.into(),
            hardware: hardware.into(),
            work,
            costs,
            ceiling,
            footprint_bytes: held_in_memory(&footprint, model, target.0),
            layers: shape.layers + shape.decoder_layers,
            graph_operations: graph_operations(model, target, work),
        })
    }

    /// The roofline of one iteration, ms: each phase bound by compute or by memory.
    pub fn prior_ms(&self) -> f64 {
        let c = self.ceiling.unwrap_or(NOMINAL);
        self.costs
            .iter()
            .map(|p| (p.flops / c.flops_per_s).max(p.bytes_moved() / c.bytes_per_s))
            .sum::<f64>()
            * 1e3
    }

    /// What the target's calibration says dispatching one iteration costs, ms: each call, and
    /// each operation (the cost model's, or the export's nodes: [`Case::graph_operations`]),
    /// beyond the arithmetic.
    pub fn dispatch_ms(&self) -> f64 {
        let c = self.ceiling.unwrap_or(NOMINAL);
        (self.costs.len() as f64 * c.call_seconds + self.dispatched_operations() * c.op_seconds)
            * 1e3
    }

    /// The operations an iteration dispatches: each call's graph nodes where it runs an
    /// export, else the cost model's operations.
    fn dispatched_operations(&self) -> f64 {
        self.costs
            .iter()
            .map(|p| self.graph_operations.unwrap_or(p.operations))
            .sum()
    }

    fn flops(&self) -> f64 {
        self.costs.iter().map(|c| c.flops).sum()
    }

    fn bytes(&self) -> f64 {
        self.costs.iter().map(Cost::bytes_moved).sum()
    }

    /// The engine on the platform at the precision, on the machine: what a "platform" is to
    /// the evaluation and to the novelty of a prediction.
    fn target(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.engine, self.platform, self.precision, self.hardware
        )
    }
}

/// Bytes in a MiB, the unit the store keeps peak memory in.
const MIB: f64 = (1u64 << 20) as f64;

/// What is predicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Quantity {
    /// The p50 latency of one iteration, ms.
    Latency,
    /// The peak resident memory of the process while the combination ran, MiB.
    PeakMemory,
}

impl Quantity {
    pub const ALL: [Quantity; 2] = [Quantity::Latency, Quantity::PeakMemory];

    /// The physical estimate the learner corrects.
    fn prior(self, c: &Case) -> f64 {
        match self {
            Quantity::Latency => c.prior_ms(),
            Quantity::PeakMemory => c.footprint_bytes / MIB,
        }
    }

    /// What the calibration alone says the prior misses: for latency the dispatch cost, for
    /// memory the program's own (its runtime loaded), which a target's own line learns from
    /// its measurements as its fixed part, and which a target without measurements has only
    /// from its calibration. Where a tiny model's run peaks at 96-99 MiB on the native engine,
    /// 113-118 MiB on ONNX Runtime and 125-132 MiB on OpenVINO, a held-out target's peak was
    /// otherwise the others' program plus its footprint.
    fn calibrated_overhead(self, c: &Case) -> f64 {
        match self {
            Quantity::Latency => c.dispatch_ms(),
            Quantity::PeakMemory => c.ceiling.map_or(0.0, |t| t.program_bytes) / MIB,
        }
    }

    /// What nothing measured of `c` can be under, where its target's own measurements do not
    /// say: for latency the roofline at the calibrated rates (a compute-bound model cannot run
    /// faster than the calibrated peak), for memory nothing (a line's slope there is learned,
    /// and the upper bound covers the whole footprint apart). The all-targets line is fitted
    /// mostly through tiny models whose latency is dispatch, where its slope is barely
    /// determined: it came out at about half, and a held-out native engine predicted MiniLM,
    /// ViT-tiny and Whisper at half their roofline and 2-4x under their measurements
    /// (`scripts/predict_data.sh`, Zen 4: held-out-platform MAPE 42.0, 40.0 and 40.6% ->
    /// 38.1, 35.9 and 37.3% on three stores; 32.1 -> 34.8% on a fourth whose calibration
    /// read the native rate at half, see [`PointModel::floor`]).
    fn floor(self, c: &Case) -> f64 {
        match self {
            Quantity::Latency => c.prior_ms(),
            Quantity::PeakMemory => 0.0,
        }
    }

    /// What the fixed costs of the first learned stage are paid per: for latency the passes
    /// (forward passes, prefills, image encodes) and the decode steps an iteration calls, for
    /// memory the process (one pass, no steps).
    fn units(self, c: &Case) -> Units {
        match self {
            Quantity::Latency => {
                let steps = c.costs.iter().filter(|p| p.decode_step).count();
                let passes = (c.costs.len() - steps).max(1) as f64;
                Units {
                    passes,
                    steps: steps as f64,
                    rows: c.work.batch.max(1) as f64 * (passes + steps as f64),
                    positions: c.costs.iter().map(|p| p.positions).sum(),
                    operations: c.dispatched_operations(),
                }
            }
            Quantity::PeakMemory => Units {
                passes: 1.0,
                steps: 0.0,
                rows: 0.0,
                positions: 0.0,
                operations: 0.0,
            },
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Quantity::Latency => "latency",
            Quantity::PeakMemory => "peak memory",
        }
    }

    fn measured(self, o: &Observation) -> Option<f64> {
        match self {
            Quantity::Latency => Some(o.latency_ms),
            Quantity::PeakMemory => o.peak_memory_mib,
        }
        .filter(|v| v.is_finite() && *v > 0.0)
    }
}

/// A measured case.
#[derive(Debug, Clone, Serialize)]
pub struct Observation {
    pub case: Case,
    pub latency_ms: f64,
    /// Peak resident memory during this combination alone, MiB (None where the process's peak
    /// could not be reset for it, or the engine runs in another process).
    pub peak_memory_mib: Option<f64>,
    /// The stored result it came from.
    pub result_id: i64,
    /// Whether its run kept one speed while timed (the medians of its windows of consecutive
    /// iterations agree; None where not known): what tells a prediction's error from a
    /// measurement the machine slowed down part of the way.
    pub steady: Option<bool>,
}

/// A case with its prior and its measurement of one quantity.
struct Point<'a> {
    case: &'a Case,
    prior: f64,
    measured: f64,
}

fn points(observations: &[&Observation], quantity: Quantity) -> Vec<(usize, f64, f64)> {
    observations
        .iter()
        .enumerate()
        .filter_map(|(i, o)| Some((i, quantity.prior(&o.case), quantity.measured(o)?)))
        .collect()
}

/// What the first learned stage charges a fixed cost for in an iteration: its calls, and
/// the rows and positions they feed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Units {
    /// Passes over an input: a forward pass, a prefill, an image encode.
    passes: f64,
    /// Decode steps.
    steps: f64,
    /// The input rows of every call (batch size x calls): what a cost per row is paid per,
    /// which the roofline misses where a row's arithmetic is tiny next to feeding it through
    /// each operation (a tiny fixture's batch of 8 takes 3.8x its batch of 1 on the native
    /// engine, where the roofline says 2x).
    rows: f64,
    /// The positions every call computes over its rows: what a cost per position, beyond its
    /// arithmetic, is paid per (the roofline counts a tiny model's activations at full
    /// bandwidth; its operations pass over them far slower).
    positions: f64,
    /// The operations every call dispatches ([`Case::dispatched_operations`]): what a cost
    /// per operation is paid per on a target's line, which serves models of other graphs.
    operations: f64,
}

impl Units {
    fn calls(self) -> f64 {
        self.passes + self.steps
    }
}

/// A point of the first stage: its units, its prior `x` and its measurement `y`.
#[derive(Debug, Clone, Copy)]
struct Sample {
    units: Units,
    x: f64,
    y: f64,
}

/// A first-stage line: `per_pass x passes + per_step x steps + per_row x rows + per_position x
/// positions + slope x prior`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Line {
    per_pass: f64,
    per_step: f64,
    per_row: f64,
    per_position: f64,
    per_operation: f64,
    slope: f64,
}

impl Line {
    /// One fixed cost for every call.
    fn per_call(a: f64, slope: f64) -> Self {
        Self {
            per_pass: a,
            per_step: a,
            per_row: 0.0,
            per_position: 0.0,
            per_operation: 0.0,
            slope,
        }
    }

    fn at(&self, units: Units, x: f64) -> f64 {
        self.per_pass * units.passes
            + self.per_step * units.steps
            + self.per_row * units.rows
            + self.per_position * units.positions
            + self.per_operation * units.operations
            + self.slope * x
    }
}

/// The first learned stage: measured = fixed costs per unit + slope x prior, fitted per model
/// on each target (engine, platform, precision, machine), per target, and over everything
/// (for targets without points of their own), by least squares on relative error (a model's
/// own latency line by Huber's loss, [`Fit::Robust`]). For latency
/// the fixed costs are those of a call and of the rows and positions it feeds, which dominate
/// small models and which the roofline ignores; for memory there is one unit and its cost is
/// the program's own resident memory.
#[derive(Debug, Clone, Default)]
struct Affine {
    per_target: BTreeMap<String, Line>,
    global: Option<Line>,
    /// The largest prior among each target line's points: how far its slope was measured.
    reach: BTreeMap<String, f64>,
    /// The median slope of every model line of real work.
    real_slope: Option<f64>,
    /// The targets with a model line of real work (see [`Affine::beyond_reach`]), each with
    /// the median over those models of their time over roofline (the inverse of each one's
    /// median share, the one [`REAL_WORK_SHARE`] bounds): what [`Affine::real_work_ratio`]
    /// reads.
    real_ratio: BTreeMap<String, f64>,
}

impl Affine {
    fn fit(points: &[Point], quantity: Quantity) -> Self {
        let samples = |filter: &dyn Fn(&Case) -> bool| -> Vec<Sample> {
            points
                .iter()
                .filter(|p| filter(p.case))
                .map(|p| Sample {
                    units: quantity.units(p.case),
                    x: p.prior,
                    y: p.measured,
                })
                .collect()
        };
        let overheads: Vec<Sample> = points
            .iter()
            .map(|p| {
                let (units, x) = Self::on_global_line(p.case, quantity);
                Sample {
                    units,
                    x,
                    y: p.measured,
                }
            })
            .collect();
        let global = fit_line(&overheads, quantity, LineOf::AllTargets);
        let mut per_target = BTreeMap::new();
        for p in points {
            // The first key is the model's own line.
            for (i, (key, min_points)) in Self::keys(p.case).into_iter().enumerate() {
                if per_target.contains_key(&key) {
                    continue;
                }
                let mine = samples(&|c| Self::keys(c).iter().any(|(k, _)| *k == key));
                if mine.len() < min_points {
                    continue;
                }
                let of = if i == 0 {
                    LineOf::Model
                } else {
                    LineOf::Target
                };
                if let Some(line) = fit_line(&mine, quantity, of) {
                    per_target.insert(key, line);
                }
            }
        }
        let mut reach = BTreeMap::new();
        let mut real_ratios: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut slopes = Vec::new();
        for (key, line) in &per_target {
            let mine = samples(&|c| Self::keys(c).iter().any(|(k, _)| k == key));
            match key.split_once('#') {
                None => {
                    let furthest = mine.iter().map(|p| p.x).fold(0.0, f64::max);
                    reach.insert(key.clone(), furthest);
                }
                Some((target, _)) => {
                    let mut shares: Vec<f64> = mine.iter().map(|p| p.x / p.y).collect();
                    if let Some(share) = median(&mut shares).filter(|&s| s >= REAL_WORK_SHARE) {
                        slopes.push(line.slope);
                        real_ratios
                            .entry(target.to_string())
                            .or_default()
                            .push(1.0 / share);
                    }
                }
            }
        }
        Self {
            per_target,
            global,
            reach,
            real_slope: median(&mut slopes),
            real_ratio: real_ratios
                .into_iter()
                .filter_map(|(target, mut ratios)| Some((target, median(&mut ratios)?)))
                .collect(),
        }
    }

    /// The lines a case may use, most specific first, with the points each needs: its model
    /// on its target (models differ in what the roofline misses: attention, convolutions,
    /// generation loops, and a tiny model is all overhead), then its target. An unmeasured
    /// model gets its target's line: a line through a few small models extrapolates badly.
    fn keys(c: &Case) -> [(String, usize); 2] {
        [(format!("{}#{}", c.target(), c.model), 4), (c.target(), 2)]
    }

    /// Where `c` reads its line from `start`; on the all-targets line never under the
    /// roofline ([`Quantity::floor`]).
    fn baseline(&self, c: &Case, quantity: Quantity, start: Start) -> f64 {
        let (line, units, x, floor) = self.line_for(c, quantity, start);
        let on_target_line = quantity == Quantity::Latency
            && (start == Start::Target || !self.model_line(c))
            && self.per_target.contains_key(&c.target());
        let value = match self.beyond_reach(c, x).filter(|_| on_target_line) {
            Some((reach, slope)) => line.at(units, reach) + slope * (x - reach),
            None => line.at(units, x),
        };
        value.max(floor).max(1e-6)
    }

    /// Where a case's prior `x` lies beyond the priors of a target line fitted on no real
    /// work, that reach and the slope to go on from it at: that of real work elsewhere, the
    /// median slope of the model lines whose measurements are at least [`REAL_WORK_SHARE`]
    /// of their roofline. A line through the tiny fixtures alone takes its slope from models
    /// at 11-47x their roofline, whose time is mostly calls and operations: ONNX Runtime's
    /// came out at 5.7 x the roofline (priors up to 0.3 ms), and whisper-tiny.en held out
    /// (prior 208 ms at a batch of 1) was predicted at 1,317 ms against 324 measured, where
    /// on the native engine MiniLM's and ViT-tiny's lines have slopes of 1.13 and 1.29. A
    /// target with real work of its own keeps its line's slope: going on at the median of
    /// those two took held-out Whisper's latency MAPE on the native engine from 7.3-17.5%
    /// to 10.6-23.0% on four stores.
    fn beyond_reach(&self, c: &Case, x: f64) -> Option<(f64, f64)> {
        let target = c.target();
        if self.real_ratio.contains_key(&target) {
            return None;
        }
        let reach = *self.reach.get(&target)?;
        (x > reach).then_some((reach, self.real_slope?))
    }

    /// The line `c` reads from `start` (the first of its keys with a line of its own, else
    /// the all-targets line), with `c`'s units and prior on it, and what its reading is kept
    /// above: nothing on a line of its own, [`Quantity::floor`] on the all-targets line.
    fn line_for(&self, c: &Case, quantity: Quantity, start: Start) -> (Line, Units, f64, f64) {
        let keys = Self::keys(c);
        let keys = match start {
            Start::Specific => &keys[..],
            Start::Target => &keys[1..],
        };
        match keys.iter().find_map(|(k, _)| self.per_target.get(k)) {
            Some(line) => (*line, quantity.units(c), quantity.prior(c), 0.0),
            None => {
                let (units, x) = Self::on_global_line(c, quantity);
                let line = self.global.unwrap_or(Line::per_call(0.0, 1.0));
                (line, units, x, quantity.floor(c))
            }
        }
    }

    /// Where `c` sits on the line of targets without points of their own, for fitting it and
    /// reading it alike: the prior plus the calibrated overhead (on a software GPU dispatch is
    /// most of a small model's time), one cost per call (what separates passes from steps is
    /// a target's own), a cost per input row and one per position ([`fit_line`]). The
    /// calibration's dispatch misses what a runtime pays per row (feeding inputs and a KV
    /// cache through its API, five times the calibrated cost of an OpenVINO decode step); with
    /// the rows, the held-out-platform MAPE of three stores of `scripts/predict_data.sh` fell
    /// from 39.8, 43.1 and 71.2% to 35.4, 37.6 and 66.1%.
    fn on_global_line(c: &Case, quantity: Quantity) -> (Units, f64) {
        let own = quantity.units(c);
        let units = Units {
            passes: own.calls(),
            steps: 0.0,
            rows: own.rows,
            positions: own.positions,
            operations: 0.0,
        };
        (units, quantity.prior(c) + quantity.calibrated_overhead(c))
    }

    /// The part of the line `c` reads from its target's (as a model never measured there
    /// does) that does not grow with the prior: its fixed costs (on the all-targets line,
    /// with the target's calibrated overhead).
    fn fixed_part(&self, c: &Case, quantity: Quantity) -> f64 {
        let (line, units, x, _) = self.line_for(c, quantity, Start::Target);
        line.at(units, x - quantity.prior(c))
    }

    /// For latency, where `c`'s model has no line of its own on its target but other models of
    /// real work have, and the target's line reads `c`'s roofline as at least
    /// [`REAL_WORK_READING`] of its time: the median of those models' times over their
    /// rooflines. The target's line runs through the tiny fixtures too, whose time is calls
    /// and operations; read off it with a learned correction, held-out MiniLM on the native
    /// engine was predicted at 1.9-2.2x its roofline on one store of
    /// `scripts/predict_data.sh`, where it ran at 1.14-1.38x, ViT-tiny at 1.25-1.39x and
    /// Whisper-tiny.en at 1.47-1.58x.
    fn real_work_ratio(&self, c: &Case, quantity: Quantity) -> Option<f64> {
        if quantity != Quantity::Latency || !self.only_target_line(c) {
            return None;
        }
        let ratio = *self.real_ratio.get(&c.target())?;
        let line = self.baseline(c, quantity, Start::Target);
        (quantity.prior(c) >= REAL_WORK_READING * line).then_some(ratio)
    }

    /// Whether `c`'s model has a line of its own on `c`'s target.
    fn model_line(&self, c: &Case) -> bool {
        let [(model, _), _] = Self::keys(c);
        self.per_target.contains_key(&model)
    }

    /// Whether `c`'s target has a line of its own but `c`'s model none on it.
    fn only_target_line(&self, c: &Case) -> bool {
        let [_, (target, _)] = Self::keys(c);
        !self.model_line(c) && self.per_target.contains_key(&target)
    }
}

/// The share of a model's measured time its roofline must reach (the median over its
/// points) for its line's slope to count as that of real work: MiniLM, ViT-tiny and Whisper
/// run at 0.67-0.9 of theirs on the native engine, the tiny fixtures at 0.02-0.09.
const REAL_WORK_SHARE: f64 = 0.25;

/// The share of its target line's reading a case's roofline must reach to be read as real
/// work ([`Affine::real_work_ratio`]). Target lines read the tiny fixtures' larger batches
/// at 64 tokens (bert-tiny on ONNX Runtime and OpenVINO, t5-tiny on the native engine), whose
/// time is still mostly calls and operations, at 3-4x their roofline: at
/// [`REAL_WORK_SHARE`] they were read as real work, and held-out bert-tiny's and t5-tiny's
/// latency MAPE went from 20.9 and 24.7% to 25.9 and 32.6% on one store of
/// `scripts/predict_data.sh`.
const REAL_WORK_READING: f64 = 0.5;

/// The median of `values`; None when empty.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (n > 0).then(|| (values[(n - 1) / 2] + values[n / 2]) / 2.0)
}

/// The first stage's line through `points`. A memory line whose footprints `x` span less
/// than a quarter of the memory measured cannot tell the program's own memory from the
/// footprint's share of it: fitted on the tiny fixtures alone (footprints under 1 MiB, peaks
/// of 90-200 MiB) the slope came out at 18 MiB a MiB, and predicted Whisper's 316 MiB peak at
/// 9.5 GiB. There a MiB of footprint counts as a MiB and only the program's memory is fitted.
/// A model's own memory line, which reads only that model's other sizes, fits its slope
/// whenever the slope comes out at a MiB a MiB or more: the engine holds more than the
/// footprint's one layer of transients (ViT-tiny's peak on the native engine grew by about
/// 50 MiB from batch 1 to 8, its footprint by 19 MiB), and at slope 1 its batch of 8 was
/// predicted 10-20% under every measurement. On four stores the held-out configuration /
/// batch-size / model memory MAPE fell by 0.2-0.8 points (1.2 / 1.3 / 5.2 -> 0.9 / 1.0 / 4.4%
/// on one).
///
/// A latency line may also charge passes and decode steps apart, a cost per input row, on a
/// model's line and the all-targets line a cost per position and on a target's a cost per
/// operation, where its points tell those terms apart and that fits them better:
/// * passes and steps on a target with encoders and generators: OpenVINO's decode step of a
///   tiny decoder costs about 0.18 ms and its pass of a tiny encoder 0.06 ms; with one cost per
///   call, a held-out encoder was predicted at twice its measurement;
/// * rows and positions on a model's points at several batch sizes and lengths: on
///   `scripts/predict_data.sh`'s stores the held-out batch-size MAPE fell by 1-3 points.
/// * positions on a target's line too, where its tiny models' time beyond their calls grows
///   with the positions they compute: the vit-tiny fixture computes 17 positions an image,
///   the text fixtures 16-64 a row, and held out it was read off a line through the text
///   fixtures at 1.3-3.6x its measurements on the native engine, ONNX Runtime and OpenVINO.
///   A position costs what its model's width makes it cost, which the tiny fixtures (all 32
///   wide) do not tell; a model of real work reads its target's real-work ratio instead
///   ([`Affine::real_work_ratio`]). Before that ratio, the term took the held-out-model MAPE
///   of one store from 24.6 to 28.1%; with it, on the seven Zen 4 stores of
///   `scripts/predict_data.sh` (2026-12-07) it went 28.6 -> 25.3, 17.1 -> 16.7, 20.1 -> 19.7,
///   20.1 -> 19.3, 20.1 -> 19.2, 16.5 -> 16.4 and 22.4 -> 18.2%, while the split's top-1
///   selection fell by 4-12 points (held-out bert-tiny at 64 tokens, read at 0.44-0.65x its
///   measurements on the native engine before and 1.3-1.8x after, lost its fastest engine).
/// * operations on a target's line, which serves models of other graphs: an iteration's
///   dispatched operations ([`Case::dispatched_operations`]: llama-tiny's export runs twice
///   the nodes of bert-tiny's, where the cost model counts the same 70 operations for both).
///   On three stores of `scripts/predict_data.sh` the held-out-model MAPE fell from 23.9,
///   23.1 and 25.4% to 21.2, 21.2 and 20.9%. A model's own line has one graph, whose
///   operations are a fixed number per call.
/// * positions on the all-targets line, which serves only a target without measurements, and
///   where a tiny model's time beyond its calls grows with its positions on every target:
///   bert-tiny's batch of 8 at 64 tokens took 5x its batch of 1 on the native engine, 3x on
///   OpenVINO, and a held-out native engine was predicted at 0.22 ms there against 0.62
///   measured. On the four Zen 4 stores of `scripts/predict_data.sh` (2026-12-07) the
///   held-out-platform MAPE fell from 32.1, 29.6, 30.8 and 33.0% to 30.6, 26.3, 29.1 and
///   29.9%.
///
/// Beyond one cost per call and a slope, a line has fewer terms than points; a latency line
/// needs points that tell those two apart.
fn fit_line(points: &[Sample], quantity: Quantity, of: LineOf) -> Option<Line> {
    if quantity == Quantity::PeakMemory {
        if of == LineOf::Model {
            if let Some(line) = fit_affine(points, Fit::LeastSquares).filter(|l| l.slope >= 1.0) {
                return Some(line);
            }
        }
        return if footprints_span(points) {
            fit_affine(points, Fit::LeastSquares)
        } else {
            fit_offset(points)
        };
    }
    // A model's own line goes through the repeats of its few configurations; a repeat that a
    // slow spell of the machine caught would pull it (see [`Fit::Robust`]).
    let fit = match of {
        LineOf::Model => Fit::Robust,
        LineOf::Target | LineOf::AllTargets => Fit::LeastSquares,
    };
    let per_call = fit_affine(points, fit)?;
    use Term::*;
    let call_terms: [&[Term]; 5] = [&[], &[Calls], &[Passes], &[Steps], &[Passes, Steps]];
    let input_terms: &[&[Term]] = match of {
        LineOf::Model | LineOf::AllTargets => &[&[], &[Rows], &[Positions], &[Rows, Positions]],
        LineOf::Target => &[
            &[],
            &[Rows],
            &[Operations],
            &[Positions],
            &[Rows, Operations],
            &[Rows, Positions],
            &[Operations, Positions],
            &[Rows, Operations, Positions],
        ],
    };
    // Every combination is a candidate (non-negative least squares, solved by trying each
    // set of terms): where a term's coefficient would come out negative the best line is
    // the one without it, not a line without the other terms.
    let candidates = call_terms.iter().flat_map(|call| {
        input_terms
            .iter()
            .map(move |input| [*call, *input, &[Prior]].concat())
    });
    candidates
        .filter(|terms| points.len() > terms.len())
        .filter_map(|terms| fit.terms(points, &terms))
        .chain([per_call])
        .min_by(|a, b| fit.loss(points, a).total_cmp(&fit.loss(points, b)))
}

/// Whose points a first-stage line goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineOf {
    /// One model's on one target.
    Model,
    /// Every model's on one target.
    Target,
    /// Every target's, at each one's calibrated overhead.
    AllTargets,
}

/// How a first-stage line is fitted to its points' relative errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// Least squares.
    LeastSquares,
    /// Huber's loss: squared up to [`ROBUST_SCALE`], linear beyond (iteratively reweighted
    /// least squares). The 2-core VM these stores are measured on has slow spells of seconds
    /// in which everything runs at up to half speed: a repeat that ran in one reads a p50 about
    /// twice its other repeat's (bert-tiny on OpenVINO at b=1, 64 tokens: 0.47 and 0.21 ms),
    /// while the repeats' fastest iterations stay close (0.22 and 0.20 ms). On a store of
    /// `scripts/predict_data.sh` (Zen 4, 2026-12-07) p50 repeats differed by 13.5% (mean; the
    /// median per engine 5.1-6.9%), their fastest iterations by 5.3%. Least squares on a
    /// model's own line, which goes through 2 repeats of up to 8 configurations, follows such
    /// a repeat halfway; Huber's loss keeps the line on the others. There the held-out
    /// configuration / batch-size MAPE fell from 12.4 / 12.4 to 11.5 / 11.5%.
    Robust,
}

/// Relative error where [`Fit::Robust`] stops squaring: a point further off is a spell, not
/// the line's shape (on that store the median repeat is 6.3% off the other, 63% are within
/// 10%).
const ROBUST_SCALE: f64 = 0.1;

impl Fit {
    fn terms(self, points: &[Sample], terms: &[Term]) -> Option<Line> {
        let mut line = fit_terms(points, terms, None)?;
        if self == Fit::Robust {
            for _ in 0..10 {
                let weights: Vec<f64> = points
                    .iter()
                    .map(|p| {
                        let r = relative_error(p, &line).abs();
                        if r <= ROBUST_SCALE {
                            1.0
                        } else {
                            ROBUST_SCALE / r
                        }
                    })
                    .collect();
                line = fit_terms(points, terms, Some(&weights))?;
            }
        }
        Some(line)
    }

    /// What the fit minimises over `points`.
    fn loss(self, points: &[Sample], line: &Line) -> f64 {
        points
            .iter()
            .map(|p| {
                let r = relative_error(p, line).abs();
                match self {
                    Fit::Robust if r > ROBUST_SCALE => ROBUST_SCALE * (2.0 * r - ROBUST_SCALE),
                    _ => r * r,
                }
            })
            .sum()
    }
}

/// How far `line` reads `p` off its measurement, relative to it.
fn relative_error(p: &Sample, line: &Line) -> f64 {
    line.at(p.units, p.x) / p.y - 1.0
}

/// Whether the footprints `x` of `points` span at least a quarter of their median measurement.
fn footprints_span(points: &[Sample]) -> bool {
    let mut measured: Vec<f64> = points.iter().map(|p| p.y).collect();
    measured.sort_by(f64::total_cmp);
    let Some(&median) = measured.get(measured.len() / 2) else {
        return false;
    };
    let (low, high) = points
        .iter()
        .fold((f64::INFINITY, 0f64), |(l, h), p| (l.min(p.x), h.max(p.x)));
    high - low >= 0.25 * median
}

/// `y = a + x` over points of one unit each (memory) minimising the squared relative error,
/// `a >= 0`; `None` without points.
fn fit_offset(points: &[Sample]) -> Option<Line> {
    let (mut sw, mut swd) = (0.0, 0.0);
    for p in points {
        let u = p.units.calls();
        let w = u * u / (p.y * p.y);
        sw += w;
        swd += w * (p.y - p.x) / u;
    }
    (sw > 0.0).then(|| Line::per_call((swd / sw).max(0.0), 1.0))
}

/// `y = a u + b x` over points with `u` calls, minimising `fit`'s loss of the relative error,
/// with `a >= 0` and `b > 0` (or the better one-term fit when the two-term one breaks that);
/// `None` when the points cannot tell the terms apart (fewer than two distinct x / u).
fn fit_affine(points: &[Sample], fit: Fit) -> Option<Line> {
    let ratio = |p: &Sample| p.x / p.units.calls();
    let first = ratio(points.first()?);
    let distinct = points
        .iter()
        .any(|p| (ratio(p) - first).abs() > 1e-9 * first.abs().max(1e-12));
    if points.len() < 2 || !distinct {
        return None;
    }
    if let Some(line) = fit.terms(points, &[Term::Calls, Term::Prior]) {
        return Some(line);
    }
    // One term only: the better of `b x` and `a u` (b ~ 0 keeps the line rising).
    let (uy, uu) = points.iter().fold((0.0, 0.0), |(uy, uu), p| {
        let u = p.units.calls() / p.y;
        (uy + u, uu + u * u)
    });
    let constant = Line::per_call((uy / uu).max(0.0), 1e-9);
    fit.terms(points, &[Term::Prior])
        .into_iter()
        .chain([constant])
        .min_by(|a, b| fit.loss(points, a).total_cmp(&fit.loss(points, b)))
}

/// A column of a first-stage least-squares fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Term {
    /// Passes and decode steps at one cost.
    Calls,
    Passes,
    Steps,
    Rows,
    Positions,
    Operations,
    /// The prior `x`: its coefficient is the line's slope.
    Prior,
}

impl Term {
    fn of(self, p: &Sample) -> f64 {
        match self {
            Term::Calls => p.units.calls(),
            Term::Passes => p.units.passes,
            Term::Steps => p.units.steps,
            Term::Rows => p.units.rows,
            Term::Positions => p.units.positions,
            Term::Operations => p.units.operations,
            Term::Prior => p.x,
        }
    }
}

/// The line over `terms` with the least squared relative error through `points`, each
/// squared error times its point's weight where `weights` are given; `None`
/// unless the points tell every term apart (a singular system: steps in a fixed proportion to
/// passes, one batch size) and every coefficient comes out non-negative, the slope positive.
fn fit_terms(points: &[Sample], terms: &[Term], weights: Option<&[f64]>) -> Option<Line> {
    let n = terms.len();
    // Weighted normal equations over the columns / y, right-hand side in column n.
    let mut m = vec![vec![0.0f64; n + 1]; n];
    for (k, p) in points.iter().enumerate() {
        let w = weights.map_or(1.0, |w| w[k].sqrt());
        let row: Vec<f64> = terms.iter().map(|t| w * t.of(p) / p.y).collect();
        for i in 0..n {
            m[i][n] += w * row[i];
            for j in 0..n {
                m[i][j] += row[i] * row[j];
            }
        }
    }
    // Scaled to a unit diagonal, the determinant (the product of the pivots) says how far the
    // columns are from dependent, whatever their units.
    let scale: Vec<f64> = (0..n).map(|i| m[i][i].sqrt()).collect();
    if !scale.iter().all(|s| *s > 0.0) {
        return None;
    }
    for (i, row) in m.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v /= scale[i] * if j < n { scale[j] } else { 1.0 };
        }
    }
    let mut determinant = 1.0;
    for k in 0..n {
        let pivot = (k..n).max_by(|&a, &b| m[a][k].abs().total_cmp(&m[b][k].abs()))?;
        m.swap(k, pivot);
        determinant *= m[k][k];
        if determinant.is_nan() || determinant.abs() <= 1e-9 {
            return None;
        }
        let (above, below) = m.split_at_mut(k + 1);
        let pivot_row = &above[k];
        for row in below {
            let f = row[k] / pivot_row[k];
            for (v, p) in row[k..].iter_mut().zip(&pivot_row[k..]) {
                *v -= f * p;
            }
        }
    }
    let mut z = vec![0.0; n];
    for i in (0..n).rev() {
        let rest: f64 = (i + 1..n).map(|j| m[i][j] * z[j]).sum();
        z[i] = (m[i][n] - rest) / m[i][i];
    }
    let mut line = Line::per_call(0.0, 0.0);
    for ((term, z), s) in terms.iter().zip(z).zip(scale) {
        let c = z / s;
        if c.is_nan() || c < 0.0 {
            return None;
        }
        match term {
            Term::Calls => (line.per_pass, line.per_step) = (c, c),
            Term::Passes => line.per_pass = c,
            Term::Steps => line.per_step = c,
            Term::Rows => line.per_row = c,
            Term::Positions => line.per_position = c,
            Term::Operations => line.per_operation = c,
            Term::Prior => line.slope = c,
        }
    }
    (line.slope > 0.0).then_some(line)
}

/// Which affine line a prediction starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// The model's own line on the target where it has one, else the target's.
    Specific,
    /// The target's line, as for a model never measured on it.
    Target,
}

/// Categorical values as stable small integers, learned from the training cases.
#[derive(Debug, Clone, Default)]
struct Codes(BTreeMap<String, f64>);

impl Codes {
    fn learn<'a>(values: impl Iterator<Item = &'a str>) -> Self {
        let mut codes = BTreeMap::new();
        for v in values {
            let next = codes.len() as f64;
            codes.entry(v.to_string()).or_insert(next);
        }
        Self(codes)
    }

    /// Unseen values are missing (NaN), which the learner routes on its own.
    fn of(&self, v: &str) -> f64 {
        self.0.get(v).copied().unwrap_or(f64::NAN)
    }

    fn knows(&self, v: &str) -> bool {
        self.0.contains_key(v)
    }
}

/// Features of the learner that corrects a model's own line (see [`PointModel::matrix`]).
const FEATURES: usize = 12;
/// Features of the learner that corrects a target's line: all but the batch size and the
/// length.
const GENERAL_FEATURES: usize = FEATURES - 2;

/// The learner's features of a start.
fn features(start: Start) -> usize {
    match start {
        Start::Specific => FEATURES,
        Start::Target => GENERAL_FEATURES,
    }
}

/// The point estimate: the affine line, times the exponential of a gradient-boosted
/// correction of its log error. Two learners: one corrects the most specific line (for
/// memory a measured model's own line on its target, which leaves it little to learn; a
/// model's own latency line is not corrected); the other corrects the
/// target's line and so learns how models differ from it (decoders from encoders, large from
/// small), which is what a model without a line of its own needs. Peak memory has only the
/// first: a small model's peak is mostly the process's own memory, which the target's line
/// holds, and a second learner fitted on the few models of a store moved the held-out-model
/// memory error from 29% to 39% on `scripts/predict_data.sh`'s store.
struct PointModel {
    quantity: Quantity,
    affine: Affine,
    specific: GradientBooster,
    /// Latency only.
    general: Option<GradientBooster>,
    engines: Codes,
    platforms: Codes,
    precisions: Codes,
    classes: Codes,
    models: Codes,
    targets: Codes,
    /// (target, batch size) pairs fitted on.
    batches: Codes,
}

/// Fewer measurements than this fit nothing.
const MIN_POINTS: usize = 8;

/// Shallow trees and many small steps: tens to hundreds of points, few features.
fn booster() -> GradientBooster {
    GradientBooster::default()
        .set_objective_type(ObjectiveType::SquaredLoss)
        .set_iterations(300)
        .set_learning_rate(0.1)
        .set_max_depth(3)
        .set_min_leaf_weight(1.0)
        .set_parallel(false)
        .set_seed(0)
}

impl PointModel {
    fn fit(observations: &[&Observation], quantity: Quantity) -> Result<Self, PredictError> {
        let pts: Vec<Point> = points(observations, quantity)
            .into_iter()
            .map(|(i, prior, measured)| Point {
                case: &observations[i].case,
                prior,
                measured,
            })
            .collect();
        if pts.len() < 2 {
            return Err(PredictError::NotEnoughData(format!(
                "{} points to fit on",
                pts.len()
            )));
        }
        let cases = || pts.iter().map(|p| p.case);
        let mut m = Self {
            quantity,
            affine: Affine::fit(&pts, quantity),
            specific: booster(),
            general: (quantity == Quantity::Latency).then(booster),
            engines: Codes::learn(cases().map(|c| c.engine.as_str())),
            platforms: Codes::learn(cases().map(|c| c.platform.as_str())),
            precisions: Codes::learn(cases().map(|c| c.precision.as_str())),
            classes: Codes::learn(cases().map(|c| c.class.as_str())),
            models: Codes::learn(cases().map(|c| c.model.as_str())),
            targets: Codes::default(),
            batches: Codes::default(),
        };
        let targets: Vec<String> = cases().map(Case::target).collect();
        m.targets = Codes::learn(targets.iter().map(String::as_str));
        let batches: Vec<String> = cases().map(target_batch).collect();
        m.batches = Codes::learn(batches.iter().map(String::as_str));
        let rows: Vec<&Case> = cases().collect();
        for start in [Start::Specific, Start::Target] {
            let y: Vec<f64> = pts
                .iter()
                .map(|p| (p.measured / m.affine.baseline(p.case, quantity, start)).ln())
                .collect();
            let data = m.matrix(&rows, start);
            let learner = match start {
                Start::Specific => &mut m.specific,
                Start::Target => match m.general.as_mut() {
                    Some(general) => general,
                    None => continue,
                },
            };
            learner
                .fit_unweighted(&Matrix::new(&data, rows.len(), features(start)), &y, None)
                .map_err(|e| PredictError::Learner(e.to_string()))?;
        }
        Ok(m)
    }

    /// Column-major features of `cases`, relative to the line they `start` from.
    ///
    /// The learner of a target's line, which serves models never measured there, does not see
    /// the batch size and the length: what it would learn of them comes from the store's tiny
    /// fixtures, whose time beyond the line grows with both (attention and element-wise
    /// passes over their activations, which the roofline barely counts), and a model of
    /// another size does not follow it (the size stays in the FLOPs and bytes). With them,
    /// held-out MiniLM on the native engine at 64 tokens was predicted at 1.8x its
    /// measurements; without them, on four stores of `scripts/predict_data.sh` (Zen 4), its
    /// held-out-model MAPE went 39.3 -> 24.5, 24.2 -> 22.2, 49.7 -> 28.2 and 42.4 -> 19.8%,
    /// Whisper's 9.9 -> 7.3, 16.5 -> 15.0, 13.9 -> 8.6 and 21.1 -> 17.5%, ViT-tiny's
    /// within 2.3 points, and the split's MAPE 25.5 -> 24.5, 24.4 -> 24.4, 17.9 -> 17.3 and
    /// 20.0 -> 20.3%.
    fn matrix(&self, cases: &[&Case], start: Start) -> Vec<f64> {
        let mut columns: Vec<Vec<f64>> = (0..features(start))
            .map(|_| Vec::with_capacity(cases.len()))
            .collect();
        for c in cases {
            let size = [
                self.affine.baseline(c, self.quantity, start).ln(),
                c.flops().max(1.0).ln(),
                c.bytes().max(1.0).ln(),
                (c.flops() / c.bytes().max(1.0)).max(1e-9).ln(),
            ];
            let shape = [
                (c.work.batch.max(1) as f64).ln(),
                (c.work.seq_len.max(1) as f64).ln(),
            ];
            let rest = [
                (c.costs.len().max(1) as f64).ln(),
                ((c.costs.len().max(1) as u64 * c.layers.max(1)) as f64).ln(),
                self.engines.of(&c.engine),
                self.platforms.of(&c.platform),
                self.precisions.of(&c.precision),
                self.classes.of(&c.class),
            ];
            let shape: &[f64] = match start {
                Start::Specific => &shape,
                Start::Target => &[],
            };
            for (column, v) in columns.iter_mut().zip([&size[..], shape, &rest].concat()) {
                column.push(v);
            }
        }
        columns.concat()
    }

    fn point(&self, case: &Case) -> f64 {
        // A model's own latency line on its target is the prediction: a correction learned
        // over all the points fitted the repeats' noise there. Without it the held-out
        // configuration / batch-size MAPE of `scripts/predict_data.sh`'s three stores fell
        // from 11.1 / 12.6, 8.8 / 9.7 and 10.8 / 12.5% to 10.6 / 11.7, 8.1 / 8.4 and
        // 9.9 / 10.5%. A memory line (the program's own memory, a footprint that barely moves)
        // keeps its correction, which is within a point either way.
        if self.quantity == Quantity::Latency && self.affine.model_line(case) {
            return self.affine.baseline(case, self.quantity, Start::Specific);
        }
        // Only on a measured target, which has no floor.
        if let Some(ratio) = self.affine.real_work_ratio(case, self.quantity) {
            return self.quantity.prior(case) * ratio;
        }
        let (start, learner) = match &self.general {
            Some(general) if self.affine.only_target_line(case) => (Start::Target, general),
            _ => (Start::Specific, &self.specific),
        };
        let data = self.matrix(&[case], start);
        let ratio = learner.predict(&Matrix::new(&data, 1, features(start)), false)[0];
        (self.affine.baseline(case, self.quantity, start) * ratio.exp()).max(self.least(case))
    }

    /// What the point estimate of `case` is kept above: on a target no fitted point measured,
    /// for latency, its roofline times the slope of real work on the measured targets
    /// ([`Affine::real_slope`], when above 1), else [`PointModel::floor`]. The all-targets
    /// line, fitted mostly through tiny models, reads real work under its roofline, so the
    /// floor was the prediction there, and no target runs real work at its calibrated peak:
    /// Whisper-tiny.en ran at 1.4-1.75x its roofline on every CPU engine, MiniLM at
    /// 1.15-1.35x and ViT-tiny at 1.35x on the native engine. The interval's low end stays
    /// at the floor itself, which no measurement goes under. On the four Zen 4 stores of
    /// `scripts/predict_data.sh` (2026-12-07) the held-out-platform MAPE fell from 34.1,
    /// 32.6, 32.9 and 35.8% to 32.1, 29.6, 30.8 and 33.0%.
    fn least(&self, case: &Case) -> f64 {
        // The floor is 0 on a measured target (and for memory), so the slope changes nothing
        // there.
        let slope = match self.quantity {
            Quantity::Latency => self.affine.real_slope.map_or(1.0, |s| s.max(1.0)),
            Quantity::PeakMemory => 1.0,
        };
        self.floor(case) * slope
    }

    /// What no prediction for `case` goes under: for latency on a target no fitted point
    /// measured, its roofline ([`Quantity::floor`]); else nothing. A measured target's own
    /// points place its line, and a calibration that met a slow spell reads the roofline too
    /// high: one store's native calibration read 110 GFLOP/s where three others read
    /// 213-220, and MiniLM ran there at 0.56 of that roofline.
    fn floor(&self, case: &Case) -> f64 {
        if self.targets.knows(&case.target()) {
            0.0
        } else {
            self.quantity.floor(case)
        }
    }

    /// For memory, the program's own memory on `case`'s target (its line's fixed part) plus
    /// all of the case's footprint (its prior), whatever slope the line learned: a floor under
    /// the upper bound of a model or target the fit never saw. A slope learned from the few
    /// large models of a store says little about the next one. On `scripts/predict_data.sh`'s
    /// store with each model in a process of its own, the native engine's line through tiny
    /// fixtures, ViT-tiny and Whisper (whose activations the footprint then counted at about
    /// five times what the engine holds: every head's attention scores at once, where the
    /// engine holds one head's per task, and logits at all 448 decoder positions) took
    /// 0.5 MiB a MiB of footprint, and all 16 held-out measurements of MiniLM (its weights
    /// twice while loading: 290 MiB) were above their upper bound (219 MiB). Latency: 0.
    fn whole_footprint(&self, case: &Case) -> f64 {
        match self.quantity {
            Quantity::Latency => 0.0,
            Quantity::PeakMemory => {
                self.affine.fixed_part(case, self.quantity) + self.quantity.prior(case)
            }
        }
    }

    /// What the fitted points have not seen of `case`.
    fn novelty(&self, case: &Case) -> Novelty {
        Novelty {
            model: !self.models.knows(&case.model),
            target: !self.targets.knows(&case.target()),
            batch_size: !self.batches.knows(&target_batch(case)),
        }
    }
}

/// The target and batch size of a case.
fn target_batch(c: &Case) -> String {
    format!("{}|{}", c.target(), c.work.batch)
}

/// What a prediction extrapolates to: a model, a target (engine, platform, precision,
/// machine), or a batch size on its target, that no measurement it was fitted on had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Novelty {
    pub model: bool,
    pub target: bool,
    pub batch_size: bool,
}

/// How far held-out measurements fell from their predictions, in log space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Margin {
    /// The conformal 90% quantile of |log error|: the interval's half-width.
    interval: f64,
    /// The largest log under-prediction (measured above predicted), at least 0: the headroom
    /// of an upper bound.
    ceiling: f64,
}

impl Margin {
    /// From signed log errors `ln(measured / predicted)`; unbounded without any.
    fn of(errors: &[f64]) -> Self {
        if errors.is_empty() {
            return Self {
                interval: f64::INFINITY,
                ceiling: f64::INFINITY,
            };
        }
        let mut abs: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
        Self {
            interval: conformal_quantile(&mut abs, COVERAGE),
            ceiling: errors.iter().copied().fold(0.0, f64::max),
        }
    }

    fn max(self, other: Self) -> Self {
        Self {
            interval: self.interval.max(other.interval),
            ceiling: self.ceiling.max(other.ceiling),
        }
    }
}

/// Predictions of one quantity with cross-conformal intervals.
///
/// The point model is fitted on every measurement. The interval of a case like those fitted
/// comes from held-out errors of the store: its configurations are dealt into four folds,
/// and each fold's measurements are predicted by a fit on the other three. A case of a
/// model, a target or a batch size (on its target) the fit never saw is a different
/// question: its margin comes from holding each model (target, batch size) of the store out
/// in turn, fitting on the rest and measuring the held-out errors, so that its interval is as
/// wide as that kind of extrapolation has been wrong before. Those margins are computed the
/// first time a case needs them.
pub struct Predictor {
    quantity: Quantity,
    model: PointModel,
    /// Every observation with a measurement of the quantity: what the point model is fitted
    /// on.
    all: Vec<Observation>,
    seen: Margin,
    unseen_model: OnceLock<Margin>,
    unseen_target: OnceLock<Margin>,
    unseen_batch: OnceLock<Margin>,
}

/// A prediction with its 90% interval and its upper bound.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Interval {
    /// The point estimate (the median, for latency: a predicted p50).
    pub p50: f64,
    pub low: f64,
    pub high: f64,
    /// The largest the quantity has been relative to such predictions on held-out data: what a
    /// fit decision compares with a limit, so that memory is not under-predicted.
    pub upper_bound: f64,
    pub novelty: Novelty,
}

/// Safety headroom of the upper bound on top of the largest held-out under-prediction. The
/// largest of n held-out errors is exceeded by a new case with probability about 1 / (n + 1)
/// (3 of 100 fit decisions wrong), while a fit decision must not be contradicted at all. A
/// process's peak also varies between repeats of one configuration more than its prediction
/// errs: on the four stores `scripts/predict_data.sh` measured on a Zen 4 machine on
/// 2026-12-06, ViT-tiny's batch of 8 on the native engine peaked at 172.7-195.1 MiB, and three
/// of sixteen ONNX Runtime runs of the decoder fixtures 24-52 MiB above their repeats. With 10%
/// of headroom five held-out measurements of those stores were above their upper bound (of
/// 1,216 held out in each of the four splits), with 20% none.
const HEADROOM: f64 = 0.20;

/// The folds of the cross-conformal interval: each fold's errors come from a fit on the
/// others.
const FOLDS: usize = 4;
/// The interval's target coverage.
pub const COVERAGE: f64 = 0.9;

impl Predictor {
    /// Fits on the `observations` that measured `quantity`, and calibrates the interval on the
    /// errors of fits without each fold of configurations (`FOLDS`; a configuration's
    /// repeats share a fold, or their errors would look like those of a configuration already
    /// seen). Split conformal, where every fourth configuration only calibrated, left the
    /// point model a quarter of the store short, and the interval a quarter of its errors: on
    /// `scripts/predict_data.sh`'s store, held-out configuration / batch-size latency MAPE fell
    /// from 14.1 / 15.3% to 12.0 / 12.0%, and held-out configuration peak-memory coverage
    /// (81%: Whisper's batch of 8 was predicted from its batches of 1 and 2 alone) rose to 89%.
    pub fn fit(observations: &[Observation], quantity: Quantity) -> Result<Self, PredictError> {
        let all: Vec<Observation> = observations
            .iter()
            .filter(|o| quantity.measured(o).is_some())
            .cloned()
            .collect();
        if all.len() < MIN_POINTS {
            return Err(PredictError::NotEnoughData(format!(
                "{} results with a measured {}; at least {MIN_POINTS} are needed to fit and \
                 calibrate a predictor (run `bench` on more combinations)",
                all.len(),
                quantity.noun()
            )));
        }
        // Configurations in the order first measured, dealt into the folds in turn.
        let mut configurations: BTreeMap<String, usize> = BTreeMap::new();
        let mut folds = vec![Vec::new(); FOLDS];
        for (i, o) in all.iter().enumerate() {
            let next = configurations.len();
            let order = *configurations
                .entry(Split::Configuration.group(&o.case))
                .or_insert(next);
            folds[order % FOLDS].push(i);
        }
        let errors = held_out_errors(&all, &folds, quantity);
        let refs: Vec<&Observation> = all.iter().collect();
        Ok(Self {
            quantity,
            model: PointModel::fit(&refs, quantity)?,
            seen: Margin::of(&errors),
            all,
            unseen_model: OnceLock::new(),
            unseen_target: OnceLock::new(),
            unseen_batch: OnceLock::new(),
        })
    }

    /// The margin of cases whose `group` (model or target) no fitted point had: each group of
    /// the store held out in turn.
    fn unseen_margin(&self, group: fn(&Case) -> String) -> Margin {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, o) in self.all.iter().enumerate() {
            groups.entry(group(&o.case)).or_default().push(i);
        }
        if groups.len() < 2 {
            return Margin::of(&[]);
        }
        let groups: Vec<Vec<usize>> = groups.into_values().collect();
        Margin::of(&held_out_errors(&self.all, &groups, self.quantity))
    }

    /// The prediction for `case` with its 90% interval and upper bound.
    pub fn predict(&self, case: &Case) -> Interval {
        let p50 = self.model.point(case);
        let novelty = self.model.novelty(case);
        let mut margin = self.seen;
        if novelty.model {
            margin = margin.max(
                *self
                    .unseen_model
                    .get_or_init(|| self.unseen_margin(|c| c.model.clone())),
            );
        }
        if novelty.target {
            margin = margin.max(
                *self
                    .unseen_target
                    .get_or_init(|| self.unseen_margin(Case::target)),
            );
        } else if novelty.batch_size {
            margin = margin.max(
                *self
                    .unseen_batch
                    .get_or_init(|| self.unseen_margin(|c| c.work.batch.to_string())),
            );
        }
        let mut upper_bound = p50 * margin.ceiling.exp() * (1.0 + HEADROOM);
        if novelty.model || novelty.target {
            upper_bound = upper_bound.max(self.model.whole_footprint(case) * (1.0 + HEADROOM));
        }
        Interval {
            p50,
            low: (p50 / margin.interval.exp()).max(self.model.floor(case)),
            high: p50 * margin.interval.exp(),
            upper_bound,
            novelty,
        }
    }

    /// The `n` fitted measurements most like `case` (same engine and platform first, then
    /// the closest prior), for saying what a prediction leaned on.
    pub fn nearest(&self, case: &Case, n: usize) -> Vec<&Observation> {
        let mut all: Vec<&Observation> = self.all.iter().collect();
        let prior = |c: &Case| self.quantity.prior(c).max(1e-12).ln();
        let distance = |o: &Observation| {
            let same = (o.case.engine == case.engine) as u8
                + (o.case.platform == case.platform) as u8
                + (o.case.model == case.model) as u8;
            (3 - same, (prior(&o.case) - prior(case)).abs())
        };
        all.sort_by(|a, b| {
            let (x, y) = (distance(a), distance(b));
            x.0.cmp(&y.0).then(x.1.total_cmp(&y.1))
        });
        all.truncate(n);
        all
    }
}

/// The log errors of each group of `all` (indices into it) predicted by a fit on the rest; a
/// group whose rest fits nothing adds none.
fn held_out_errors(all: &[Observation], groups: &[Vec<usize>], quantity: Quantity) -> Vec<f64> {
    let mut errors = Vec::new();
    for held in groups {
        let mut out = vec![false; all.len()];
        for &i in held {
            out[i] = true;
        }
        let rest: Vec<&Observation> = all
            .iter()
            .zip(&out)
            .filter(|(_, out)| !**out)
            .map(|(o, _)| o)
            .collect();
        if let Ok(m) = PointModel::fit(&rest, quantity) {
            errors.extend(held.iter().map(|&i| log_error(&m, &all[i])));
        }
    }
    errors
}

/// `ln(measured / predicted)` of an observation (positive: under-predicted).
fn log_error(model: &PointModel, o: &Observation) -> f64 {
    let measured = model.quantity.measured(o).unwrap_or(f64::NAN);
    (measured / model.point(&o.case)).ln()
}

/// The conformal quantile of absolute errors: the ceil((n + 1) q)-th smallest, or the
/// largest when there are too few to reach it.
fn conformal_quantile(errors: &mut [f64], q: f64) -> f64 {
    if errors.is_empty() {
        return f64::INFINITY;
    }
    errors.sort_by(f64::total_cmp);
    let rank = ((errors.len() as f64 + 1.0) * q).ceil() as usize;
    errors[rank.clamp(1, errors.len()) - 1]
}

/// How the evaluation holds data out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// One configuration at a time.
    Configuration,
    /// Every result of one batch size.
    BatchSize,
    /// Every result of one model.
    Model,
    /// Every result of one engine on one platform at one precision (its calibration stays
    /// known).
    Platform,
}

impl Split {
    pub const ALL: [Split; 4] = [
        Split::Configuration,
        Split::BatchSize,
        Split::Model,
        Split::Platform,
    ];

    fn group(self, c: &Case) -> String {
        match self {
            Split::Configuration => format!(
                "{}|{}|{}|{}|{}",
                c.model,
                c.target(),
                c.work.batch,
                c.work.seq_len,
                c.work.audio_seconds
            ),
            Split::BatchSize => c.work.batch.to_string(),
            Split::Model => c.model.clone(),
            Split::Platform => c.target(),
        }
    }

    /// How a held-out group is named in a report: the model, the batch size, or the engine
    /// on its platform at its precision (the machine is in the JSON).
    fn label(self, c: &Case) -> String {
        match self {
            Split::Configuration => format!(
                "{} on {} ({}) {} b={} seq={}",
                c.model, c.platform, c.engine, c.precision, c.work.batch, c.work.seq_len
            ),
            Split::BatchSize => format!("b={}", c.work.batch),
            Split::Model => c.model.clone(),
            Split::Platform => format!("{} on {} {}", c.engine, c.platform, c.precision),
        }
    }
}

/// Held-out figures of one split.
#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    pub split: Split,
    pub quantity: Quantity,
    /// Groups held out in turn, and the predictions made for them.
    pub folds: usize,
    pub predictions: usize,
    /// Folds skipped because the rest had too little data to fit.
    pub skipped_folds: usize,
    /// Mean absolute percentage error of the point estimate, %; the shares below. None
    /// without predictions (every fold skipped).
    pub mape: Option<f64>,
    /// Share of predictions within 10% of the measurement.
    pub within_10pct: Option<f64>,
    /// Share of measurements inside their 90% interval.
    pub coverage: Option<f64>,
    /// Held-out measurements above the prediction's upper bound: for memory, a fit decision
    /// the measurement contradicts.
    pub above_upper_bound: usize,
    /// Latency only: among (model, batch, precision) cases measured on several targets, how
    /// often the predicted fastest is the measured fastest, and the mean loss (%) when it is
    /// not.
    pub selection_cases: usize,
    pub top1: Option<f64>,
    pub mean_loss_pct: Option<f64>,
    /// The selection's costliest misses (at most [`WORST`]), the largest loss first.
    pub selection_misses: Vec<SelectionMiss>,
    /// Latency only: the held-out measurements whose run kept one speed
    /// ([`Observation::steady`]), and the MAPE of their predictions (None without any).
    pub steady_predictions: usize,
    pub steady_mape: Option<f64>,
    /// The held-out configurations (their repeats together) and the MAPE of their predictions
    /// against the median of each one's repeats (None without any).
    pub configurations: usize,
    pub configuration_mape: Option<f64>,
    /// The held-out predictions furthest from their measurements (at most [`WORST`]), worst
    /// first: where the error above comes from.
    pub worst: Vec<HeldOut>,
    /// Each held-out group's own figures, in the order held out: which model or platform the
    /// split's error comes from, and whether it is predicted too high or too low.
    pub groups: Vec<GroupScore>,
}

/// The held-out predictions of one group of a split.
#[derive(Debug, Clone, Serialize)]
pub struct GroupScore {
    /// The model, the batch size, or the engine on its platform at its precision.
    pub group: String,
    /// The machine (hardware fingerprint) of the group's first measurement.
    pub hardware: String,
    pub predictions: usize,
    /// %.
    pub mape: f64,
    /// The median of measured / predicted: above 1, the group is predicted too fast (too
    /// small); below 1, too slow (too large).
    pub median_ratio: f64,
    /// Share of the group's measurements inside their 90% interval.
    pub coverage: f64,
}

/// Held-out predictions a [`SplitReport`] lists.
pub const WORST: usize = 5;

/// One held-out measurement and what the predictor fitted without it said.
#[derive(Debug, Clone, Serialize)]
pub struct HeldOut {
    pub model: String,
    pub engine: String,
    pub platform: String,
    pub precision: String,
    pub batch_size: usize,
    pub seq_len: usize,
    pub measured: f64,
    pub predicted: f64,
    pub low: f64,
    pub high: f64,
    /// |predicted - measured| / measured, %.
    pub error_pct: f64,
}

/// Holds each group of `split` out in turn, fits on the rest, and scores the held-out
/// predictions of `quantity`.
pub fn evaluate(observations: &[Observation], split: Split, quantity: Quantity) -> SplitReport {
    let measured: Vec<&Observation> = observations
        .iter()
        .filter(|o| quantity.measured(o).is_some())
        .collect();
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, o) in measured.iter().enumerate() {
        groups.entry(split.group(&o.case)).or_default().push(i);
    }
    // (measurement, prediction, the case)
    let mut scored: Vec<(f64, Interval, &Case)> = Vec::new();
    // Whether each scored measurement's run kept one speed.
    let mut steady: Vec<bool> = Vec::new();
    let mut skipped = 0;
    let mut group_scores = Vec::new();
    for held in groups.values() {
        let rest: Vec<Observation> = (0..measured.len())
            .filter(|i| !held.contains(i))
            .map(|i| measured[i].clone())
            .collect();
        match Predictor::fit(&rest, quantity) {
            Ok(p) => {
                let first = scored.len();
                for &i in held {
                    let o = measured[i];
                    let value = quantity.measured(o).expect("filtered above");
                    scored.push((value, p.predict(&o.case), &o.case));
                    steady.push(o.steady == Some(true));
                }
                group_scores.push(group_score(split, &scored[first..]));
            }
            Err(_) => skipped += 1,
        }
    }
    let errors = relative_errors(&scored);
    let (mape, within_10pct) = error_shares(&errors);
    let steady_errors: Vec<f64> = match quantity {
        Quantity::Latency => errors
            .iter()
            .zip(&steady)
            .filter(|(_, s)| **s)
            .map(|(e, _)| *e)
            .collect(),
        Quantity::PeakMemory => Vec::new(),
    };
    let (steady_mape, _) = error_shares(&steady_errors);
    let by_configuration = configuration_medians(&scored);
    let (configuration_mape, _) = error_shares(&relative_errors(&by_configuration));
    let above_upper_bound = scored.iter().filter(|(m, p, _)| *m > p.upper_bound).count();
    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|&a, &b| errors[b].total_cmp(&errors[a]));
    let worst = order
        .into_iter()
        .take(WORST)
        .map(|i| {
            let (measured, p, c) = &scored[i];
            HeldOut {
                model: c.model.clone(),
                engine: c.engine.clone(),
                platform: c.platform.clone(),
                precision: c.precision.clone(),
                batch_size: c.work.batch,
                seq_len: c.work.seq_len,
                measured: *measured,
                predicted: p.p50,
                low: p.low,
                high: p.high,
                error_pct: errors[i] * 100.0,
            }
        })
        .collect();
    let Selection {
        cases: selection_cases,
        top1,
        mean_loss_pct,
        mut misses,
    } = match quantity {
        Quantity::Latency => selection(&by_configuration),
        Quantity::PeakMemory => Selection::default(),
    };
    misses.truncate(WORST);
    SplitReport {
        split,
        quantity,
        folds: groups.len(),
        predictions: scored.len(),
        skipped_folds: skipped,
        mape,
        within_10pct,
        coverage: coverage(&scored),
        above_upper_bound,
        selection_cases,
        top1,
        mean_loss_pct,
        selection_misses: misses,
        steady_predictions: steady_errors.len(),
        steady_mape,
        configurations: by_configuration.len(),
        configuration_mape,
        worst,
        groups: group_scores,
    }
}

/// One (median of the measurements, prediction, case) per configuration and machine of
/// `scored`: a configuration's repeats share their prediction (they are held out together),
/// and the median of three or more passes leaves out a pass that a slow spell of the machine
/// caught.
fn configuration_medians<'a>(
    scored: &[(f64, Interval, &'a Case)],
) -> Vec<(f64, Interval, &'a Case)> {
    let mut groups: BTreeMap<(String, String), (Vec<f64>, Interval, &Case)> = BTreeMap::new();
    for (m, p, c) in scored {
        groups
            .entry((Split::Configuration.group(c), c.hardware.clone()))
            .or_insert_with(|| (Vec::new(), *p, c))
            .0
            .push(*m);
    }
    groups
        .into_values()
        .map(|(mut values, p, c)| (median(&mut values).expect("at least one"), p, c))
        .collect()
}

/// The figures of one held-out group's predictions (at least one).
fn group_score(split: Split, scored: &[(f64, Interval, &Case)]) -> GroupScore {
    let n = scored.len();
    let mut ratios: Vec<f64> = scored.iter().map(|(m, p, _)| m / p.p50).collect();
    ratios.sort_by(f64::total_cmp);
    let median_ratio = if n % 2 == 1 {
        ratios[n / 2]
    } else {
        (ratios[n / 2 - 1] * ratios[n / 2]).sqrt()
    };
    let first = scored[0].2;
    GroupScore {
        group: split.label(first),
        hardware: first.hardware.clone(),
        predictions: n,
        mape: error_shares(&relative_errors(scored))
            .0
            .expect("at least one"),
        median_ratio,
        coverage: coverage(scored).expect("at least one"),
    }
}

/// |predicted - measured| / measured of each scored (measurement, prediction) pair.
fn relative_errors(scored: &[(f64, Interval, &Case)]) -> Vec<f64> {
    scored
        .iter()
        .map(|(m, p, _)| (p.p50 - m).abs() / m)
        .collect()
}

/// The share of measurements inside their 90% interval; None without any.
fn coverage(scored: &[(f64, Interval, &Case)]) -> Option<f64> {
    let covered = scored
        .iter()
        .filter(|(m, p, _)| (p.low..=p.high).contains(m))
        .count();
    (!scored.is_empty()).then(|| covered as f64 / scored.len() as f64)
}

/// How far repeated measurements of one configuration lie from each other: the error of
/// predicting each measurement by the mean of its configuration's other measurements, the floor
/// under any predictor's MAPE on the same store.
#[derive(Debug, Clone, Serialize)]
pub struct Repeatability {
    pub quantity: Quantity,
    /// Configurations measured more than once, and their measurements.
    pub configurations: usize,
    pub measurements: usize,
    /// Mean absolute percentage difference of each measurement from the mean of the others of
    /// its configuration, %; None without repeats.
    pub mape: Option<f64>,
    /// Share of measurements within 10% of that mean.
    pub within_10pct: Option<f64>,
}

/// The [`Repeatability`] of `quantity` over the configurations measured more than once.
pub fn repeatability(observations: &[Observation], quantity: Quantity) -> Repeatability {
    let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for o in observations {
        if let Some(v) = quantity.measured(o) {
            groups
                .entry(Split::Configuration.group(&o.case))
                .or_default()
                .push(v);
        }
    }
    let repeated: Vec<&Vec<f64>> = groups.values().filter(|v| v.len() > 1).collect();
    let errors: Vec<f64> = repeated
        .iter()
        .flat_map(|values| {
            let total: f64 = values.iter().sum();
            let others = (values.len() - 1) as f64;
            values
                .iter()
                .map(move |&v| ((total - v) / others - v).abs() / v)
        })
        .collect();
    let (mape, within_10pct) = error_shares(&errors);
    Repeatability {
        quantity,
        configurations: repeated.len(),
        measurements: errors.len(),
        mape,
        within_10pct,
    }
}

/// The mean of relative errors as a percentage (MAPE) and the share of them within 10%; None
/// without errors.
fn error_shares(errors: &[f64]) -> (Option<f64>, Option<f64>) {
    if errors.is_empty() {
        return (None, None);
    }
    let n = errors.len() as f64;
    (
        Some(errors.iter().sum::<f64>() / n * 100.0),
        Some(errors.iter().filter(|&&e| e <= 0.1).count() as f64 / n),
    )
}

/// Selection on held-out latency predictions: per (model, batch, length, precision) measured
/// on several targets, whether the predicted fastest is the measured fastest. A target measured
/// more than once counts once, with the mean of its measurements and of its predictions;
/// [`evaluate`] passes each configuration once, at the median of its repeats.
fn selection(scored: &[(f64, Interval, &Case)]) -> Selection {
    // case -> target -> (sum of predictions, sum of measurements, count)
    let mut cases: BTreeMap<String, BTreeMap<String, (f64, f64, f64)>> = BTreeMap::new();
    for (m, p, c) in scored {
        let sums = cases
            .entry(format!(
                "{} {} {} on {}",
                c.model,
                size_label(c.work.batch, c.work.seq_len),
                c.precision,
                c.hardware
            ))
            .or_default()
            .entry(format!("{} on {}", c.engine, c.platform))
            .or_default();
        *sums = (sums.0 + p.p50, sums.1 + m, sums.2 + 1.0);
    }
    let mut hits = 0;
    let mut contested = 0;
    let mut misses = Vec::new();
    for (case, targets) in cases {
        if targets.len() < 2 {
            continue;
        }
        contested += 1;
        // (target, mean prediction, mean measurement)
        let targets: Vec<(String, f64, f64)> = targets
            .into_iter()
            .map(|(t, (p, m, n))| (t, p / n, m / n))
            .collect();
        let chosen = targets
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("more than one");
        let best = targets
            .iter()
            .min_by(|a, b| a.2.total_cmp(&b.2))
            .expect("more than one");
        if chosen.2 <= best.2 {
            hits += 1;
        } else {
            misses.push(SelectionMiss {
                case,
                chosen: chosen.0.clone(),
                chosen_measured: chosen.2,
                chosen_predicted: chosen.1,
                best: best.0.clone(),
                best_measured: best.2,
                best_predicted: best.1,
                loss_pct: (chosen.2 / best.2 - 1.0) * 100.0,
            });
        }
    }
    let mean_loss_pct = (!misses.is_empty())
        .then(|| misses.iter().map(|m| m.loss_pct).sum::<f64>() / misses.len() as f64);
    misses.sort_by(|a, b| b.loss_pct.total_cmp(&a.loss_pct));
    Selection {
        cases: contested,
        top1: (contested > 0).then(|| hits as f64 / contested as f64),
        mean_loss_pct,
        misses,
    }
}

/// What [`selection`] found: the contested cases, the share chosen right, and the misses.
#[derive(Default)]
struct Selection {
    cases: usize,
    top1: Option<f64>,
    mean_loss_pct: Option<f64>,
    /// Every miss, the largest loss first.
    misses: Vec<SelectionMiss>,
}

/// A (model, batch, length, precision) case where the predicted fastest target is not the
/// measured fastest: what was chosen, what would have been, and what the choice costs.
#[derive(Debug, Clone, Serialize)]
pub struct SelectionMiss {
    /// The model, batch size, length, precision and machine.
    pub case: String,
    /// The predicted fastest target (engine on platform), its measured and predicted p50, ms.
    pub chosen: String,
    pub chosen_measured: f64,
    pub chosen_predicted: f64,
    /// The measured fastest target, its measured and predicted p50, ms.
    pub best: String,
    pub best_measured: f64,
    pub best_predicted: f64,
    /// How much slower the chosen target measured than the fastest, %.
    pub loss_pct: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bert(layers: u64) -> Value {
        json!({"model_type": "bert", "hidden_size": 256, "intermediate_size": 1024,
               "num_hidden_layers": layers, "num_attention_heads": 4, "vocab_size": 30522,
               "max_position_embeddings": 512})
    }

    #[test]
    fn costs_follow_the_phases_of_an_iteration() {
        let work = Workload {
            batch: 2,
            seq_len: 16,
            new_tokens: 4,
            audio_seconds: 0.0,
            image: None,
        };
        let fwd = iteration_costs(&bert(4), ModelClass::Bert, false, work, "f32").unwrap();
        assert_eq!(fwd.len(), 1);
        let llama = json!({"model_type": "llama", "hidden_size": 256, "intermediate_size": 688,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000});
        let gen = iteration_costs(&llama, ModelClass::Llama, true, work, "q8_0").unwrap();
        assert_eq!(gen.len(), 4, "a prefill and three decode steps");
        assert!(gen[0].flops > gen[1].flops);
        assert!(iteration_costs(&json!({}), ModelClass::Detr, false, work, "f32").is_none());
    }

    /// A Whisper iteration runs the encoder over its window and the decoder over its prompt
    /// only: whisper-tiny.en's encoder is about 35 GFLOP an input (4 layers of width 384 over
    /// 1,500 positions), not the 91 of both stacks over the window.
    #[test]
    fn whisper_encodes_its_window_then_decodes_its_prompt() {
        let tiny_en = json!({"model_type": "whisper", "d_model": 384, "encoder_layers": 4,
            "decoder_layers": 4, "encoder_attention_heads": 6, "decoder_attention_heads": 6,
            "encoder_ffn_dim": 1536, "decoder_ffn_dim": 1536, "vocab_size": 51864,
            "max_source_positions": 1500, "max_target_positions": 448});
        let work = Workload {
            batch: 1,
            seq_len: 0,
            new_tokens: 0,
            audio_seconds: 5.0,
            image: None,
        };
        let costs = iteration_costs(&tiny_en, ModelClass::Whisper, false, work, "f32").unwrap();
        assert_eq!(costs.len(), 2, "encode, then the decoder's prompt");
        let gflop = costs[0].flops / 1e9;
        assert!((34.0..36.0).contains(&gflop), "{gflop}");
        assert!(costs[1].flops < costs[0].flops / 100.0);
        assert!(costs.iter().all(|c| !c.decode_step));
    }

    /// An image-text generator's iteration encodes its picture (every tile), then prefills the
    /// prompt and the image tokens; without the picture there is no prediction.
    #[test]
    fn image_text_generators_encode_then_prefill_the_image_tokens() {
        let text = json!({"model_type": "mistral", "hidden_size": 256, "intermediate_size": 688,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000});
        let next = json!({"model_type": "llava_next", "text_config": text,
            "vision_config": {"model_type": "clip_vision_model", "hidden_size": 64,
                              "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "image_size": 32, "patch_size": 8}});
        let image = ImageWork {
            tiles: 5,
            tower_positions: 17,
            tokens: 60,
        };
        let work = |image| Workload {
            batch: 1,
            seq_len: 16,
            new_tokens: 2,
            audio_seconds: 0.0,
            image,
        };
        let costs =
            iteration_costs(&next, ModelClass::LlavaNext, true, work(Some(image)), "f32").unwrap();
        assert_eq!(costs.len(), 3, "encode, prefill, one decode step");
        let tower = Shape::of(&next, Some("vision_config")).unwrap();
        let encode = tower.cost(Phase::Forward, false, 5, 17, 4.0);
        assert_eq!(costs[0], encode);
        let lm = Shape::of(&next, Some("text_config")).unwrap();
        assert_eq!(costs[1], lm.cost(Phase::Prefill, true, 1, 76, 4.0));
        assert!(iteration_costs(&next, ModelClass::LlavaNext, true, work(None), "f32").is_none());
        let qwen3 = json!({"model_type": "qwen3_vl",
            "text_config": {"model_type": "qwen3_vl_text", "hidden_size": 64,
                            "intermediate_size": 128, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "vocab_size": 300},
            "vision_config": {"depth": 3, "hidden_size": 32, "intermediate_size": 48,
                              "num_heads": 4}});
        let image = ImageWork {
            tiles: 1,
            tower_positions: 64,
            tokens: 16,
        };
        let costs =
            iteration_costs(&qwen3, ModelClass::Qwen, true, work(Some(image)), "f32").unwrap();
        let tower = Shape::of_qwen_vl_vision(&qwen3).unwrap();
        assert_eq!(costs[0], tower.cost(Phase::Forward, false, 1, 64, 4.0));
        assert!(Shape::of(&qwen3, Some("text_config")).unwrap().gated);
    }

    #[test]
    fn dispatch_costs_each_call_and_operation() {
        let work = Workload {
            batch: 1,
            seq_len: 16,
            new_tokens: 4,
            audio_seconds: 0.0,
            image: None,
        };
        let llama = json!({"model_type": "llama", "hidden_size": 256, "intermediate_size": 688,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000});
        let costs = iteration_costs(&llama, ModelClass::Llama, true, work, "f32").unwrap();
        let ceiling = |call_seconds, op_seconds| {
            Some(Ceiling {
                flops_per_s: 1e11,
                bytes_per_s: 1e10,
                call_seconds,
                op_seconds,
                program_bytes: 0.0,
            })
        };
        let case = |ceiling| Case {
            model: "llama".into(),
            class: "llama".into(),
            engine: "browser".into(),
            platform: "webgpu".into(),
            precision: "f32".into(),
            hardware: "test".into(),
            work,
            costs: costs.clone(),
            ceiling,
            footprint_bytes: 1e6,
            layers: 2,
            graph_operations: None,
        };
        assert_eq!(case(ceiling(0.0, 0.0)).dispatch_ms(), 0.0);
        // Four calls of 10 + 2 x 30 operations each.
        let operations: f64 = costs.iter().map(|c| c.operations).sum();
        assert_eq!(operations, 4.0 * 70.0);
        let dispatched = case(ceiling(1e-3, 1e-4));
        assert!((dispatched.dispatch_ms() - (4.0 * 1.0 + operations * 0.1)).abs() < 1e-9);
        // The roofline does not include it: a measured target's line learns its overhead.
        assert_eq!(dispatched.prior_ms(), case(ceiling(0.0, 0.0)).prior_ms());
    }

    /// The committed fixture checkpoint `name` (its folder and its model).
    fn fixture(name: &str) -> (PathBuf, Model) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(name);
        let checkpoint = ia_models::Checkpoint::open(&dir).unwrap();
        let model = Model::resolve(name, ia_models::ModelSource::Checkpoint(checkpoint)).unwrap();
        (dir, model)
    }

    /// A runtime that runs the model's export dispatches its graph's nodes each call: on the
    /// CPU those over values and shapes, on WebGPU those over values; the native engine the cost
    /// model's operations.
    #[test]
    fn exported_graphs_dispatch_their_nodes() {
        let (_, model) = fixture("bert-tiny");
        let work = Workload {
            batch: 1,
            seq_len: 16,
            new_tokens: 0,
            audio_seconds: 0.0,
            image: None,
        };
        let ceiling = Ceiling {
            flops_per_s: 1e11,
            bytes_per_s: 1e10,
            call_seconds: 0.0,
            op_seconds: 1e-6,
            program_bytes: 0.0,
        };
        let dispatch_us = |engine, platform| {
            let case = Case::new(
                &model,
                (engine, platform),
                "f32",
                "test",
                work,
                Some(ceiling),
            );
            case.unwrap().dispatch_ms() * 1e3
        };
        // 91 nodes over values, 93 over shapes (ia_models' test of the same file).
        assert!((dispatch_us("onnxruntime", "cpu") - 184.0).abs() < 1e-6);
        assert!((dispatch_us("openvino", "openvino") - 184.0).abs() < 1e-6);
        assert!((dispatch_us("onnxruntime-web", "wasm") - 184.0).abs() < 1e-6);
        assert!((dispatch_us("onnxruntime-web", "webgpu") - 91.0).abs() < 1e-6);
        // Two layers of 30 and 10 outside them.
        assert!((dispatch_us("native", "cpu") - 70.0).abs() < 1e-6);
    }

    /// A graph runtime's memory prior counts the weights of every graph of the export it
    /// loads (an encoder-decoder's three), twice like the native engine's; ONNX Runtime's
    /// counts the activations twice too.
    #[test]
    fn graph_runtimes_hold_their_exports_weights_and_onnx_runtime_its_activations_twice() {
        let (dir, model) = fixture("t5-tiny");
        let work = Workload {
            batch: 2,
            seq_len: 16,
            new_tokens: 8,
            audio_seconds: 0.0,
            image: None,
        };
        let held = |engine, platform| {
            Case::new(&model, (engine, platform), "f32", "test", work, None)
                .unwrap()
                .footprint_bytes
        };
        let export: u64 = ["encoder_model", "decoder_model", "decoder_with_past_model"]
            .iter()
            .map(|part| {
                ia_models::graph_weights::graph_file_bytes(&dir.join(format!("onnx/{part}.onnx")))
            })
            .sum();
        let footprint = footprint::estimate(
            &model.source,
            4,
            footprint::Workload {
                batch: 2,
                positions: 16,
                cached_positions: 24,
                beams: 1,
            },
        )
        .unwrap();
        let native = held("native", "cpu");
        assert_eq!(native, (footprint.total() + footprint.weights) as f64);
        let openvino = held("openvino", "openvino");
        assert_eq!(
            openvino - native,
            2.0 * (export as f64 - footprint.weights as f64)
        );
        assert_eq!(
            held("onnxruntime", "cpu") - openvino,
            footprint.activations as f64
        );
    }

    /// The units of a tiny decoder's generation of `batch` rows: a prefill and seven decode
    /// steps over `positions` in all, 70 operations each.
    fn generation_units(batch: f64, positions: f64) -> Units {
        Units {
            passes: 1.0,
            steps: 7.0,
            rows: 8.0 * batch,
            positions,
            operations: 8.0 * 70.0,
        }
    }

    /// Each (fitted, expected) coefficient of `line` within 1e-9.
    fn assert_coefficients(line: &Line, pairs: &[(f64, f64)]) {
        for (got, want) in pairs {
            assert!((got - want).abs() < 1e-9, "{line:?}");
        }
    }

    /// A point of `calls` calls, none of them decode steps.
    fn sample(calls: f64, x: f64, y: f64) -> Sample {
        Sample {
            units: Units {
                passes: calls,
                steps: 0.0,
                rows: 0.0,
                positions: 0.0,
                operations: 0.0,
            },
            x,
            y,
        }
    }

    #[test]
    fn the_affine_stage_recovers_overhead_and_slowdown() {
        let points: Vec<Sample> = [1.0, 2.0, 4.0, 8.0]
            .iter()
            .map(|&x| sample(1.0, x, 0.5 + 3.0 * x))
            .collect();
        let line = fit_affine(&points, Fit::LeastSquares).unwrap();
        assert!(
            (line.per_pass - 0.5).abs() < 1e-9 && (line.slope - 3.0).abs() < 1e-9,
            "{line:?}"
        );
        // An overhead per call: 8 calls of 0.25 each on top of the roofline.
        let calls: Vec<Sample> = [(1.0, 4.0), (8.0, 4.0), (8.0, 16.0)]
            .iter()
            .map(|&(u, x)| sample(u, x, 0.25 * u + 2.0 * x))
            .collect();
        let line = fit_affine(&calls, Fit::LeastSquares).unwrap();
        assert!(
            (line.per_pass - 0.25).abs() < 1e-9 && (line.slope - 2.0).abs() < 1e-9,
            "{line:?}"
        );
        assert!(
            fit_affine(
                &[sample(1.0, 1.0, 2.0), sample(1.0, 1.0, 3.0)],
                Fit::LeastSquares
            )
            .is_none(),
            "one distinct x"
        );
    }

    /// A repeat that ran at half speed pulls a least-squares line towards it; the robust fit
    /// stays on the other points.
    #[test]
    fn a_robust_line_is_not_pulled_by_a_slow_repeat() {
        let mut points: Vec<Sample> = [1.0, 2.0, 4.0, 8.0]
            .iter()
            .flat_map(|&x| [sample(1.0, x, 0.5 + 3.0 * x); 2])
            .collect();
        points[4].y *= 2.0; // one repeat of x = 4
        let clean = |line: &Line| line.at(points[5].units, 4.0) / points[5].y - 1.0;
        let least_squares = fit_affine(&points, Fit::LeastSquares).unwrap();
        let robust = fit_affine(&points, Fit::Robust).unwrap();
        // Huber's loss still weighs the slow repeat a little (0.1 / its error).
        assert!(clean(&least_squares) > 0.05, "{least_squares:?}");
        assert!(
            clean(&robust).abs() < clean(&least_squares) / 4.0,
            "{robust:?} {least_squares:?}"
        );
        assert!(Fit::Robust.loss(&points, &robust) < Fit::Robust.loss(&points, &least_squares));
    }

    /// Where encoders (one pass) and generators (a prefill and decode steps) share a target,
    /// a latency line charges a pass and a step apart; where every point has the same mix of
    /// them (generators only) it charges one cost per call.
    #[test]
    fn latency_lines_charge_passes_and_decode_steps_apart() {
        let point = |passes: f64, steps: f64, x: f64| Sample {
            units: Units {
                passes,
                steps,
                rows: 0.0,
                positions: 0.0,
                operations: 0.0,
            },
            x,
            y: 0.06 * passes + 0.18 * steps + 2.0 * x,
        };
        let mixed = [
            point(1.0, 0.0, 0.01),
            point(1.0, 0.0, 0.04),
            point(1.0, 7.0, 0.02),
            point(1.0, 7.0, 0.08),
        ];
        let line = fit_line(&mixed, Quantity::Latency, LineOf::Target).unwrap();
        assert_coefficients(
            &line,
            &[
                (line.per_pass, 0.06),
                (line.per_step, 0.18),
                (line.slope, 2.0),
            ],
        );
        let generators = &mixed[2..];
        let line = fit_line(generators, Quantity::Latency, LineOf::Target).unwrap();
        assert_eq!(line.per_pass, line.per_step, "{line:?}");
        // Memory has one unit per process: never split.
        let line = fit_line(&mixed, Quantity::PeakMemory, LineOf::Target).unwrap();
        assert_eq!(line.per_pass, line.per_step, "{line:?}");
    }

    /// A model measured at several batch sizes, whose rows cost more than the roofline says:
    /// its latency line charges each row of each call, and reads the batch size it did not
    /// measure off that line.
    #[test]
    fn latency_lines_charge_each_input_row() {
        // Eight calls (a prefill and seven decode steps); the roofline grows slower than the
        // batch, as a tiny model's does (its weights, read once, dominate its bytes).
        let point = |batch: f64| {
            let x = 0.02 + 0.01 * batch.sqrt();
            let units = generation_units(batch, 23.0 * batch);
            Sample {
                units,
                x,
                y: 0.025 * 8.0 + 0.012 * units.rows + 1.5 * x,
            }
        };
        let line = fit_line(
            &[1.0, 2.0, 8.0, 16.0].map(point),
            Quantity::Latency,
            LineOf::Target,
        )
        .unwrap();
        assert_coefficients(
            &line,
            &[
                (line.per_pass, 0.025),
                (line.per_step, 0.025),
                (line.per_row, 0.012),
                (line.slope, 1.5),
            ],
        );
        let four = point(4.0);
        assert!((line.at(four.units, four.x) - four.y).abs() < 1e-9);
        // One batch size cannot tell a row from a call: one cost per call.
        let line = fit_line(&[point(2.0), point(2.0)], Quantity::Latency, LineOf::Target);
        assert!(line.is_none_or(|l| l.per_row == 0.0), "{line:?}");
    }

    /// A target's line, over models of different graphs, charges each operation they dispatch,
    /// and reads a graph it did not measure off that line.
    #[test]
    fn a_targets_latency_line_charges_each_operation() {
        let point = |batch: f64, operations: f64| {
            let x = 0.01 * batch;
            let mut p = sample(1.0, x, 0.004 + 0.0007 * operations + 1.5 * x);
            p.units.operations = operations;
            p
        };
        let points =
            [(1.0, 184.0), (1.0, 372.0), (4.0, 184.0), (4.0, 372.0)].map(|(b, ops)| point(b, ops));
        let line = fit_line(&points, Quantity::Latency, LineOf::Target).unwrap();
        assert_coefficients(
            &line,
            &[
                (line.per_pass, 0.004),
                (line.per_operation, 0.0007),
                (line.slope, 1.5),
            ],
        );
        let unseen = point(2.0, 144.0);
        assert!((line.at(unseen.units, unseen.x) - unseen.y).abs() < 1e-9);
    }

    /// A target's line through tiny models of one width charges each position they compute,
    /// and reads a model with fewer positions a row (an image of 17 patches next to texts of
    /// 64 tokens) off it.
    #[test]
    fn a_targets_latency_line_charges_each_position() {
        let point = |batch: f64, per_row: f64| {
            let x = 0.01 + 0.0002 * batch;
            let mut p = sample(1.0, x, 0.05 + 0.003 * batch * per_row + 1.2 * x);
            p.units.rows = batch;
            p.units.positions = batch * per_row;
            p
        };
        let points = [
            (1.0, 64.0),
            (8.0, 64.0),
            (1.0, 16.0),
            (8.0, 16.0),
            (4.0, 32.0),
        ]
        .map(|(b, per_row)| point(b, per_row));
        let line = fit_line(&points, Quantity::Latency, LineOf::Target).unwrap();
        assert_coefficients(
            &line,
            &[
                (line.per_pass, 0.05),
                (line.per_position, 0.003),
                (line.slope, 1.2),
            ],
        );
        let image = point(8.0, 17.0);
        assert!((line.at(image.units, image.x) - image.y).abs() < 1e-9);
    }

    /// A model's own line, over batch sizes and lengths, also charges each position it
    /// computes.
    #[test]
    fn a_models_latency_line_charges_each_position() {
        let point = |batch: f64, length: f64| {
            let units = generation_units(batch, batch * (length + 7.0));
            let x = 0.02 + 0.01 * (batch * length / 16.0).sqrt();
            Sample {
                units,
                x,
                y: 0.02 * 8.0 + 0.01 * units.rows + 0.002 * units.positions + 1.5 * x,
            }
        };
        let points: Vec<Sample> = [1.0, 2.0, 8.0]
            .iter()
            .flat_map(|&b| [16.0, 64.0].map(|s| point(b, s)))
            .collect();
        let line = fit_line(&points, Quantity::Latency, LineOf::Model).unwrap();
        assert_coefficients(
            &line,
            &[
                (line.per_pass, 0.02),
                (line.per_step, 0.02),
                (line.per_row, 0.01),
                (line.per_position, 0.002),
                (line.slope, 1.5),
            ],
        );
    }

    /// Memory lines through footprints that span the measurements keep their fitted slope;
    /// through footprints far smaller than the program's memory (the tiny fixtures) the slope
    /// is one and only the program's memory is fitted.
    #[test]
    fn memory_lines_fit_a_slope_only_where_footprints_span() {
        let spanning: Vec<Sample> = [10.0, 100.0, 400.0]
            .iter()
            .map(|&x| sample(1.0, x, 80.0 + 0.5 * x))
            .collect();
        let line = fit_line(&spanning, Quantity::PeakMemory, LineOf::Target).unwrap();
        assert!(
            (line.per_pass - 80.0).abs() < 1e-6 && (line.slope - 0.5).abs() < 1e-9,
            "{line:?}"
        );
        // Peaks of 150-190 MiB over footprints under 1 MiB that happen to rise with them.
        let fixtures = [
            sample(1.0, 0.2, 150.0),
            sample(1.0, 0.3, 170.0),
            sample(1.0, 0.4, 190.0),
        ];
        let line = fit_line(&fixtures, Quantity::PeakMemory, LineOf::Target).unwrap();
        assert_eq!(line.slope, 1.0);
        assert!((150.0..190.0).contains(&line.per_pass), "{line:?}");
        // A model's own line reads only its own sizes: it keeps a slope of a MiB a MiB or more
        // (ViT-tiny's engine holds about 2.5 MiB a MiB of footprint), never less.
        let vit = [
            sample(1.0, 3.0, 130.0),
            sample(1.0, 9.0, 145.0),
            sample(1.0, 22.0, 177.5),
        ];
        let line = fit_line(&vit, Quantity::PeakMemory, LineOf::Model).unwrap();
        assert!((line.slope - 2.5).abs() < 1e-9, "{line:?}");
        let shrinking = [sample(1.0, 3.0, 130.0), sample(1.0, 22.0, 135.0)];
        let line = fit_line(&shrinking, Quantity::PeakMemory, LineOf::Model).unwrap();
        assert_eq!(line.slope, 1.0);
        // Latency lines are fitted as before.
        let line = fit_line(&fixtures, Quantity::Latency, LineOf::Target).unwrap();
        assert!(line.slope > 50.0, "{line:?}");
    }

    /// A target's latency line through tiny models alone goes on beyond the priors it was
    /// fitted on at the slope of real work measured on another target, not at its own.
    #[test]
    fn a_targets_line_goes_on_at_the_slope_of_real_work_beyond_its_reach() {
        // A 2-layer BERT at 16 tokens, its prior set by the compute rate.
        let case = |model: &str, engine: &str, batch: usize, flops_per_s: f64| {
            roofline_bert(model, 2, engine, (batch, 16), flops_per_s, 1e18)
        };
        let mut cases = Vec::new();
        for batch in [1, 2, 4, 8] {
            for engine in ["onnxruntime", "native"] {
                cases.push((case("tiny", engine, batch, 1e12), 0.05, 5.0));
                cases.push((case("small", engine, batch, 3e11), 0.05, 5.0));
            }
            cases.push((case("real", "native", batch, 1e8), 0.0, 1.2));
        }
        let affine = latency_affine(&cases);
        let big = case("big", "onnxruntime", 1, 5e7);
        let x = big.prior_ms();
        let reach = affine.reach[&big.target()];
        assert!(x > 100.0 * reach, "{x} vs {reach}");
        let got = affine.baseline(&big, Quantity::Latency, Start::Target);
        assert!((got / (1.2 * x) - 1.0).abs() < 0.02, "{got} vs {}", 1.2 * x);
        // Within its reach the target's own line holds.
        let tiny = &cases[0].0;
        let got = affine.baseline(tiny, Quantity::Latency, Start::Target);
        let want = 0.05 + 5.0 * tiny.prior_ms();
        assert!((got / want - 1.0).abs() < 0.02, "{got} vs {want}");
    }

    /// The all-targets line, which a target without measurements reads, charges what a tiny
    /// model pays per position beyond its roofline on every measured target.
    #[test]
    fn the_all_targets_line_charges_each_position() {
        // BERTs of 2 and 12 layers measured, one of 1 layer held out: their priors per
        // position differ, a position's cost beyond them does not.
        let case = |layers: u64, engine: &str, batch: usize, seq_len: usize| {
            let model = format!("bert-{layers}");
            roofline_bert(&model, layers, engine, (batch, seq_len), 1e11, 1e18)
        };
        let measured = |c: &Case| 0.02 + 0.02 * Quantity::Latency.units(c).positions + c.prior_ms();
        let mut cases = Vec::new();
        for layers in [2, 12] {
            for engine in ["onnxruntime", "native"] {
                for batch in [1, 2, 4, 8] {
                    for seq_len in [16, 64] {
                        cases.push(case(layers, engine, batch, seq_len));
                    }
                }
            }
        }
        let points: Vec<Point> = cases
            .iter()
            .map(|c| Point {
                case: c,
                prior: c.prior_ms(),
                measured: measured(c),
            })
            .collect();
        let affine = Affine::fit(&points, Quantity::Latency);
        let unseen = case(1, "openvino", 8, 128);
        let got = affine.baseline(&unseen, Quantity::Latency, Start::Target);
        let want = measured(&unseen);
        assert!((got / want - 1.0).abs() < 0.02, "{got} vs {want}");
    }

    /// An encoder's pass over `batch` rows of `seq_len` tokens.
    fn text_work(batch: usize, seq_len: usize) -> Workload {
        Workload {
            batch,
            seq_len,
            new_tokens: 0,
            audio_seconds: 0.0,
            image: None,
        }
    }

    /// A BERT `model` of `layers` on `engine` (cpu, f32) at `(batch, seq_len)`, whose
    /// prior is its roofline at `flops_per_s` and `bytes_per_s` (no dispatch cost).
    fn roofline_bert(
        model: &str,
        layers: u64,
        engine: &str,
        (batch, seq_len): (usize, usize),
        flops_per_s: f64,
        bytes_per_s: f64,
    ) -> Case {
        let work = text_work(batch, seq_len);
        Case {
            costs: iteration_costs(&bert(layers), ModelClass::Bert, false, work, "f32").unwrap(),
            ceiling: Some(Ceiling {
                flops_per_s,
                bytes_per_s,
                call_seconds: 0.0,
                op_seconds: 0.0,
                program_bytes: 0.0,
            }),
            work,
            layers,
            ..memory_case(model, engine, None, batch, 1.0)
        }
    }

    /// The latency lines fitted on `cases`, each (case, fixed ms, slope) measured at the fixed
    /// ms plus the slope times its roofline.
    fn latency_affine(cases: &[(Case, f64, f64)]) -> Affine {
        let points: Vec<Point> = cases
            .iter()
            .map(|(c, fixed, slope)| Point {
                case: c,
                prior: c.prior_ms(),
                measured: fixed + slope * c.prior_ms(),
            })
            .collect();
        Affine::fit(&points, Quantity::Latency)
    }

    /// A case of a 2-layer BERT `model` on `engine` (cpu, f32) for the memory tests: no
    /// latency costs, a footprint of `footprint_mib`.
    fn memory_case(
        model: &str,
        engine: &str,
        ceiling: Option<Ceiling>,
        batch: usize,
        footprint_mib: f64,
    ) -> Case {
        Case {
            model: model.into(),
            class: "bert".into(),
            engine: engine.into(),
            platform: "cpu".into(),
            precision: "f32".into(),
            hardware: "h".into(),
            work: Workload {
                batch,
                seq_len: 16,
                new_tokens: 0,
                audio_seconds: 0.0,
                image: None,
            },
            costs: Vec::new(),
            ceiling,
            footprint_bytes: footprint_mib * MIB,
            layers: 2,
            graph_operations: None,
        }
    }

    /// An unseen model's memory upper bound is at least the program's memory plus its whole
    /// footprint, whatever smaller slope the line took from the models it was fitted on.
    #[test]
    fn an_unseen_models_memory_bound_covers_its_whole_footprint() {
        let case = |model: &str, batch: usize, footprint_mib: f64| {
            memory_case(model, "native", None, batch, footprint_mib)
        };
        let mut observations = Vec::new();
        // Tiny models at the program's 100 MiB; one large one at half a MiB a MiB of footprint.
        for (model, footprint) in [("a", 0.1), ("b", 0.2), ("c", 0.3), ("large", 400.0)] {
            for batch in [1, 2, 4, 8] {
                let footprint = footprint * (1.0 + batch as f64 / 100.0);
                observations.push(Observation {
                    case: case(model, batch, footprint),
                    latency_ms: 1.0,
                    peak_memory_mib: Some(100.0 + 0.5 * footprint),
                    result_id: 0,
                    steady: None,
                });
            }
        }
        let p = Predictor::fit(&observations, Quantity::PeakMemory).unwrap();
        let unseen = p.predict(&case("new", 1, 200.0));
        assert!(unseen.novelty.model);
        assert!(
            unseen.upper_bound >= 0.99 * (100.0 + 200.0) * 1.1,
            "{unseen:?}"
        );
        // A measured model keeps the bound its held-out errors give.
        let seen = p.predict(&case("large", 1, 404.0));
        assert!(!seen.novelty.model && seen.upper_bound < 404.0, "{seen:?}");
    }

    #[test]
    fn repeatability_compares_each_repeat_with_the_others() {
        let work = Workload {
            batch: 1,
            seq_len: 16,
            new_tokens: 0,
            audio_seconds: 0.0,
            image: None,
        };
        let case = |batch: usize| Case {
            model: "m".into(),
            class: "bert".into(),
            engine: "e".into(),
            platform: "cpu".into(),
            precision: "f32".into(),
            hardware: "h".into(),
            work: Workload { batch, ..work },
            costs: Vec::new(),
            ceiling: None,
            footprint_bytes: 1.0,
            layers: 2,
            graph_operations: None,
        };
        let obs = |batch: usize, latency_ms: f64| Observation {
            case: case(batch),
            latency_ms,
            peak_memory_mib: None,
            result_id: 0,
            steady: None,
        };
        // Batch 1 measured at 10 and 12 ms (20% and 16.7% apart); batch 2 once, not counted.
        let r = repeatability(
            &[obs(1, 10.0), obs(1, 12.0), obs(2, 30.0)],
            Quantity::Latency,
        );
        assert_eq!((r.configurations, r.measurements), (1, 2));
        let expected = (0.2 + 2.0 / 12.0) / 2.0 * 100.0;
        assert!((r.mape.unwrap() - expected).abs() < 1e-9, "{:?}", r.mape);
        assert_eq!(r.within_10pct, Some(0.0));
        let none = repeatability(&[obs(1, 10.0)], Quantity::PeakMemory);
        assert_eq!((none.configurations, none.mape), (0, None));
    }

    /// A prediction of `p50` with no width, for a known model and target.
    fn interval(p50: f64) -> Interval {
        Interval {
            p50,
            low: p50,
            high: p50,
            upper_bound: p50,
            novelty: Novelty {
                model: false,
                target: false,
                batch_size: false,
            },
        }
    }

    #[test]
    fn a_configuration_is_scored_by_the_median_of_its_repeats() {
        let (one, two) = (
            memory_case("m", "e", None, 1, 1.0),
            memory_case("m", "e", None, 2, 1.0),
        );
        // Batch 1 measured three times, one of them in a slow spell; batch 2 once.
        let scored = vec![
            (10.0, interval(10.0), &one),
            (20.0, interval(10.0), &one),
            (11.0, interval(10.0), &one),
            (8.0, interval(10.0), &two),
        ];
        let medians = configuration_medians(&scored);
        let values: Vec<f64> = medians.iter().map(|(m, _, _)| *m).collect();
        assert_eq!(values, vec![11.0, 8.0]);
        let (mape, _) = error_shares(&relative_errors(&medians));
        let expected = (1.0 / 11.0 + 2.0 / 8.0) / 2.0 * 100.0;
        assert!((mape.unwrap() - expected).abs() < 1e-9, "{mape:?}");
    }

    #[test]
    fn selection_names_each_miss_and_its_loss() {
        let at = |engine: &str, batch: usize| memory_case("m", engine, None, batch, 1.0);
        let (a1, b1, c1, a2, b2) = (at("a", 1), at("b", 1), at("c", 1), at("a", 2), at("b", 2));
        // b=1: "a" predicted fastest, "b" measured fastest (a repeat of "b" averages in);
        // b=2: chosen right; "c" alone at b=4 would not be contested.
        let c4 = at("c", 4);
        let scored = vec![
            (12.0, interval(9.0), &a1),
            (10.0, interval(11.0), &b1),
            (10.0, interval(11.0), &b1),
            (20.0, interval(15.0), &c1),
            (5.0, interval(5.0), &a2),
            (6.0, interval(6.0), &b2),
            (1.0, interval(1.0), &c4),
        ];
        let s = selection(&scored);
        assert_eq!((s.cases, s.top1), (2, Some(0.5)));
        assert_eq!(s.misses.len(), 1);
        let miss = &s.misses[0];
        assert_eq!(
            (miss.chosen.as_str(), miss.best.as_str()),
            ("a on cpu", "b on cpu")
        );
        assert!((miss.loss_pct - 20.0).abs() < 1e-9, "{miss:?}");
        assert_eq!(s.mean_loss_pct, Some(miss.loss_pct));
    }

    #[test]
    fn the_conformal_quantile_is_the_finite_sample_rank() {
        let mut e: Vec<f64> = (1..=9).map(f64::from).collect();
        // ceil(10 x 0.9) = 9th smallest.
        assert_eq!(conformal_quantile(&mut e, 0.9), 9.0);
        let mut few = vec![0.3, 0.1];
        assert_eq!(conformal_quantile(&mut few, 0.9), 0.3);
    }

    /// A learner check on constructed points (never shown to users): when every measurement
    /// is three times its roofline, a held-out size is predicted at three times its roofline.
    #[test]
    fn the_learned_ratio_carries_to_unseen_sizes() {
        let case = |batch: usize, seq_len: usize| Case {
            footprint_bytes: 1e6 * (batch * seq_len) as f64,
            ..roofline_bert("bert", 4, "native", (batch, seq_len), 5e10, 1e10)
        };
        let mut observations = Vec::new();
        for batch in [1, 2, 4, 8] {
            for seq_len in [16, 32, 64, 128] {
                let c = case(batch, seq_len);
                observations.push(Observation {
                    latency_ms: 3.0 * c.prior_ms(),
                    peak_memory_mib: Some(50.0 + 2.0 * c.footprint_bytes / MIB),
                    case: c,
                    result_id: 0,
                    steady: None,
                });
            }
        }
        let p = Predictor::fit(&observations, Quantity::Latency).unwrap();
        let unseen = case(16, 96);
        let got = p.predict(&unseen);
        let want = 3.0 * unseen.prior_ms();
        assert!((got.p50 / want - 1.0).abs() < 0.05, "{got:?} vs {want}");
        assert!(got.low <= got.p50 && got.p50 <= got.high && got.p50 <= got.upper_bound);
        assert_eq!(
            got.novelty,
            Novelty {
                model: false,
                target: false,
                batch_size: true
            }
        );
        // Memory: the program's 50 MB plus twice the footprint, learned as a line.
        let memory = Predictor::fit(&observations, Quantity::PeakMemory).unwrap();
        let got = memory.predict(&unseen).p50;
        let want = 50.0 + 2.0 * unseen.footprint_bytes / MIB;
        assert!((got / want - 1.0).abs() < 0.05, "{got} vs {want}");
    }

    /// A target never measured starts from its calibrated program memory: two engines whose
    /// programs hold 100 and 120 MiB, with the models' footprints on top, predict a third
    /// whose program holds 150 MiB at 150 MiB plus the footprint, not the others' program.
    #[test]
    fn an_unseen_targets_memory_starts_from_its_calibrated_program() {
        let case = |engine: &str, program_mib: f64, model: &str, batch: usize| {
            let ceiling = Ceiling {
                program_bytes: program_mib * MIB,
                ..NOMINAL
            };
            memory_case(model, engine, Some(ceiling), batch, batch as f64)
        };
        let mut observations = Vec::new();
        for (engine, program) in [("native", 100.0), ("onnxruntime", 120.0)] {
            for model in ["a", "b", "c"] {
                for batch in [1, 2, 4, 8] {
                    observations.push(Observation {
                        case: case(engine, program, model, batch),
                        latency_ms: 1.0,
                        peak_memory_mib: Some(program + batch as f64),
                        result_id: 0,
                        steady: None,
                    });
                }
            }
        }
        let p = Predictor::fit(&observations, Quantity::PeakMemory).unwrap();
        let unseen = p.predict(&case("openvino", 150.0, "a", 4));
        assert!(unseen.novelty.target);
        assert!((unseen.p50 / 154.0 - 1.0).abs() < 0.02, "{unseen:?}");
        assert!(unseen.upper_bound >= 154.0, "{unseen:?}");
    }

    /// BERT with 4 layers on each of `engines` (name, slowdown: latency = slowdown x prior) at
    /// batch sizes 1-8 and lengths 16 and 64, configurations in that order.
    fn bert_observations(engines: &[(&str, f64)]) -> Vec<Observation> {
        engines
            .iter()
            .flat_map(|&(engine, slowdown)| model_observations("bert", engine, 0.0, slowdown))
            .collect()
    }

    /// A 4-layer BERT named `model` on `engine` at 4 batch sizes and 2 lengths, each measured
    /// at `fixed_ms` + `slowdown` x its roofline.
    fn model_observations(
        model: &str,
        engine: &str,
        fixed_ms: f64,
        slowdown: f64,
    ) -> Vec<Observation> {
        let mut observations = Vec::new();
        for batch in [1, 2, 4, 8] {
            for seq_len in [16, 64] {
                let work = text_work(batch, seq_len);
                let case = Case {
                    model: model.into(),
                    class: "bert".into(),
                    engine: engine.into(),
                    platform: "cpu".into(),
                    precision: "f32".into(),
                    hardware: "test".into(),
                    work,
                    costs: iteration_costs(&bert(4), ModelClass::Bert, false, work, "f32").unwrap(),
                    ceiling: None,
                    footprint_bytes: 1e7,
                    layers: 4,
                    graph_operations: None,
                };
                observations.push(Observation {
                    latency_ms: fixed_ms + slowdown * case.prior_ms(),
                    peak_memory_mib: None,
                    case,
                    result_id: 0,
                    steady: None,
                });
            }
        }
        observations
    }

    /// Every measurement fits the point model and calibrates the interval (from a fit
    /// without its fold): the last configuration, which split conformal only calibrated on,
    /// is among what a prediction leans on, and its interval covers it.
    #[test]
    fn every_configuration_fits_the_point_model_and_calibrates_the_interval() {
        let mut observations = bert_observations(&[("native", 3.0)]);
        let last = observations.len() - 1;
        observations[last].latency_ms *= 2.0;
        let p = Predictor::fit(&observations, Quantity::Latency).unwrap();
        let case = &observations[last].case;
        assert!(p
            .nearest(case, observations.len())
            .iter()
            .any(|o| o.latency_ms == observations[last].latency_ms));
        let got = p.predict(case);
        assert!(
            (got.low..=got.high).contains(&observations[last].latency_ms),
            "{got:?} vs {}",
            observations[last].latency_ms
        );
    }

    /// A case of a target no measurement had gets the margin of holding each known target
    /// out in turn, not the narrower one of cases like the fitted ones.
    #[test]
    fn an_unseen_target_gets_the_margin_of_held_out_targets() {
        let observations =
            bert_observations(&[("native", 3.0), ("onnxruntime", 1.5), ("openvino", 1.2)]);
        let p = Predictor::fit(&observations, Quantity::Latency).unwrap();
        let mut new = observations[0].case.clone();
        let seen = p.predict(&new);
        new.engine = "wasm".into();
        let unseen = p.predict(&new);
        assert!(unseen.novelty.target && !unseen.novelty.model);
        assert!(
            unseen.high / unseen.p50 > seen.high / seen.p50,
            "{unseen:?} vs {seen:?}"
        );
        assert!(
            Predictor::fit(&observations, Quantity::PeakMemory).is_err(),
            "no memory measurements"
        );
    }

    /// Measured targets whose points lie at half their roofline (a calibration that read their
    /// rate at half) keep their own lines; a target none of them is, read off the all-targets
    /// line, is predicted at its roofline or slower, its interval too.
    #[test]
    fn an_unseen_target_is_never_predicted_under_its_roofline() {
        let observations = bert_observations(&[("native", 0.5), ("onnxruntime", 0.6)]);
        let p = Predictor::fit(&observations, Quantity::Latency).unwrap();
        let mut case = observations[0].case.clone();
        let seen = p.predict(&case);
        assert!(seen.p50 < 0.7 * case.prior_ms(), "{seen:?}");
        case.engine = "openvino".into();
        let unseen = p.predict(&case);
        assert!(unseen.novelty.target);
        assert!(unseen.low >= case.prior_ms(), "{unseen:?}");
        assert!(unseen.p50 >= unseen.low, "{unseen:?}");
    }

    /// Where the measured targets run real work above its roofline, a target never measured
    /// is predicted at no less than their median slope times its roofline, while its
    /// interval's low end may go below that, down to the roofline itself.
    #[test]
    fn an_unseen_target_starts_from_the_slope_of_real_work() {
        let observations = bert_observations(&[("native", 1.4), ("onnxruntime", 1.6)]);
        let refs: Vec<&Observation> = observations.iter().collect();
        let m = PointModel::fit(&refs, Quantity::Latency).unwrap();
        let mut case = observations[0].case.clone();
        case.engine = "openvino".into();
        let roofline = case.prior_ms();
        assert!((m.floor(&case) / roofline - 1.0).abs() < 1e-9);
        assert!((m.least(&case) / (1.5 * roofline) - 1.0).abs() < 1e-6);
        // A measured target keeps its own line.
        assert_eq!(m.least(&observations[0].case), 0.0);
        let p = Predictor::fit(&observations, Quantity::Latency).unwrap();
        let unseen = p.predict(&case);
        assert!(unseen.p50 >= 1.5 * roofline * (1.0 - 1e-9), "{unseen:?}");
        assert!(
            unseen.low >= roofline && unseen.low < unseen.p50,
            "{unseen:?}"
        );
    }

    /// A model never measured on a target where models of real work were is predicted at the
    /// median of their times over their rooflines, with no learned correction; where the
    /// target's line reads its roofline as under half its time (tiny models' calls are most
    /// of it) it is not read as real work.
    #[test]
    fn an_unmeasured_model_runs_at_the_ratio_of_real_work_on_its_target() {
        let mut observations = Vec::new();
        for (model, slowdown) in [("bert-a", 1.2), ("bert-b", 1.6), ("bert-c", 1.3)] {
            observations.extend(model_observations(model, "native", 0.0, slowdown));
        }
        let p = Predictor::fit(&observations, Quantity::Latency).unwrap();
        let mut case = observations[0].case.clone();
        case.model = "bert-new".into();
        let unseen = p.predict(&case);
        assert!(unseen.novelty.model && !unseen.novelty.target, "{unseen:?}");
        assert!(
            (unseen.p50 / (1.3 * case.prior_ms()) - 1.0).abs() < 1e-9,
            "{unseen:?}"
        );
        // Among tiny models whose calls are most of their time, the target's line reads a new
        // tiny model at over twice its roofline: not real work, the learner's correction of
        // that line predicts it. A new large model is read at the ratio.
        let case = |model: &str, batch: usize, flops_per_s: f64| {
            roofline_bert(model, 2, "native", (batch, 16), flops_per_s, 1e18)
        };
        let mut cases = Vec::new();
        for batch in [1, 2, 4, 8] {
            for tiny in ["tiny-a", "tiny-b", "tiny-c"] {
                cases.push((case(tiny, batch, 1e12), 0.05, 5.0));
            }
            cases.push((case("real-a", batch, 1e8), 0.0, 1.2));
            cases.push((case("real-b", batch, 1e8), 0.0, 1.6));
        }
        let affine = latency_affine(&cases);
        let tiny = case("tiny-new", 1, 1e12);
        let line = affine.baseline(&tiny, Quantity::Latency, Start::Target);
        assert!(tiny.prior_ms() < REAL_WORK_READING * line, "{line}");
        assert_eq!(affine.real_work_ratio(&tiny, Quantity::Latency), None);
        let large = case("large-new", 1, 1e8);
        let ratio = affine.real_work_ratio(&large, Quantity::Latency).unwrap();
        assert!((ratio - 1.4).abs() < 1e-9, "{ratio}");
    }

    #[test]
    fn too_little_data_is_a_clear_error() {
        let e = Predictor::fit(&[], Quantity::Latency)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("at least 8"), "{e}");
    }
}
