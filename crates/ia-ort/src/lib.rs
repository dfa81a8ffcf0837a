//! The ONNX Runtime engine. The library is never linked at build time: it is found at run
//! time (`ORT_DYLIB_PATH`, then what `ia_hardware` detects in system locations and Python
//! environments, e.g. the `onnxruntime` wheel that `ipfs-accelerate runtimes install` puts in
//! the project's venv) and loaded once per process.
//!
//! * [`runtime`]: loading the library; its execution providers and the platform each drives
//!   (cuda via the CUDA EP, rocm via MIGraphX or ROCm, mps via CoreML, openvino via the
//!   OpenVINO EP, cpu via the default CPU EP).
//! * [`session`]: single-graph exports (`onnx/model.onnx` or `model.onnx` in the checkpoint:
//!   BERT, ViT, Wav2Vec2, DETR), fed by the names the graph declares through the model's
//!   [`ia_engine::features::GraphFeeds`]; every output is returned under its own name.
//! * [`generator`]: decoders exported with past key values, for text generation (the
//!   bookkeeping is `ia_engine::exported_decoder`'s, shared with OpenVINO).

pub mod generator;
pub mod runtime;
pub mod session;

use ia_engine::calibration::{
    addition_chain_onnx, chain_onnx, chain_operands, dispatch_costs, matmul_onnx, operand,
    seconds_of, stream_bandwidth, time_products, DISPATCH_OPS, DISPATCH_WIDTH, MATMUL_SIZE,
    STREAM_ELEMENTS, STREAM_INPUTS, STREAM_OPS,
};
use ia_engine::exported_decoder::{check_exported, decoder_context, ExportedDecoder};
use ia_engine::exported_seq2seq::{
    seq2seq_files, ExportedSeq2Seq, ExportedT5, ExportedWhisper, COUNTED_PARTS,
};
use ia_engine::features::GraphFeeds;
use ia_engine::generation::TextGenerator;
use ia_engine::whisper::WhisperSession;
use ia_engine::{
    Bandwidth, Capability, DispatchCost, Engine, EngineError, MatmulRate, Placement, Precision,
    Session, SessionInfo, SpeechRecognizer,
};
use ia_hardware::Platform;
use ia_models::{Model, ModelClass, ModelSource};
use std::path::PathBuf;

pub use runtime::{available_providers, library, platform_of, providers_for};

#[derive(Debug, Default)]
pub struct OrtEngine;

impl OrtEngine {
    pub fn new() -> Self {
        Self
    }

    /// The sessions of `files` (by part name) on the platform's provider and what to record
    /// about them, after the checks every load makes: a supported class on an offered
    /// provider, f32; the parameters are the checkpoint's, or those of the `counted` graphs.
    fn sessions(
        &self,
        model: &Model,
        at: Placement,
        files: &[(String, PathBuf)],
        counted: &[&str],
    ) -> Result<(Vec<(String, ort::session::Session)>, SessionInfo), EngineError> {
        let Placement {
            platform,
            precision,
        } = at;
        if precision != Precision::F32 {
            return Err(EngineError::Unsupported(format!(
                "the ONNX exports run in f32; {precision} is not available on ONNX Runtime here"
            )));
        }
        let parameter_count = ia_engine::memory::parts_parameters(&model.source, files, counted)?;
        let mut sessions = Vec::new();
        let mut provider = "";
        let mut output_names = Vec::new();
        for (part, file) in files {
            let (session, used) = session::build(file, platform)?;
            provider = used;
            output_names.extend(session.outputs().iter().map(|o| o.name().to_string()));
            sessions.push((part.clone(), session));
        }
        let info = SessionInfo {
            engine: self.name().into(),
            engine_version: self.version(),
            platform,
            device: session::device_name(platform, provider),
            precision,
            weights: model.source.weights_kind(),
            parameter_count,
            output_names,
        };
        Ok((sessions, info))
    }

    /// A decoder export's one session (generation) and what to record about it.
    fn open(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<(ort::session::Session, SessionInfo), EngineError> {
        self.supports(model.class, at.platform, Capability::Run)?;
        let files = [("model".to_string(), onnx_file(&model.source)?)];
        let (mut sessions, info) = self.sessions(model, at, &files, &["model"])?;
        Ok((sessions.remove(0).1, info))
    }
}

impl OrtEngine {
    /// Whisper's three graphs (ia_engine::exported_seq2seq), each a session on the platform's
    /// provider, under the one Whisper decoding.
    fn whisper(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<WhisperSession<ExportedWhisper<ExportedSeq2Seq<session::OrtParts>>>, EngineError>
    {
        let (whisper, info) = self.whisper_model(model, at)?;
        WhisperSession::new(whisper, &model.source, info)
    }

    /// Whisper's export loaded as a [`ia_engine::whisper::WhisperModel`] (encoder and decoder
    /// calls; the parity tests compare them with transformers), and what to record about it.
    pub fn whisper_model(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<
        (
            ExportedWhisper<ExportedSeq2Seq<session::OrtParts>>,
            SessionInfo,
        ),
        EngineError,
    > {
        self.supports(model.class, at.platform, Capability::Run)?;
        let (parts, mut info) = self.seq2seq_parts(model, at)?;
        info.output_names = vec!["sequences".into()];
        Ok((ExportedWhisper::new(parts, model.config())?, info))
    }

    /// The graphs of an encoder-decoder export (ia_engine::exported_seq2seq: three, or merged), each a
    /// session on the platform's provider, and what to record about them.
    fn seq2seq_parts(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<(ExportedSeq2Seq<session::OrtParts>, SessionInfo), EngineError> {
        let files = seq2seq_files(&model.source)?;
        let (parts, mut info) = self.sessions(model, at, &files, &COUNTED_PARTS)?;
        info.output_names = vec!["logits".into()];
        Ok((
            ExportedSeq2Seq::new(session::OrtParts { parts }, &files, model.config())?,
            info,
        ))
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

    fn supports(&self, class: ModelClass, on: Platform, to: Capability) -> Result<(), EngineError> {
        check_exported(class, to, "ONNX Runtime")?;
        runtime::provider_for(on).map(|_| ())
    }

    /// The execution provider's product, on the graph of one MatMul (f32: the precision the
    /// exports run at here).
    fn calibrate_matmul(&self, at: Placement) -> Result<MatmulRate, EngineError> {
        runtime::provider_for(at.platform)?;
        if at.precision != Precision::F32 {
            return Err(EngineError::Unsupported(format!(
                "the ONNX exports run in f32; a {} matmul is not what ONNX Runtime runs here",
                at.precision
            )));
        }
        let n = MATMUL_SIZE;
        let mut graph = CalibrationGraph::new(
            at.platform,
            &matmul_onnx(n),
            vec![
                ("a", [n, n], operand(n, 0.5)),
                ("b", [n, n], operand(n, -0.25)),
            ],
        )?;
        let (flops_per_s, samples) = time_products(n, || graph.run())?;
        Ok(MatmulRate {
            device: graph.device,
            size: n,
            flops_per_s,
            samples,
        })
    }

    /// The execution provider's cost of a session run and of each node in it, on chains of
    /// tiny MatMuls.
    fn calibrate_dispatch(&self, at: Placement) -> Result<DispatchCost, EngineError> {
        let w = DISPATCH_WIDTH;
        let chain = |ops| {
            let (x, weights) = chain_operands(w);
            CalibrationGraph::new(
                at.platform,
                &chain_onnx(ops, w),
                vec![("x", [1, w], x), ("w", [w, w], weights)],
            )
        };
        let (mut short, mut long) = (chain(1)?, chain(DISPATCH_OPS)?);
        dispatch_costs(short.device.clone(), |ops| {
            let graph = if ops == 1 { &mut short } else { &mut long };
            seconds_of(|| graph.run())
        })
    }

    /// Off the CPU only (a GPU provider's own memory), on chains of Adds over arrays the
    /// graph makes on the device.
    fn calibrate_bandwidth(&self, at: Placement) -> Result<Bandwidth, EngineError> {
        if at.platform == Platform::Cpu {
            return Err(EngineError::Unsupported(
                "the CPU's memory is the host's: the STREAM triad measures it".into(),
            ));
        }
        bandwidth_on(at.platform, STREAM_ELEMENTS)
    }

    fn load(&self, model: &Model, at: Placement) -> Result<Box<dyn Session>, EngineError> {
        if model.class == ModelClass::Whisper {
            return Ok(Box::new(self.whisper(model, at)?));
        }
        self.supports(model.class, at.platform, Capability::Run)?;
        let files = ia_engine::towers::graph_parts(&model.source, model.class)?;
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        let (parts, mut info) = self.sessions(model, at, &files, &names)?;
        let logit_scale = ia_engine::towers::logit_scale(model)?;
        if logit_scale.is_some() {
            info.output_names.push("logit_scale".into());
        }
        Ok(Box::new(session::OrtSession {
            parts: parts
                .into_iter()
                .map(|(name, session)| {
                    let inputs = session
                        .inputs()
                        .iter()
                        .map(|i| i.name().to_string())
                        .collect();
                    (name, (session, inputs))
                })
                .collect(),
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
        let max_context = decoder_context(model, "ONNX Runtime")?;
        let (session, info) = self.open(model, at)?;
        let (backend, graph) = generator::OrtDecoder::new(session)?;
        Ok(Box::new(ExportedDecoder::new(
            backend,
            graph,
            info,
            max_context,
            model.source.eos_tokens(),
        )))
    }
}

/// A calibration graph in a session on a platform's execution provider, with its f32 inputs.
/// The bandwidth protocol on chains of Adds of `n`-element arrays on `platform`'s provider.
fn bandwidth_on(platform: Platform, n: usize) -> Result<Bandwidth, EngineError> {
    let chain = |ops| {
        let inputs = STREAM_INPUTS.map(|(name, v)| (name, [1, 1], vec![v]));
        CalibrationGraph::new(platform, &addition_chain_onnx(ops, n), inputs.into())
    };
    let (mut short, mut long) = (chain(1)?, chain(STREAM_OPS)?);
    stream_bandwidth(short.device.clone(), n, |ops| {
        let graph = if ops == 1 { &mut short } else { &mut long };
        seconds_of(|| graph.run())
    })
}

struct CalibrationGraph {
    session: ort::session::Session,
    inputs: Vec<(String, ort::value::Tensor<f32>)>,
    device: String,
}

impl CalibrationGraph {
    fn new(
        platform: Platform,
        onnx: &[u8],
        inputs: Vec<(&str, [usize; 2], Vec<f32>)>,
    ) -> Result<Self, EngineError> {
        let (mut builder, provider) = session::builder(platform)?;
        let session = builder.commit_from_memory(onnx).map_err(session::rt_err)?;
        let inputs = inputs
            .into_iter()
            .map(|(name, shape, values)| {
                ort::value::Tensor::from_array((shape, values))
                    .map(|t| (name.to_string(), t))
                    .map_err(session::rt_err)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            session,
            inputs,
            device: session::device_name(platform, provider),
        })
    }

    /// One run, waited for.
    fn run(&mut self) -> Result<(), EngineError> {
        let feed: Vec<(String, ort::session::SessionInputValue<'_>)> = self
            .inputs
            .iter()
            .map(|(name, t)| (name.clone(), t.into()))
            .collect();
        self.session.run(feed).map(drop).map_err(session::rt_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bandwidth chain loads and runs on ONNX Runtime (its CPU provider, the one every
    /// machine has; the engine calibrates it off the CPU only) and gives a rate.
    #[test]
    fn the_addition_chain_gives_a_bandwidth() {
        let n = 1 << 20;
        let b = bandwidth_on(Platform::Cpu, n)
            .unwrap_or_else(|e| panic!("{e} (run `ipfs-accelerate runtimes install`)"));
        assert_eq!(b.array_bytes, 4 * n);
        eprintln!("{b:?}");
        assert!(b.bytes_per_s > 1e8, "{b:?}");
    }
}
