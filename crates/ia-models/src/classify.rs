//! Maps a Hugging Face `config.json` (its `model_type` and `architectures`) to a model class,
//! family and pipeline task.

use crate::catalog::{Modality, ModelClass};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    pub model_type: String,
    pub architecture: Option<String>,
    pub class: ModelClass,
    pub family: &'static str,
    pub task: &'static str,
    pub modality: Modality,
}

#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("config has no \"model_type\" (is this a Hugging Face config.json?)")]
    MissingModelType,
    #[error("unknown model_type '{model_type}' (architectures: {architectures}); supported: {supported}")]
    Unknown {
        model_type: String,
        architectures: String,
        supported: String,
    },
    #[error(transparent)]
    Invalid(#[from] crate::validate::ConfigError),
}

/// model_type values per class, as transformers spells them.
const MODEL_TYPES: &[(&str, ModelClass)] = &[
    ("bert", ModelClass::Bert),
    ("t5", ModelClass::T5),
    ("mt5", ModelClass::T5),
    ("opt", ModelClass::Llama),
    ("llama", ModelClass::Llama),
    ("mistral", ModelClass::Llama),
    ("clip", ModelClass::Clip),
    ("vit", ModelClass::Vit),
    ("clap", ModelClass::Clap),
    ("whisper", ModelClass::Whisper),
    ("wav2vec2", ModelClass::Wav2vec2),
    ("llava", ModelClass::Llava),
    ("llava_next", ModelClass::LlavaNext),
    ("xclip", ModelClass::Xclip),
    ("qwen2", ModelClass::Qwen),
    ("qwen3", ModelClass::Qwen),
    ("qwen2_vl", ModelClass::Qwen),
    ("qwen2_5_vl", ModelClass::Qwen),
    ("qwen3_vl", ModelClass::Qwen),
    ("detr", ModelClass::Detr),
];

/// The class, family and task of a config, after [`crate::validate::check_config`]: every
/// path that loads or benchmarks a model classifies it first, so none sees a config whose
/// numbers are out of range.
pub fn classify_config(config: &Value) -> Result<Classification, ClassifyError> {
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or(ClassifyError::MissingModelType)?
        .to_string();
    let architectures: Vec<String> = config
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let class = MODEL_TYPES
        .iter()
        .find(|(t, _)| *t == model_type)
        .map(|(_, c)| *c)
        .ok_or_else(|| ClassifyError::Unknown {
            model_type: model_type.clone(),
            architectures: if architectures.is_empty() {
                "none".into()
            } else {
                architectures.join(", ")
            },
            supported: MODEL_TYPES
                .iter()
                .map(|(t, _)| *t)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    crate::validate::check_config(config)?;
    let architecture = architectures.first().cloned();
    let arch = architecture.as_deref().unwrap_or("");
    let is_vl = model_type.ends_with("_vl");
    let (family, task, modality) = match class {
        ModelClass::Bert => match arch_suffix(arch) {
            "ForSequenceClassification" => ("embedding", "text-classification", Modality::Text),
            "ForTokenClassification" => ("embedding", "token-classification", Modality::Text),
            "ForQuestionAnswering" => ("embedding", "question-answering", Modality::Text),
            "ForMaskedLM" | "ForPreTraining" => ("embedding", "fill-mask", Modality::Text),
            _ => ("embedding", "feature-extraction", Modality::Text),
        },
        ModelClass::T5 => ("text2text", "text2text-generation", Modality::Text),
        ModelClass::Llama => ("text_generation", "text-generation", Modality::Text),
        ModelClass::Qwen if is_vl => ("multimodal", "image-text-to-text", Modality::Multimodal),
        ModelClass::Qwen => ("text_generation", "text-generation", Modality::Text),
        ModelClass::Clip => (
            "multimodal",
            "zero-shot-image-classification",
            Modality::Multimodal,
        ),
        ModelClass::Vit => match arch_suffix(arch) {
            "ForImageClassification" => ("vision", "image-classification", Modality::Vision),
            _ => ("vision", "image-feature-extraction", Modality::Vision),
        },
        ModelClass::Detr => ("vision", "object-detection", Modality::Vision),
        ModelClass::Clap => ("audio", "zero-shot-audio-classification", Modality::Audio),
        ModelClass::Whisper => ("audio", "automatic-speech-recognition", Modality::Audio),
        ModelClass::Wav2vec2 => match arch_suffix(arch) {
            "ForCTC" | "" => ("audio", "automatic-speech-recognition", Modality::Audio),
            "ForSequenceClassification" => ("audio", "audio-classification", Modality::Audio),
            _ => ("audio", "feature-extraction", Modality::Audio),
        },
        ModelClass::Llava | ModelClass::LlavaNext => {
            ("multimodal", "image-text-to-text", Modality::Multimodal)
        }
        ModelClass::Xclip => (
            "multimodal",
            "zero-shot-video-classification",
            Modality::Multimodal,
        ),
    };
    Ok(Classification {
        model_type,
        architecture,
        class,
        family,
        task,
        modality,
    })
}

/// "BertForMaskedLM" -> "ForMaskedLM"; "BertModel" -> "".
fn arch_suffix(arch: &str) -> &str {
    arch.find("For").map(|i| &arch[i..]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_known_configs() {
        let c = classify_config(&json!({"model_type": "bert", "architectures": ["BertModel"]}))
            .unwrap();
        assert_eq!((c.class, c.task), (ModelClass::Bert, "feature-extraction"));
        let c = classify_config(
            &json!({"model_type": "vit", "architectures": ["ViTForImageClassification"]}),
        )
        .unwrap();
        assert_eq!((c.class, c.task), (ModelClass::Vit, "image-classification"));
        let c = classify_config(&json!({"model_type": "qwen2_vl"})).unwrap();
        assert_eq!(
            (c.class, c.modality),
            (ModelClass::Qwen, Modality::Multimodal)
        );
        let c = classify_config(&json!({"model_type": "opt", "architectures": ["OPTForCausalLM"]}))
            .unwrap();
        assert_eq!(c.family, "text_generation");
    }

    #[test]
    fn unknown_config_gets_a_clear_message() {
        let err =
            classify_config(&json!({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
                .unwrap_err()
                .to_string();
        assert!(err.contains("unknown model_type 'mamba'"), "{err}");
        assert!(err.contains("MambaForCausalLM"), "{err}");
        let err = classify_config(&json!({"hidden_size": 3}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("model_type"), "{err}");
    }
}
