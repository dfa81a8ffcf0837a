//! Whisper exported as graphs in Optimum's three-file layout (scripts/export_onnx_fixtures.py
//! writes it; Optimum's and onnx-community's exports use the same names):
//!
//! * `encoder_model.onnx`: `input_features` [batch, mel bins, frames] -> `last_hidden_state`;
//! * `decoder_model.onnx`, the first call: `input_ids`, `encoder_hidden_states` -> `logits`,
//!   `present.{i}.decoder.key|value` (self-attention) and `present.{i}.encoder.key|value`
//!   (cross-attention, computed once here);
//! * `decoder_with_past_model.onnx`, every later call: `input_ids` and
//!   `past_key_values.{i}.decoder|encoder.key|value` -> `logits`, `present.{i}.decoder.key|value`.
//!
//! The bookkeeping (caches between calls, beam reordering, the last position's logits) lives
//! here once, as [`ExportedWhisper`], a [`WhisperModel`] that the one Whisper decoding
//! ([`crate::whisper`]) drives; a runtime only implements [`GraphParts`]: run one named graph.

use crate::inputs::GraphInput;
use crate::seq2seq::Seq2SeqDecoder;
use crate::whisper::WhisperModel;
use crate::{EngineError, HostTensor};
use ia_models::ModelSource;
use std::path::PathBuf;

/// The graphs of a Whisper export, by part name (the file is `onnx/<part>.onnx`).
pub const WHISPER_PARTS: [&str; 3] = ["encoder_model", "decoder_model", "decoder_with_past_model"];

/// A runtime's side: the graphs of one export, loaded, each run on named inputs.
pub trait GraphParts: Send {
    /// Runs graph `part` on `feeds`; every output by name, copied to the host as f32.
    fn run_part(
        &mut self,
        part: &str,
        feeds: Vec<(String, GraphInput<'_>)>,
    ) -> Result<Vec<(String, HostTensor)>, EngineError>;
}

/// The files of a Whisper export in a checkpoint, by part name; a clear error naming the first
/// one missing.
pub fn whisper_files(source: &ModelSource) -> Result<Vec<(String, PathBuf)>, EngineError> {
    let ModelSource::Checkpoint(c) = source else {
        return Err(EngineError::Unsupported(
            "Whisper on a graph runtime needs an ONNX export; random-weight models have none"
                .into(),
        ));
    };
    let files: Vec<(String, PathBuf)> = WHISPER_PARTS
        .iter()
        .map(|p| (p.to_string(), c.dir.join("onnx").join(format!("{p}.onnx"))))
        .collect();
    if let Some((_, missing)) = files.iter().find(|(_, f)| !f.is_file()) {
        return Err(EngineError::Unsupported(format!(
            "{}: no ONNX export of Whisper ({} is missing; scripts/export_onnx_fixtures.py \
             --whisper DIR writes encoder_model, decoder_model and decoder_with_past_model)",
            c.dir.display(),
            missing.display()
        )));
    }
    Ok(files)
}

/// Whisper over a runtime's graphs, with its caches on the host between calls.
pub struct ExportedWhisper<P> {
    parts: P,
    max_target_positions: usize,
    max_source_positions: usize,
    /// The encoder's output for each decoding row, until the first decoder call.
    encoded: Option<HostTensor>,
    /// `past_key_values.*` by name, as the last call returned them (batch first).
    cache: Vec<(String, HostTensor)>,
}

impl<P: GraphParts> ExportedWhisper<P> {
    pub fn new(parts: P, config: &serde_json::Value) -> Result<Self, EngineError> {
        let number = |key: &str| {
            config
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .map(|n| n as usize)
                .ok_or_else(|| EngineError::InvalidModel(format!("config.json has no {key}")))
        };
        Ok(Self {
            parts,
            max_target_positions: number("max_target_positions")?,
            max_source_positions: number("max_source_positions")?,
            encoded: None,
            cache: Vec::new(),
        })
    }

    fn take(
        outputs: &mut Vec<(String, HostTensor)>,
        name: &str,
    ) -> Result<HostTensor, EngineError> {
        let at = outputs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| EngineError::InvalidModel(format!("the export has no output {name}")))?;
        Ok(outputs.swap_remove(at).1)
    }
}

fn float(t: &HostTensor) -> GraphInput<'_> {
    GraphInput::Float32 {
        shape: t.shape.clone(),
        data: std::borrow::Cow::Borrowed(&t.data),
    }
}

/// Rows `rows` of a batch-first tensor, in that order.
fn gather(t: &HostTensor, rows: &[usize]) -> HostTensor {
    let per_row = t.data.len() / t.shape[0].max(1);
    let mut shape = t.shape.clone();
    shape[0] = rows.len();
    HostTensor {
        shape,
        data: rows
            .iter()
            .flat_map(|&r| t.data[r * per_row..(r + 1) * per_row].iter().copied())
            .collect(),
    }
}

impl<P: GraphParts> Seq2SeqDecoder for ExportedWhisper<P> {
    fn decode(&mut self, tokens: &[u32], rows: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        if rows == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(rows) {
            return Err(EngineError::InvalidInput(format!(
                "{} tokens do not make {rows} equal rows",
                tokens.len()
            )));
        }
        let ids = GraphInput::Int64 {
            shape: vec![rows, tokens.len() / rows],
            data: tokens.iter().map(|&t| i64::from(t)).collect(),
        };
        let mut outputs = if self.cache.is_empty() {
            let encoded = self.encoded.as_ref().ok_or_else(|| {
                EngineError::Runtime("Whisper decoding started before the encoder ran".into())
            })?;
            let feeds = vec![
                ("input_ids".to_string(), ids),
                ("encoder_hidden_states".to_string(), float(encoded)),
            ];
            self.parts.run_part("decoder_model", feeds)?
        } else {
            let mut feeds = vec![("input_ids".to_string(), ids)];
            feeds.extend(self.cache.iter().map(|(n, t)| (n.clone(), float(t))));
            self.parts.run_part("decoder_with_past_model", feeds)?
        };
        let logits = Self::take(&mut outputs, "logits")?;
        // Every `present.*` replaces its `past_key_values.*`; the cross-attention entries the
        // later graph does not return stay as the first call left them.
        for (name, t) in outputs {
            if let Some(past) = name.strip_prefix("present.") {
                let past = format!("past_key_values.{past}");
                match self.cache.iter_mut().find(|(n, _)| *n == past) {
                    Some(slot) => slot.1 = t,
                    None => self.cache.push((past, t)),
                }
            }
        }
        let [batch, positions, vocab] = logits.shape[..] else {
            return Err(EngineError::Runtime(format!(
                "decoder logits of shape {:?}; expected [rows, tokens, vocab]",
                logits.shape
            )));
        };
        if batch != rows || positions == 0 {
            return Err(EngineError::Runtime(format!(
                "decoder logits of shape {:?} for {rows} rows",
                logits.shape
            )));
        }
        Ok((0..rows)
            .map(|r| {
                let last = (r * positions + positions - 1) * vocab;
                logits.data[last..last + vocab].to_vec()
            })
            .collect())
    }

    fn reorder(&mut self, rows: &[u32]) -> Result<(), EngineError> {
        let rows: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
        for (_, t) in &mut self.cache {
            if let Some(&bad) = rows.iter().find(|&&r| r >= t.shape[0]) {
                return Err(EngineError::Runtime(format!(
                    "beam row {bad} is outside the cache's {} rows",
                    t.shape[0]
                )));
            }
            *t = gather(t, &rows);
        }
        Ok(())
    }
}

impl<P: GraphParts> WhisperModel for ExportedWhisper<P> {
    fn start(
        &mut self,
        features: &[f32],
        windows: usize,
        copies: usize,
    ) -> Result<(), EngineError> {
        let frames = 2 * self.max_source_positions;
        let mel_bins = features.len() / (windows * frames).max(1);
        let feeds = vec![(
            "input_features".to_string(),
            GraphInput::Float32 {
                shape: vec![windows, mel_bins, frames],
                data: std::borrow::Cow::Borrowed(features),
            },
        )];
        let mut outputs = self.parts.run_part("encoder_model", feeds)?;
        let encoded = Self::take(&mut outputs, "last_hidden_state")?;
        // Copies of the whole batch one after another, as the native engine repeats it.
        let order: Vec<usize> = (0..copies).flat_map(|_| 0..windows).collect();
        self.encoded = Some(gather(&encoded, &order));
        self.cache.clear();
        Ok(())
    }

    fn max_target_positions(&self) -> usize {
        self.max_target_positions
    }

    fn max_source_positions(&self) -> usize {
        self.max_source_positions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_gathered_batch_first() {
        let t = HostTensor {
            shape: vec![3, 2],
            data: vec![0., 1., 10., 11., 20., 21.],
        };
        let g = gather(&t, &[2, 0, 2]);
        assert_eq!(g.shape, vec![3, 2]);
        assert_eq!(g.data, vec![20., 21., 0., 1., 20., 21.]);
    }
}
