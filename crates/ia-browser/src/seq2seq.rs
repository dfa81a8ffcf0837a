//! Encoder-decoders (Whisper, T5) in a page: the three graphs of their export
//! (`ia_engine::exported_seq2seq`'s conventions) loaded in one page, which keeps the encoder's
//! output and the caches between calls (`s2sEncode`, `s2sDecode`, `s2sReorder` in
//! page/bench.js), so a decoding step sends token ids and gets the last position's logits
//! back. The decoding itself (Whisper's rules, beam search, T5's generation loop) is the
//! engine-agnostic one in Rust, as on every other engine.

use crate::target::WebWork;
use crate::target::{encode_input, load_parts, step, StepError, WebOptions};
use crate::BrowserHost;
use base64::Engine as _;
use ia_engine::exported_seq2seq::{
    is_merged, token_rows, use_cache_branch, EmptyCache, ExportedT5, ExportedWhisper,
    Seq2SeqBackend,
};
use ia_engine::generation::generate_batch_greedy;
use ia_engine::inputs::GraphInput;
use ia_engine::seq2seq::Seq2SeqDecoder;
use ia_engine::whisper::WhisperSession;
use ia_engine::{EngineError, GenerationTiming, Inputs, Session, SessionInfo, TimedIterations};
use ia_hardware::Platform;
use ia_models::Model;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An encoder-decoder export loaded in a page of a browser it shares (with the benchmark's
/// target that loaded it, which reads the browser's details).
pub struct PageSeq2Seq {
    host: Arc<BrowserHost>,
    timeout: Duration,
    transport: TransportMeter,
    /// The merged layout's first-call cache; `None` for the three graphs.
    merged: Option<EmptyCache>,
    /// No decoder call since the encoder ran.
    first: bool,
}

/// The host time of the page calls beyond the page's own time of them (`ms` in each answer):
/// WebDriver's round trip and the base64 of ids and logits. Cumulative, in nanoseconds;
/// shared, so that a benchmark can leave it out of the iterations it times.
#[derive(Debug, Clone, Default)]
pub struct TransportMeter(Arc<AtomicU64>);

impl TransportMeter {
    pub fn total_ms(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 / 1e6
    }

    fn add(&self, host: Duration, page_ms: f64) {
        let outside = host.as_secs_f64() * 1e3 - page_ms;
        self.0
            .fetch_add((outside.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }
}

fn page_error((stage, e): StepError) -> EngineError {
    EngineError::Runtime(format!("{stage}: {e}"))
}

impl PageSeq2Seq {
    /// Loads `files` (the export's parts by name, [`ia_engine::exported_seq2seq::seq2seq_files`])
    /// of a model of `config` in a fresh page of `host` on `platform`.
    pub fn open(
        host: Arc<BrowserHost>,
        platform: Platform,
        files: &[(String, PathBuf)],
        config: &Value,
        options: WebOptions,
    ) -> Result<Self, EngineError> {
        let timeout = options.step_timeout;
        load_parts(&host, platform, files, false, &[], options)
            .map_err(|(_, e)| EngineError::Runtime(e.to_string()))?;
        Self::loaded(host, files, config, timeout)
    }

    /// Over the export (`files`) the page of `host` has already loaded.
    pub(crate) fn loaded(
        host: Arc<BrowserHost>,
        files: &[(String, PathBuf)],
        config: &Value,
        timeout: Duration,
    ) -> Result<Self, EngineError> {
        Ok(Self {
            host,
            timeout,
            transport: TransportMeter::default(),
            merged: if is_merged(files) {
                Some(EmptyCache::of(config)?)
            } else {
                None
            },
            first: true,
        })
    }

    pub fn transport(&self) -> TransportMeter {
        self.transport.clone()
    }

    /// Calls `function` of the page; its answer, and its `ms`, which the transport meter
    /// takes from the call's host time.
    fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        function: &str,
        arg: Value,
    ) -> Result<T, EngineError> {
        let start = Instant::now();
        let answer: Value =
            step(&self.host, "decode", function, arg, self.timeout).map_err(page_error)?;
        let invalid = |e: serde_json::Error| {
            EngineError::Runtime(format!("{function} answered unexpectedly: {e}"))
        };
        // Read before the answer moves into `T` (a copy would copy the logits).
        let ms = answer.get("ms").and_then(Value::as_f64).ok_or_else(|| {
            EngineError::Runtime(format!("{function} answered without its page time (ms)"))
        })?;
        let value = serde_json::from_value(answer).map_err(invalid)?;
        self.transport.add(start.elapsed(), ms);
        Ok(value)
    }
}

impl Drop for PageSeq2Seq {
    fn drop(&mut self) {
        self.host.server.clear_models();
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
        let extra: serde_json::Map<String, Value> = match &self.merged {
            Some(empty) if self.first => empty.first_call(rows),
            Some(_) => vec![use_cache_branch(true)],
            None => Vec::new(),
        }
        .into_iter()
        .map(|(name, t)| (name, encode_input(t)))
        .collect();
        let logits: Logits = self.call(
            "s2sDecode",
            json!({ "ids": encode_input(ids), "extra": extra }),
        )?;
        self.first = false;
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
        let _: Value = self.call("s2sReorder", json!({ "rows": rows }))?;
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
        let _: Value = self.call(
            "s2sEncode",
            json!({ "feeds": feeds, "mask": mask, "copies": copies }),
        )?;
        self.first = true;
        Ok(())
    }

    fn transport_ms(&self) -> f64 {
        self.transport.total_ms()
    }
}

/// A benchmark's iterations of an encoder-decoder in a page: one transcription (Whisper) or
/// one greedy generation (T5) each, by the engine-agnostic decoding in Rust. A sample is the
/// host's time of the iteration less the transport of its page calls ([`TransportMeter`]):
/// the page's work and the decoding between calls, as if the decoding ran in the page.
pub(crate) struct Seq2SeqTarget {
    work: Seq2SeqWork,
    transport: TransportMeter,
}

enum Seq2SeqWork {
    Transcribe {
        session: Box<WhisperSession<ExportedWhisper<PageSeq2Seq>>>,
        inputs: Inputs,
    },
    Generate {
        model: Box<ExportedT5<PageSeq2Seq>>,
        prompts: Vec<Vec<u32>>,
        new_tokens: usize,
    },
}

impl Seq2SeqTarget {
    pub(crate) fn new(
        page: PageSeq2Seq,
        model: &Model,
        work: WebWork<'_>,
        info: SessionInfo,
    ) -> Result<Self, EngineError> {
        let transport = page.transport();
        let work = match work {
            WebWork::Forward { inputs, .. } => {
                let [inputs] = inputs else {
                    return Err(EngineError::InvalidInput(
                        "a transcription takes one batch of audio".into(),
                    ));
                };
                let whisper = ExportedWhisper::new(page, model.config())?;
                Seq2SeqWork::Transcribe {
                    session: Box::new(WhisperSession::new(whisper, &model.source, info)?),
                    inputs: inputs.clone(),
                }
            }
            WebWork::Generation {
                prompt,
                batch,
                new_tokens,
            } => Seq2SeqWork::Generate {
                model: Box::new(ExportedT5::new(page, model, info)?),
                prompts: vec![prompt.to_vec(); batch],
                new_tokens,
            },
        };
        Ok(Self { work, transport })
    }

    pub(crate) fn run_timed(&mut self, iterations: usize) -> Result<TimedIterations, EngineError> {
        let since = |start: Instant, moved: f64, transport: &TransportMeter| {
            start.elapsed().as_secs_f64() * 1e3 - (transport.total_ms() - moved)
        };
        let mut samples_ms = Vec::with_capacity(iterations);
        let mut generations = Vec::new();
        let (start, moved) = (Instant::now(), self.transport.total_ms());
        for _ in 0..iterations {
            let (t, m) = (Instant::now(), self.transport.total_ms());
            match &mut self.work {
                Seq2SeqWork::Transcribe { session, inputs } => {
                    session.run(inputs)?;
                }
                Seq2SeqWork::Generate {
                    model,
                    prompts,
                    new_tokens,
                } => {
                    let (_, stats) = generate_batch_greedy(model.as_mut(), prompts, *new_tokens)?;
                    generations.push(GenerationTiming::from(&stats));
                }
            }
            samples_ms.push(since(t, m, &self.transport));
        }
        Ok(TimedIterations {
            samples_ms,
            duration_ms: since(start, moved, &self.transport),
            generations,
        })
    }
}
