//! The web platforms as an [`Engine`], for commands that want a model's outputs rather than a
//! measurement (`ipfs-accelerate run`): each `Session::run` is one inference of one ONNX graph
//! in a fresh page: the model's single-graph export, or the CLIP tower the inputs are for.
//! Benchmarks do not come through here: the harness drives a [`crate::WebTarget`], whose
//! iterations the page times itself, with no WebDriver round trip inside a sample.

use crate::{is_web_platform, model_parts, BrowserError, WebBench, WebOptions, ENGINE_NAME};
use ia_engine::features::GraphFeeds;
use ia_engine::{
    Capability, Engine, EngineError, HostTensor, Inputs, Outputs, Placement, Precision, Session,
    SessionInfo,
};
use ia_hardware::Platform;
use ia_models::{Model, ModelClass};
use std::path::PathBuf;

/// onnxruntime-web in headless Chromium, one page per inference.
#[derive(Debug, Default)]
pub struct WebEngine;

impl WebEngine {
    pub fn new() -> Self {
        Self
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
                ) =>
            {
                Ok(())
            }
            Capability::Run => Err(EngineError::Unsupported(format!(
                "{} in the browser runs only as a benchmark (`bench --hardware {platform}`): \
                 single inferences here take BERT, ViT, CLIP, CLAP, Wav2Vec2 and DETR exports",
                class.as_str()
            ))),
            // CTC transcription is a forward pass and the shared decoding (ia_engine::ctc).
            Capability::Transcribe if class == ModelClass::Wav2vec2 => Ok(()),
            _ => Err(EngineError::Unsupported(format!(
                "{ENGINE_NAME} outside a benchmark only runs forward passes and CTC transcription"
            ))),
        }
    }

    fn load(&self, model: &Model, at: Placement) -> Result<Box<dyn Session>, EngineError> {
        let (source, class, platform, precision) =
            (&model.source, model.class, at.platform, at.precision);
        self.supports(class, platform, Capability::Run)?;
        if precision != Precision::F32 {
            return Err(EngineError::Unsupported(format!(
                "the ONNX exports run in f32 on {ENGINE_NAME}, not {precision}"
            )));
        }
        let parts = model_parts(source, class).map_err(EngineError::Unsupported)?;
        let logit_scale = ia_engine::towers::logit_scale(model)?;
        let mut bench = WebBench::new(WebOptions::default());
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
            weights: source.weights_kind(),
            parameter_count: parts
                .iter()
                .map(|(_, file)| ia_models::graph_weights::parameter_count(source, file))
                .sum::<Result<u64, _>>()
                .map_err(|e| EngineError::InvalidModel(e.to_string()))?,
            output_names: vec![],
        };
        Ok(Box::new(WebSession {
            bench,
            platform,
            feeds: GraphFeeds::for_model(model)?,
            parts,
            logit_scale,
            info,
        }))
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
        let part = ia_engine::towers::part_for(self.parts.iter().map(|(n, _)| n.as_str()), inputs)?;
        let file = &self
            .parts
            .iter()
            .find(|(n, _)| n == part)
            .expect("a listed part")
            .1;
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
