//! The OpenVINO engine. The C library (`libopenvino_c`) is found at run time by `ia_hardware`
//! (system installs, the `openvino` wheel's `libs/` in a Python environment such as the one
//! `ipfs-accelerate runtimes install` creates) and loaded once per process; nothing links it
//! at build time.
//!
//! Models run from their ONNX export (`onnx/model.onnx` or `model.onnx`), or OpenVINO IR
//! (`openvino_model.xml` + `.bin`), on the CPU device. Precision is explicit: OpenVINO picks
//! bf16 by itself on CPUs with AMX / avx512_bf16, so the requested precision is set as the
//! inference-precision hint and the value the compiled model reports is recorded. Where the
//! CPU cannot compute the requested precision (bf16 on an AVX2-only CPU runs f32), the load
//! is refused as unsupported: bench records the combination unavailable with the reason, and
//! run / generate say so, rather than storing an f32 result under a bf16 label.

use ia_engine::calibration::{
    chain_onnx, chain_operands, dispatch_costs, matmul_onnx, operand, seconds_of, time_products,
    DISPATCH_OPS, DISPATCH_WIDTH, MATMUL_SIZE,
};
use ia_engine::exported_decoder::{
    check_exported, decoder_context, DecoderBackend, DecoderGraph, DecoderStep, ExportedDecoder,
};
use ia_engine::exported_seq2seq::{
    is_merged, seq2seq_files, ExportedSeq2Seq, ExportedT5, ExportedWhisper, COUNTED_PARTS,
};
use ia_engine::features::GraphFeeds;
use ia_engine::inputs::GraphInput;
use ia_engine::whisper::WhisperSession;
use ia_engine::{
    Capability, DispatchCost, Engine, EngineError, HostTensor, Inputs, MatmulRate, OutputTensor,
    Outputs, Placement, Precision, Session, SessionInfo, SpeechRecognizer, TextGenerator,
};
use ia_hardware::Platform;
use ia_models::{Model, ModelClass, ModelSource};
use openvino::{
    CompiledModel, Core, DeviceType, ElementType, InferRequest, PropertyKey, RwPropertyKey, Shape,
    Tensor,
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

/// A calibration graph compiled on the openvino platform at `at`'s precision hint, its f32
/// inputs set, ready for timed synchronous inferences.
struct CalibrationGraph {
    request: InferRequest,
    /// The inference precision OpenVINO reports it runs at.
    used: String,
    /// Kept alive beside its request.
    _compiled: CompiledModel,
}

impl CalibrationGraph {
    fn new(
        at: Placement,
        onnx: &[u8],
        inputs: &[(&str, &[usize], &[f32])],
    ) -> Result<Self, EngineError> {
        if at.platform != Platform::Openvino {
            return Err(EngineError::Unsupported(format!(
                "the OpenVINO engine runs on the openvino platform, not {}",
                at.platform
            )));
        }
        let hint = hint(at.precision)?;
        library()?;
        let mut core = core_for(hint)?;
        let model = core.read_model_from_buffer(onnx, None).map_err(ov)?;
        let (mut compiled, used, _) = compile(&mut core, &model, at.precision)?;
        let mut request = compiled.create_infer_request().map_err(ov)?;
        for (name, shape, values) in inputs {
            let t = tensor(ElementType::F32, shape, values)?;
            request.set_tensor(name, &t).map_err(ov)?;
        }
        Ok(Self {
            request,
            used,
            _compiled: compiled,
        })
    }

    fn device(&self) -> String {
        format!("CPU (inference precision {})", self.used)
    }
}

/// A core whose CPU computes at the inference-precision `hint`.
fn core_for(hint: &str) -> Result<Core, EngineError> {
    let mut core = Core::new().map_err(ov)?;
    core.set_property(
        &DeviceType::CPU,
        &RwPropertyKey::HintInferencePrecision,
        hint,
    )
    .map_err(ov)?;
    Ok(core)
}

/// `model` compiled for the CPU, with the inference precision it really runs at (as OpenVINO
/// names it, and parsed); an error when that is not the `precision` asked for.
fn compile(
    core: &mut Core,
    model: &openvino::Model,
    precision: Precision,
) -> Result<(CompiledModel, String, Precision), EngineError> {
    let compiled = core.compile_model(model, DeviceType::CPU).map_err(ov)?;
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
    if precision_used != precision {
        // A CPU without bf16 (or f16) arithmetic runs such a request in f32. That is not a
        // bf16 result: the combination is unavailable on this machine, and says why.
        return Err(EngineError::Unsupported(format!(
            "{precision} is not available on this CPU: OpenVINO compiled the model for \
             {used} (bf16 needs AVX512-BF16, AMX-BF16 or AVX-NE-CONVERT, f16 needs \
             AVX512-FP16 or AMX-FP16)"
        )));
    }
    Ok((compiled, used, precision_used))
}

/// What every load shares: the compiled model's request, its inputs (with their dims; a dynamic
/// dim is -1) and outputs, and what to record about it.
struct Opened {
    request: InferRequest,
    core: Core,
    inputs: Vec<(String, Option<Vec<i64>>)>,
    outputs: Vec<String>,
    info: SessionInfo,
}

impl OpenVinoEngine {
    fn open(&self, model: &Model, at: Placement) -> Result<Opened, EngineError> {
        let source = &model.source;
        self.supports(model.class, at.platform, Capability::Run)?;
        let (model_path, weights) = model_files(source)?;
        let parameter_count = ia_engine::memory::graph_parameters(source, &model_path)?;
        self.open_graph(model, at, &model_path, &weights, parameter_count)
    }

    /// One graph file (ONNX, or IR with its `weights`) read and compiled at the placement.
    fn open_graph(
        &self,
        model: &Model,
        at: Placement,
        model_path: &std::path::Path,
        weights: &str,
        parameter_count: u64,
    ) -> Result<Opened, EngineError> {
        let Placement {
            platform,
            precision,
        } = at;
        let source = &model.source;
        let hint = hint(precision)?;
        let (_, version) = library()?;
        let mut core = core_for(hint)?;
        let model = core
            .read_model_from_file(&model_path.display().to_string(), weights)
            .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", model_path.display())))?;
        let mut inputs = Vec::new();
        for i in 0..model.get_inputs_len().map_err(ov)? {
            let node = model.get_input_by_index(i).map_err(ov)?;
            let dims = node.get_partial_shape().ok().map(|s| {
                s.get_dimensions()
                    .iter()
                    .map(|d| if d.is_dynamic() { -1 } else { d.get_min() })
                    .collect()
            });
            inputs.push((node.get_name().map_err(ov)?, dims));
        }
        let outputs = (0..model.get_outputs_len().map_err(ov)?)
            .map(|i| model.get_output_by_index(i).and_then(|n| n.get_name()))
            .collect::<Result<Vec<String>, _>>()
            .map_err(ov)?;
        let (mut compiled, used, precision_used) = compile(&mut core, &model, precision)?;
        let request = compiled.create_infer_request().map_err(ov)?;
        let info = SessionInfo {
            engine: self.name().into(),
            engine_version: format!("openvino {version}"),
            platform,
            device: format!("CPU (inference precision {used})"),
            precision: precision_used,
            weights: source.weights_kind(),
            parameter_count,
            output_names: outputs.clone(),
        };
        Ok(Opened {
            request,
            core,
            inputs,
            outputs,
            info,
        })
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

    fn supports(&self, class: ModelClass, on: Platform, to: Capability) -> Result<(), EngineError> {
        let (platform, capability) = (on, to);
        if platform != Platform::Openvino {
            return Err(EngineError::Unsupported(format!(
                "the OpenVINO engine runs on the openvino platform, not {platform}"
            )));
        }
        check_exported(class, capability, "OpenVINO")?;
        library().map(|_| ())
    }

    /// OpenVINO's product at the precision hint, on the graph of one MatMul, each product
    /// one synchronous inference.
    fn calibrate_matmul(&self, at: Placement) -> Result<MatmulRate, EngineError> {
        let n = MATMUL_SIZE;
        let (a, b) = (operand(n, 0.5), operand(n, -0.25));
        let mut graph = CalibrationGraph::new(
            at,
            &matmul_onnx(n),
            &[("a", &[n, n], &a), ("b", &[n, n], &b)],
        )?;
        let (flops_per_s, samples) = time_products(n, || graph.request.infer().map_err(ov))?;
        Ok(MatmulRate {
            device: graph.device(),
            size: n,
            flops_per_s,
            samples,
        })
    }

    /// OpenVINO's cost of a synchronous inference and of each node in it, on chains of tiny
    /// MatMuls compiled at the precision hint.
    fn calibrate_dispatch(&self, at: Placement) -> Result<DispatchCost, EngineError> {
        let w = DISPATCH_WIDTH;
        let (x, weights) = chain_operands(w);
        let feeds: [(&str, &[usize], &[f32]); 2] = [("x", &[1, w], &x), ("w", &[w, w], &weights)];
        let mut short = CalibrationGraph::new(at, &chain_onnx(1, w), &feeds)?;
        let mut long = CalibrationGraph::new(at, &chain_onnx(DISPATCH_OPS, w), &feeds)?;
        dispatch_costs(short.device(), |ops| {
            let graph = if ops == 1 { &mut short } else { &mut long };
            seconds_of(|| graph.request.infer().map_err(ov))
        })
    }

    fn load(&self, model: &Model, at: Placement) -> Result<Box<dyn Session>, EngineError> {
        if model.class == ModelClass::Whisper {
            return Ok(Box::new(self.whisper(model, at)?));
        }
        self.supports(model.class, at.platform, Capability::Run)?;
        // OpenVINO IR where the checkpoint has it, else the ONNX export (CLIP: its towers).
        let files = match model_files(&model.source) {
            Ok((xml, bin)) if !bin.is_empty() => vec![("model".to_string(), xml, bin)],
            _ => ia_engine::towers::graph_parts(&model.source, model.class)?
                .into_iter()
                .map(|(name, file)| (name, file, String::new()))
                .collect(),
        };
        let named: Vec<(String, PathBuf)> = files
            .iter()
            .map(|(n, f, _)| (n.clone(), f.clone()))
            .collect();
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        let parameter_count = ia_engine::memory::parts_parameters(&model.source, &named, &names)?;
        let mut parts = Vec::new();
        for (name, file, weights) in &files {
            parts.push((
                name.clone(),
                self.open_graph(model, at, file, weights, parameter_count)?,
            ));
        }
        let logit_scale = ia_engine::towers::logit_scale(model)?;
        let mut info = parts[0].1.info.clone();
        info.output_names = parts.iter().flat_map(|(_, o)| o.outputs.clone()).collect();
        if logit_scale.is_some() {
            info.output_names.push("logit_scale".into());
        }
        Ok(Box::new(OpenVinoSession {
            parts,
            feeds: GraphFeeds::for_model(model)?,
            logit_scale,
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
        if model.class == ModelClass::T5 {
            self.supports(model.class, at.platform, Capability::Generate)?;
            let (parts, info) = self.seq2seq_parts(model, at)?;
            return Ok(Box::new(ExportedT5::new(parts, model, info)?));
        }
        let max_context = decoder_context(model, "OpenVINO")?;
        let opened = self.open(model, at)?;
        let graph = DecoderGraph::from_io(&opened.inputs, &opened.outputs)?;
        let backend = OvDecoder {
            request: opened.request,
            _core: opened.core,
            cache: Vec::new(),
        };
        Ok(Box::new(ExportedDecoder::new(
            backend,
            graph,
            opened.info,
            max_context,
            model.source.eos_tokens(),
        )))
    }
}

/// A single-graph export or IR, or CLIP's two towers, each compiled with its request.
pub struct OpenVinoSession {
    parts: Vec<(String, Opened)>,
    feeds: GraphFeeds,
    /// CLIP's temperature, returned with the embeddings (ia_engine::towers).
    logit_scale: Option<f32>,
    info: SessionInfo,
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
        let opened = ia_engine::towers::part_for(&mut self.parts, inputs)?;
        let feeds = opened
            .inputs
            .iter()
            .map(|(name, _)| Ok((name.clone(), self.feeds.input(inputs, name)?)))
            .collect::<Result<Vec<_>, EngineError>>()?;
        let scale = self.logit_scale.map(|s| {
            let t = HostTensor {
                shape: vec![1],
                data: vec![s],
            };
            ("logit_scale".to_string(), t)
        });
        let tensors = infer(&mut opened.request, feeds, &opened.outputs)?
            .into_iter()
            .chain(scale)
            .map(|(name, t)| (name, Box::new(t) as Box<dyn OutputTensor>))
            .collect();
        Ok(Outputs { tensors })
    }
}

/// One inference of `request` on named inputs; the `outputs` copied to the host as f32
/// (OpenVINO reuses a request's output buffers).
fn infer(
    request: &mut InferRequest,
    feeds: Vec<(String, GraphInput<'_>)>,
    outputs: &[String],
) -> Result<Vec<(String, HostTensor)>, EngineError> {
    for (name, input) in feeds {
        let t = match input {
            GraphInput::Int64 { shape, data } => tensor(ElementType::I64, &shape, &data)?,
            GraphInput::Float32 { shape, data } => tensor(ElementType::F32, &shape, &data)?,
            GraphInput::Bool { shape, data } => {
                let bytes: Vec<u8> = data.iter().map(|&b| u8::from(b)).collect();
                tensor(ElementType::Boolean, &shape, &bytes)?
            }
        };
        request.set_tensor(&name, &t).map_err(ov)?;
    }
    request.infer().map_err(ov)?;
    let mut tensors = Vec::new();
    for name in outputs {
        let t = request.get_tensor(name).map_err(ov)?;
        let shape = t.get_shape().map_err(ov)?;
        let dims = shape.get_dimensions().iter().map(|&d| d as usize).collect();
        let data = t.get_data::<f32>().map_err(ov)?.to_vec();
        tensors.push((name.clone(), HostTensor { shape: dims, data }));
    }
    Ok(tensors)
}

/// The graphs of a multi-graph export (Whisper's), each compiled with its own request.
pub struct OvParts {
    parts: Vec<(String, Opened)>,
}

impl ia_engine::exported_seq2seq::GraphParts for OvParts {
    fn run_part(
        &mut self,
        part: &str,
        feeds: Vec<(String, GraphInput<'_>)>,
    ) -> Result<Vec<(String, HostTensor)>, EngineError> {
        let opened = ia_engine::towers::part_mut(&mut self.parts, part)?;
        infer(&mut opened.request, feeds, &opened.outputs)
    }
}

impl OpenVinoEngine {
    /// Whisper's three graphs (ia_engine::exported_seq2seq), each compiled at the placement's
    /// precision, as a [`ia_engine::whisper::WhisperModel`]; and what to record about it.
    pub fn whisper_model(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<(ExportedWhisper<ExportedSeq2Seq<OvParts>>, SessionInfo), EngineError> {
        self.supports(model.class, at.platform, Capability::Run)?;
        let (parts, mut info) = self.seq2seq_parts(model, at)?;
        info.output_names = vec!["sequences".into()];
        Ok((ExportedWhisper::new(parts, model.config())?, info))
    }

    /// The graphs of an encoder-decoder export (ia_engine::exported_seq2seq: three, or merged), each
    /// compiled at the placement's precision, and what to record about them.
    fn seq2seq_parts(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<(ExportedSeq2Seq<OvParts>, SessionInfo), EngineError> {
        let files = seq2seq_files(&model.source)?;
        if is_merged(&files) {
            // OpenVINO 2026.4's own words: "CPU plug-in doesn't support If operation with
            // dynamic rank" (the cached branch's placeholder outputs).
            return Err(EngineError::Unsupported(
                "OpenVINO's CPU plugin does not compile a merged decoder (decoder_model_merged: \
                 an If whose branches return outputs of different rank); export the three \
                 graphs (scripts/export_onnx_fixtures.py --whisper|--t5 DIR) for OpenVINO"
                    .into(),
            ));
        }
        let parameter_count =
            ia_engine::memory::parts_parameters(&model.source, &files, &COUNTED_PARTS)?;
        let mut parts = Vec::new();
        for (part, file) in &files {
            parts.push((
                part.clone(),
                self.open_graph(model, at, file, "", parameter_count)?,
            ));
        }
        let mut info = parts[0].1.info.clone();
        info.output_names = vec!["logits".into()];
        Ok((
            ExportedSeq2Seq::new(OvParts { parts }, &files, model.config())?,
            info,
        ))
    }

    fn whisper(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<WhisperSession<ExportedWhisper<ExportedSeq2Seq<OvParts>>>, EngineError> {
        let (whisper, info) = self.whisper_model(model, at)?;
        WhisperSession::new(whisper, &model.source, info)
    }
}

/// The [`DecoderBackend`] of a decoder exported with past key values (conventions in
/// `ia_engine::exported_decoder`). OpenVINO reuses a request's output buffers, so the cache is
/// copied out after each call.
pub struct OvDecoder {
    request: InferRequest,
    // Keeps the plugin alive as long as the request.
    _core: Core,
    cache: Vec<Tensor>,
}

impl DecoderBackend for OvDecoder {
    fn run(
        &mut self,
        graph: &DecoderGraph,
        step: &DecoderStep,
    ) -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        let (batch, total) = (step.batch, step.cached + step.new);
        let mut set = |name: &str, t: Tensor| self.request.set_tensor(name, &t).map_err(ov);
        set(
            "input_ids",
            tensor(ElementType::I64, &[batch, step.new], &step.input_ids)?,
        )?;
        set(
            "attention_mask",
            tensor(ElementType::I64, &[batch, total], &step.attention_mask)?,
        )?;
        if graph.has_position_ids {
            set(
                "position_ids",
                tensor(ElementType::I64, &[batch, step.new], &step.position_ids)?,
            )?;
        }
        if graph.has_cache_branch {
            set(
                "use_cache_branch",
                tensor(ElementType::Boolean, &[1], &[u8::from(step.cached > 0)])?,
            )?;
        }
        let cache = std::mem::take(&mut self.cache);
        if step.cached == 0 {
            for slot in &graph.slots {
                let shape = [batch, slot.heads, 0, slot.head_dim];
                self.request
                    .set_tensor(&slot.input, &tensor::<f32>(ElementType::F32, &shape, &[])?)
                    .map_err(ov)?;
            }
        } else {
            for (slot, t) in graph.slots.iter().zip(&cache) {
                self.request.set_tensor(&slot.input, t).map_err(ov)?;
            }
        }
        self.request.infer().map_err(ov)?;
        let read =
            |request: &InferRequest, name: &str| -> Result<(Vec<usize>, Vec<f32>), EngineError> {
                let t = request.get_tensor(name).map_err(ov)?;
                let shape = t.get_shape().map_err(ov)?;
                let dims = shape.get_dimensions().iter().map(|&d| d as usize).collect();
                Ok((dims, t.get_data::<f32>().map_err(ov)?.to_vec()))
            };
        let mut next = Vec::with_capacity(graph.slots.len());
        for slot in &graph.slots {
            let (dims, data) = read(&self.request, &slot.output)?;
            next.push(tensor(ElementType::F32, &dims, &data)?);
        }
        let logits = read(&self.request, "logits")?;
        self.cache = next;
        Ok(logits)
    }

    fn clear(&mut self) {
        self.cache.clear();
    }
}
