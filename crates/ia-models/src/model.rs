//! A model resolved once: its name, where its files are (config, preprocessor and generation
//! configs, tokenizer, weights, exports: [`ModelSource`], each file read by one reader at
//! open) and what it is ([`classify_config`], run here and nowhere else). Engines, the
//! benchmark harness, the task pipelines and the input generators all receive this value.

use crate::{classify_config, ClassifyError, Modality, ModelClass, ModelSource};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Model {
    /// The name results are stored under (hub id or folder path).
    pub name: String,
    pub source: ModelSource,
    /// config.json's `model_type`.
    pub model_type: String,
    pub class: ModelClass,
    pub family: &'static str,
    pub task: &'static str,
    pub modality: Modality,
}

impl Model {
    /// Classifies `source` from its config.json (completed with transformers' defaults where
    /// checkpoints abbreviate it: [`crate::defaults`]).
    pub fn resolve(
        name: impl Into<String>,
        mut source: ModelSource,
    ) -> Result<Self, ClassifyError> {
        crate::defaults::complete(source.config_mut());
        let c = classify_config(source.config())?;
        Ok(Self {
            name: name.into(),
            source,
            model_type: c.model_type,
            class: c.class,
            family: c.family,
            task: c.task,
            modality: c.modality,
        })
    }

    /// The source's config.json.
    pub fn config(&self) -> &Value {
        self.source.config()
    }

    /// Measured as text generation rather than as single forward passes.
    pub fn generates_text(&self) -> bool {
        matches!(
            self.task,
            "text-generation" | "text2text-generation" | "image-text-to-text"
        )
    }

    /// Whether a sequence length applies to its inputs: text models', and the text prompt of
    /// an image-text generator.
    pub fn has_text_length(&self) -> bool {
        self.modality == crate::Modality::Text || self.generates_text()
    }
}
