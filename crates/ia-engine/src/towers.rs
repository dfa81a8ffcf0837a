//! Two-tower exports (CLIP), laid out as transformers.js expects them: `onnx/text_model.onnx`
//! (`input_ids`, `attention_mask` -> `text_embeds`) and `onnx/vision_model.onnx`
//! (`pixel_values` -> `image_embeds`), the projections before CLIPModel's normalisation. Every
//! graph runtime (ONNX Runtime, OpenVINO, the browser) resolves the files, picks the tower an
//! input is for and adds the trained temperature the towers leave out, here.

use crate::{EngineError, Inputs};
use ia_models::{Model, ModelClass, ModelSource};
use std::path::PathBuf;

/// The towers of a two-part export.
pub const CLIP_PARTS: [&str; 2] = ["text_model", "vision_model"];

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
    if class == ModelClass::Clip {
        let parts: Vec<(String, PathBuf)> = CLIP_PARTS
            .iter()
            .map(|p| (p.to_string(), c.dir.join("onnx").join(format!("{p}.onnx"))))
            .collect();
        if let Some((_, missing)) = parts.iter().find(|(_, f)| !f.is_file()) {
            return Err(EngineError::Unsupported(format!(
                "{}: no ONNX export of CLIP's towers ({} is missing; scripts/export_onnx_fixtures.py lays them out)",
                c.dir.display(),
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

/// The part that runs `inputs`: the only one, or the tower of the inputs' modality.
pub fn part_for<'a>(
    names: impl IntoIterator<Item = &'a str>,
    inputs: &Inputs,
) -> Result<&'a str, EngineError> {
    let names: Vec<&str> = names.into_iter().collect();
    if let [only] = names[..] {
        return Ok(only);
    }
    let tower = match inputs {
        Inputs::Image { .. } => "vision_model",
        Inputs::Text { .. } => "text_model",
        Inputs::Audio { .. } => {
            return Err(EngineError::InvalidInput(
                "CLIP takes images or text, not audio".into(),
            ))
        }
    };
    names
        .into_iter()
        .find(|n| *n == tower)
        .ok_or_else(|| EngineError::InvalidModel(format!("no {tower} export")))
}

/// CLIP's trained temperature (`exp(logit_scale)` from the checkpoint), which its tower
/// exports leave out; returned with the embeddings as the native engine returns it.
pub fn logit_scale(model: &Model) -> Result<Option<f32>, EngineError> {
    match (&model.source, model.class) {
        (ModelSource::Checkpoint(c), ModelClass::Clip) => Ok(
            ia_models::footprint::read_f32_scalar(&c.safetensors, "logit_scale")
                .map_err(|e| EngineError::InvalidModel(e.to_string()))?
                .map(f32::exp),
        ),
        _ => Ok(None),
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
        assert_eq!(part_for(CLIP_PARTS, &text).unwrap(), "text_model");
        assert_eq!(part_for(CLIP_PARTS, &image).unwrap(), "vision_model");
        assert_eq!(part_for(["model"], &image).unwrap(), "model");
        let audio = Inputs::Audio {
            batch: 1,
            sample_rate: 16_000,
            samples: vec![0.0; 4],
        };
        assert!(part_for(CLIP_PARTS, &audio).is_err());
    }
}
