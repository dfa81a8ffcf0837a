//! Encoder-decoder models (Whisper, T5) exported as graphs in Optimum's three-file layout
//! (scripts/export_onnx_fixtures.py writes it; Optimum's and onnx-community's exports use the
//! same names):
//!
//! * `encoder_model.onnx`: Whisper's `input_features` [batch, mel bins, frames], or T5's
//!   `input_ids` and `attention_mask` -> `last_hidden_state`;
//! * `decoder_model.onnx`, the first call: `input_ids`, (T5) `encoder_attention_mask`,
//!   `encoder_hidden_states` -> `logits`, `present.{i}.decoder.key|value` (self-attention) and
//!   `present.{i}.encoder.key|value` (cross-attention, computed once here);
//! * `decoder_with_past_model.onnx`, every later call: `input_ids`, (T5)
//!   `encoder_attention_mask` and `past_key_values.{i}.decoder|encoder.key|value` -> `logits`,
//!   `present.{i}.decoder.key|value`.
//!
//! onnx-community's repositories and Optimum's CLI ship the two decoders merged instead:
//! `decoder_model_merged.onnx` (Optimum's CLI names it `decoder_model.onnx` and writes no
//! decoder with past) takes the union of their inputs plus `use_cache_branch` (bool [1]) and
//! runs one or the other. Its first call feeds an empty cache ([rows, heads, 0,
//! head_dim], [`EmptyCache`]); on later calls its cross-attention outputs are placeholders,
//! so the cache the first call returned stays.
//!
//! The bookkeeping (caches between calls, beam reordering, the last position's logits) lives
//! here once, in [`ExportedSeq2Seq`]; [`ExportedWhisper`] is the [`WhisperModel`] the one
//! Whisper decoding ([`crate::whisper`]) drives, [`ExportedT5`] the [`TextGenerator`] the one
//! generation loop drives, both over any [`Seq2SeqBackend`]. A runtime only implements
//! [`GraphParts`]: run one named graph. (The browser is the other backend: there the page
//! keeps the caches, so no cache crosses WebDriver.)

use crate::generation::TextGenerator;
use crate::inputs::GraphInput;
use crate::seq2seq::Seq2SeqDecoder;
use crate::whisper::WhisperModel;
use crate::{EngineError, HostTensor, SessionInfo};
use ia_models::{Model, ModelClass, ModelSource};
use std::path::PathBuf;

/// The graphs of an encoder-decoder export, by part name (the file is `onnx/<part>.onnx`).
pub const SEQ2SEQ_PARTS: [&str; 3] = ["encoder_model", "decoder_model", "decoder_with_past_model"];

/// The two decoders merged into one graph (onnx-community's layout, beside `encoder_model`).
pub const MERGED_DECODER: &str = "decoder_model_merged";

/// The parts whose weights make the model's parameters (the decoder with past shares the
/// decoder's), in either layout.
pub const COUNTED_PARTS: [&str; 3] = ["encoder_model", "decoder_model", MERGED_DECODER];

/// Whether `files` (from [`seq2seq_files`]) are the merged layout.
pub fn is_merged(files: &[(String, PathBuf)]) -> bool {
    files.iter().any(|(part, _)| part == MERGED_DECODER)
}

/// The empty cache of a merged decoder's first call, which its no-cache branch does not read:
/// every `past_key_values.{i}.decoder|encoder.key|value` with no positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmptyCache {
    layers: usize,
    heads: usize,
    head_dim: usize,
}

impl EmptyCache {
    /// The decoder's layers and attention heads from config.json (Whisper's or T5's names).
    pub fn of(config: &serde_json::Value) -> Result<Self, EngineError> {
        let number = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| config.get(*k).and_then(serde_json::Value::as_u64))
                .map(|n| n as usize)
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    EngineError::InvalidModel(format!(
                        "config.json has no {} for the merged decoder's cache",
                        keys.join(" or ")
                    ))
                })
        };
        let heads = number(&["decoder_attention_heads", "num_heads"])?;
        let head_dim = match number(&["d_kv"]) {
            Ok(d) => d,
            Err(_) => number(&["d_model"])? / heads,
        };
        Ok(Self {
            layers: number(&["decoder_layers", "num_decoder_layers", "num_layers"])?,
            heads,
            head_dim,
        })
    }

    /// The feeds of a first call of `rows` rows: the empty cache and `use_cache_branch` off.
    pub fn first_call(&self, rows: usize) -> Vec<(String, GraphInput<'static>)> {
        let mut feeds = vec![use_cache_branch(false)];
        for i in 0..self.layers {
            for part in ["decoder", "encoder"] {
                for kind in ["key", "value"] {
                    feeds.push((
                        format!("past_key_values.{i}.{part}.{kind}"),
                        GraphInput::Float32 {
                            shape: vec![rows, self.heads, 0, self.head_dim],
                            data: Vec::new().into(),
                        },
                    ));
                }
            }
        }
        feeds
    }
}

/// The merged decoder's branch switch: `true` once a cache is fed.
pub fn use_cache_branch(on: bool) -> (String, GraphInput<'static>) {
    (
        "use_cache_branch".to_string(),
        GraphInput::Bool {
            shape: vec![1],
            data: vec![on],
        },
    )
}

/// A runtime's side: the graphs of one export, loaded, each run on named inputs.
pub trait GraphParts: Send {
    /// Runs graph `part` on `feeds`; every output by name, copied to the host as f32.
    fn run_part(
        &mut self,
        part: &str,
        feeds: Vec<(String, GraphInput<'_>)>,
    ) -> Result<Vec<(String, HostTensor)>, EngineError>;
}

/// Whisper and T5: their export is three graphs (or two, merged) that the decoding in Rust
/// calls step by step.
pub fn is_seq2seq(class: ModelClass) -> bool {
    matches!(class, ModelClass::Whisper | ModelClass::T5)
}

/// Every graph file a graph runtime loads for a model, by part name: an encoder-decoder's
/// parts ([`seq2seq_files`]), else the one export or CLIP's and CLAP's towers
/// ([`crate::towers::graph_parts`]).
pub fn export_graphs(
    source: &ModelSource,
    class: ModelClass,
) -> Result<Vec<(String, PathBuf)>, EngineError> {
    if is_seq2seq(class) {
        seq2seq_files(source)
    } else {
        crate::towers::graph_parts(source, class)
    }
}

/// The files of an encoder-decoder export in a checkpoint, by part name; a clear error naming
/// the first one missing.
pub fn seq2seq_files(source: &ModelSource) -> Result<Vec<(String, PathBuf)>, EngineError> {
    let ModelSource::Checkpoint(c) = source else {
        return Err(EngineError::Unsupported(
            "an encoder-decoder on a graph runtime needs an ONNX export; random-weight models \
             have none"
                .into(),
        ));
    };
    let file = |part: &str| c.dir.join("onnx").join(format!("{part}.onnx"));
    let files: Vec<(String, PathBuf)> = SEQ2SEQ_PARTS
        .iter()
        .map(|p| (p.to_string(), file(p)))
        .collect();
    if !files[2].1.is_file() && files[0].1.is_file() {
        // onnx-community's `decoder_model_merged`, or Optimum's CLI, whose `decoder_model`
        // without a decoder with past is the merged graph.
        if let Some(merged) = [file(MERGED_DECODER), file("decoder_model")]
            .into_iter()
            .find(|f| f.is_file())
        {
            return Ok(vec![files[0].clone(), (MERGED_DECODER.to_string(), merged)]);
        }
    }
    if let Some((_, missing)) = files.iter().find(|(_, f)| !f.is_file()) {
        return Err(EngineError::Unsupported(format!(
            "{}: no encoder-decoder ONNX export ({} is missing; scripts/export_onnx_fixtures.py \
             --whisper|--t5 DIR writes encoder_model, decoder_model and decoder_with_past_model; \
             encoder_model with decoder_model_merged loads too)",
            c.dir.display(),
            missing.display()
        )));
    }
    Ok(files)
}

/// Where an encoder-decoder runs and keeps its encoder output and caches between calls.
pub trait Seq2SeqBackend: Seq2SeqDecoder + Send {
    /// Runs the encoder on `feeds` and starts decoding `copies` rows per input row (copies of
    /// the whole batch one after another); `mask` is the encoder's attention mask
    /// ([rows, positions]) where the decoder graphs take one (T5).
    fn encode(
        &mut self,
        feeds: Vec<(String, GraphInput<'_>)>,
        mask: Option<(Vec<usize>, Vec<i64>)>,
        copies: usize,
    ) -> Result<(), EngineError>;

    /// Host time so far (ms, cumulative) spent carrying data to and from a runtime in
    /// another process, outside the runtime's own clock: a browser's WebDriver round trips.
    /// Benchmarks leave it out; 0 for a runtime in this process.
    fn transport_ms(&self) -> f64 {
        0.0
    }
}

/// An encoder-decoder over a runtime's graphs, with its caches on the host between calls.
pub struct ExportedSeq2Seq<P> {
    parts: P,
    /// The encoder's output for each decoding row, until the first decoder call.
    encoded: Option<HostTensor>,
    /// The encoder's attention mask for each decoding row (T5's graphs take it).
    encoder_mask: Option<(Vec<usize>, Vec<i64>)>,
    /// `past_key_values.*` by name, as the last call returned them (batch first).
    cache: Vec<(String, HostTensor)>,
    /// The merged layout's first-call cache; `None` for the three graphs.
    merged: Option<EmptyCache>,
}

impl<P: GraphParts> ExportedSeq2Seq<P> {
    /// Over `parts` of the layout `files` name ([`seq2seq_files`]) for a model of `config`.
    pub fn new(
        parts: P,
        files: &[(String, PathBuf)],
        config: &serde_json::Value,
    ) -> Result<Self, EngineError> {
        Ok(Self {
            parts,
            encoded: None,
            encoder_mask: None,
            cache: Vec::new(),
            merged: if is_merged(files) {
                Some(EmptyCache::of(config)?)
            } else {
                None
            },
        })
    }

    fn mask_feed(&self) -> Option<(String, GraphInput<'static>)> {
        self.encoder_mask.as_ref().map(|(shape, data)| {
            (
                "encoder_attention_mask".to_string(),
                GraphInput::Int64 {
                    shape: shape.clone(),
                    data: data.clone(),
                },
            )
        })
    }
}

impl<P: GraphParts> Seq2SeqBackend for ExportedSeq2Seq<P> {
    fn encode(
        &mut self,
        feeds: Vec<(String, GraphInput<'_>)>,
        mask: Option<(Vec<usize>, Vec<i64>)>,
        copies: usize,
    ) -> Result<(), EngineError> {
        let mut outputs = self.parts.run_part("encoder_model", feeds)?;
        let encoded = take(&mut outputs, "last_hidden_state")?;
        let rows = encoded.shape[0];
        let order: Vec<usize> = (0..copies).flat_map(|_| 0..rows).collect();
        self.encoded = Some(gather(&encoded, &order));
        self.encoder_mask = mask.map(|(mut shape, data)| {
            let data = gather_rows(&data, shape[1], &order);
            shape[0] = order.len();
            (shape, data)
        });
        self.cache.clear();
        Ok(())
    }
}

fn take(outputs: &mut Vec<(String, HostTensor)>, name: &str) -> Result<HostTensor, EngineError> {
    let at = outputs
        .iter()
        .position(|(n, _)| n == name)
        .ok_or_else(|| EngineError::InvalidModel(format!("the export has no output {name}")))?;
    Ok(outputs.swap_remove(at).1)
}

fn float(t: &HostTensor) -> GraphInput<'_> {
    GraphInput::Float32 {
        shape: t.shape.clone(),
        data: std::borrow::Cow::Borrowed(&t.data),
    }
}

/// Rows `rows` (each `per_row` values) of batch-first data, in that order.
fn gather_rows<T: Copy>(data: &[T], per_row: usize, rows: &[usize]) -> Vec<T> {
    rows.iter()
        .flat_map(|&r| data[r * per_row..(r + 1) * per_row].iter().copied())
        .collect()
}

/// Rows `rows` of a batch-first tensor, in that order.
fn gather(t: &HostTensor, rows: &[usize]) -> HostTensor {
    let mut shape = t.shape.clone();
    shape[0] = rows.len();
    HostTensor {
        shape,
        data: gather_rows(&t.data, t.data.len() / t.shape[0].max(1), rows),
    }
}

/// `input_ids` of a decoder call: `tokens` as `rows` rows of equal length, row after row.
pub fn token_rows(tokens: &[u32], rows: usize) -> Result<GraphInput<'static>, EngineError> {
    if rows == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(rows) {
        return Err(EngineError::InvalidInput(format!(
            "{} tokens do not make {rows} equal rows",
            tokens.len()
        )));
    }
    Ok(GraphInput::Int64 {
        shape: vec![rows, tokens.len() / rows],
        data: tokens.iter().map(|&t| i64::from(t)).collect(),
    })
}

impl<P: GraphParts> Seq2SeqDecoder for ExportedSeq2Seq<P> {
    fn decode(&mut self, tokens: &[u32], rows: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut feeds = vec![("input_ids".to_string(), token_rows(tokens, rows)?)];
        feeds.extend(self.mask_feed());
        let first = self.cache.is_empty();
        let encoded = self.encoded.as_ref().ok_or_else(|| {
            EngineError::Runtime("decoding started before the encoder ran".into())
        })?;
        let part = match (&self.merged, first) {
            (None, true) => {
                feeds.push(("encoder_hidden_states".to_string(), float(encoded)));
                "decoder_model"
            }
            (None, false) => {
                feeds.extend(self.cache.iter().map(|(n, t)| (n.clone(), float(t))));
                "decoder_with_past_model"
            }
            // The merged graph declares every input of both branches.
            (Some(empty), true) => {
                feeds.push(("encoder_hidden_states".to_string(), float(encoded)));
                feeds.extend(empty.first_call(rows));
                MERGED_DECODER
            }
            (Some(_), false) => {
                feeds.push(("encoder_hidden_states".to_string(), float(encoded)));
                feeds.push(use_cache_branch(true));
                feeds.extend(self.cache.iter().map(|(n, t)| (n.clone(), float(t))));
                MERGED_DECODER
            }
        };
        let mut outputs = self.parts.run_part(part, feeds)?;
        let logits = take(&mut outputs, "logits")?;
        // Every `present.*` replaces its `past_key_values.*`, except that the cross-attention
        // cache comes from the first call only: later graphs do not return it (or, merged,
        // return placeholders).
        for (name, t) in outputs {
            if !first && name.contains(".encoder.") {
                continue;
            }
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
        if let Some((shape, data)) = &mut self.encoder_mask {
            *data = gather_rows(data, shape[1], &rows);
            shape[0] = rows.len();
        }
        // The merged graph takes the encoder output on every call (its cached branch ignores
        // it, but its batch must match).
        if let (Some(_), Some(encoded)) = (&self.merged, &mut self.encoded) {
            *encoded = gather(encoded, &rows);
        }
        Ok(())
    }
}

/// Whisper over an encoder-decoder backend.
pub struct ExportedWhisper<B> {
    seq: B,
    max_target_positions: usize,
    max_source_positions: usize,
}

fn config_number(config: &serde_json::Value, key: &str) -> Result<usize, EngineError> {
    config
        .get(key)
        .and_then(serde_json::Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| EngineError::InvalidModel(format!("config.json has no {key}")))
}

impl<B: Seq2SeqBackend> ExportedWhisper<B> {
    pub fn new(backend: B, config: &serde_json::Value) -> Result<Self, EngineError> {
        Ok(Self {
            seq: backend,
            max_target_positions: config_number(config, "max_target_positions")?,
            max_source_positions: config_number(config, "max_source_positions")?,
        })
    }
}

impl<B: Seq2SeqBackend> Seq2SeqDecoder for ExportedWhisper<B> {
    fn decode(&mut self, tokens: &[u32], rows: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        self.seq.decode(tokens, rows)
    }

    fn reorder(&mut self, rows: &[u32]) -> Result<(), EngineError> {
        self.seq.reorder(rows)
    }
}

impl<B: Seq2SeqBackend> WhisperModel for ExportedWhisper<B> {
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
        self.seq.encode(feeds, None, copies)
    }

    fn max_target_positions(&self) -> usize {
        self.max_target_positions
    }

    fn max_source_positions(&self) -> usize {
        self.max_source_positions
    }
}

/// T5 over an encoder-decoder backend: the encoder once per prompt batch, then the decoder
/// from its start token one token per step, as the native engine's T5 generates.
pub struct ExportedT5<B> {
    seq: B,
    decoder_start: u32,
    max_context: usize,
    info: SessionInfo,
    eos: Vec<u32>,
}

impl<B: Seq2SeqBackend> ExportedT5<B> {
    pub fn new(backend: B, model: &Model, info: SessionInfo) -> Result<Self, EngineError> {
        let config = model.config();
        let start = config
            .get("decoder_start_token_id")
            .and_then(serde_json::Value::as_u64)
            .map_or_else(|| config_number(config, "pad_token_id"), |n| Ok(n as usize))?;
        Ok(Self {
            seq: backend,
            decoder_start: u32::try_from(start).map_err(|_| {
                EngineError::InvalidModel("config.json decoder start token is out of range".into())
            })?,
            // Relative positions put no hard limit on T5; n_positions is what it was trained with.
            max_context: config
                .get("n_positions")
                .and_then(serde_json::Value::as_u64)
                .map_or(512, |n| n as usize),
            info,
            eos: model.source.eos_tokens(),
        })
    }
}

impl<B: Seq2SeqBackend> TextGenerator for ExportedT5<B> {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn transport_ms(&self) -> f64 {
        self.seq.transport_ms()
    }

    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        Ok(self.prefill_batch(&[prompt.to_vec()])?.remove(0))
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>, EngineError> {
        Ok(self.step_batch(&[token])?.remove(0))
    }

    fn prefill_batch(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let len = crate::generation::equal_length_batch(prompts)?;
        let shape = vec![prompts.len(), len];
        let ids: Vec<i64> = prompts.iter().flatten().map(|&t| i64::from(t)).collect();
        let mask = vec![1i64; ids.len()];
        let feeds = vec![
            (
                "input_ids".to_string(),
                GraphInput::Int64 {
                    shape: shape.clone(),
                    data: ids,
                },
            ),
            (
                "attention_mask".to_string(),
                GraphInput::Int64 {
                    shape: shape.clone(),
                    data: mask.clone(),
                },
            ),
        ];
        self.seq.encode(feeds, Some((shape, mask)), 1)?;
        self.seq
            .decode(&vec![self.decoder_start; prompts.len()], prompts.len())
    }

    fn step_batch(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.seq.decode(tokens, tokens.len())
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn eos_tokens(&self) -> Vec<u32> {
        self.eos.clone()
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
