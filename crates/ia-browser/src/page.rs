//! What the page's steps return (`page/bench.js`), typed, and what the Rust side reads out of
//! it: which execution provider onnxruntime-web actually placed the nodes on.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `ia.describeEnvironment()`: the browser and what it exposes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Environment {
    pub user_agent: String,
    pub cross_origin_isolated: bool,
    pub hardware_concurrency: u32,
    pub webgpu: WebGpu,
    pub webnn: WebNn,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WebGpu {
    pub present: bool,
    pub adapter: Option<Adapter>,
    /// Why there is no adapter, in the browser's words.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Adapter {
    pub vendor: String,
    pub architecture: String,
    pub device: String,
    pub description: String,
    pub is_fallback_adapter: Option<bool>,
    pub features: Vec<String>,
}

impl Adapter {
    /// "google swiftshader (fallback adapter)".
    pub fn summary(&self) -> String {
        let mut s = [
            &self.vendor,
            &self.architecture,
            &self.device,
            &self.description,
        ]
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(" ");
        if s.is_empty() {
            s = "unnamed adapter".into();
        }
        if self.is_fallback_adapter == Some(true) {
            s.push_str(" (fallback adapter)");
        }
        s
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WebNn {
    pub present: bool,
    /// createContext({deviceType}) for cpu, gpu and npu.
    pub contexts: BTreeMap<String, WebNnContext>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WebNnContext {
    pub ok: bool,
    pub error: Option<String>,
}

impl WebNn {
    /// The first device type the browser made a context for (gpu, then npu, then cpu).
    pub fn usable_device(&self) -> Option<&'static str> {
        ["gpu", "npu", "cpu"]
            .into_iter()
            .find(|d| self.contexts.get(*d).is_some_and(|c| c.ok))
    }

    /// Why WebNN cannot run here, in the browser's words.
    pub fn unavailable_reason(&self) -> String {
        if let Some(e) = &self.error {
            return e.clone();
        }
        // Device types that failed with the same message are named together.
        let mut by_error: Vec<(&str, Vec<&str>)> = Vec::new();
        for (device, c) in &self.contexts {
            let e = c.error.as_deref().unwrap_or("no error text");
            match by_error.iter_mut().find(|(m, _)| *m == e) {
                Some((_, devices)) => devices.push(device),
                None => by_error.push((e, vec![device])),
            }
        }
        let parts: Vec<String> = by_error
            .iter()
            .map(|(e, devices)| format!("{}: {e}", devices.join(", ")))
            .collect();
        format!("WebNN createContext failed for {}", parts.join("; "))
    }
}

/// `ia.load(...)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Loaded {
    pub load_ms: f64,
    pub ort_version: String,
    /// The onnxruntime-web bundle the page imported for this EP, e.g. `ort.webgpu.min.mjs`.
    pub ort_build: String,
    /// The parts' sessions were created at the same time.
    pub concurrent_sessions: bool,
    pub wasm_threads: u32,
    pub parts: Vec<LoadedPart>,
    pub logs: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadedPart {
    pub name: String,
    pub ms: f64,
    pub inputs: Vec<String>,
    /// Each input's dims (-1 for a symbolic one), None where the runtime does not say.
    pub input_dims: Vec<Option<Vec<i64>>>,
    pub outputs: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EncodedTensor {
    pub dims: Vec<usize>,
    /// Little-endian f32, base64.
    pub data: String,
}

/// `ia.timed(...)`: N iterations timed in the page.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timed {
    pub samples: Vec<f64>,
    pub duration_ms: f64,
    /// For a decoder: each iteration's generation timings.
    #[serde(default)]
    pub generations: Vec<GenerationTimes>,
    /// With `returnOutputs`: "part/output" -> tensor (float32 outputs) of the last iteration.
    #[serde(default)]
    pub outputs: BTreeMap<String, EncodedTensor>,
    /// With `returnOutputs`, for a decoder: the new tokens of each row.
    #[serde(default)]
    pub tokens: Vec<Vec<u32>>,
    /// With `returnOutputs`, for a decoder: where the KV cache stayed between steps
    /// ("gpu-buffer" or "cpu").
    #[serde(default)]
    pub cache_location: Option<String>,
}

/// One generation in the page, timed as `ia_engine::generation` times one.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationTimes {
    /// Prefill plus choosing the first new token.
    pub ttft_ms: f64,
    pub prefill_ms: f64,
    /// Each new token after the first.
    pub step_ms: Vec<f64>,
}

/// How many nodes ONNX Runtime placed on each execution provider, from its own verbose log
/// ("Node placements" in session_state.cc), summed over the parts of a model.
pub fn node_placement(logs: &[String]) -> BTreeMap<String, u64> {
    let mut placed = BTreeMap::new();
    for line in logs {
        let Some(rest) = line
            .split_once("placed on [")
            .map(|(_, rest)| rest)
            .filter(|_| line.contains("VerifyEachNodeIsAssignedToAnEp"))
        else {
            continue;
        };
        let Some((provider, tail)) = rest.split_once(']') else {
            continue;
        };
        let count = tail
            .rsplit_once("Number of nodes:")
            .and_then(|(_, n)| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        *placed.entry(provider.to_string()).or_insert(0) += count;
    }
    placed
}

/// The web platform an onnxruntime-web execution provider runs on. The WebGPU EP is
/// `JsExecutionProvider` in the JSEP build and `WebGpuExecutionProvider` in the native one;
/// the CPU EP of a wasm build is wasm.
pub fn web_platform_of(provider: &str) -> &str {
    match provider {
        "JsExecutionProvider" | "WebGpuExecutionProvider" => "webgpu",
        "WebNNExecutionProvider" => "webnn",
        "CPUExecutionProvider" => "wasm",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_read_from_onnxruntime_logs() {
        let logs = [
            "[error] 2026-11-24 [V:onnxruntime:, session_state.cc:1377 VerifyEachNodeIsAssignedToAnEp] Node placements",
            "[error] 2026-11-24 [V:onnxruntime:, session_state.cc:1383 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [JsExecutionProvider]. Number of nodes: 97",
            "[error] 2026-11-24 [V:onnxruntime:, session_state.cc:1383 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 66",
            "[error] 2026-11-24 [V:onnxruntime:, session_state.cc:1380 VerifyEachNodeIsAssignedToAnEp]  All nodes placed on [CPUExecutionProvider]. Number of nodes: 10",
            "[log] unrelated placed on [Nothing]",
        ]
        .map(String::from);
        let placed = node_placement(&logs);
        assert_eq!(placed.get("JsExecutionProvider"), Some(&97));
        assert_eq!(placed.get("CPUExecutionProvider"), Some(&76));
        assert_eq!(placed.len(), 2);
        assert_eq!(web_platform_of("JsExecutionProvider"), "webgpu");
    }
}
