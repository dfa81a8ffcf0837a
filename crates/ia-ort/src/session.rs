//! Building ONNX Runtime sessions, and running encoder-style graphs (one call, named inputs
//! in, named outputs out).

use crate::runtime::{provider_for, register, runtime};
use ia_engine::features::GraphFeeds;
use ia_engine::inputs::GraphInput;
use ia_engine::{EngineError, HostTensor, Inputs, OutputTensor, Outputs, Session, SessionInfo};
use ia_hardware::Platform;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use std::path::Path;

/// A session of the ONNX file on `platform`'s execution provider, and that provider's name.
pub(crate) fn build(
    file: &Path,
    platform: Platform,
) -> Result<(ort::session::Session, &'static str), EngineError> {
    let (mut builder, provider) = builder(platform)?;
    let session = builder
        .commit_from_file(file)
        .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", file.display())))?;
    Ok((session, provider))
}

/// Session options every session shares (full graph optimisation, a thread per core) with
/// `platform`'s execution provider registered, and that provider's name.
pub(crate) fn builder(
    platform: Platform,
) -> Result<(ort::session::builder::SessionBuilder, &'static str), EngineError> {
    let provider = provider_for(platform)?;
    let rt = runtime()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let builder = ort::session::Session::builder(&rt.env)
        .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
        .and_then(|b| Ok(b.with_intra_threads(threads)?))
        .map_err(|e| EngineError::Runtime(format!("ONNX Runtime session options: {e}")))?;
    let builder = register(builder, provider).map_err(EngineError::Unsupported)?;
    Ok((builder, provider))
}

/// "cpu (CPUExecutionProvider)": the platform and the provider that ran it.
pub(crate) fn device_name(platform: Platform, provider: &str) -> String {
    format!("{platform} ({provider})")
}

pub(crate) fn rt_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Runtime(e.to_string())
}

/// A single-graph export, or CLIP's two towers: each part's session and declared inputs.
pub struct OrtSession {
    /// Each part's session and the inputs its graph declares.
    pub(crate) parts: Vec<(String, (ort::session::Session, Vec<String>))>,
    pub(crate) feeds: GraphFeeds,
    /// CLIP's temperature, returned with the embeddings (ia_engine::towers).
    pub(crate) logit_scale: Option<f32>,
    pub(crate) info: SessionInfo,
}

impl Session for OrtSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> Result<Outputs, EngineError> {
        let (session, names) = ia_engine::towers::part_for(&mut self.parts, inputs)?;
        let feeds = names
            .iter()
            .map(|name| Ok((name.clone(), self.feeds.input(inputs, name)?)))
            .collect::<Result<Vec<_>, EngineError>>()?;
        let scale = self.logit_scale.map(|s| {
            let t = HostTensor {
                shape: vec![1],
                data: vec![s],
            };
            ("logit_scale".to_string(), t)
        });
        let tensors = run_feeds(session, feeds)?
            .into_iter()
            .chain(scale)
            .map(|(name, t)| (name, Box::new(t) as Box<dyn OutputTensor>))
            .collect();
        Ok(Outputs { tensors })
    }
}

/// One run of `session` on named inputs; every output copied to the host as f32.
pub(crate) fn run_feeds(
    session: &mut ort::session::Session,
    feeds: Vec<(String, GraphInput<'_>)>,
) -> Result<Vec<(String, HostTensor)>, EngineError> {
    let mut feed: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::new();
    for (name, input) in feeds {
        let value: ort::value::DynValue = match input {
            GraphInput::Int64 { shape, data } => Tensor::from_array((shape, data))
                .map_err(rt_err)?
                .into_dyn(),
            GraphInput::Float32 { shape, data } => Tensor::from_array((shape, data.into_owned()))
                .map_err(rt_err)?
                .into_dyn(),
            GraphInput::Bool { shape, data } => Tensor::from_array((shape, data))
                .map_err(rt_err)?
                .into_dyn(),
        };
        feed.push((name, value.into()));
    }
    let outputs = session.run(feed).map_err(rt_err)?;
    let mut tensors = Vec::new();
    for (name, value) in outputs.iter() {
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(rt_err)?;
        tensors.push((
            name.to_string(),
            HostTensor {
                shape: shape.iter().map(|&d| d as usize).collect(),
                data: data.to_vec(),
            },
        ));
    }
    Ok(tensors)
}

/// The graphs of a multi-graph export (Whisper's), each its own session on one provider.
pub struct OrtParts {
    pub(crate) parts: Vec<(String, ort::session::Session)>,
}

impl ia_engine::exported_seq2seq::GraphParts for OrtParts {
    fn run_part(
        &mut self,
        part: &str,
        feeds: Vec<(String, GraphInput<'_>)>,
    ) -> Result<Vec<(String, HostTensor)>, EngineError> {
        run_feeds(ia_engine::towers::part_mut(&mut self.parts, part)?, feeds)
    }
}
