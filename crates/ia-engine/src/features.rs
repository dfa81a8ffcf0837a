//! The tensors a model's graph takes, made from [`Inputs`] by the model's own feature
//! extraction. The native engine and every graph runtime (ONNX Runtime, OpenVINO, the browser)
//! call the same code, so an export is fed exactly what the native model sees:
//!
//! * text and images go through [`Inputs::graph_input`] (ids and masks as int64, pixels as
//!   float32, DETR's `pixel_mask` all ones since a batch shares one padded size);
//! * Wav2Vec2's `input_values` are the waveform normalised to zero mean and unit variance per
//!   row when its `preprocessor_config.json` says `do_normalize` (transformers'
//!   `Wav2Vec2FeatureExtractor`), at the sampling rate it declares;
//! * CLAP's `input_features` and `is_longer` come from its feature extractor (fusion views,
//!   [`ClapFrontEnd`]).

use crate::inputs::GraphInput;
use crate::{EngineError, Inputs};
use ia_models::{Model, ModelClass, ModelSource};
use ia_preprocess::audio::ClapFrontEnd;
use std::borrow::Cow;

/// How one model turns [`Inputs`] into the named tensors of its graph.
#[derive(Debug, Clone)]
pub struct GraphFeeds {
    audio: Option<Wav2Vec2Features>,
    clap: Option<ClapFrontEnd>,
}

/// CLAP's feature extractor: the checkpoint's `preprocessor_config.json`, or without one the
/// extractor the LAION checkpoints ship with; it must give what the audio encoder takes.
pub fn clap_front_end(source: &ModelSource) -> Result<ClapFrontEnd, EngineError> {
    let audio = source.config().get("audio_config");
    let mel_bins = audio
        .and_then(|a| a.get("num_mel_bins"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(64) as usize;
    let fusion = audio
        .and_then(|a| a.get("enable_fusion"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let default = serde_json::json!({
        "feature_size": mel_bins, "frequency_min": 50, "frequency_max": 14000,
        "truncation": if fusion { "fusion" } else { "rand_trunc" },
    });
    let front_end = ClapFrontEnd::from_config(source.preprocessor_config().unwrap_or(&default))
        .map_err(|e| EngineError::InvalidModel(e.to_string()))?;
    if front_end.feature_size != mel_bins || front_end.fusion != fusion {
        return Err(EngineError::InvalidModel(format!(
            "the feature extractor gives {} mel bins (fusion {}); the audio encoder takes {mel_bins} (fusion {fusion})",
            front_end.feature_size, front_end.fusion
        )));
    }
    Ok(front_end)
}

impl GraphFeeds {
    /// The feeds of `model`'s class, with what its preprocessor config declares.
    pub fn for_model(model: &Model) -> Result<Self, EngineError> {
        let audio = match model.class {
            ModelClass::Wav2vec2 => Some(Wav2Vec2Features::from_source(&model.source)?),
            _ => None,
        };
        let clap = match model.class {
            ModelClass::Clap => Some(clap_front_end(&model.source)?),
            _ => None,
        };
        Ok(Self { audio, clap })
    }

    /// The graph input `name` made from `inputs`.
    pub fn input<'a>(&self, inputs: &'a Inputs, name: &str) -> Result<GraphInput<'a>, EngineError> {
        match (&self.audio, name) {
            (Some(features), "input_values") => {
                let (batch, samples, values) = features.input_values(inputs)?;
                Ok(GraphInput::Float32 {
                    shape: vec![batch, samples],
                    data: Cow::Owned(values),
                })
            }
            (_, "input_features" | "is_longer") if self.clap.is_some() => {
                self.clap_input(inputs, name)
            }
            _ => inputs.graph_input(name),
        }
    }

    /// CLAP's audio tower inputs: `input_features` [batch, channels, frames, mel bins] and
    /// `is_longer` [batch, 1], as the native engine computes them.
    fn clap_input<'a>(
        &self,
        inputs: &'a Inputs,
        name: &str,
    ) -> Result<GraphInput<'a>, EngineError> {
        let front_end = self.clap.as_ref().expect("checked by the caller");
        let Inputs::Audio { sample_rate, .. } = inputs else {
            return Err(EngineError::InvalidInput(format!(
                "the model wants input '{name}', which these inputs do not provide"
            )));
        };
        if *sample_rate != front_end.sampling_rate {
            return Err(EngineError::InvalidInput(format!(
                "CLAP needs {} Hz audio, got {sample_rate} Hz",
                front_end.sampling_rate
            )));
        }
        let rows = inputs.audio_rows()?;
        let (features, longer) = front_end.batch_features(&rows);
        Ok(if name == "is_longer" {
            GraphInput::Bool {
                shape: vec![rows.len(), 1],
                data: longer,
            }
        } else {
            GraphInput::Float32 {
                shape: vec![
                    rows.len(),
                    front_end.channels(),
                    front_end.frames(),
                    front_end.feature_size,
                ],
                data: Cow::Owned(features),
            }
        })
    }
}

/// Wav2Vec2's feature extractor: per-row normalisation and the sampling rate it expects.
#[derive(Debug, Clone, Copy)]
pub struct Wav2Vec2Features {
    pub normalize: bool,
    pub sampling_rate: u32,
}

impl Wav2Vec2Features {
    /// From `preprocessor_config.json` (transformers' defaults where it is absent).
    pub fn from_source(source: &ModelSource) -> Result<Self, EngineError> {
        let pre = source.preprocessor_config().cloned().unwrap_or_default();
        let invalid = |e: ia_preprocess::PreprocessError| EngineError::InvalidModel(e.to_string());
        let rate = ia_preprocess::audio::config_uint(&pre, "sampling_rate", 16_000, 0..=u64::MAX)
            .map_err(invalid)?;
        Ok(Self {
            normalize: pre
                .get("do_normalize")
                .and_then(|v| v.as_bool())
                .unwrap_or(true),
            sampling_rate: ia_preprocess::audio::check_sample_rate(
                rate,
                "preprocessor config sampling_rate",
            )
            .map_err(invalid)?,
        })
    }

    /// One waveform as the model takes it.
    pub fn row(&self, waveform: &[f32]) -> Vec<f32> {
        if self.normalize {
            ia_preprocess::audio::zero_mean_unit_var(waveform)
        } else {
            waveform.to_vec()
        }
    }

    /// `input_values` of an audio batch: (rows, samples per row, the rows one after another).
    pub fn input_values(&self, inputs: &Inputs) -> Result<(usize, usize, Vec<f32>), EngineError> {
        let Inputs::Audio { sample_rate, .. } = inputs else {
            return Err(EngineError::InvalidInput(
                "Wav2Vec2 takes audio inputs".into(),
            ));
        };
        if *sample_rate != self.sampling_rate {
            return Err(EngineError::InvalidInput(format!(
                "Wav2Vec2 needs {} Hz audio, got {sample_rate} Hz",
                self.sampling_rate
            )));
        }
        let rows = inputs.audio_rows()?;
        let values = rows.iter().flat_map(|r| self.row(r)).collect();
        Ok((rows.len(), rows[0].len(), values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(rate: u32) -> Inputs {
        Inputs::Audio {
            batch: 2,
            sample_rate: rate,
            samples: (0..8).map(|i| i as f32).collect(),
        }
    }

    #[test]
    fn wav2vec2_values_are_normalised_per_row_at_its_rate() {
        let f = Wav2Vec2Features {
            normalize: true,
            sampling_rate: 16_000,
        };
        let (rows, len, v) = f.input_values(&audio(16_000)).unwrap();
        assert_eq!((rows, len), (2, 4));
        // Each row [0,1,2,3] and [4,5,6,7] becomes the same standardised row.
        assert_eq!(v[..4], v[4..]);
        assert!(v[..4].iter().sum::<f32>().abs() < 1e-6);
        let e = f.input_values(&audio(8_000)).unwrap_err();
        assert!(e.to_string().contains("16000 Hz"), "{e}");
        let raw = Wav2Vec2Features {
            normalize: false,
            ..f
        };
        assert_eq!(raw.input_values(&audio(16_000)).unwrap().2[4], 4.0);
    }
}
