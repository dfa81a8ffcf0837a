//! The web platforms as an [`Engine`], for commands that want a model's outputs rather than a
//! measurement (`ipfs-accelerate run`): each `Session::run` is one inference of one ONNX graph
//! in a fresh page: the model's single-graph export, or the CLIP tower the inputs are for.
//! Benchmarks do not come through here: the harness drives a [`crate::WebTarget`], whose
//! iterations the page times itself, with no WebDriver round trip inside a sample.

pub use crate::seq2seq::PageSeq2Seq;
use crate::{is_web_platform, model_parts, BrowserError, WebBench, WebOptions, ENGINE_NAME};
use ia_engine::exported_seq2seq::{seq2seq_files, ExportedT5, ExportedWhisper, COUNTED_PARTS};
use ia_engine::features::GraphFeeds;
use ia_engine::whisper::WhisperSession;
use ia_engine::{
    Capability, Engine, EngineError, HostTensor, Inputs, Outputs, Placement, Precision, Session,
    SessionInfo, SpeechRecognizer, TextGenerator,
};
use ia_hardware::Platform;
use ia_models::{Model, ModelClass};
use std::path::PathBuf;
use std::sync::Arc;

/// onnxruntime-web in headless Chromium, one page per inference.
#[derive(Debug, Default)]
pub struct WebEngine {
    options: WebOptions,
}

impl WebEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// With a longer limit per browser step: a software WebGPU adapter takes minutes for a
    /// real Whisper encoder.
    pub fn with_options(options: WebOptions) -> Self {
        Self { options }
    }
}

/// The graph inputs a single-graph export may declare; the page feeds those the graph has.
const GRAPH_INPUTS: [&str; 8] = [
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "pixel_values",
    "pixel_mask",
    "input_values",
    "input_features",
    "is_longer",
];

impl Engine for WebEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn version(&self) -> String {
        WebBench::new(WebOptions::default()).engine_version()
    }

    fn supports(&self, class: ModelClass, on: Platform, to: Capability) -> Result<(), EngineError> {
        let (platform, capability) = (on, to);
        if !is_web_platform(platform) {
            return Err(EngineError::Unsupported(format!(
                "{ENGINE_NAME} runs on wasm, webgpu and webnn, not {platform}"
            )));
        }
        match capability {
            Capability::Run
                if matches!(
                    class,
                    ModelClass::Bert
                        | ModelClass::Vit
                        | ModelClass::Clip
                        | ModelClass::Clap
                        | ModelClass::Wav2vec2
                        | ModelClass::Detr
                        | ModelClass::Whisper
                ) =>
            {
                Ok(())
            }
            Capability::Run => Err(EngineError::Unsupported(format!(
                "{} in the browser runs only as a benchmark (`bench --hardware {platform}`): \
                 single inferences here take BERT, ViT, CLIP, CLAP, Wav2Vec2, DETR and Whisper exports",
                class.as_str()
            ))),
            // CTC transcription is a forward pass and the shared decoding (ia_engine::ctc);
            // Whisper and T5 decode in Rust over their export kept in a page (crate::seq2seq).
            Capability::Transcribe if matches!(class, ModelClass::Wav2vec2 | ModelClass::Whisper) => {
                Ok(())
            }
            Capability::Generate if class == ModelClass::T5 => Ok(()),
            _ => Err(EngineError::Unsupported(format!(
                "{ENGINE_NAME} outside a benchmark runs forward passes, Wav2Vec2 and Whisper \
                 transcription and T5 generation; {} cannot {}",
                class.as_str(),
                match capability {
                    Capability::Generate => "generate here",
                    Capability::Transcribe => "transcribe",
                    Capability::Run => "run",
                }
            ))),
        }
    }

    fn load(&self, model: &Model, at: Placement) -> Result<Box<dyn Session>, EngineError> {
        self.supports(model.class, at.platform, Capability::Run)?;
        if model.class == ModelClass::Whisper {
            return Ok(Box::new(self.whisper(model, at)?));
        }
        let parts = model_parts(&model.source, model.class).map_err(EngineError::Unsupported)?;
        let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
        let (bench, info) = self.page(model, at, &parts, &names)?;
        Ok(Box::new(WebSession {
            bench,
            platform: at.platform,
            feeds: GraphFeeds::for_model(model)?,
            logit_scale: ia_engine::towers::logit_scale(model)?,
            parts,
            info,
        }))
    }

    fn load_speech_recognizer(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<Box<dyn SpeechRecognizer>, EngineError> {
        match model.class {
            ModelClass::Whisper => Ok(Box::new(self.whisper(model, at)?)),
            _ => ia_engine::ctc::load_recognizer(self, model, at),
        }
    }

    fn load_generator(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<Box<dyn TextGenerator>, EngineError> {
        self.supports(model.class, at.platform, Capability::Generate)?;
        let (page, info) = self.seq2seq(model, at)?;
        Ok(Box::new(ExportedT5::new(page, model, info)?))
    }
}

impl WebEngine {
    /// A browser for `model` at `at` once the checks every load makes pass (f32, the browser
    /// and onnxruntime-web installed, the platform available), and what to record: the
    /// parameters of the checkpoint, or of the `counted` graphs of `files`.
    fn page(
        &self,
        model: &Model,
        at: Placement,
        files: &[(String, PathBuf)],
        counted: &[&str],
    ) -> Result<(WebBench, SessionInfo), EngineError> {
        let (platform, precision) = (at.platform, at.precision);
        if precision != Precision::F32 {
            return Err(EngineError::Unsupported(format!(
                "the ONNX exports run in f32 on {ENGINE_NAME}, not {precision}"
            )));
        }
        let parameter_count = ia_engine::memory::parts_parameters(&model.source, files, counted)?;
        let mut bench = WebBench::new(self.options);
        let status = match bench.host() {
            Ok(host) => host.platform_status(platform),
            Err(BrowserError::NotInstalled(reason)) => {
                return Err(EngineError::Unsupported(reason.clone()))
            }
            Err(e) => return Err(EngineError::Runtime(e.to_string())),
        };
        if !status.available {
            return Err(EngineError::Unsupported(status.detail));
        }
        crate::find_ort_web().map_err(EngineError::Unsupported)?;
        let info = SessionInfo {
            engine: ENGINE_NAME.into(),
            engine_version: bench.engine_version(),
            platform,
            device: status.devices.first().cloned().unwrap_or_default(),
            precision,
            weights: model.source.weights_kind(),
            parameter_count,
            output_names: vec![],
        };
        Ok((bench, info))
    }

    /// An encoder-decoder export (Whisper, T5) loaded in one page that keeps its caches.
    fn seq2seq(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<(PageSeq2Seq, SessionInfo), EngineError> {
        let files = seq2seq_files(&model.source)?;
        let (bench, mut info) = self.page(model, at, &files, &COUNTED_PARTS)?;
        info.output_names = vec!["logits".into()];
        let options = bench.options;
        let host = bench
            .into_host()
            .map_err(|e| EngineError::Runtime(e.to_string()))?;
        let page = PageSeq2Seq::open(Arc::new(host), at.platform, &files, model.config(), options)?;
        Ok((page, info))
    }

    /// Whisper in a page under the one Whisper decoding.
    fn whisper(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<WhisperSession<ExportedWhisper<PageSeq2Seq>>, EngineError> {
        let (whisper, info) = self.whisper_model(model, at)?;
        WhisperSession::new(whisper, &model.source, info)
    }

    /// Whisper's export in a page as a [`ia_engine::whisper::WhisperModel`] (encoder and
    /// decoder calls; the parity tests compare them with transformers), and what to record.
    pub fn whisper_model(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<(ExportedWhisper<PageSeq2Seq>, SessionInfo), EngineError> {
        self.supports(model.class, at.platform, Capability::Transcribe)?;
        let (page, mut info) = self.seq2seq(model, at)?;
        info.output_names = vec!["sequences".into()];
        Ok((ExportedWhisper::new(page, model.config())?, info))
    }
}

struct WebSession {
    bench: WebBench,
    platform: Platform,
    /// The graphs by part name: "model", or CLIP's "text_model" and "vision_model".
    parts: Vec<(String, PathBuf)>,
    feeds: GraphFeeds,
    logit_scale: Option<f32>,
    info: SessionInfo,
}

impl Session for WebSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> Result<Outputs, EngineError> {
        let file = ia_engine::towers::part_for(&mut self.parts, inputs)?;
        let feeds = GRAPH_INPUTS
            .iter()
            .filter_map(|&name| Some((name.to_string(), self.feeds.input(inputs, name).ok()?)))
            .collect();
        let outputs = self
            .bench
            .run_graph(self.platform, file, feeds)
            .map_err(|e| EngineError::Runtime(e.to_string()))?;
        let scale = self
            .logit_scale
            .map(|s| ("logit_scale".to_string(), (vec![1], vec![s])));
        Ok(Outputs {
            tensors: outputs
                .into_iter()
                .chain(scale)
                .map(|(name, (shape, data))| {
                    (
                        name,
                        Box::new(HostTensor { shape, data }) as Box<dyn ia_engine::OutputTensor>,
                    )
                })
                .collect(),
        })
    }
}
