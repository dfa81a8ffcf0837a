//! What the server adds on top of the engine, side by side in one process on the native
//! engine: the p50 of embedding one sentence in-process (the pipeline call the worker makes)
//! against the same request over loopback HTTP, and the engine's time to first token against
//! the time to the first SSE chunk of a streamed completion. Prints JSON.
//!
//! The two sides alternate request by request, so that drift of the machine (other work,
//! frequency) falls on both alike. A `--gen-model` given as a config.json file is built at
//! its real size with seeded random weights (timing only; the report says so), and
//! `--tokenizer DIR` then names a checkpoint whose tokenizer turns the prompt into ids.
//!
//! usage: overhead --embed-model DIR|HUB_ID --gen-model DIR|HUB_ID|CONFIG.json
//!        [--tokenizer DIR] [--iterations 200] [--prompt TEXT]

mod common;

use common::{flag, open};
use ia_engine::generation::{generate, GenerateOptions, Sampling};
use ia_engine::{Engine, Placement, Precision};
use ia_serve::{Backend, ServedModel};
use ia_tasks::{Input, Pipeline, TaskOptions};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::time::Instant;

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    ia_native::settle_thread_count();
    let embed = flag("--embed-model").expect("--embed-model");
    let gen = flag("--gen-model").expect("--gen-model");
    let n: usize = flag("--iterations").map_or(200, |v| v.parse().expect("--iterations"));
    let prompt = flag("--prompt").unwrap_or_else(|| "The capital of France is".into());
    let sentence = "The quick brown fox jumps over the lazy dog.";
    let engine = ia_native::NativeEngine::new();
    let at = Placement::new(ia_hardware::Platform::Cpu, Precision::F32);

    let mut pipeline = Pipeline::load(&engine, open(&embed), at).expect("load");
    let model = open(&gen);
    let weights = model.source.weights_kind().as_str();
    let tokenizer = common::tokenizer(&model);
    let ids = tokenizer
        .encode(prompt.as_str(), true)
        .expect("encode")
        .get_ids()
        .to_vec();
    let mut generator = engine.load_generator(&model, at).expect("load generator");

    // The server, with its own instances of the same models.
    let served = vec![
        ServedModel {
            id: "embed".into(),
            backend: Backend::Pipeline(Pipeline::load(&engine, open(&embed), at).expect("load")),
        },
        ServedModel {
            id: "gen".into(),
            backend: Backend::Generator {
                generator: engine.load_generator(&model, at).expect("load generator"),
                tokenizer,
                chat_template: None,
            },
        },
    ];
    let base = common::serve(served, 64);
    let agent = common::agent();

    // Embeddings: the call the pipeline worker makes for a one-text request, then the request.
    let input = [Input::Text(sentence.into())];
    let body = json!({"model": "embed", "input": sentence}).to_string();
    let (mut in_process, mut http) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 10 {
        let t = Instant::now();
        pipeline
            .run_batch(&input, &TaskOptions::default())
            .expect("embed");
        let inside = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let mut r = agent
            .post(format!("{base}/v1/embeddings"))
            .header("Content-Type", "application/json")
            .send(body.as_str())
            .expect("request");
        let _: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("json");
        if i >= 10 {
            in_process.push(inside);
            http.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }

    // Time to first token: the engine's own figure, then the first SSE chunk of the stream.
    let opts = GenerateOptions {
        max_new_tokens: 1,
        sampling: Sampling::greedy(),
        stop_tokens: vec![],
        ignore_eos: true,
    };
    let stream = json!({"model": "gen", "prompt": prompt, "max_tokens": 1, "temperature": 0,
                        "stream": true, "stop_token_ids": []})
    .to_string();
    let rounds = n.min(50);
    let (mut engine_ttft, mut first_chunk) = (Vec::new(), Vec::new());
    for i in 0..rounds + 2 {
        let (_, stats) = generate(generator.as_mut(), &ids, &opts, |_| {
            ControlFlow::Continue(())
        })
        .expect("gen");
        let t = Instant::now();
        let r = agent
            .post(format!("{base}/v1/completions"))
            .header("Content-Type", "application/json")
            .send(stream.as_str())
            .expect("request");
        let mut first = None;
        for line in BufReader::new(r.into_body().into_reader()).lines() {
            let line = line.expect("line");
            if first.is_none() && line.starts_with("data: ") {
                first = Some(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        if i >= 2 {
            engine_ttft.push(stats.time_to_first_token_ms);
            first_chunk.extend(first);
        }
    }
    let (a, b) = (p50(in_process), p50(http));
    let (c, d) = (p50(engine_ttft), p50(first_chunk));
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "embedding": {"model": embed, "iterations": n, "in_process_p50_ms": a,
                          "http_p50_ms": b, "overhead_p50_ms": b - a},
            "streaming": {"model": gen, "weights": weights, "prompt_tokens": ids.len(),
                          "iterations": rounds, "engine_ttft_p50_ms": c,
                          "first_sse_chunk_p50_ms": d, "ratio": d / c},
        }))
        .expect("json")
    );
}
