//! How the server schedules concurrent generations, measured: the same model served three
//! ways in one process, each under the same closed-loop load over loopback HTTP —
//! * `continuous`: the engine's per-sequence caches (generations join and leave at every step);
//! * `static`: the same engine without them, so queued generations whose prompts have equal
//!   lengths share steps and the others wait for the next round;
//! * `sequential`: one generation at a time.
//!
//! N clients send completions back to back, prompt lengths varying from request to request,
//! for a fixed time per mode. Prints JSON: generations and completion tokens per second,
//! latency p50/p99, and the mean number of sequences per engine pass (from `/metrics`).
//! A `--model` given as a config.json file is built at its real size with seeded random
//! weights (timing only), with `--tokenizer DIR` naming a checkpoint whose tokenizer is used.
//!
//! usage: generations --model DIR|CONFIG.json [--tokenizer DIR] [--clients 8] [--seconds 30]
//!        [--max-tokens 32] [--modes continuous,static,sequential]

mod common;

use common::{flag, open, percentile};
use ia_engine::generation::{SequencePool, TextGenerator};
use ia_engine::{Engine, EngineError, Placement, Precision, SessionInfo};
use ia_serve::{Backend, ServedModel};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The engine as a server sees it, with continuous batching and/or batched decoding hidden.
struct Restricted {
    inner: Box<dyn TextGenerator>,
    batches: bool,
}

impl TextGenerator for Restricted {
    fn info(&self) -> &SessionInfo {
        self.inner.info()
    }
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        self.inner.prefill(prompt)
    }
    fn step(&mut self, token: u32) -> Result<Vec<f32>, EngineError> {
        self.inner.step(token)
    }
    fn max_context(&self) -> usize {
        self.inner.max_context()
    }
    fn eos_tokens(&self) -> Vec<u32> {
        self.inner.eos_tokens()
    }
    fn prefill_batch(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        if prompts.len() > 1 && !self.batches {
            return Err(EngineError::Unsupported("batches hidden".into()));
        }
        self.inner.prefill_batch(prompts)
    }
    fn step_batch(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.inner.step_batch(tokens)
    }
    fn sequence_pool(&mut self) -> Option<&mut dyn SequencePool> {
        None
    }
}

/// Mean of the `ia_batch_size` histogram of `/metrics`.
fn mean_batch(metrics: &str) -> Option<f64> {
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some(value("ia_batch_size_sum")? / value("ia_batch_size_count")?)
}

fn main() {
    ia_native::settle_thread_count();
    let name = flag("--model").expect("--model");
    let clients: usize = flag("--clients").map_or(8, |v| v.parse().expect("--clients"));
    let seconds: f64 = flag("--seconds").map_or(30.0, |v| v.parse().expect("--seconds"));
    let max_tokens: usize = flag("--max-tokens").map_or(32, |v| v.parse().expect("--max-tokens"));
    let modes = flag("--modes").unwrap_or_else(|| "continuous,static,sequential".into());
    let engine = ia_native::NativeEngine::new();
    let at = Placement::new(ia_hardware::Platform::Cpu, Precision::F32);
    let model = open(&name);
    let tokenizer = common::tokenizer(&model);
    let mut report = serde_json::Map::new();
    for mode in modes.split(',') {
        let loaded = engine.load_generator(&model, at).expect("load generator");
        let generator: Box<dyn TextGenerator> = match mode {
            "continuous" => loaded,
            "static" => Box::new(Restricted {
                inner: loaded,
                batches: true,
            }),
            "sequential" => Box::new(Restricted {
                inner: loaded,
                batches: false,
            }),
            other => panic!("unknown mode {other}"),
        };
        let served = vec![ServedModel {
            id: "gen".into(),
            backend: Backend::Generator {
                generator,
                tokenizer: tokenizer.clone(),
                chat_template: None,
            },
        }];
        let base = common::serve(served, 256);
        let agent = common::agent();
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (agent, base) = (agent.clone(), base.clone());
                std::thread::spawn(move || {
                    let mut done = Vec::new();
                    let mut n = 0;
                    while Instant::now() < deadline {
                        // Prompts of 4 to 43 words, different for each client and request.
                        let words = 4 + (c * 7 + n * 13) % 40;
                        let prompt = vec!["hello"; words].join(" ");
                        let body = json!({"model": "gen", "prompt": prompt,
                                          "max_tokens": max_tokens, "temperature": 0});
                        let t = Instant::now();
                        let mut r = agent
                            .post(format!("{base}/v1/completions"))
                            .header("Content-Type", "application/json")
                            .send(body.to_string())
                            .expect("request");
                        let v: Value =
                            serde_json::from_str(&r.body_mut().read_to_string().expect("body"))
                                .expect("json");
                        let tokens = v["usage"]["completion_tokens"].as_u64().expect("usage");
                        done.push((t.elapsed().as_secs_f64() * 1e3, tokens));
                        n += 1;
                    }
                    done
                })
            })
            .collect();
        let results: Vec<(f64, u64)> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect();
        let elapsed = started.elapsed().as_secs_f64();
        let metrics = agent
            .get(format!("{base}/metrics"))
            .call()
            .expect("metrics")
            .body_mut()
            .read_to_string()
            .expect("metrics body");
        let mut latencies: Vec<f64> = results.iter().map(|r| r.0).collect();
        let tokens: u64 = results.iter().map(|r| r.1).sum();
        report.insert(
            mode.into(),
            json!({
                "generations": results.len(),
                "generations_per_s": results.len() as f64 / elapsed,
                "completion_tokens_per_s": tokens as f64 / elapsed,
                "latency_p50_ms": percentile(&mut latencies, 0.5),
                "latency_p99_ms": percentile(&mut latencies, 0.99),
                "mean_sequences_per_pass": mean_batch(&metrics),
            }),
        );
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "model": name,
            "weights": model.source.weights_kind().as_str(),
            "clients": clients,
            "seconds_per_mode": seconds,
            "max_tokens": max_tokens,
            "modes": report,
        }))
        .expect("json")
    );
}
