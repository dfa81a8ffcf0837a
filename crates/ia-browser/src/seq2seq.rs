//! Encoder-decoders (Whisper, T5) in a page: the three graphs of their export
//! (`ia_engine::exported_seq2seq`'s conventions) loaded in one page, which keeps the encoder's
//! output and the caches between calls (`s2sEncode`, `s2sDecode`, `s2sReorder` in
//! page/bench.js), so a decoding step sends token ids and gets the last position's logits
//! back. The decoding itself (Whisper's rules, beam search, T5's generation loop) is the
//! engine-agnostic one in Rust, as on every other engine.

use crate::target::{encode_input, load_parts, step, StepError};
use crate::{BrowserError, WebBench};
use base64::Engine as _;
use ia_engine::exported_seq2seq::{token_rows, Seq2SeqBackend};
use ia_engine::inputs::GraphInput;
use ia_engine::seq2seq::Seq2SeqDecoder;
use ia_engine::EngineError;
use ia_hardware::Platform;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;

/// An encoder-decoder export loaded in a page, owning the browser it runs in.
pub struct PageSeq2Seq {
    bench: WebBench,
}

fn page_error((stage, e): StepError) -> EngineError {
    EngineError::Runtime(format!("{stage}: {e}"))
}

impl PageSeq2Seq {
    /// Loads `files` (the export's parts by name) in a fresh page on `platform`.
    pub fn open(
        mut bench: WebBench,
        platform: Platform,
        files: &[(String, PathBuf)],
    ) -> Result<Self, BrowserError> {
        let timeout = bench.options.step_timeout;
        let host = bench
            .host()
            .map_err(|e| BrowserError::Start(e.to_string()))?;
        load_parts(host, platform, files, false, &[], timeout).map_err(|(_, e)| e)?;
        Ok(Self { bench })
    }

    fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        function: &str,
        arg: Value,
    ) -> Result<T, EngineError> {
        let timeout = self.bench.options.step_timeout;
        let host = self
            .bench
            .host()
            .map_err(|e| EngineError::Runtime(e.to_string()))?;
        step(host, "decode", function, arg, timeout).map_err(page_error)
    }
}

impl Drop for PageSeq2Seq {
    fn drop(&mut self) {
        if let Ok(host) = self.bench.host() {
            host.server.clear_models();
        }
    }
}

#[derive(Deserialize)]
struct Logits {
    dims: Vec<usize>,
    data: String,
}

impl Seq2SeqDecoder for PageSeq2Seq {
    fn decode(&mut self, tokens: &[u32], rows: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        let ids = token_rows(tokens, rows)?;
        let logits: Logits = self.call("s2sDecode", json!({ "ids": encode_input(ids) }))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&logits.data)
            .map_err(|e| EngineError::Runtime(format!("the page's logits: {e}")))?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let [got_rows, vocab] = logits.dims[..] else {
            return Err(EngineError::Runtime(format!(
                "the page's logits have shape {:?}",
                logits.dims
            )));
        };
        if got_rows != rows || values.len() != rows * vocab {
            return Err(EngineError::Runtime(format!(
                "the page returned {} logits of shape {:?} for {rows} rows",
                values.len(),
                logits.dims
            )));
        }
        Ok(values.chunks(vocab).map(<[f32]>::to_vec).collect())
    }

    fn reorder(&mut self, rows: &[u32]) -> Result<(), EngineError> {
        let _: bool = self.call("s2sReorder", json!({ "rows": rows }))?;
        Ok(())
    }
}

impl Seq2SeqBackend for PageSeq2Seq {
    fn encode(
        &mut self,
        feeds: Vec<(String, GraphInput<'_>)>,
        mask: Option<(Vec<usize>, Vec<i64>)>,
        copies: usize,
    ) -> Result<(), EngineError> {
        let feeds: serde_json::Map<String, Value> = feeds
            .into_iter()
            .map(|(name, t)| (name, encode_input(t)))
            .collect();
        let mask = mask.map(|(shape, data)| encode_input(GraphInput::Int64 { shape, data }));
        let _: Vec<usize> = self.call(
            "s2sEncode",
            json!({ "feeds": feeds, "mask": mask, "copies": copies }),
        )?;
        Ok(())
    }
}
