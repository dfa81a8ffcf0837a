//! The memory check every load and every benchmark input goes through: the footprint of the
//! model and the work ([`ia_models::footprint`]) against what this process can still allocate
//! ([`ia_hardware::memory::available`]). A combination that cannot fit is refused with its
//! estimate before a byte is allocated.

use crate::{EngineError, Inputs, Precision};
use ia_models::footprint::{self, Workload};
use ia_models::ModelSource;
use serde_json::Value;

impl Precision {
    /// Bytes one weight takes at this precision (quantised blocks round up to a byte).
    pub fn weight_bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::F16 | Precision::Bf16 => 2,
            Precision::Int8 | Precision::Q8_0 | Precision::Q4K => 1,
        }
    }
}

/// Refuses `work` on `source` at `precision` when its estimated footprint exceeds the memory
/// this process can still allocate (`Unsupported`, with the estimate and the binding limit).
pub fn check_fits(
    source: &ModelSource,
    precision: Precision,
    work: Workload,
) -> Result<(), EngineError> {
    check_estimate(
        source,
        precision.weight_bytes(),
        work,
        1,
        "not enough memory",
    )
}

/// Refuses a training combination whose estimated footprint exceeds what the process can
/// still allocate: f32 weights, gradients and AdamW's two moments (16 bytes a parameter) and
/// the activations of every layer (of one layer's at a time plus each layer's input, with
/// gradient checkpointing).
pub fn check_training_fits(
    source: &ModelSource,
    work: Workload,
    gradient_checkpointing: bool,
) -> Result<(), EngineError> {
    let config = source.config();
    let layers = ["num_hidden_layers", "num_layers"]
        .iter()
        .find_map(|k| config.get(*k).and_then(Value::as_u64))
        .unwrap_or(1)
        .max(1);
    let kept = if gradient_checkpointing { 1 } else { layers };
    check_estimate(source, 16, work, kept, "not enough memory to train")
}

/// The footprint at `bytes_per_weight`, with the activations of `layers` layers alive at once,
/// against what the process can allocate.
fn check_estimate(
    source: &ModelSource,
    bytes_per_weight: u64,
    work: Workload,
    layers: u64,
    refusal: &str,
) -> Result<(), EngineError> {
    let Some(available) = ia_hardware::memory::available() else {
        return Ok(());
    };
    let mut f = footprint::estimate(source, bytes_per_weight, work)
        .map_err(|e| EngineError::InvalidModel(e.to_string()))?;
    f.activations = f.activations.saturating_mul(layers);
    f.check_fits(&available)
        .map_err(|reason| EngineError::Unsupported(format!("{refusal}: {reason}")))
}

/// Refuses to allocate `bytes` for `what` when the process cannot get them (an input buffer
/// sized from user numbers).
pub fn ensure_allocatable(bytes: u64, what: &str) -> Result<(), EngineError> {
    match ia_hardware::memory::available() {
        Some(a) if bytes > a.bytes => Err(EngineError::Unsupported(format!(
            "not enough memory: {what} needs {} but {} can be allocated ({})",
            ia_hardware::memory::gib(bytes),
            ia_hardware::memory::gib(a.bytes),
            a.limited_by
        ))),
        _ => Ok(()),
    }
}

/// The positions a forward pass over `inputs` attends over: tokens; image patches (the
/// config's patch size, 32-pixel strides for detectors); audio frames (the product of
/// Wav2Vec2's conv strides, Whisper's fixed encoder length, CLAP's fixed spectrogram).
pub fn positions(source: &ModelSource, inputs: &Inputs) -> usize {
    let config = source.config();
    let get = |c: &Value, k: &str| c.get(k).and_then(Value::as_u64).map(|v| v as usize);
    match inputs {
        Inputs::Text { seq_len, .. } => *seq_len,
        Inputs::Image { shape, .. } => {
            let vision = config.get("vision_config").unwrap_or(config);
            let patch = get(vision, "patch_size").unwrap_or(32).max(1);
            let patches = (shape[2] / patch).max(1) * (shape[3] / patch).max(1) + 1;
            // A detector's decoder attends over its object queries.
            patches.max(get(config, "num_queries").unwrap_or(0))
        }
        Inputs::Audio { batch, samples, .. } => {
            audio_positions(config, samples.len() / (*batch).max(1))
        }
        // Every frame's patches (attention runs per frame, so this errs high).
        Inputs::Video { shape, .. } => {
            let vision = config.get("vision_config").unwrap_or(config);
            let patch = get(vision, "patch_size").unwrap_or(32).max(1);
            shape[1] * ((shape[3] / patch).max(1) * (shape[4] / patch).max(1) + 1)
        }
    }
}

/// Encoder positions of `samples` of audio: the product of Wav2Vec2's conv strides, else the
/// fixed encoder length (Whisper's max_source_positions; 1024 for CLAP's spectrogram patches).
pub fn audio_positions(config: &Value, samples: usize) -> usize {
    match config.get("conv_stride").and_then(Value::as_array) {
        Some(strides) => {
            let hop = strides
                .iter()
                .filter_map(Value::as_u64)
                .map(|s| s.max(1) as usize)
                .fold(1usize, usize::saturating_mul);
            samples / hop.max(1)
        }
        None => config
            .get("max_source_positions")
            .and_then(Value::as_u64)
            .map_or(1024, |v| v as usize),
    }
}

/// The workload of one forward pass over `inputs`.
pub fn forward_workload(source: &ModelSource, inputs: &Inputs) -> Workload {
    Workload {
        batch: inputs.batch_size(),
        positions: positions(source, inputs),
        cached_positions: 0,
        beams: 1,
    }
}

/// Before a graph runtime (ONNX Runtime, OpenVINO) loads an exported graph: checks that the
/// graph file fits in memory and returns the parameters to record (the checkpoint's
/// safetensors where it has them, else the graph's own weights).
pub fn graph_parameters(source: &ModelSource, graph: &std::path::Path) -> Result<u64, EngineError> {
    let parameters = ia_models::graph_weights::parameter_count(source, graph)
        .map_err(|e| EngineError::InvalidModel(e.to_string()))?;
    ensure_allocatable(
        ia_models::graph_weights::graph_file_bytes(graph),
        "loading the model graph",
    )?;
    Ok(parameters)
}

/// [`graph_parameters`] for an export in several graphs (`files`, by part name): every graph's
/// pre-load check; the checkpoint's safetensors where it has them, else the sum over the
/// `counted` parts (those holding distinct weights: a decoder-with-past graph repeats the
/// decoder's).
pub fn parts_parameters(
    source: &ModelSource,
    files: &[(String, std::path::PathBuf)],
    counted: &[&str],
) -> Result<u64, EngineError> {
    let mut total = 0;
    for (part, file) in files {
        let n = graph_parameters(source, file)?;
        if counted.contains(&part.as_str()) {
            total += n;
        }
    }
    match source {
        ModelSource::Checkpoint(c) if !c.safetensors.is_empty() => {
            graph_parameters(source, &files[0].1)
        }
        _ => Ok(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_model_that_cannot_fit_is_refused_with_its_estimate() {
        let src = ModelSource::RandomInit {
            config: json!({"model_type": "bert", "hidden_size": 200000, "num_hidden_layers": 4000,
                           "num_attention_heads": 8, "vocab_size": 30000}),
            seed: 0,
        };
        let work = Workload {
            batch: 1,
            positions: 8,
            cached_positions: 0,
            beams: 1,
        };
        let e = check_fits(&src, Precision::F32, work)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not enough memory") && e.contains("weights"),
            "{e}"
        );
    }

    #[test]
    fn audio_positions_follow_the_conv_strides() {
        let src = ModelSource::RandomInit {
            config: json!({"model_type": "wav2vec2", "conv_stride": [5, 2, 2]}),
            seed: 0,
        };
        let inputs = Inputs::Audio {
            batch: 2,
            sample_rate: 16_000,
            samples: vec![0.0; 2 * 16_000],
        };
        assert_eq!(positions(&src, &inputs), 800);
    }
}
