//! One file per architecture. Each turns a checkpoint into an `ia_engine::Session`.

pub(crate) mod attention;
pub mod bert;
pub mod causal_lm;
pub mod clap;
pub mod clip;
pub mod decoder;
pub mod detr;
pub(crate) mod encoder;
pub mod llava;
pub mod opt;
pub mod quantized;
pub mod qwen2_vl;
pub mod t5;
pub mod vit;
pub mod wav2vec2;
pub mod whisper;
pub mod xclip;

pub use encoder::Products;

use candle_core::{DType, Device};
use ia_engine::{EngineError, SessionInfo};
use ia_models::ModelSource;
use serde::de::DeserializeOwned;

/// What every architecture's `load` receives.
pub struct LoadContext<'a> {
    pub source: &'a ModelSource,
    pub device: Device,
    pub dtype: DType,
    /// How BERT-style encoders multiply (bf16 on AMX or AVX512-BF16 for `--precision bf16` on the CPU).
    pub(crate) products: encoder::Products,
    /// Filled in by the architecture (parameter count, output names).
    pub info: SessionInfo,
}

impl LoadContext<'_> {
    /// Builds architecture `arch` with `build` from the checkpoint's weights (or seeded random
    /// ones), naming the architecture in a candle error, and the session info with the
    /// parameters `build` read and the outputs the session returns.
    pub(crate) fn build<M>(
        &self,
        arch: &str,
        outputs: &[&str],
        build: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<M>,
    ) -> Result<(M, SessionInfo), EngineError> {
        let (vb, params) = crate::load_var_builder(self.source, self.dtype, &self.device)?;
        let (model, mut info) = self.build_from(vb, arch, outputs, build)?;
        info.parameter_count = params.load(std::sync::atomic::Ordering::Relaxed);
        Ok((model, info))
    }

    /// [`Self::build`] from weights that are not the checkpoint's safetensors (a .gguf
    /// file's); the caller sets the parameter count.
    pub(crate) fn build_from<M>(
        &self,
        vb: candle_nn::VarBuilder<'static>,
        arch: &str,
        outputs: &[&str],
        build: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<M>,
    ) -> Result<(M, SessionInfo), EngineError> {
        let model = build(vb).map_err(|e| {
            EngineError::InvalidModel(format!(
                "cannot build {arch}: {}",
                crate::candle_message(&e)
            ))
        })?;
        let mut info = self.info.clone();
        info.output_names = outputs.iter().map(|o| o.to_string()).collect();
        Ok((model, info))
    }
}

/// Deserialises the HF config.json into an architecture's `Config`, naming what does not fit.
pub(crate) fn parse_config<T: DeserializeOwned>(
    source: &ModelSource,
    arch: &str,
) -> Result<T, EngineError> {
    serde_json::from_value(normalized_config(source.config())).map_err(|e| {
        EngineError::InvalidModel(format!("config.json does not describe a {arch} model: {e}"))
    })
}

/// Bridges config layouts across transformers versions so that one `Config` struct reads
/// them all: transformers 5 writes `rope_parameters.rope_theta` where older checkpoints have a
/// top-level `rope_theta`, and `sliding_window: null` where the window is unused.
pub(crate) fn normalized_config(config: &serde_json::Value) -> serde_json::Value {
    let mut c = config.clone();
    let Some(obj) = c.as_object_mut() else {
        return c;
    };
    if !obj.contains_key("rope_theta") {
        if let Some(theta) = obj
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .cloned()
        {
            obj.insert("rope_theta".into(), theta);
        }
    }
    if obj.get("sliding_window").is_some_and(|w| w.is_null()) {
        let max = obj
            .get("max_position_embeddings")
            .cloned()
            .unwrap_or(serde_json::Value::from(4096));
        obj.insert("sliding_window".into(), max);
    }
    c
}
