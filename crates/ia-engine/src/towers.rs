//! Two-tower exports (CLIP, CLAP), laid out as transformers.js expects them:
//! `onnx/text_model.onnx` (`input_ids`, `attention_mask` -> `text_embeds`) and
//! `onnx/vision_model.onnx` (`pixel_values` -> `image_embeds`) or `onnx/audio_model.onnx`
//! (`input_features`, `is_longer` -> `audio_embeds`), the projections before the model's
//! normalisation. Every graph runtime (ONNX Runtime, OpenVINO, the browser) resolves the files,
//! picks the tower an input is for and adds the trained temperature the towers leave out, here.

use crate::{EngineError, Inputs};
use ia_models::{Model, ModelClass, ModelSource};
use std::path::PathBuf;

/// The towers of CLIP's and CLAP's two-part exports.
pub const CLIP_PARTS: [&str; 2] = ["text_model", "vision_model"];
pub const CLAP_PARTS: [&str; 2] = ["text_model", "audio_model"];

/// The graph files of a model by part name: CLIP's two towers, or the one single-graph export
/// (`model`) of every other class.
pub fn graph_parts(
    source: &ModelSource,
    class: ModelClass,
) -> Result<Vec<(String, PathBuf)>, EngineError> {
    let c = match source {
        ModelSource::Checkpoint(c) => c,
        ModelSource::RandomInit { .. } => {
            return Err(EngineError::Unsupported(
                "graph runtimes run ONNX exports; random-weight models have none".into(),
            ))
        }
    };
    let towers = match class {
        ModelClass::Clip => Some(CLIP_PARTS),
        ModelClass::Clap => Some(CLAP_PARTS),
        _ => None,
    };
    if let Some(towers) = towers {
        let parts: Vec<(String, PathBuf)> = towers
            .iter()
            .map(|p| (p.to_string(), c.dir.join("onnx").join(format!("{p}.onnx"))))
            .collect();
        if let Some((_, missing)) = parts.iter().find(|(_, f)| !f.is_file()) {
            return Err(EngineError::Unsupported(format!(
                "{}: no ONNX export of {}'s towers ({} is missing; scripts/export_onnx_fixtures.py lays them out)",
                c.dir.display(),
                class.as_str(),
                missing.display()
            )));
        }
        return Ok(parts);
    }
    let file = c.onnx.clone().ok_or_else(|| {
        EngineError::Unsupported(format!(
            "{}: no ONNX export (onnx/model.onnx or model.onnx)",
            c.dir.display()
        ))
    })?;
    Ok(vec![("model".into(), file)])
}

/// The part named `name` among a model's loaded parts (each runtime's graph, session or file).
pub fn part_mut<'a, T>(parts: &'a mut [(String, T)], name: &str) -> Result<&'a mut T, EngineError> {
    parts
        .iter_mut()
        .find(|(n, _)| n == name)
        .map(|(_, part)| part)
        .ok_or_else(|| EngineError::InvalidModel(format!("the export has no {name}")))
}

/// The part that runs `inputs`: the only one, or the tower of the inputs' modality.
pub fn part_for<'a, T>(
    parts: &'a mut [(String, T)],
    inputs: &Inputs,
) -> Result<&'a mut T, EngineError> {
    if let [(_, only)] = parts {
        return Ok(only);
    }
    let tower = match inputs {
        Inputs::Image { .. } => "vision_model",
        Inputs::Text { .. } => "text_model",
        Inputs::Audio { .. } => "audio_model",
        Inputs::Video { .. } => "video_model",
    };
    if !parts.iter().any(|(n, _)| n == tower) {
        let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
        return Err(EngineError::InvalidInput(format!(
            "this model has no {tower} tower for these inputs (it has {})",
            names.join(", ")
        )));
    }
    part_mut(parts, tower)
}

/// The trained temperature (`exp` of CLIP's `logit_scale`, CLAP's `logit_scale_a`, from the
/// checkpoint), which the tower exports leave out; returned with the embeddings as the native
/// engine returns it.
pub fn logit_scale(model: &Model) -> Result<Option<f32>, EngineError> {
    let name = match model.class {
        ModelClass::Clip => "logit_scale",
        ModelClass::Clap => "logit_scale_a",
        _ => return Ok(None),
    };
    match &model.source {
        ModelSource::Checkpoint(c) => {
            Ok(ia_models::footprint::read_f32_scalar(&c.safetensors, name)
                .map_err(|e| EngineError::InvalidModel(e.to_string()))?
                .map(f32::exp))
        }
        ModelSource::RandomInit { .. } => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_pick_their_tower() {
        let text = Inputs::from_token_rows(&[vec![1, 2]], 0).unwrap();
        let image = Inputs::Image {
            shape: [1, 3, 2, 2],
            pixel_values: vec![0.0; 12],
        };
        let named = |names: &[&str]| -> Vec<(String, String)> {
            names
                .iter()
                .map(|n| (n.to_string(), n.to_string()))
                .collect()
        };
        let (mut clip, mut clap) = (named(&CLIP_PARTS), named(&CLAP_PARTS));
        assert_eq!(part_for(&mut clip, &text).unwrap(), "text_model");
        assert_eq!(part_for(&mut clip, &image).unwrap(), "vision_model");
        assert_eq!(part_for(&mut named(&["model"]), &image).unwrap(), "model");
        let audio = Inputs::Audio {
            batch: 1,
            sample_rate: 16_000,
            samples: vec![0.0; 4],
        };
        let e = part_for(&mut clip, &audio).unwrap_err().to_string();
        assert!(e.contains("no audio_model tower"), "{e}");
        assert_eq!(part_for(&mut clap, &audio).unwrap(), "audio_model");
        assert!(part_mut(&mut clap, "vision_model").is_err());
    }
}
