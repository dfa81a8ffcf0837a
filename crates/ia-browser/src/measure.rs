//! One combination on a web platform: the page loads the model's ONNX parts with the
//! platform's execution provider, runs the first inference, warms up and runs the timed loop;
//! Rust turns the raw samples into the harness's `Measurement`.

use crate::page::{self, Loaded, LoadedPart, RunResult, Timed};
use crate::{find_ort_web, BrowserError, BrowserHost, ENGINE_NAME};
use base64::Engine as _;
use ia_bench::{Combination, GenerationMetrics, Measurement, Outcome, Protocol, TimedRun, Work};
use ia_engine::exported_decoder::{check_exported_class, decoder_context, DecoderGraph};
use ia_engine::inputs::{self, GraphInput, InputSpec};
use ia_engine::{Inputs, Precision, SessionInfo};
use ia_hardware::Platform;
use ia_models::{classify_config, Modality, ModelClass, ModelSource};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Outputs by name ("part/output" in a measurement): shape and values.
pub type Outputs = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Choices the web platforms add to the protocol.
#[derive(Debug, Clone, Copy)]
pub struct WebOptions {
    /// Run every part once on placeholder inputs of the real shapes at load time, so WebGPU
    /// compiles its shader pipelines before the first real request.
    pub precompile: bool,
    /// Create the sessions of a multi-part model at the same time instead of one by one.
    pub parallel_load: bool,
    /// Limit of each browser step (load, one inference); the timed loop gets more.
    pub step_timeout: Duration,
}

impl Default for WebOptions {
    fn default() -> Self {
        Self {
            precompile: false,
            parallel_load: false,
            step_timeout: Duration::from_secs(180),
        }
    }
}

/// How a web result was obtained, stored beside the performance row.
#[derive(Debug, Clone, Serialize)]
pub struct WebDetails {
    pub browser: String,
    pub browser_version: String,
    pub user_agent: String,
    /// The execution provider asked for: wasm, webgpu or webnn.
    pub requested_ep: String,
    /// Where onnxruntime-web placed the nodes: webgpu, webnn, wasm, or "webgpu+wasm" when
    /// some nodes stayed on the CPU EP.
    pub executed_ep: String,
    /// The requested EP ran no node at all: everything fell back to wasm.
    pub fell_back: bool,
    /// Execution provider -> node count, from onnxruntime-web's log.
    pub node_placement: BTreeMap<String, u64>,
    pub adapter: Option<page::Adapter>,
    pub webnn_device: Option<String>,
    pub wasm_threads: u32,
    pub cross_origin_isolated: bool,
    pub precompiled: bool,
    pub precompile_ms: Option<f64>,
    pub parallel_load: bool,
    /// The parts' sessions were created at the same time. A parallel load on WebGPU fetches
    /// the parts together but creates their sessions one at a time: ONNX Runtime's WebGPU EP
    /// refuses concurrent creation.
    pub concurrent_sessions: bool,
    /// Peak resident sets of the browser's renderer and GPU process (Linux /proc).
    pub memory: crate::BrowserMemory,
    /// Each part's fetch and session creation time, ms.
    pub part_load_ms: Vec<(String, f64)>,
}

/// The outcome of one web combination; details and outputs when it ran.
pub struct WebRun {
    pub outcome: Outcome,
    pub details: Option<WebDetails>,
    /// "part/output" -> (shape, values) of the first inference.
    pub outputs: Outputs,
    /// For a decoder: the new tokens of each row in the first inference.
    pub tokens: Vec<Vec<u32>>,
    /// For a decoder: where the KV cache stayed between steps ("gpu-buffer" or "cpu").
    pub cache_location: Option<String>,
}

impl WebRun {
    fn unavailable(reason: impl Into<String>) -> Self {
        Self::from(Outcome::Unavailable {
            reason: reason.into(),
        })
    }

    fn failed(stage: &str, error: impl ToString) -> Self {
        Self::from(Outcome::Failed {
            stage: stage.into(),
            error: crate::one_line(&error.to_string()),
        })
    }
}

impl From<Outcome> for WebRun {
    fn from(outcome: Outcome) -> Self {
        Self {
            outcome,
            details: None,
            outputs: BTreeMap::new(),
            tokens: Vec::new(),
            cache_location: None,
        }
    }
}

/// The browser of a benchmark run's web combinations: started on first use, and started
/// afresh for each combination after the first, so none inherits the browser state another
/// left behind. (On SwiftShader, CLIP's warm WebGPU latency doubled when two earlier WebGPU
/// combinations had run in the same browser, even with a new page and released sessions.)
pub struct WebBench {
    host: Option<BrowserHost>,
    /// Why the browser did not start; not retried within a run.
    start_error: Option<BrowserError>,
    /// "Chromium 148.0.7778.167" once a browser has started.
    browser: Option<String>,
    pub options: WebOptions,
}

impl WebBench {
    pub fn new(options: WebOptions) -> Self {
        Self {
            host: None,
            start_error: None,
            browser: None,
            options,
        }
    }

    /// Reuses what the platform probe ([`crate::probe`]) found: its host, or why the
    /// browser did not start.
    pub fn from_probe(probed: Result<BrowserHost, BrowserError>, options: WebOptions) -> Self {
        let (host, start_error) = match probed {
            Ok(h) => (Some(h), None),
            Err(e) => (None, Some(e)),
        };
        Self {
            browser: host.as_ref().map(BrowserHost::browser),
            host,
            start_error,
            options,
        }
    }

    /// "onnxruntime-web 1.30.0 in Chromium 148.0.7778.167" (as far as known).
    pub fn engine_version(&self) -> String {
        let ort = crate::ort_web_version().unwrap_or_else(|| "(not installed)".into());
        match &self.browser {
            Some(browser) => format!("{ENGINE_NAME} {ort} in {browser}"),
            None => format!("{ENGINE_NAME} {ort}"),
        }
    }

    pub fn host(&mut self) -> Result<&BrowserHost, &BrowserError> {
        if self.host.is_none() && self.start_error.is_none() {
            match BrowserHost::start(find_ort_web().ok()) {
                Ok(h) => {
                    self.browser = Some(h.browser());
                    self.host = Some(h);
                }
                Err(e) => self.start_error = Some(e),
            }
        }
        match (&self.host, &self.start_error) {
            (Some(h), _) => Ok(h),
            (None, Some(e)) => Err(e),
            (None, None) => unreachable!("set above"),
        }
    }

    /// Measures one combination on its web platform. `available` is the platform probe's
    /// verdict. Never panics on a model or browser error: failures become outcomes.
    pub fn measure(
        &mut self,
        combo: &Combination,
        available: Result<(), String>,
        protocol: &Protocol,
    ) -> WebRun {
        self.measure_inputs(combo, None, available, protocol)
    }

    /// [`WebBench::measure`] with given inputs instead of generated ones (the accuracy tests
    /// feed the reference's inputs and compare the outputs). Each graph input is taken from
    /// the first of `inputs` that provides it (CLIP's text tower reads the text inputs, its
    /// vision tower the image); the first sets the batch size of the throughput.
    pub fn measure_inputs(
        &mut self,
        combo: &Combination,
        inputs: Option<&[Inputs]>,
        available: Result<(), String>,
        protocol: &Protocol,
    ) -> WebRun {
        // A browser that is not installed makes the platform unavailable; one that is
        // installed but does not start is a failure.
        let host_error = match self.host() {
            Ok(_) => None,
            Err(BrowserError::NotInstalled(reason)) => return WebRun::unavailable(reason.clone()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = host_error {
            return WebRun::failed("browser-start", e);
        }
        if let Err(reason) = available {
            return WebRun::unavailable(reason);
        }
        let parts = match check_model(combo) {
            Ok(p) => p,
            Err(reason) => return WebRun::unavailable(reason),
        };
        let generated;
        let inputs = match inputs {
            Some(i) if !i.is_empty() => i,
            Some(_) => return WebRun::failed("inputs", "no inputs given"),
            None => match generate_inputs(combo, &parts) {
                Ok(i) => {
                    generated = i;
                    &generated
                }
                Err(e) => return WebRun::failed("inputs", e),
            },
        };
        let options = self.options;
        let host = self.host.as_ref().expect("started above");
        if host.ort_dist.is_none() {
            return WebRun::unavailable(find_ort_web().err().unwrap_or_default());
        }
        let run = measure_on(host, combo, &parts, inputs, protocol, &options);
        // The next combination gets a new browser (about 1 s to start); this one is closed.
        self.host = None;
        run.unwrap_or_else(|(stage, e)| WebRun::failed(stage, e))
    }
}

impl WebBench {
    /// One inference of one ONNX graph on a web platform with the given feeds, outputs by
    /// name. For accuracy checks of graphs the benchmark does not drive itself (decoder
    /// exports, fed their empty cache).
    pub fn run_graph(
        &mut self,
        platform: Platform,
        file: &std::path::Path,
        feeds: Vec<(String, GraphInput<'_>)>,
    ) -> Result<Outputs, BrowserError> {
        let timeout = self.options.step_timeout;
        let host = self
            .host()
            .map_err(|e| BrowserError::Start(e.to_string()))?;
        let parts = [("model".to_string(), file.to_path_buf())];
        let ran = (|| {
            let loaded = load_parts(host, platform, &parts, false, &[], timeout)?;
            // Feeds the graph does not declare are left out (OPT takes no position_ids).
            let tensors: serde_json::Map<String, Value> = feeds
                .into_iter()
                .filter(|(name, _)| loaded.parts[0].inputs.contains(name))
                .map(|(name, t)| (name, encode_input(t)))
                .collect();
            let _: bool = step(
                host,
                "inputs",
                "setFeeds",
                json!({ "model": tensors }),
                timeout,
            )?;
            let run: RunResult = step(
                host,
                "first-inference",
                "run",
                json!({"returnOutputs": true}),
                timeout,
            )?;
            decode_outputs(&run).map_err(|e| ("outputs", BrowserError::Page(e)))
        })();
        host.server.clear_models();
        let outputs = ran.map_err(|(_, e)| e)?;
        Ok(outputs
            .into_iter()
            .map(|(k, v)| (k.trim_start_matches("model/").to_string(), v))
            .collect())
    }
}

/// A fresh page with `parts` loaded on `platform`'s execution provider; on WebGPU the
/// `gpu_outputs` stay on the GPU (a decoder's cache, fed back without a round trip).
fn load_parts(
    host: &BrowserHost,
    platform: Platform,
    parts: &[(String, PathBuf)],
    parallel: bool,
    gpu_outputs: &[String],
    timeout: Duration,
) -> Result<Loaded, StepError> {
    // A fresh page per load: nothing of the previous model stays in memory.
    host.driver
        .navigate(&host.server.url("/"), crate::PAGE_TIMEOUT)
        .map_err(|e| ("page", e))?;
    let part_urls: Vec<Value> = parts
        .iter()
        .map(|(name, file)| json!({"name": name, "url": host.server.serve_model(name, file)}))
        .collect();
    step(
        host,
        "load",
        "load",
        json!({
            "ep": ep_of(platform),
            "webnnDevice": webnn_device(host, platform),
            "numThreads": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "parallel": parallel,
            "parts": part_urls,
            "gpuOutputs": gpu_outputs,
        }),
        timeout,
    )
}

fn ep_of(platform: Platform) -> &'static str {
    match platform {
        Platform::Webgpu => "webgpu",
        Platform::Webnn => "webnn",
        _ => "wasm",
    }
}

fn webnn_device(host: &BrowserHost, platform: Platform) -> Option<&'static str> {
    (platform == Platform::Webnn)
        .then(|| host.environment.webnn.usable_device())
        .flatten()
}

/// The benchmark inputs: the model's own modality, plus text for a model with a text tower
/// beside another modality (CLIP).
fn generate_inputs(
    combo: &Combination,
    parts: &[(String, PathBuf)],
) -> Result<Vec<Inputs>, String> {
    let spec = InputSpec {
        audio_seconds: combo.audio_seconds,
        ..InputSpec::new(combo.batch_size, combo.seq_len)
    };
    let source = &combo.model.source;
    let mut all =
        vec![inputs::generate(source, combo.model.modality, spec).map_err(|e| e.to_string())?];
    if parts.iter().any(|(name, _)| name == "text_model") && !matches!(all[0], Inputs::Text { .. })
    {
        // The text tower beside an image tower takes at most its own context (CLIP's processor
        // pads to 77): --seq-len is for text models and is not recorded for multimodal ones.
        let context = source
            .config()
            .get("text_config")
            .and_then(|t| t.get("max_position_embeddings"))
            .and_then(serde_json::Value::as_u64)
            .map_or(spec.seq_len, |max| spec.seq_len.min(max as usize));
        let text = InputSpec {
            seq_len: context,
            ..spec
        };
        all.push(inputs::generate(source, Modality::Text, text).map_err(|e| e.to_string())?);
    }
    Ok(all)
}

/// The ONNX files of a model the page loads, by part name.
fn check_model(combo: &Combination) -> Result<Vec<(String, PathBuf)>, String> {
    if !crate::is_web_platform(combo.platform) {
        return Err(format!("{} is not a browser platform", combo.platform));
    }
    if combo.precision != Precision::F32 {
        return Err(format!(
            "the ONNX exports run in f32; {} is not available on onnxruntime-web here",
            combo.precision
        ));
    }
    let class = classify_config(combo.model.source.config())
        .map_err(|e| e.to_string())?
        .class;
    if class != ModelClass::Clip {
        check_exported_class(class).map_err(|e| e.to_string())?;
    }
    model_parts(&combo.model.source, class)
}

/// The towers of a two-part export, as transformers.js lays them out.
const CLIP_PARTS: [&str; 2] = ["text_model", "vision_model"];

/// The ONNX parts the page loads for a model, by name (one, or CLIP's two towers).
pub fn model_parts(
    source: &ModelSource,
    class: ModelClass,
) -> Result<Vec<(String, PathBuf)>, String> {
    let c = match source {
        ModelSource::Checkpoint(c) => c,
        ModelSource::RandomInit { .. } => {
            return Err("onnxruntime-web runs ONNX exports; random-weight models have none".into())
        }
    };
    if class == ModelClass::Clip {
        let parts: Vec<(String, PathBuf)> = CLIP_PARTS
            .iter()
            .map(|p| (p.to_string(), c.dir.join("onnx").join(format!("{p}.onnx"))))
            .collect();
        if let Some((_, missing)) = parts.iter().find(|(_, f)| !f.is_file()) {
            return Err(format!(
                "{}: no ONNX export of CLIP's towers ({} is missing; scripts/export_onnx_fixtures.py lays them out)",
                c.dir.display(),
                missing.display()
            ));
        }
        return Ok(parts);
    }
    let file = c.onnx.clone().ok_or_else(|| {
        format!(
            "{}: no ONNX export (onnx/model.onnx or model.onnx)",
            c.dir.display()
        )
    })?;
    if file.with_extension("onnx_data").exists() || file.with_extension("onnx.data").exists() {
        return Err(format!(
            "{}: exports with external data (over 2 GB) are not loaded in the browser",
            file.display()
        ));
    }
    Ok(vec![("model".into(), file)])
}

type StepError = (&'static str, BrowserError);

fn step<T: serde::de::DeserializeOwned>(
    host: &BrowserHost,
    stage: &'static str,
    function: &str,
    arg: Value,
    timeout: Duration,
) -> Result<T, StepError> {
    let value = host
        .driver
        .call(function, arg, timeout)
        .map_err(|e| (stage, e))?;
    serde_json::from_value(value).map_err(|e| {
        (
            stage,
            BrowserError::Page(format!("{function} answered unexpectedly: {e}")),
        )
    })
}

fn measure_on(
    host: &BrowserHost,
    combo: &Combination,
    parts: &[(String, PathBuf)],
    inputs: &[Inputs],
    protocol: &Protocol,
    options: &WebOptions,
) -> Result<WebRun, StepError> {
    let ep = ep_of(combo.platform);
    let webnn_device = webnn_device(host, combo.platform);
    let generation = ia_bench::is_generation_task(&combo.model.task);
    let gpu_outputs = if generation && combo.platform == Platform::Webgpu {
        cache_outputs(&combo.model.source)
    } else {
        Vec::new()
    };
    let loaded = load_parts(
        host,
        combo.platform,
        parts,
        options.parallel_load,
        &gpu_outputs,
        options.step_timeout,
    )?;
    let prompt_len = if generation {
        Some(set_generation(
            host,
            combo,
            &loaded.parts[0],
            &inputs[0],
            options.step_timeout,
        )?)
    } else {
        set_feeds(host, &loaded, inputs, options.step_timeout)?;
        None
    };

    let precompile_ms = if options.precompile {
        Some(step::<f64>(
            host,
            "precompile",
            "precompile",
            Value::Null,
            options.step_timeout,
        )?)
    } else {
        None
    };

    let first: RunResult = step(
        host,
        "first-inference",
        "run",
        json!({"returnOutputs": true}),
        options.step_timeout,
    )?;
    let outputs = decode_outputs(&first).map_err(|e| ("outputs", BrowserError::Page(e)))?;

    // The timed loop's limit grows with the protocol: every iteration may take as long as
    // the first inference did, three times over, plus the minimum duration twice.
    let iterations = (protocol.warmup_iterations + protocol.min_iterations) as f64;
    let timed_timeout = options.step_timeout
        + Duration::from_secs_f64(
            (iterations * first.ms * 3.0 / 1e3).min(3600.0)
                + 2.0 * protocol.min_duration.as_secs_f64(),
        );
    let timed: Timed = step(
        host,
        "timed-iteration",
        "timed",
        json!({
            "warmup": protocol.warmup_iterations,
            "minIterations": protocol.min_iterations,
            "minDurationMs": protocol.min_duration.as_secs_f64() * 1e3,
            "maxIterations": protocol.max_iterations,
        }),
        timed_timeout,
    )?;
    // Read before the sessions are released; the peak is over this browser's life, which is
    // this combination's.
    let memory = crate::processes::browser_memory(host.driver.pid());
    let _ = host
        .driver
        .call("release", Value::Null, Duration::from_secs(30));

    let placement = page::node_placement(&loaded.logs);
    let (executed_ep, fell_back) = executed_ep(ep, &placement);
    let adapter = (combo.platform == Platform::Webgpu)
        .then(|| host.environment.webgpu.adapter.clone())
        .flatten();
    let device = device_label(
        &executed_ep,
        ep,
        fell_back,
        adapter.as_ref(),
        webnn_device,
        loaded.wasm_threads,
        &placement,
    );
    let parameter_count = parts
        .iter()
        .map(|(_, f)| ia_models::graph_weights::parameter_count(&combo.model.source, f))
        .sum::<Result<u64, _>>()
        .map_err(|e| ("load", BrowserError::Page(e.to_string())))?;
    let session = SessionInfo {
        engine: ENGINE_NAME.into(),
        engine_version: format!(
            "{ENGINE_NAME} {} ({}) in {}",
            loaded.ort_version,
            loaded.ort_build,
            host.browser()
        ),
        platform: combo.platform,
        device,
        precision: Precision::F32,
        weights: combo.model.source.weights_kind(),
        parameter_count,
        output_names: loaded
            .parts
            .iter()
            .flat_map(|p| p.outputs.iter().map(move |o| format!("{}/{o}", p.name)))
            .collect(),
    };
    let (tokens, cache_location) = match first.generation {
        Some(g) => (g.tokens, Some(g.cache_location)),
        None => (Vec::new(), None),
    };
    if prompt_len.is_some() && timed.generation.is_none() {
        return Err((
            "timed-iteration",
            BrowserError::Page("the page returned no generation timings".into()),
        ));
    }
    let measurement = summarize(
        combo,
        &inputs[0],
        prompt_len,
        session,
        &loaded,
        precompile_ms,
        first.ms,
        protocol,
        timed,
    );
    Ok(WebRun {
        outcome: Outcome::Measured(Box::new(measurement)),
        details: Some(WebDetails {
            browser: "chromium".into(),
            browser_version: host.browser_version().to_string(),
            user_agent: host.environment.user_agent.clone(),
            requested_ep: ep.into(),
            executed_ep,
            fell_back,
            node_placement: placement,
            adapter,
            webnn_device: webnn_device.map(str::to_string),
            wasm_threads: loaded.wasm_threads,
            cross_origin_isolated: host.environment.cross_origin_isolated,
            precompiled: options.precompile,
            precompile_ms,
            parallel_load: options.parallel_load,
            concurrent_sessions: loaded.concurrent_sessions,
            memory,
            part_load_ms: loaded
                .parts
                .iter()
                .map(|p| (p.name.clone(), p.ms))
                .collect(),
        }),
        outputs,
        tokens,
        cache_location,
    })
}

/// Sends each part's inputs: each graph input from the first of `inputs` that provides it.
fn set_feeds(
    host: &BrowserHost,
    loaded: &Loaded,
    inputs: &[Inputs],
    timeout: Duration,
) -> Result<(), StepError> {
    let mut feeds = serde_json::Map::new();
    for part in &loaded.parts {
        let mut tensors = serde_json::Map::new();
        for name in &part.inputs {
            let found = inputs.iter().map(|i| i.graph_input(name)).enumerate();
            let mut tensor = None;
            for (i, t) in found {
                match t {
                    Ok(t) => {
                        tensor = Some(encode_input(t));
                        break;
                    }
                    Err(e) if i + 1 == inputs.len() => {
                        return Err(("inputs", BrowserError::Page(e.to_string())))
                    }
                    Err(_) => {}
                }
            }
            if let Some(t) = tensor {
                tensors.insert(name.clone(), t);
            }
        }
        feeds.insert(part.name.clone(), Value::Object(tensors));
    }
    let _: bool = step(host, "inputs", "setFeeds", Value::Object(feeds), timeout)?;
    Ok(())
}

/// The cache outputs a decoder export of this config returns (`present.{i}.key|value`).
fn cache_outputs(source: &ModelSource) -> Vec<String> {
    let layers = source
        .config()
        .get("num_hidden_layers")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    (0..layers)
        .flat_map(|i| ["key", "value"].map(|kind| format!("present.{i}.{kind}")))
        .collect()
}

/// Reads the decoder export's conventions from the loaded graph and sends the page what it
/// generates from: the prompt (the first row of the text inputs), the batch, the number of
/// new tokens and the cache layout. Returns the prompt length.
fn set_generation(
    host: &BrowserHost,
    combo: &Combination,
    part: &LoadedPart,
    inputs: &Inputs,
    timeout: Duration,
) -> Result<usize, StepError> {
    let invalid = |stage, e: String| (stage, BrowserError::Page(e));
    let io: Vec<(String, Option<Vec<i64>>)> = part
        .inputs
        .iter()
        .cloned()
        .zip(part.input_dims.iter().cloned())
        .collect();
    let graph =
        DecoderGraph::from_io(&io, &part.outputs).map_err(|e| invalid("load", e.to_string()))?;
    let context = decoder_context(&combo.model.source, ENGINE_NAME)
        .map_err(|e| invalid("load", e.to_string()))?;
    let Inputs::Text {
        input_ids, seq_len, ..
    } = inputs
    else {
        return Err(invalid("inputs", "a decoder takes text inputs".into()));
    };
    if combo.new_tokens == 0 {
        return Err(invalid("inputs", "new tokens must be at least 1".into()));
    }
    if seq_len + combo.new_tokens > context {
        return Err(invalid(
            "inputs",
            format!(
                "{seq_len} prompt + {} new tokens exceed the model's context of {context}",
                combo.new_tokens
            ),
        ));
    }
    let slots: Vec<Value> = graph
        .slots
        .iter()
        .map(|s| json!({"input": s.input, "output": s.output, "heads": s.heads, "headDim": s.head_dim}))
        .collect();
    let _: bool = step(
        host,
        "inputs",
        "setGeneration",
        json!({
            "prompt": &input_ids[..*seq_len],
            "batch": combo.batch_size,
            "newTokens": combo.new_tokens,
            "positionIds": graph.has_position_ids,
            "cacheBranch": graph.has_cache_branch,
            "slots": slots,
        }),
        timeout,
    )?;
    Ok(*seq_len)
}

/// The harness's `Measurement` from the page's raw samples. For a decoder (`prompt_len` set)
/// one timed iteration is one generation of `combo.new_tokens` tokens for each of
/// `batch_size` copies of the prompt: throughput and LLM metrics as the native harness
/// computes them.
#[allow(clippy::too_many_arguments)]
fn summarize(
    combo: &Combination,
    inputs: &Inputs,
    prompt_len: Option<usize>,
    session: SessionInfo,
    loaded: &Loaded,
    precompile_ms: Option<f64>,
    first_inference_ms: f64,
    protocol: &Protocol,
    timed: Timed,
) -> Measurement {
    let run = TimedRun {
        session,
        // Precompiling is part of getting the model ready, so it counts as loading.
        load_time_ms: loaded.load_ms + precompile_ms.unwrap_or(0.0),
        first_inference_ms,
        warmup_iterations: protocol.warmup_iterations,
        samples_ms: timed.samples,
        timed_duration_s: timed.duration_ms / 1e3,
        // The browser's memory is not this process's; it is not claimed.
        peak_rss_bytes: None,
        peak_rss_per_combination: false,
        harness_overhead_ns: timed.overhead_ns,
    };
    let generation = prompt_len
        .zip(timed.generation.as_ref())
        .map(|(prompt_len, g)| {
            GenerationMetrics::from_samples(
                prompt_len,
                combo.new_tokens,
                combo.batch_size,
                &g.ttft_ms,
                &g.prefill_ms,
                &g.step_ms,
            )
        });
    let work = match generation {
        Some(g) => Work::generation(combo.batch_size, g),
        None => Work::forward(combo.scenario, inputs),
    };
    Measurement::new(run, work)
}

/// Where the nodes ran, and whether the requested EP ran none of them.
fn executed_ep(requested: &str, placement: &BTreeMap<String, u64>) -> (String, bool) {
    if placement.is_empty() {
        return ("unconfirmed (no node placement in the log)".into(), false);
    }
    let mut platforms: Vec<&str> = placement
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(p, _)| page::web_platform_of(p))
        .collect();
    platforms.sort_by_key(|p| (*p != requested, p.to_string()));
    platforms.dedup();
    let fell_back = requested != "wasm" && !platforms.contains(&requested);
    (platforms.join("+"), fell_back)
}

fn device_label(
    executed: &str,
    requested: &str,
    fell_back: bool,
    adapter: Option<&page::Adapter>,
    webnn_device: Option<&str>,
    threads: u32,
    placement: &BTreeMap<String, u64>,
) -> String {
    let nodes = placement
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let what = if fell_back {
        format!("{executed} (fell back from {requested})")
    } else {
        match (requested, adapter, webnn_device) {
            ("webgpu", Some(a), _) => format!("{executed}: {}", a.summary()),
            ("webnn", _, Some(d)) => format!("{executed}: {d} context"),
            _ => format!("{executed}: {threads} threads"),
        }
    };
    format!("{what} [nodes: {nodes}]")
}

fn encode_input(t: GraphInput<'_>) -> Value {
    match t {
        GraphInput::Int64 { shape, data } => {
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            json!({"type": "int64", "dims": shape, "data": B64.encode(bytes)})
        }
        GraphInput::Float32 { shape, data } => {
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            json!({"type": "float32", "dims": shape, "data": B64.encode(bytes)})
        }
    }
}

fn decode_outputs(run: &RunResult) -> Result<Outputs, String> {
    run.outputs
        .iter()
        .map(|(name, t)| {
            let bytes = B64
                .decode(&t.data)
                .map_err(|e| format!("output {name} is not base64: {e}"))?;
            let values: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if values.len() != t.dims.iter().product::<usize>() {
                return Err(format!(
                    "output {name} has {} values for shape {:?}",
                    values.len(),
                    t.dims
                ));
            }
            Ok((name.clone(), (t.dims.clone(), values)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fallback_to_wasm_is_named() {
        let placed = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(p, n)| (p.to_string(), *n))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            executed_ep(
                "webgpu",
                &placed(&[("JsExecutionProvider", 97), ("CPUExecutionProvider", 66)])
            ),
            ("webgpu+wasm".into(), false)
        );
        assert_eq!(
            executed_ep("webgpu", &placed(&[("CPUExecutionProvider", 142)])),
            ("wasm".into(), true)
        );
        assert_eq!(
            executed_ep("wasm", &placed(&[("CPUExecutionProvider", 142)])),
            ("wasm".into(), false)
        );
        assert!(executed_ep("webnn", &BTreeMap::new())
            .0
            .starts_with("unconfirmed"));
    }
}
