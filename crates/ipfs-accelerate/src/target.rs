//! Where a command runs a model: a platform and the engine that drives it, as `--hardware`
//! names them (`cpu`, `onnxruntime:cuda`, `openvino`, ...).

use ia_engine::Engine;
use ia_hardware::Platform;

/// The engines the CLI can drive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EngineKind {
    Native,
    OnnxRuntime,
    OpenVino,
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

    pub fn get(&self, kind: EngineKind) -> &dyn Engine {
        match kind {
            EngineKind::Native => &self.native,
            EngineKind::OnnxRuntime => &self.ort,
            EngineKind::OpenVino => &self.openvino,
        }
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
        assert!(t("onnxruntime:tpu").is_err());
        assert!(t("tensorrt:cuda")
            .unwrap_err()
            .contains("onnxruntime:<platform>"));
    }
}
