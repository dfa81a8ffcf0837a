//! The ONNX Runtime engine. The library is never linked at build time: it is found at run
//! time (`ORT_DYLIB_PATH`, then what `ia_hardware` detects in system locations and Python
//! environments, e.g. the `onnxruntime` wheel that `ipfs-accelerate runtimes install` puts in
//! the project's venv) and loaded once per process.
//!
//! A model runs from its ONNX export (`onnx/model.onnx` or `model.onnx` in the checkpoint
//! folder) on the CPU execution provider; inputs are fed by the names the graph declares
//! (`input_ids`, `attention_mask`, `token_type_ids` as int64; `pixel_values` as float32) and
//! every graph output is returned under its own name.

use ia_engine::inputs::GraphInput;
use ia_engine::{
    Engine, EngineError, Inputs, OutputTensor, Outputs, Precision, Session, SessionInfo,
};
use ia_hardware::Platform;
use ia_models::{classify_config, ModelClass, ModelSource};
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The loaded library: its environment, file and version; or why it could not be loaded.
struct Runtime {
    env: ort::environment::Environment,
    path: PathBuf,
    version: String,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

fn runtime() -> Result<&'static Runtime, EngineError> {
    RUNTIME
        .get_or_init(load_runtime)
        .as_ref()
        .map_err(|e| EngineError::Unsupported(e.clone()))
}

fn load_runtime() -> Result<Runtime, String> {
    let found = ia_hardware::detect_runtimes()
        .into_iter()
        .find(|r| r.name == "onnxruntime");
    let (path, version) = match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) => (PathBuf::from(p), found.and_then(|r| r.version)),
        None => match found {
            Some(r) if r.usable() => (r.path.unwrap_or_default(), r.version),
            Some(r) => {
                return Err(format!(
                    "ONNX Runtime is not usable: {}",
                    r.error.unwrap_or_else(|| "not found".into())
                ))
            }
            None => return Err("ONNX Runtime not found".into()),
        },
    };
    let env = ort::init_from(&path)
        .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
        .with_name("ipfs-accelerate")
        .build()
        .map_err(|e| format!("ONNX Runtime environment: {e}"))?;
    Ok(Runtime {
        env,
        path,
        version: version.unwrap_or_else(|| "unknown".into()),
    })
}

/// The execution providers the loaded library offers (`CPUExecutionProvider`, ...).
pub fn available_providers() -> Result<Vec<String>, EngineError> {
    runtime()?;
    let api = ort::api();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut n: std::ffi::c_int = 0;
    // Safety: the library is loaded (runtime() succeeded); ONNX Runtime allocates the list,
    // which is released with the matching call below.
    unsafe {
        let status = (api.GetAvailableProviders)(&mut list, &mut n);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Err(EngineError::Runtime("GetAvailableProviders failed".into()));
        }
        let names = (0..n as isize)
            .map(|i| {
                std::ffi::CStr::from_ptr(*list.offset(i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let _ = (api.ReleaseAvailableProviders)(list, n);
        Ok(names)
    }
}

/// Where the library was loaded from and its version, once loaded.
pub fn library() -> Result<(PathBuf, String), EngineError> {
    runtime().map(|r| (r.path.clone(), r.version.clone()))
}

#[derive(Debug, Default)]
pub struct OrtEngine;

impl OrtEngine {
    pub fn new() -> Self {
        Self
    }
}

fn onnx_file(source: &ModelSource) -> Result<PathBuf, EngineError> {
    match source {
        ModelSource::Checkpoint(c) => c.onnx.clone().ok_or_else(|| {
            EngineError::Unsupported(format!(
                "{}: no ONNX export (onnx/model.onnx or model.onnx)",
                c.dir.display()
            ))
        }),
        ModelSource::RandomInit { .. } => Err(EngineError::Unsupported(
            "ONNX Runtime runs ONNX exports; random-weight models have none".into(),
        )),
    }
}

impl Engine for OrtEngine {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn version(&self) -> String {
        library().map_or_else(
            |_| "onnxruntime (not loaded)".into(),
            |(_, v)| format!("onnxruntime {v}"),
        )
    }

    fn supports(&self, class: ModelClass, platform: Platform) -> Result<(), EngineError> {
        if platform != Platform::Cpu {
            return Err(EngineError::Unsupported(format!(
                "the ONNX Runtime engine runs the CPU execution provider only so far, not {platform}"
            )));
        }
        match class {
            ModelClass::Bert | ModelClass::Vit => runtime().map(|_| ()),
            other => Err(EngineError::Unsupported(format!(
                "no ONNX path for {} models yet",
                other.as_str()
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
        self.supports(class, platform)?;
        if precision != Precision::F32 {
            return Err(EngineError::Unsupported(format!(
                "the ONNX exports run in f32; {precision} is not available on ONNX Runtime here"
            )));
        }
        let file = onnx_file(source)?;
        let rt = runtime()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let session = ort::session::Session::builder(&rt.env)
            .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
            .and_then(|b| Ok(b.with_intra_threads(threads)?))
            .and_then(|mut b| b.commit_from_file(&file))
            .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", file.display())))?;
        let inputs = session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        Ok(Box::new(OrtSession {
            session,
            inputs,
            info: SessionInfo {
                engine: self.name().into(),
                engine_version: format!("onnxruntime {}", rt.version),
                platform,
                device: "cpu (CPUExecutionProvider)".into(),
                precision,
                weights: source.weights_kind(),
                parameter_count: 0,
                output_names: outputs,
            },
        }))
    }
}

pub struct OrtSession {
    session: ort::session::Session,
    inputs: Vec<String>,
    info: SessionInfo,
}

/// A copied-out ONNX Runtime output.
struct OrtOutput {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl OutputTensor for OrtOutput {
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn to_f32_vec(&self) -> Result<Vec<f32>, EngineError> {
        Ok(self.data.clone())
    }
}

fn rt_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Runtime(e.to_string())
}

impl Session for OrtSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> Result<Outputs, EngineError> {
        let mut feed: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::new();
        for name in &self.inputs {
            let value: ort::value::DynValue = match inputs.graph_input(name)? {
                GraphInput::Int64 { shape, data } => Tensor::from_array((shape, data))
                    .map_err(rt_err)?
                    .into_dyn(),
                GraphInput::Float32 { shape, data } => Tensor::from_array((shape, data.to_vec()))
                    .map_err(rt_err)?
                    .into_dyn(),
            };
            feed.push((name.clone(), value.into()));
        }
        let outputs = self.session.run(feed).map_err(rt_err)?;
        let mut tensors: Vec<(String, Box<dyn OutputTensor>)> = Vec::new();
        for (name, value) in outputs.iter() {
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(rt_err)?;
            tensors.push((
                name.to_string(),
                Box::new(OrtOutput {
                    shape: shape.iter().map(|&d| d as usize).collect(),
                    data: data.to_vec(),
                }),
            ));
        }
        Ok(Outputs { tensors })
    }
}
