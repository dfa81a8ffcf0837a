//! One file per architecture. Each turns a checkpoint into an `ia_engine::Session`.

pub mod bert;
pub mod vit;

use candle_core::{DType, Device};
use ia_engine::{EngineError, SessionInfo};
use ia_models::ModelSource;
use serde::de::DeserializeOwned;

/// What every architecture's `load` receives.
pub struct LoadContext<'a> {
    pub source: &'a ModelSource,
    pub device: Device,
    pub dtype: DType,
    /// Filled in by the architecture (parameter count, output names).
    pub info: SessionInfo,
}

/// Deserialises the HF config.json into an architecture's `Config`, naming what does not fit.
pub(crate) fn parse_config<T: DeserializeOwned>(
    source: &ModelSource,
    arch: &str,
) -> Result<T, EngineError> {
    serde_json::from_value(source.config().clone()).map_err(|e| {
        EngineError::InvalidModel(format!("config.json does not describe a {arch} model: {e}"))
    })
}
