//! The web platforms as an [`Engine`], for commands that want a model's outputs rather than a
//! measurement (`ipfs-accelerate run`): each `Session::run` is one inference of the model's
//! single-graph ONNX export in a fresh page. Benchmarks do not come through here: the page
//! times them itself ([`crate::WebBench`]), with no WebDriver round trip inside a sample.

use crate::{is_web_platform, model_parts, BrowserError, WebBench, WebOptions, ENGINE_NAME};
use ia_engine::{
    Capability, Engine, EngineError, HostTensor, Inputs, Outputs, Precision, Session, SessionInfo,
};
use ia_hardware::Platform;
use ia_models::{classify_config, ModelClass, ModelSource};
use std::path::PathBuf;

/// onnxruntime-web in headless Chromium, one page per inference.
#[derive(Debug, Default)]
pub struct WebEngine;

impl WebEngine {
    pub fn new() -> Self {
        Self
    }
}

/// The graph inputs a single-graph export may declare; the page feeds those it has.
const GRAPH_INPUTS: [&str; 4] = [
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "pixel_values",
];

impl Engine for WebEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn version(&self) -> String {
        WebBench::new(WebOptions::default()).engine_version()
    }

    fn supports(
        &self,
        class: ModelClass,
        platform: Platform,
        capability: Capability,
    ) -> Result<(), EngineError> {
        if !is_web_platform(platform) {
            return Err(EngineError::Unsupported(format!(
                "{ENGINE_NAME} runs on wasm, webgpu and webnn, not {platform}"
            )));
        }
        match capability {
            Capability::Run if matches!(class, ModelClass::Bert | ModelClass::Vit) => Ok(()),
            Capability::Run => Err(EngineError::Unsupported(format!(
                "{} in the browser runs only as a benchmark (`bench --hardware {platform}`): \
                 single inferences here take single-graph BERT and ViT exports",
                class.as_str()
            ))),
            _ => Err(EngineError::Unsupported(format!(
                "{ENGINE_NAME} outside a benchmark only runs forward passes"
            ))),
        }
    }

    fn load(
        &self,
        source: &ModelSource,
        platform: Platform,
        precision: Precision,
    ) -> Result<Box<dyn Session>, EngineError> {
        let class = classify_config(source.config())
            .map_err(|e| EngineError::InvalidModel(e.to_string()))?
            .class;
        self.supports(class, platform, Capability::Run)?;
        if precision != Precision::F32 {
            return Err(EngineError::Unsupported(format!(
                "the ONNX exports run in f32 on {ENGINE_NAME}, not {precision}"
            )));
        }
        let mut parts = model_parts(source, class).map_err(EngineError::Unsupported)?;
        let (_, file) = parts.remove(0);
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
            parameter_count: ia_models::graph_weights::parameter_count(source, &file)
                .map_err(|e| EngineError::InvalidModel(e.to_string()))?,
            output_names: vec![],
        };
        Ok(Box::new(WebSession {
            bench,
            platform,
            file,
            info,
        }))
    }
}

struct WebSession {
    bench: WebBench,
    platform: Platform,
    file: PathBuf,
    info: SessionInfo,
}

impl Session for WebSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> Result<Outputs, EngineError> {
        let feeds = GRAPH_INPUTS
            .iter()
            .filter_map(|&name| Some((name.to_string(), inputs.graph_input(name).ok()?)))
            .collect();
        let outputs = self
            .bench
            .run_graph(self.platform, &self.file, feeds)
            .map_err(|e| EngineError::Runtime(e.to_string()))?;
        Ok(Outputs {
            tensors: outputs
                .into_iter()
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
