//! The OpenVINO engine. The C library (`libopenvino_c`) is found at run time by `ia_hardware`
//! (system installs, the `openvino` wheel's `libs/` in a Python environment such as the one
//! `ipfs-accelerate runtimes install` creates) and loaded once per process; nothing links it
//! at build time.
//!
//! Models run from their ONNX export (`onnx/model.onnx` or `model.onnx`), or OpenVINO IR
//! (`openvino_model.xml` + `.bin`), on the CPU device. Precision is explicit: OpenVINO picks
//! bf16 by itself on CPUs with AMX / avx512_bf16, so the requested precision is set as the
//! inference-precision hint and the value the compiled model reports is recorded.

use ia_engine::inputs::GraphInput;
use ia_engine::{
    Engine, EngineError, Inputs, OutputTensor, Outputs, Precision, Session, SessionInfo,
};
use ia_hardware::Platform;
use ia_models::{classify_config, ModelClass, ModelSource};
use openvino::{
    Core, DeviceType, ElementType, InferRequest, PropertyKey, RwPropertyKey, Shape, Tensor,
};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The library file and version, once loaded; or why it could not be.
static LIBRARY: OnceLock<Result<(PathBuf, String), String>> = OnceLock::new();

fn library() -> Result<&'static (PathBuf, String), EngineError> {
    LIBRARY
        .get_or_init(|| {
            let found = ia_hardware::detect_runtimes()
                .into_iter()
                .find(|r| r.name == "openvino")
                .ok_or("OpenVINO not found")?;
            if !found.usable() {
                return Err(format!(
                    "OpenVINO is not usable: {}",
                    found.error.unwrap_or_else(|| "not found".into())
                ));
            }
            let path = found.path.unwrap_or_default();
            openvino_sys::library::load_from(path.clone())
                .map_err(|e| format!("cannot load OpenVINO from {}: {e}", path.display()))?;
            Ok((path, found.version.unwrap_or_else(|| "unknown".into())))
        })
        .as_ref()
        .map_err(|e| EngineError::Unsupported(e.clone()))
}

fn ov(e: impl std::fmt::Display) -> EngineError {
    EngineError::Runtime(format!("OpenVINO: {e}"))
}

#[derive(Debug, Default)]
pub struct OpenVinoEngine;

impl OpenVinoEngine {
    pub fn new() -> Self {
        Self
    }
}

/// The model file OpenVINO reads, and its weights file (empty for ONNX).
fn model_files(source: &ModelSource) -> Result<(PathBuf, String), EngineError> {
    let ModelSource::Checkpoint(c) = source else {
        return Err(EngineError::Unsupported(
            "OpenVINO runs ONNX exports or IR; random-weight models have neither".into(),
        ));
    };
    let ir = c.dir.join("openvino_model.xml");
    if ir.is_file() {
        let bin = ir.with_extension("bin");
        return Ok((ir, bin.display().to_string()));
    }
    c.onnx.clone().map(|p| (p, String::new())).ok_or_else(|| {
        EngineError::Unsupported(format!(
            "{}: no ONNX export (onnx/model.onnx, model.onnx) or OpenVINO IR (openvino_model.xml)",
            c.dir.display()
        ))
    })
}

fn hint(precision: Precision) -> Result<&'static str, EngineError> {
    match precision {
        Precision::F32 => Ok("f32"),
        Precision::Bf16 => Ok("bf16"),
        Precision::F16 => Ok("f16"),
        other => Err(EngineError::Unsupported(format!(
            "precision {other} on OpenVINO needs a quantised model; f32, bf16 and f16 are hints"
        ))),
    }
}

impl Engine for OpenVinoEngine {
    fn name(&self) -> &'static str {
        "openvino"
    }

    fn version(&self) -> String {
        library().map_or_else(
            |_| "openvino (not loaded)".into(),
            |(_, v)| format!("openvino {v}"),
        )
    }

    fn supports(&self, class: ModelClass, platform: Platform) -> Result<(), EngineError> {
        if platform != Platform::Openvino {
            return Err(EngineError::Unsupported(format!(
                "the OpenVINO engine runs on the openvino platform, not {platform}"
            )));
        }
        match class {
            ModelClass::Bert | ModelClass::Vit => library().map(|_| ()),
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
        let hint = hint(precision)?;
        let (model_path, weights) = model_files(source)?;
        let parameter_count = if model_path.extension().is_some_and(|e| e == "xml") {
            ia_models::graph_weights::ir_parameter_count(&model_path)
        } else {
            ia_models::graph_weights::onnx_parameter_count(&model_path)
        }
        .map_err(|e| EngineError::InvalidModel(e.to_string()))?;
        let (_, version) = library()?;
        let mut core = Core::new().map_err(ov)?;
        core.set_property(
            &DeviceType::CPU,
            &RwPropertyKey::HintInferencePrecision,
            hint,
        )
        .map_err(ov)?;
        let model = core
            .read_model_from_file(&model_path.display().to_string(), &weights)
            .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", model_path.display())))?;
        let names =
            |n: usize, get: &dyn Fn(usize) -> Result<openvino::Node, openvino::InferenceError>| {
                (0..n)
                    .map(|i| get(i).and_then(|node| node.get_name()))
                    .collect::<Result<Vec<String>, _>>()
            };
        let inputs = names(model.get_inputs_len().map_err(ov)?, &|i| {
            model.get_input_by_index(i)
        })
        .map_err(ov)?;
        let outputs = names(model.get_outputs_len().map_err(ov)?, &|i| {
            model.get_output_by_index(i)
        })
        .map_err(ov)?;
        let mut compiled = core.compile_model(&model, DeviceType::CPU).map_err(ov)?;
        // The precision the compiled model really runs at, as OpenVINO reports it; a result
        // whose precision is not known is not recorded.
        let used = compiled
            .get_property(&PropertyKey::Rw(RwPropertyKey::HintInferencePrecision))
            .map_err(|e| {
                ov(format!(
                    "the compiled model reports no inference precision: {e}"
                ))
            })?
            .to_string();
        let precision_used = used.parse::<Precision>().map_err(|_| {
            ov(format!(
                "the compiled model reports inference precision '{used}'"
            ))
        })?;
        let request = compiled.create_infer_request().map_err(ov)?;
        Ok(Box::new(OpenVinoSession {
            request,
            inputs,
            outputs: outputs.clone(),
            _core: core,
            info: SessionInfo {
                engine: self.name().into(),
                engine_version: format!("openvino {version}"),
                platform,
                device: format!("CPU (inference precision {used})"),
                precision: precision_used,
                weights: source.weights_kind(),
                parameter_count,
                output_names: outputs,
            },
        }))
    }
}

pub struct OpenVinoSession {
    request: InferRequest,
    inputs: Vec<String>,
    outputs: Vec<String>,
    // Keeps the plugin alive as long as the request.
    _core: Core,
    info: SessionInfo,
}

struct OvOutput {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl OutputTensor for OvOutput {
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn to_f32_vec(&self) -> Result<Vec<f32>, EngineError> {
        Ok(self.data.clone())
    }
}

/// An OpenVINO tensor of `shape` holding `values` (i64 or f32, matching `element`).
fn tensor<T: Copy>(
    element: ElementType,
    shape: &[usize],
    values: &[T],
) -> Result<Tensor, EngineError> {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let mut t = Tensor::new(element, &Shape::new(&dims).map_err(ov)?).map_err(ov)?;
    t.get_data_mut::<T>().map_err(ov)?.copy_from_slice(values);
    Ok(t)
}

impl Session for OpenVinoSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> Result<Outputs, EngineError> {
        for name in &self.inputs {
            let t = match inputs.graph_input(name)? {
                GraphInput::Int64 { shape, data } => tensor(ElementType::I64, &shape, &data)?,
                GraphInput::Float32 { shape, data } => tensor(ElementType::F32, &shape, data)?,
            };
            self.request.set_tensor(name, &t).map_err(ov)?;
        }
        self.request.infer().map_err(ov)?;
        let mut tensors: Vec<(String, Box<dyn OutputTensor>)> = Vec::new();
        for name in &self.outputs {
            let t = self.request.get_tensor(name).map_err(ov)?;
            let shape = t.get_shape().map_err(ov)?;
            let dims = shape.get_dimensions().iter().map(|&d| d as usize).collect();
            let data = t.get_data::<f32>().map_err(ov)?.to_vec();
            tensors.push((name.clone(), Box::new(OvOutput { shape: dims, data })));
        }
        Ok(Outputs { tensors })
    }
}
