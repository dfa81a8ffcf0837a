//! A model loaded in a fresh page, as the benchmark harness drives it: the page loads the
//! model's ONNX parts with the platform's execution provider and, when asked, runs N
//! iterations and returns their `performance.now()` timings (`page/bench.js`). The protocol
//! (first inference, warm-up, how many timed iterations, the statistics) is the harness's
//! (`ia-bench`), the same as for every in-process engine.

use crate::page::{self, Loaded, LoadedPart, Timed};
use crate::seq2seq::{PageSeq2Seq, Seq2SeqTarget};
use crate::{find_ort_web, BrowserError, BrowserHost, ENGINE_NAME};
use base64::Engine as _;
use ia_engine::exported_decoder::{check_exported_class, decoder_context, DecoderGraph};
use ia_engine::exported_seq2seq::is_seq2seq;
use ia_engine::features::GraphFeeds;
use ia_engine::inputs::{self, GraphInput, InputSpec};
use ia_engine::{
    Bandwidth, DispatchCost, EngineError, GenerationTiming, Inputs, LoadFailure, LoadVariant,
    MatmulRate, Precision, SessionInfo, TimedIterations, TimedWorkload,
};
use ia_hardware::Platform;
use ia_models::{Modality, Model, ModelClass, ModelSource};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Outputs by name ("part/output" in a measurement): shape and values.
pub type Outputs = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Settings of the browser runs that are not part of a combination.
#[derive(Debug, Clone, Copy)]
pub struct WebOptions {
    /// Limit of each browser step (load, one inference); a call of N iterations gets more.
    pub step_timeout: Duration,
    /// WebAssembly threads of onnxruntime-web; None leaves its own choice (half the logical
    /// CPUs, at most 4), which keeps a core for the page's other threads. With every core
    /// computing, any other thread of the browser preempts one, and the other waits for it
    /// until the next scheduler tick: on a 2-core machine a third to a half of the iterations
    /// of a tiny decoder took 4-12 ms longer than the rest.
    pub wasm_threads: Option<u32>,
}

impl Default for WebOptions {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(180),
            wasm_threads: None,
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

/// What one iteration in the page does.
#[derive(Debug, Clone, Copy)]
pub enum WebWork<'a> {
    /// One forward pass of every part; each graph input is taken from the first of these
    /// that provides it (CLIP's text tower reads the text inputs, its vision tower the image).
    /// A text tower none of them feeds gets generated text of `text_len` tokens.
    Forward {
        inputs: &'a [Inputs],
        text_len: usize,
    },
    /// A greedy generation of `new_tokens` tokens for `batch` copies of `prompt`.
    Generation {
        prompt: &'a [u32],
        batch: usize,
        new_tokens: usize,
    },
}

/// A model to load in the page, and what its iterations do.
#[derive(Debug, Clone, Copy)]
pub struct WebRequest<'a> {
    pub model: &'a Model,
    pub platform: Platform,
    pub precision: Precision,
    pub variant: LoadVariant,
    pub work: WebWork<'a>,
}

/// n of the web platforms' calibration products: half the engines' 1024, since a software
/// WebGPU adapter (SwiftShader, about 0.3 GFLOP/s here) takes 7 s for one 1024 product and
/// the protocol times at least seven.
pub const WEB_MATMUL_SIZE: usize = 512;

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

    /// The platform probe's verdict on a web platform, except that a browser that is
    /// installed but did not start is not an absent platform: its combinations go on to
    /// [`WebBench::load`], which fails them at "browser-start".
    pub fn availability(&self, probed: Result<(), String>) -> Result<(), String> {
        match &self.start_error {
            Some(BrowserError::NotInstalled(_)) | None => probed,
            Some(_) => Ok(()),
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

    /// The started browser, for a page that keeps it.
    pub(crate) fn into_host(mut self) -> Result<BrowserHost, BrowserError> {
        self.host()
            .map_err(|e| BrowserError::Start(e.to_string()))?;
        Ok(self.host.take().expect("started above"))
    }

    /// Loads `request`'s model in a fresh page with its inputs set (and precompiled, when the
    /// variant asks). The browser goes with the returned target: the next load starts a new
    /// one (about 1 s). A browser that is not installed, a platform, precision or model the
    /// page cannot run are refusals (`Unsupported`); anything else fails at its stage.
    pub fn load(&mut self, request: &WebRequest<'_>) -> Result<WebTarget, LoadFailure> {
        let start_failure = match self.host() {
            Ok(_) => None,
            Err(BrowserError::NotInstalled(reason)) => {
                return Err(EngineError::Unsupported(reason.clone()).into())
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = start_failure {
            return Err(LoadFailure {
                stage: "browser-start",
                error: EngineError::Runtime(e),
            });
        }
        let parts = check_model(request).map_err(EngineError::Unsupported)?;
        let host = self.host.take().expect("started above");
        if host.ort_dist.is_none() {
            let reason = find_ort_web().err().unwrap_or_default();
            return Err(EngineError::Unsupported(reason).into());
        }
        WebTarget::load(host, request, &parts, self.options).map_err(|(stage, e)| LoadFailure {
            stage,
            error: EngineError::Runtime(crate::one_line(&e.to_string())),
        })
    }

    /// The matmul calibration (`hardware --calibrate`) on a web platform: the engines' one
    /// protocol and one-MatMul graph ([`ia_engine::calibration`]), each product timed in the
    /// page, at n = [`WEB_MATMUL_SIZE`]; the device is the browser that ran it.
    pub fn calibrate_matmul(&mut self, platform: Platform) -> Result<MatmulRate, BrowserError> {
        use ia_engine::calibration::{matmul_onnx, operand, rate_of_products};
        let n = WEB_MATMUL_SIZE;
        let (a, b) = (operand(n, 0.5), operand(n, -0.25));
        let (flops_per_s, samples) = self.time_calibration_graph(
            platform,
            &matmul_onnx(n),
            &[("a", [n, n], &a), ("b", [n, n], &b)],
            |call| rate_of_products(n, call),
        )?;
        Ok(MatmulRate {
            device: self.browser.clone().unwrap_or_default(),
            size: n,
            flops_per_s,
            samples,
        })
    }

    /// The dispatch calibration on a web platform: the engines' chains of tiny products
    /// ([`ia_engine::calibration`]), each call timed in the page; each chain in a page of its
    /// own, one after the other, in every round.
    pub fn calibrate_dispatch(&mut self, platform: Platform) -> Result<DispatchCost, BrowserError> {
        use ia_engine::calibration::{
            chain_onnx, chain_operands, dispatch_in_rounds, median_call, DISPATCH_OPS,
            DISPATCH_WIDTH,
        };
        let device = self.browser.clone().unwrap_or_default();
        let w = DISPATCH_WIDTH;
        let (x, weights) = chain_operands(w);
        let inputs = [("x", [1, w], &x[..]), ("w", [w, w], &weights[..])];
        let mut chain = |ops| {
            self.time_calibration_graph(platform, &chain_onnx(ops, w), &inputs, |call| {
                median_call(call)
            })
        };
        dispatch_in_rounds(device, || Ok((chain(1)?, chain(DISPATCH_OPS)?)))
    }

    /// The bandwidth calibration on a web platform whose memory is not the host's (WebGPU):
    /// the engines' chains of additions over arrays the graph makes on the device
    /// ([`ia_engine::calibration`]), each call timed in the page; each chain in a page of its
    /// own, one after the other, in every round.
    pub fn calibrate_bandwidth(&mut self, platform: Platform) -> Result<Bandwidth, BrowserError> {
        use ia_engine::calibration::{
            addition_chain_onnx, bandwidth_in_rounds, median_call, STREAM_ELEMENTS, STREAM_INPUTS,
            STREAM_OPS,
        };
        let device = self.browser.clone().unwrap_or_default();
        let n = STREAM_ELEMENTS;
        let [(x, xv), (b, bv)] = STREAM_INPUTS;
        let (xv, bv) = ([xv], [bv]);
        let inputs = [(x, [1, 1], &xv[..]), (b, [1, 1], &bv[..])];
        let mut chain = |ops| {
            self.time_calibration_graph(platform, &addition_chain_onnx(ops, n), &inputs, |call| {
                median_call(call)
            })
            .map_err(|e| EngineError::Runtime(e.to_string()))
        };
        bandwidth_in_rounds(device, n, || Ok((chain(1)?, chain(STREAM_OPS)?)))
            .map_err(|e| BrowserError::Page(e.to_string()))
    }

    /// Loads a calibration graph (`onnx`, its f32 `inputs`) in a page and runs `protocol`
    /// over single calls of it, each timed in the page.
    fn time_calibration_graph<T>(
        &mut self,
        platform: Platform,
        onnx: &[u8],
        inputs: &[(&str, [usize; 2], &[f32])],
        protocol: impl FnOnce(&mut dyn FnMut() -> Result<f64, EngineError>) -> Result<T, EngineError>,
    ) -> Result<T, BrowserError> {
        let dir = tempfile::tempdir().map_err(|e| BrowserError::Server(e.to_string()))?;
        let file = dir.path().join("calibration.onnx");
        std::fs::write(&file, onnx).map_err(|e| BrowserError::Server(e.to_string()))?;
        let feeds = inputs
            .iter()
            .map(|(name, shape, data)| {
                let input = GraphInput::Float32 {
                    shape: shape.to_vec(),
                    data: (*data).into(),
                };
                (name.to_string(), input)
            })
            .collect();
        self.with_graph(platform, &file, feeds, |host, timeout| {
            protocol(&mut || page_call_seconds(host, timeout))
                .map_err(|e| ("timed", BrowserError::Page(e.to_string())))
        })
    }

    /// One inference of one ONNX graph on a web platform with the given feeds, outputs by
    /// name. For `run` and for accuracy checks of graphs the benchmark does not drive itself
    /// (decoder exports, fed their empty cache).
    pub fn run_graph(
        &mut self,
        platform: Platform,
        file: &std::path::Path,
        feeds: Vec<(String, GraphInput<'_>)>,
    ) -> Result<Outputs, BrowserError> {
        let outputs = self.with_graph(platform, file, feeds, |host, timeout| {
            let run: Timed = step(
                host,
                "first-inference",
                "timed",
                json!({"iterations": 1, "returnOutputs": true}),
                timeout,
            )?;
            decode_outputs(&run).map_err(|e| ("outputs", BrowserError::Page(e)))
        })?;
        Ok(outputs
            .into_iter()
            .map(|(k, v)| (k.trim_start_matches("model/").to_string(), v))
            .collect())
    }

    /// Loads one graph in a fresh page, sets its feeds (those it does not declare are left
    /// out: OPT takes no position_ids), runs `with` on it, and clears the served model
    /// whatever happened.
    fn with_graph<T>(
        &mut self,
        platform: Platform,
        file: &std::path::Path,
        feeds: Vec<(String, GraphInput<'_>)>,
        with: impl FnOnce(&BrowserHost, Duration) -> Result<T, StepError>,
    ) -> Result<T, BrowserError> {
        let options = self.options;
        let timeout = options.step_timeout;
        let host = self
            .host()
            .map_err(|e| BrowserError::Start(e.to_string()))?;
        let parts = [("model".to_string(), file.to_path_buf())];
        let ran = (|| {
            let loaded = load_parts(host, platform, &parts, false, &[], options)?;
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
            with(host, timeout)
        })();
        host.server.clear_models();
        ran.map_err(|(_, e)| e)
    }
}

/// The seconds of one call of the page's loaded graph, as the page times it
/// (`performance.now()` around the run, its outputs not sent back).
fn page_call_seconds(host: &BrowserHost, timeout: Duration) -> Result<f64, EngineError> {
    let timed: Timed = step(
        host,
        "timed",
        "timed",
        json!({"iterations": 1, "returnOutputs": false}),
        timeout,
    )
    .map_err(|(_, e)| EngineError::Runtime(crate::one_line(&e.to_string())))?;
    timed
        .samples
        .first()
        .map(|ms| ms / 1e3)
        .ok_or_else(|| EngineError::Runtime("the page timed no call".into()))
}

/// A model loaded in a page with its inputs, owning the browser it runs in.
pub struct WebTarget {
    host: Arc<BrowserHost>,
    /// An encoder-decoder's work (Whisper, T5), decoded in Rust over the page's graphs.
    seq2seq: Option<Seq2SeqTarget>,
    info: SessionInfo,
    loaded: Loaded,
    requested_ep: &'static str,
    webnn_device: Option<&'static str>,
    adapter: Option<page::Adapter>,
    placement: BTreeMap<String, u64>,
    executed_ep: String,
    fell_back: bool,
    variant: LoadVariant,
    precompile_ms: Option<f64>,
    step_timeout: Duration,
    /// The first iteration's time; later calls get a limit that grows with it.
    first_ms: Option<f64>,
    /// "part/output" -> (shape, values) of the first inference.
    pub outputs: Outputs,
    /// For a decoder: the new tokens of each row in the first inference.
    pub tokens: Vec<Vec<u32>>,
    /// For a decoder: where the KV cache stayed between steps ("gpu-buffer" or "cpu").
    pub cache_location: Option<String>,
}

impl WebTarget {
    fn load(
        host: BrowserHost,
        request: &WebRequest<'_>,
        parts: &[(String, PathBuf)],
        options: WebOptions,
    ) -> Result<Self, StepError> {
        let timeout = options.step_timeout;
        let platform = request.platform;
        let requested_ep = ep_of(platform);
        let webnn_device = webnn_device(&host, platform);
        let gpu_outputs = match request.work {
            WebWork::Generation { .. }
                if platform == Platform::Webgpu && !is_seq2seq(request.model.class) =>
            {
                cache_outputs(&request.model.source)
            }
            _ => Vec::new(),
        };
        let loaded = load_parts(
            &host,
            platform,
            parts,
            request.variant.parallel_load,
            &gpu_outputs,
            options,
        )?;
        let seq2seq = is_seq2seq(request.model.class);
        match request.work {
            _ if seq2seq => {}
            WebWork::Forward { inputs, text_len } => {
                let inputs = with_text_tower(request.model, parts, inputs, text_len)
                    .map_err(|e| ("inputs", BrowserError::Page(e)))?;
                let feeds = GraphFeeds::for_model(request.model)
                    .map_err(|e| ("inputs", BrowserError::Page(e.to_string())))?;
                set_feeds(&host, &loaded, &feeds, &inputs, timeout)?
            }
            WebWork::Generation {
                prompt,
                batch,
                new_tokens,
            } => set_generation(
                &host,
                request.model,
                &loaded.parts[0],
                prompt,
                batch,
                new_tokens,
                timeout,
            )?,
        }
        let precompile_ms = if request.variant.precompile {
            Some(step::<f64>(
                &host,
                "precompile",
                "precompile",
                Value::Null,
                timeout,
            )?)
        } else {
            None
        };
        let placement = page::node_placement(&loaded.logs);
        let (executed_ep, fell_back) = executed_ep(requested_ep, &placement);
        let adapter = (platform == Platform::Webgpu)
            .then(|| host.environment.webgpu.adapter.clone())
            .flatten();
        let device = device_label(
            &executed_ep,
            requested_ep,
            fell_back,
            adapter.as_ref(),
            webnn_device,
            loaded.wasm_threads,
            &placement,
        );
        // The checkpoint's own count once (not once per part), else the graphs holding
        // distinct weights (an encoder-decoder's decoder with past repeats the decoder's).
        let counted: Vec<&str> = if seq2seq {
            ia_engine::exported_seq2seq::COUNTED_PARTS.to_vec()
        } else {
            parts.iter().map(|(name, _)| name.as_str()).collect()
        };
        let parameter_count =
            ia_engine::memory::parts_parameters(&request.model.source, parts, &counted)
                .map_err(|e| ("load", BrowserError::Page(e.to_string())))?;
        let info = SessionInfo {
            engine: ENGINE_NAME.into(),
            engine_version: format!(
                "{ENGINE_NAME} {} ({}) in {}",
                loaded.ort_version,
                loaded.ort_build,
                host.browser()
            ),
            platform,
            device,
            precision: Precision::F32,
            weights: request.model.source.weights_kind(),
            parameter_count,
            output_names: loaded
                .parts
                .iter()
                .flat_map(|p| p.outputs.iter().map(move |o| format!("{}/{o}", p.name)))
                .collect(),
        };
        let host = Arc::new(host);
        let seq2seq = if seq2seq {
            let page = PageSeq2Seq::loaded(host.clone(), parts, request.model.config(), timeout)
                .map_err(|e| ("load", BrowserError::Page(e.to_string())))?;
            Some(
                Seq2SeqTarget::new(page, request.model, request.work, info.clone())
                    .map_err(|e| ("load", BrowserError::Page(e.to_string())))?,
            )
        } else {
            None
        };
        Ok(Self {
            host,
            seq2seq,
            info,
            loaded,
            requested_ep,
            webnn_device,
            adapter,
            placement,
            executed_ep,
            fell_back,
            variant: request.variant,
            precompile_ms,
            step_timeout: timeout,
            first_ms: None,
            outputs: Outputs::new(),
            tokens: Vec::new(),
            cache_location: None,
        })
    }

    /// How the result was obtained; the browser's peak memory is read now (its peak over
    /// the browser's life, which is this target's).
    pub fn details(&self) -> WebDetails {
        let host = &self.host;
        WebDetails {
            browser: "chromium".into(),
            browser_version: host.browser_version().to_string(),
            user_agent: host.environment.user_agent.clone(),
            requested_ep: self.requested_ep.into(),
            executed_ep: self.executed_ep.clone(),
            fell_back: self.fell_back,
            node_placement: self.placement.clone(),
            adapter: self.adapter.clone(),
            webnn_device: self.webnn_device.map(str::to_string),
            wasm_threads: self.loaded.wasm_threads,
            cross_origin_isolated: host.environment.cross_origin_isolated,
            precompiled: self.variant.precompile,
            precompile_ms: self.precompile_ms,
            parallel_load: self.variant.parallel_load,
            concurrent_sessions: self.loaded.concurrent_sessions,
            memory: crate::processes::browser_memory(host.driver.pid()),
            part_load_ms: self
                .loaded
                .parts
                .iter()
                .map(|p| (p.name.clone(), p.ms))
                .collect(),
        }
    }
}

impl TimedWorkload for WebTarget {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run_timed(&mut self, iterations: usize) -> Result<TimedIterations, EngineError> {
        if let Some(seq2seq) = &mut self.seq2seq {
            return seq2seq.run_timed(iterations);
        }
        let first = self.first_ms.is_none();
        // A call may take as long as the first inference did per iteration, three times
        // over; the first call gets the step limit.
        let timeout = self.step_timeout
            + Duration::from_secs_f64(
                (iterations as f64 * self.first_ms.unwrap_or(0.0) * 3.0 / 1e3).min(3600.0),
            );
        let timed: Timed = step(
            &self.host,
            "timed",
            "timed",
            json!({"iterations": iterations, "returnOutputs": first}),
            timeout,
        )
        .map_err(|(_, e)| EngineError::Runtime(crate::one_line(&e.to_string())))?;
        if first {
            self.first_ms = timed.samples.first().copied();
            self.outputs = decode_outputs(&timed).map_err(EngineError::Runtime)?;
            self.tokens = timed.tokens.clone();
            self.cache_location = timed.cache_location.clone();
        }
        Ok(TimedIterations {
            samples_ms: timed.samples,
            duration_ms: timed.duration_ms,
            generations: timed
                .generations
                .into_iter()
                .map(|g| GenerationTiming {
                    ttft_ms: g.ttft_ms,
                    prefill_ms: g.prefill_ms,
                    step_ms: g.step_ms,
                    image_encode_ms: None,
                    image_tokens: 0,
                })
                .collect(),
        })
    }

    fn timing_overhead_ns(&mut self) -> Result<f64, EngineError> {
        step(
            &self.host,
            "overhead",
            "overhead",
            Value::Null,
            self.step_timeout,
        )
        .map_err(|(_, e)| EngineError::Runtime(e.to_string()))
    }

    /// The page's fetch and session creation; precompiling is part of getting the model
    /// ready, so it counts as loading.
    fn load_time_ms(&self) -> Option<f64> {
        Some(self.loaded.load_ms + self.precompile_ms.unwrap_or(0.0))
    }

    /// The browser's memory is not this process's: it is reported in [`WebDetails`].
    fn in_process(&self) -> bool {
        false
    }
}

/// The forward inputs, plus generated text for a text tower beside another modality's
/// (CLIP) when none of `inputs` is text. The text tower takes at most its own context
/// (CLIP's processor pads to 77): a benchmark's sequence length is for text models.
fn with_text_tower(
    model: &Model,
    parts: &[(String, PathBuf)],
    inputs: &[Inputs],
    text_len: usize,
) -> Result<Vec<Inputs>, String> {
    let mut all = inputs.to_vec();
    let has_text = inputs.iter().any(|i| matches!(i, Inputs::Text { .. }));
    if has_text || !parts.iter().any(|(name, _)| name == "text_model") {
        return Ok(all);
    }
    let batch = inputs.first().map_or(1, Inputs::batch_size);
    let context = model
        .config()
        .get("text_config")
        .and_then(|t| t.get("max_position_embeddings"))
        .and_then(Value::as_u64)
        .map_or(text_len, |max| text_len.min(max as usize));
    all.push(
        inputs::generate(model, Modality::Text, InputSpec::new(batch, context))
            .map_err(|e| e.to_string())?,
    );
    Ok(all)
}

/// A fresh page with `parts` loaded on `platform`'s execution provider; on WebGPU the
/// `gpu_outputs` stay on the GPU (a decoder's cache, fed back without a round trip).
pub(crate) fn load_parts(
    host: &BrowserHost,
    platform: Platform,
    parts: &[(String, PathBuf)],
    parallel: bool,
    gpu_outputs: &[String],
    options: WebOptions,
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
            "numThreads": options.wasm_threads,
            "parallel": parallel,
            "parts": part_urls,
            "gpuOutputs": gpu_outputs,
        }),
        options.step_timeout,
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

/// The ONNX files of a model the page loads, by part name.
fn check_model(request: &WebRequest<'_>) -> Result<Vec<(String, PathBuf)>, String> {
    if !crate::is_web_platform(request.platform) {
        return Err(format!("{} is not a browser platform", request.platform));
    }
    if request.precision != Precision::F32 {
        return Err(format!(
            "the ONNX exports run in f32; {} is not available on onnxruntime-web here",
            request.precision
        ));
    }
    if is_seq2seq(request.model.class) {
        return ia_engine::exported_seq2seq::seq2seq_files(&request.model.source).map_err(
            |e| match e {
                EngineError::Unsupported(reason) => reason,
                other => other.to_string(),
            },
        );
    }
    if request.model.class != ModelClass::Clip {
        check_exported_class(request.model.class).map_err(|e| e.to_string())?;
    }
    model_parts(&request.model.source, request.model.class)
}

/// The ONNX parts the page loads for a model, by name (one, or CLIP's two towers:
/// [`ia_engine::towers::graph_parts`]), short of exports with external data.
pub fn model_parts(
    source: &ModelSource,
    class: ModelClass,
) -> Result<Vec<(String, PathBuf)>, String> {
    let parts = ia_engine::towers::graph_parts(source, class).map_err(|e| match e {
        EngineError::Unsupported(reason) => reason,
        other => other.to_string(),
    })?;
    if let Some((_, file)) = parts.iter().find(|(_, file)| {
        file.with_extension("onnx_data").exists() || file.with_extension("onnx.data").exists()
    }) {
        return Err(format!(
            "{}: exports with external data (over 2 GB) are not loaded in the browser",
            file.display()
        ));
    }
    Ok(parts)
}

pub(crate) type StepError = (&'static str, BrowserError);

pub(crate) fn step<T: serde::de::DeserializeOwned>(
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

/// Sends each part's inputs: each graph input made by the model's `feeds` from the first of
/// `inputs` that provides it.
fn set_feeds(
    host: &BrowserHost,
    loaded: &Loaded,
    feeds: &GraphFeeds,
    inputs: &[Inputs],
    timeout: Duration,
) -> Result<(), StepError> {
    let mut by_part = serde_json::Map::new();
    for part in &loaded.parts {
        let mut tensors = serde_json::Map::new();
        for name in &part.inputs {
            let found = inputs.iter().map(|i| feeds.input(i, name)).enumerate();
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
        by_part.insert(part.name.clone(), Value::Object(tensors));
    }
    let _: bool = step(host, "inputs", "setFeeds", Value::Object(by_part), timeout)?;
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
/// generates from: the prompt, the batch, the number of new tokens and the cache layout.
fn set_generation(
    host: &BrowserHost,
    model: &Model,
    part: &LoadedPart,
    prompt: &[u32],
    batch: usize,
    new_tokens: usize,
    timeout: Duration,
) -> Result<(), StepError> {
    let invalid = |stage, e: String| (stage, BrowserError::Page(e));
    let io: Vec<(String, Option<Vec<i64>>)> = part
        .inputs
        .iter()
        .cloned()
        .zip(part.input_dims.iter().cloned())
        .collect();
    let graph =
        DecoderGraph::from_io(&io, &part.outputs).map_err(|e| invalid("load", e.to_string()))?;
    let context =
        decoder_context(model, ENGINE_NAME).map_err(|e| invalid("load", e.to_string()))?;
    if new_tokens == 0 {
        return Err(invalid("inputs", "new tokens must be at least 1".into()));
    }
    if prompt.len() + new_tokens > context {
        return Err(invalid(
            "inputs",
            format!(
                "{} prompt + {new_tokens} new tokens exceed the model's context of {context}",
                prompt.len()
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
            "prompt": prompt,
            "batch": batch,
            "newTokens": new_tokens,
            "positionIds": graph.has_position_ids,
            "cacheBranch": graph.has_cache_branch,
            "slots": slots,
        }),
        timeout,
    )?;
    Ok(())
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

pub(crate) fn encode_input(t: GraphInput<'_>) -> Value {
    match t {
        GraphInput::Int64 { shape, data } => {
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            json!({"type": "int64", "dims": shape, "data": B64.encode(bytes)})
        }
        GraphInput::Float32 { shape, data } => {
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            json!({"type": "float32", "dims": shape, "data": B64.encode(bytes)})
        }
        GraphInput::Bool { shape, data } => {
            let bytes: Vec<u8> = data.iter().map(|&b| u8::from(b)).collect();
            json!({"type": "bool", "dims": shape, "data": B64.encode(bytes)})
        }
    }
}

fn decode_outputs(run: &Timed) -> Result<Outputs, String> {
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
