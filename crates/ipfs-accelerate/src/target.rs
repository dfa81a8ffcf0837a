//! Where a command runs a model: a platform and the engine that drives it, as `--hardware`
//! names them (`cpu`, `onnxruntime:cuda`, `openvino`, `webgpu`, ...).

use crate::plan::{resolve_model, PlanOptions};
use ia_engine::{Engine, Placement, Precision};
use ia_hardware::Platform;

/// The engines the CLI can drive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EngineKind {
    Native,
    OnnxRuntime,
    OpenVino,
    /// onnxruntime-web in a headless browser (ia-browser): the wasm, webgpu and webnn
    /// platforms.
    Browser,
}

/// Where a combination runs: a platform, and the engine that drives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub platform: Platform,
    pub engine: EngineKind,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let (platform, engine) = match s.split_once(':') {
            Some(("onnxruntime" | "ort", platform)) => (
                platform
                    .parse::<Platform>()
                    .map_err(|e| format!("{e} (after onnxruntime:)"))?,
                EngineKind::OnnxRuntime,
            ),
            Some(_) => {
                return Err(format!(
                    "unknown target '{s}' (engine:platform is onnxruntime:<platform>)"
                ))
            }
            None => match s.as_str() {
                "onnxruntime" | "ort" => (Platform::Cpu, EngineKind::OnnxRuntime),
                "openvino" => (Platform::Openvino, EngineKind::OpenVino),
                "webgpu" => (Platform::Webgpu, EngineKind::Browser),
                "webnn" => (Platform::Webnn, EngineKind::Browser),
                "wasm" => (Platform::Wasm, EngineKind::Browser),
                other => (
                    other
                        .parse::<Platform>()
                        .map_err(|e| format!("{e} (or onnxruntime[:<platform>], openvino)"))?,
                    EngineKind::Native,
                ),
            },
        };
        Ok(Target { platform, engine })
    }
}

/// One instance of each engine, for commands that run several targets.
pub struct Engines {
    native: ia_native::NativeEngine,
    ort: ia_ort::OrtEngine,
    openvino: ia_openvino::OpenVinoEngine,
}

impl Engines {
    pub fn new() -> Self {
        Self {
            native: ia_native::NativeEngine::new(),
            ort: ia_ort::OrtEngine::new(),
            openvino: ia_openvino::OpenVinoEngine::new(),
        }
    }

    /// Every in-process engine.
    pub fn all(&self) -> [&dyn Engine; 3] {
        [&self.native, &self.ort, &self.openvino]
    }

    /// The in-process engine of `kind`; the browser is not one (`ia_browser::WebBench`
    /// drives it).
    pub fn get(&self, kind: EngineKind) -> Option<&dyn Engine> {
        match kind {
            EngineKind::Native => Some(&self.native),
            EngineKind::OnnxRuntime => Some(&self.ort),
            EngineKind::OpenVino => Some(&self.openvino),
            EngineKind::Browser => None,
        }
    }
}

/// The model a command runs and where: the flags `run` and `generate` share.
#[derive(clap::Args)]
pub struct ModelOnTarget {
    /// Catalog key, hub id in the local caches, or checkpoint folder
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Where to run: cpu (native engine), onnxruntime[:<platform>] or openvino (the
    /// checkpoint's ONNX export), as bench takes it; wasm, webgpu or webnn (onnxruntime-web
    /// in headless Chromium) for `run`
    #[arg(long, default_value = "cpu")]
    pub hardware: Target,
    /// Use the small variant of a catalog entry
    #[arg(long)]
    pub small_models: bool,
    #[command(flatten)]
    pub web: WebArgs,
}

/// How the browser runs the web platforms: the flags `bench`, `run` and `generate` share.
#[derive(clap::Args)]
pub struct WebArgs {
    /// Web platforms: seconds each browser step (start, load, one inference or one decoding
    /// call) may take; bench's timed loop gets more in proportion
    #[arg(long, default_value_t = 180, value_parser = crate::limits::count_u64((1, crate::limits::MAX_SECONDS as u64)))]
    pub browser_timeout: u64,
    /// Web platforms: WebAssembly threads of onnxruntime-web [default: its own choice, half
    /// the logical CPUs up to 4, which leaves the page's other threads a core]
    #[arg(long, value_parser = crate::limits::count_u64((1, 256)))]
    pub wasm_threads: Option<u64>,
}

impl WebArgs {
    pub fn options(&self) -> ia_browser::WebOptions {
        ia_browser::WebOptions {
            step_timeout: std::time::Duration::from_secs(self.browser_timeout),
            // At most 256 (the parser's range).
            wasm_threads: self.wasm_threads.map(|n| n as u32),
        }
    }
}

impl ModelOnTarget {
    /// The model, resolved once (trained weights: `run` and `generate` never use random ones).
    pub fn resolve(&self) -> anyhow::Result<ia_models::Model> {
        let opts = PlanOptions {
            small: self.small_models,
            random_weights: false,
            seed: 0,
        };
        resolve_model(&self.model, &opts)
    }

    pub fn placement(&self) -> Placement {
        Placement::new(self.hardware.platform, self.precision)
    }

    /// The browser engine, for the web platforms.
    pub fn web_engine(&self) -> ia_browser::WebEngine {
        ia_browser::WebEngine::with_options(self.web.options())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_an_engine_and_a_platform() {
        let t = |s: &str| s.parse::<Target>().map(|t| (t.platform, t.engine));
        assert_eq!(t("cpu"), Ok((Platform::Cpu, EngineKind::Native)));
        assert_eq!(t("ort"), Ok((Platform::Cpu, EngineKind::OnnxRuntime)));
        assert_eq!(
            t("onnxruntime:cuda"),
            Ok((Platform::Cuda, EngineKind::OnnxRuntime))
        );
        assert_eq!(
            t("openvino"),
            Ok((Platform::Openvino, EngineKind::OpenVino))
        );
        assert_eq!(t("webgpu"), Ok((Platform::Webgpu, EngineKind::Browser)));
        assert_eq!(t("wasm"), Ok((Platform::Wasm, EngineKind::Browser)));
        assert!(t("onnxruntime:tpu").is_err());
        assert!(t("tensorrt:cuda")
            .unwrap_err()
            .contains("onnxruntime:<platform>"));
    }
}
