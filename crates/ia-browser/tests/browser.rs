//! onnxruntime-web in a real headless Chromium (Debian's chromium + chromium-driver; the
//! assets from `scripts/fetch_web_assets.sh`; scripts/test.sh installs both):
//! * the fixtures' ONNX exports on wasm and WebGPU match transformers' reference outputs
//!   within 1e-3 (BERT, ViT, Wav2Vec2 from the raw clip, DETR, CLIP's and CLAP's two towers, the four decoders' prompt logits through a
//!   prefill and a cached step), with the execution provider that ran the nodes confirmed
//!   from onnxruntime-web's log;
//! * the decoders benchmarked in the page generate transformers' greedy tokens;
//! * WebNN is recorded unavailable with the browser's own words where it cannot run;
//! * a missing model file or an export the page cannot load is a failed combination with a
//!   one-line error, not a hang.

#[path = "../../ia-ort/tests/common/mod.rs"]
mod common;

use common::{fixture, ids, max_abs, reference, reference_inputs, reference_text, unit_rows};
use ia_bench::{Combination, Measurement, Outcome, Prepared, Protocol, Scenario};
use ia_browser::{BrowserHost, WebBench, WebOptions, WebRequest, WebTarget, WebWork};
use ia_engine::{Engine, Inputs, LoadVariant, Precision};
use ia_hardware::Platform;
use ia_models::{Checkpoint, Model, ModelSource};
use std::path::Path;
use std::time::Duration;

const TOLERANCE: f32 = 1e-3;

fn combination(dir: &Path, platform: Platform, batch: usize) -> Combination {
    let source = ModelSource::Checkpoint(Checkpoint::open(dir).unwrap());
    Combination {
        model: Model::resolve(dir.display().to_string(), source).unwrap(),
        platform,
        batch_size: batch,
        seq_len: 16,
        precision: Precision::F32,
        scenario: Scenario::SingleStream,
        new_tokens: 0,
        audio_seconds: 1.0,
        audio_file: None,
        load_variant: LoadVariant::default(),
        mode: Default::default(),
    }
}

fn quick() -> Protocol {
    Protocol {
        warmup_iterations: 1,
        min_iterations: 3,
        min_duration: Duration::ZERO,
        max_iterations: 3,
    }
}

fn bench() -> WebBench {
    WebBench::new(WebOptions {
        step_timeout: Duration::from_secs(120),
        ..WebOptions::default()
    })
}

/// A combination measured by the harness in the browser, on the given inputs instead of the
/// generated ones where `inputs` is set (the accuracy checks feed the reference's inputs and
/// compare the outputs; a decoder generates from the first row of the first).
fn measure(
    web: &mut WebBench,
    combo: &Combination,
    inputs: Option<&[Inputs]>,
    available: Result<(), String>,
) -> (Outcome, Option<WebTarget>) {
    ia_bench::measure_with(combo, available, &quick(), |prepared| {
        let work = match (&prepared, inputs) {
            (Prepared::Forward(generated), given) => WebWork::Forward {
                inputs: given.unwrap_or(std::slice::from_ref(generated)),
                text_len: combo.seq_len,
            },
            (Prepared::Generation { prompt, .. }, given) => WebWork::Generation {
                prompt: match given.map(|i| &i[0]) {
                    Some(Inputs::Text {
                        input_ids, seq_len, ..
                    }) => &input_ids[..*seq_len],
                    _ => prompt,
                },
                batch: combo.batch_size,
                new_tokens: combo.new_tokens,
            },
        };
        web.load(&WebRequest {
            model: &combo.model,
            platform: combo.platform,
            precision: combo.precision,
            variant: combo.load_variant,
            work,
        })
    })
}

fn measured(run: &(Outcome, Option<WebTarget>)) -> (&Measurement, &WebTarget) {
    match run {
        (Outcome::Measured(m), Some(target)) => (m, target),
        (other, _) => panic!("not measured: {other:?}"),
    }
}

fn check_fixture(web: &mut WebBench, name: &str, outputs: &[&str], platform: Platform) {
    let inputs = reference_inputs(name);
    let combo = combination(&fixture(name), platform, inputs.batch_size());
    let run = measure(web, &combo, Some(&[inputs]), Ok(()));
    let (m, target) = measured(&run);
    assert_eq!(m.samples_ms.len(), 3);
    assert!(m.first_inference_ms > 0.0 && m.load_time_ms > 0.0);
    let details = &target.details();
    assert!(!details.fell_back, "{details:?}");
    if platform == Platform::Wasm {
        let threads = web
            .options
            .wasm_threads
            .unwrap_or_else(ort_web_default_threads);
        assert_eq!(details.wasm_threads, threads);
        assert!(m.session.device.contains(&format!("{threads} threads")));
    }
    // The browser's memory, from /proc (Linux).
    assert!(details.memory.renderer_peak_bytes.unwrap() > 0);
    assert!(details.memory.gpu_process_peak_bytes.unwrap() > 0);
    assert!(
        details.executed_ep.starts_with(platform.as_str()),
        "{platform}: nodes ran on {}",
        details.executed_ep
    );
    for &output in outputs {
        let (shape, expected) = reference(name, output);
        let (got_shape, got) = &target.outputs[&format!("model/{output}")];
        assert_eq!(got_shape, &shape);
        let d = max_abs(got, &expected);
        eprintln!(
            "{name} on {platform} ({}): {output} max abs {d:e}, first {:.1} ms, p50 {:.1} ms",
            m.session.device, m.first_inference_ms, m.latency.p50_ms
        );
        assert!(d <= TOLERANCE, "{name} on {platform} {output}: max abs {d}");
    }
}

/// onnxruntime-web's own thread count where none is asked for: half the logical CPUs, at
/// most 4 (its `env.wasm.numThreads` default).
fn ort_web_default_threads() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    cpus.div_ceil(2).min(4)
}

#[test]
fn fixtures_match_transformers_on_wasm_and_webgpu() {
    let mut web = bench();
    for platform in [Platform::Wasm, Platform::Webgpu] {
        check_fixture(&mut web, "bert-tiny", &["last_hidden_state"], platform);
        check_fixture(&mut web, "vit-tiny", &["logits"], platform);
    }
    // Threads asked for are the threads that ran.
    let mut web = WebBench::new(WebOptions {
        wasm_threads: Some(3),
        ..bench().options
    });
    check_fixture(
        &mut web,
        "bert-tiny",
        &["last_hidden_state"],
        Platform::Wasm,
    );
}

/// Audio in the browser (the raw clip through the feature extractor in Rust, then Wav2Vec2's
/// CTC logits in the page) and DETR's logits and boxes.
#[test]
fn audio_and_detection_match_transformers_on_wasm_and_webgpu() {
    let mut web = bench();
    for platform in [Platform::Wasm, Platform::Webgpu] {
        check_fixture(&mut web, "wav2vec2-tiny", &["logits"], platform);
        check_fixture(&mut web, "detr-tiny", &["logits", "pred_boxes"], platform);
    }
    // `run` / the server's transcription: one inference in a page, the shared CTC decoding.
    common::check_ctc_transcript(&ia_browser::WebEngine::new(), Platform::Wasm);
}

/// CLAP's towers, one inference each in a page (`run`): the audio tower fed CLAP's features
/// (computed in Rust) and its `is_longer` flags; embeddings and zero-shot logits.
#[test]
fn clap_towers_match_transformers_on_wasm_and_webgpu() {
    for platform in [Platform::Wasm, Platform::Webgpu] {
        let model = Model::resolve(
            "clap-tiny",
            ModelSource::Checkpoint(Checkpoint::open(&fixture("clap-tiny")).unwrap()),
        )
        .unwrap();
        let mut session = ia_browser::WebEngine::new()
            .load(&model, ia_engine::Placement::new(platform, Precision::F32))
            .unwrap();
        let worst = common::check_clap(session.as_mut());
        eprintln!("clap-tiny on {platform}: max abs {worst:e}");
        assert!(
            worst <= TOLERANCE,
            "clap-tiny on {platform}: max abs {worst}"
        );
    }
}

/// CLIP's two towers (onnx/text_model.onnx, onnx/vision_model.onnx) loaded one after the
/// other and in parallel; the embeddings, normalised as CLIPModel does, match transformers.
#[test]
fn clip_towers_load_sequentially_and_in_parallel_and_match_transformers() {
    let inputs = [reference_inputs("clip-tiny"), reference_text("clip-tiny")];
    for (platform, parallel_load) in [
        (Platform::Wasm, false),
        (Platform::Wasm, true),
        (Platform::Webgpu, true),
    ] {
        let mut web = bench();
        let combo = Combination {
            load_variant: LoadVariant {
                precompile: false,
                parallel_load,
            },
            ..combination(&fixture("clip-tiny"), platform, 2)
        };
        let run = measure(&mut web, &combo, Some(&inputs), Ok(()));
        let (_, target) = measured(&run);
        let details = target.details();
        assert_eq!(details.parallel_load, parallel_load);
        // ONNX Runtime's WebGPU EP creates one session at a time; elsewhere a parallel load
        // creates both at once.
        assert_eq!(
            details.concurrent_sessions,
            parallel_load && platform != Platform::Webgpu
        );
        let parts: Vec<&str> = details
            .part_load_ms
            .iter()
            .map(|(p, _)| p.as_str())
            .collect();
        assert_eq!(parts, ["text_model", "vision_model"]);
        for (output, key) in [
            ("vision_model/image_embeds", "image_embeds"),
            ("text_model/text_embeds", "text_embeds"),
        ] {
            let (shape, expected) = reference("clip-tiny", key);
            let (got_shape, got) = &target.outputs[output];
            assert_eq!(got_shape, &shape);
            let d = max_abs(&unit_rows(got, shape[1]), &expected);
            eprintln!(
                "clip-tiny {output} on {platform} (parallel load {parallel_load}): max abs {d:e}"
            );
            assert!(d <= TOLERANCE, "{output}: max abs {d}");
        }
    }
}

/// One step of a decoder export: `tokens` at positions `past..past + tokens.len()`, the cache
/// `past_key_values.*` from the previous step (empty on the first).
fn decoder_step_feeds<'a>(
    tokens: &[i64],
    past: usize,
    layers: usize,
    empty_cache: &[usize],
    cache: &'a ia_browser::Outputs,
) -> Vec<(String, ia_engine::inputs::GraphInput<'a>)> {
    use ia_engine::inputs::GraphInput;
    let n = tokens.len();
    let mut feeds = vec![
        (
            "input_ids".to_string(),
            GraphInput::Int64 {
                shape: vec![1, n],
                data: tokens.to_vec(),
            },
        ),
        (
            "attention_mask".to_string(),
            GraphInput::Int64 {
                shape: vec![1, past + n],
                data: vec![1; past + n],
            },
        ),
        (
            "position_ids".to_string(),
            GraphInput::Int64 {
                shape: vec![1, n],
                data: (past as i64..(past + n) as i64).collect(),
            },
        ),
    ];
    for i in 0..layers {
        for kind in ["key", "value"] {
            let input = match cache.get(&format!("present.{i}.{kind}")) {
                Some((shape, data)) => GraphInput::Float32 {
                    shape: shape.clone(),
                    data: data.as_slice().into(),
                },
                None => GraphInput::Float32 {
                    shape: empty_cache.to_vec(),
                    data: Vec::new().into(),
                },
            };
            feeds.push((format!("past_key_values.{i}.{kind}"), input));
        }
    }
    feeds
}

/// The decoder exports (llama, qwen2, qwen3, opt) run as generation runs them: the prompt
/// but its last token with an empty cache, then the last token on the cache that step
/// returned. Logits at every prompt position, including the cached step's, match
/// transformers; so the keys and values the cache carries are right too.
#[test]
fn decoder_exports_match_transformers_in_the_browser() {
    let mut web = bench();
    for name in ["llama-tiny", "qwen2-tiny", "qwen3-tiny", "opt-tiny"] {
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(name).join("config.json")).unwrap())
                .unwrap();
        let get = |k: &str| config[k].as_u64().map(|v| v as usize);
        let heads = get("num_attention_heads").unwrap();
        let kv_heads = get("num_key_value_heads").unwrap_or(heads);
        let head_dim = get("head_dim").unwrap_or(get("hidden_size").unwrap() / heads);
        let layers = get("num_hidden_layers").unwrap();
        let empty_cache = [1, kv_heads, 0, head_dim];
        let (shape, ids) = reference(name, "prompt0_input_ids");
        let n = shape[1];
        let ids: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
        let (eshape, expected) = reference(name, "prompt0_logits");
        let vocab = eshape[2];
        let file = fixture(name).join("onnx/model.onnx");
        for platform in [Platform::Wasm, Platform::Webgpu] {
            let no_cache = ia_browser::Outputs::new();
            let prefill = web
                .run_graph(
                    platform,
                    &file,
                    decoder_step_feeds(&ids[..n - 1], 0, layers, &empty_cache, &no_cache),
                )
                .unwrap();
            let decode = web
                .run_graph(
                    platform,
                    &file,
                    decoder_step_feeds(&ids[n - 1..], n - 1, layers, &empty_cache, &prefill),
                )
                .unwrap();
            assert_eq!(prefill["logits"].0, [1, n - 1, vocab]);
            assert_eq!(decode["logits"].0, [1, 1, vocab]);
            assert_eq!(prefill["present.0.key"].0, [1, kv_heads, n - 1, head_dim]);
            assert_eq!(decode["present.0.key"].0, [1, kv_heads, n, head_dim]);
            // The largest difference at each prompt position.
            let per_position: Vec<f32> = prefill["logits"]
                .1
                .chunks(vocab)
                .chain(decode["logits"].1.chunks(vocab))
                .zip(expected.chunks(vocab))
                .map(|(g, e)| max_abs(g, e))
                .collect();
            let (worst_pos, d) = per_position
                .iter()
                .copied()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            eprintln!(
                "{name} on {platform}: logits max abs {d:e} (worst at position {worst_pos} of {n}; \
                 the cached step: {:e})",
                per_position[n - 1]
            );
            assert!(
                d <= TOLERANCE,
                "{name} on {platform}: max abs {d} at {worst_pos}"
            );
        }
    }
}

/// `bench` on a decoder in the browser generates in the page (greedy, the KV cache fed back;
/// on WebGPU it stays on the GPU): for both prompts, alone and in a batch of 2, the tokens are
/// transformers' `generate(do_sample=False)` tokens, and the LLM metrics are filled in.
/// (WebGPU runs the batch only: each WebGPU combination spends seconds compiling shaders.)
#[test]
fn decoders_generate_transformers_greedy_tokens_in_the_browser() {
    let mut web = bench();
    for name in ["llama-tiny", "qwen2-tiny", "qwen3-tiny", "opt-tiny"] {
        for (platform, prompt, batch) in [
            (Platform::Wasm, "prompt0", 1),
            (Platform::Wasm, "prompt1", 2),
            (Platform::Webgpu, "prompt1", 2),
        ] {
            let prompt_ids = ids(name, &format!("{prompt}_input_ids"));
            let expected = ids(name, &format!("{prompt}_greedy"));
            let n = prompt_ids.len();
            let inputs = Inputs::Text {
                batch,
                seq_len: n,
                token_type_ids: vec![0; n * batch],
                attention_mask: vec![1; n * batch],
                input_ids: prompt_ids.repeat(batch),
            };
            let combo = Combination {
                new_tokens: expected.len(),
                seq_len: n,
                ..combination(&fixture(name), platform, batch)
            };
            let run = measure(&mut web, &combo, Some(&[inputs]), Ok(()));
            let (m, target) = measured(&run);
            assert_eq!(target.tokens.len(), batch);
            let kept = if platform == Platform::Webgpu {
                "gpu-buffer"
            } else {
                "cpu"
            };
            assert_eq!(target.cache_location.as_deref(), Some(kept));
            for row in &target.tokens {
                assert_eq!(row, &expected, "{name} on {platform}, {prompt} x {batch}");
            }
            let g = m.generation.as_ref().expect("generation metrics");
            assert_eq!((g.prompt_tokens, g.new_tokens), (n, expected.len()));
            // Three timed generations, each with 31 decode steps.
            assert_eq!(g.tpot.count, 3 * (expected.len() - 1));
            assert!(g.ttft.p50_ms > 0.0 && g.decode_tokens_per_s > 0.0);
            eprintln!(
                "{name} on {platform}, {prompt} x {batch}: {} greedy tokens as transformers; \
                 TTFT p50 {:.2} ms, TPOT p50 {:.2} ms",
                expected.len(),
                g.ttft.p50_ms,
                g.tpot.p50_ms
            );
        }
    }
}

#[test]
fn the_probe_reports_each_web_platform_with_the_browsers_words() {
    let host = BrowserHost::start(None).expect("Chromium starts (scripts/test.sh installs it)");
    let wasm = host.platform_status(Platform::Wasm);
    assert!(wasm.available, "{}", wasm.detail);
    assert!(wasm.detail.starts_with("Chromium "));
    let webgpu = host.platform_status(Platform::Webgpu);
    let adapter = host.environment.webgpu.adapter.as_ref();
    assert_eq!(webgpu.available, adapter.is_some(), "{}", webgpu.detail);
    let webnn = host.platform_status(Platform::Webnn);
    if !webnn.available {
        // The browser's own error text, e.g. "NotSupportedError: ... WebNN is not supported
        // on this platform."
        assert!(webnn.detail.contains("Error"), "{}", webnn.detail);
    }
}

#[test]
fn webnn_where_the_browser_cannot_is_unavailable_with_its_reason() {
    let mut web = bench();
    let combo = combination(&fixture("bert-tiny"), Platform::Webnn, 1);
    let host = web.host().unwrap();
    let status = host.platform_status(Platform::Webnn);
    let available = if status.available {
        Ok(())
    } else {
        Err(status.detail.clone())
    };
    let run = measure(&mut web, &combo, None, available);
    match (&run.0, status.available) {
        (Outcome::Unavailable { reason }, false) => assert_eq!(reason, &status.detail),
        (Outcome::Measured(_), true) => {
            assert_eq!(run.1.unwrap().details().requested_ep, "webnn");
        }
        (other, _) => panic!("{other:?} with status {status:?}"),
    }
}

#[test]
fn bad_model_files_fail_with_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("bert-tiny").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::create_dir(dir.path().join("onnx")).unwrap();
    std::fs::write(
        dir.path().join("onnx/model.onnx"),
        b"this is not an ONNX file",
    )
    .unwrap();
    let mut web = bench();
    let (outcome, _) = measure(
        &mut web,
        &combination(dir.path(), Platform::Wasm, 1),
        None,
        Ok(()),
    );
    match &outcome {
        Outcome::Failed { stage, error } => {
            assert_eq!(stage, "load");
            assert!(!error.contains('\n') && !error.is_empty(), "{error}");
            eprintln!("corrupt export: {error}");
        }
        other => panic!("{other:?}"),
    }
    // A checkpoint without an export is refused before the browser is asked.
    std::fs::remove_file(dir.path().join("onnx/model.onnx")).unwrap();
    let (outcome, _) = measure(
        &mut web,
        &combination(dir.path(), Platform::Wasm, 1),
        None,
        Ok(()),
    );
    assert!(
        matches!(&outcome, Outcome::Unavailable { reason } if reason.contains("no ONNX export")),
        "{outcome:?}"
    );
}

/// Whisper and T5 in a page (`run`, `generate` on wasm and WebGPU): their three-graph exports
/// loaded in one page that keeps the caches, the decoding in Rust as on every engine;
/// whisper-tiny's logits through both decoder graphs and its greedy and beam tokens, t5-tiny's
/// logits and greedy tokens, against transformers; and the real whisper-tiny.en transcript on
/// wasm.
#[test]
fn encoder_decoders_decode_in_the_page_like_transformers() {
    let open = |name: &str| {
        Model::resolve(
            name,
            ModelSource::Checkpoint(Checkpoint::open(&fixture(name)).unwrap()),
        )
        .unwrap()
    };
    let engine = ia_browser::WebEngine::new();
    for platform in [Platform::Wasm, Platform::Webgpu] {
        let at = ia_engine::Placement::new(platform, Precision::F32);
        let whisper = open("whisper-tiny");
        let (mut model, info) = engine.whisper_model(&whisper, at).unwrap();
        assert!(info.parameter_count > 0);
        let mut asr = engine.load_speech_recognizer(&whisper, at).unwrap();
        let worst = common::check_whisper(&mut model, asr.as_mut(), TOLERANCE);
        eprintln!("whisper-tiny on {platform}: logits max abs {worst:e}");
        let mut t5 = engine.load_generator(&open("t5-tiny"), at).unwrap();
        let worst = common::check_t5(t5.as_mut(), TOLERANCE);
        eprintln!("t5-tiny on {platform}: logits max abs {worst:e}");
    }
    // The merged decoders (onnx-community's layout) on wasm.
    let at = ia_engine::Placement::new(Platform::Wasm, Precision::F32);
    let (_dir, whisper) = common::merged_layout("whisper-tiny");
    let (mut model, _) = engine.whisper_model(&whisper, at).unwrap();
    let mut asr = engine.load_speech_recognizer(&whisper, at).unwrap();
    let worst = common::check_whisper(&mut model, asr.as_mut(), TOLERANCE);
    eprintln!("whisper-tiny merged on wasm: logits max abs {worst:e}");
    let (_dir, t5) = common::merged_layout("t5-tiny");
    let worst = common::check_t5(engine.load_generator(&t5, at).unwrap().as_mut(), TOLERANCE);
    eprintln!("t5-tiny merged on wasm: logits max abs {worst:e}");
    common::check_real_whisper(
        &engine,
        ia_engine::Placement::new(Platform::Wasm, Precision::F32),
        &[1, 3],
    );
    // Greedy only on WebGPU: a transcription takes about 4 minutes on SwiftShader (its encoder
    // call alone ran past 180 s).
    common::check_real_whisper(
        &ia_browser::WebEngine::with_options(WebOptions {
            step_timeout: Duration::from_secs(900),
            ..WebOptions::default()
        }),
        ia_engine::Placement::new(Platform::Webgpu, Precision::F32),
        &[1],
    );
}

/// Whisper's transcriptions and T5's generations benchmarked in the browser: the decoding in
/// Rust over the page's graphs, each iteration timed without the WebDriver transport.
#[test]
fn encoder_decoders_are_benchmarked_in_the_page() {
    let mut web = bench();
    let whisper = combination(&fixture("whisper-tiny"), Platform::Wasm, 1);
    let run = measure(&mut web, &whisper, None, Ok(()));
    let (m, target) = measured(&run);
    assert_eq!(m.samples_ms.len(), 3);
    assert!(m.samples_ms.iter().all(|&ms| ms > 0.0));
    assert!(m.real_time_factor.unwrap() > 0.0);
    assert_eq!(target.details().executed_ep, "wasm");
    let t5 = Combination {
        new_tokens: 4,
        ..combination(&fixture("t5-tiny"), Platform::Wasm, 2)
    };
    let run = measure(&mut web, &t5, None, Ok(()));
    let (m, _) = measured(&run);
    let g = m.generation.as_ref().expect("generation metrics");
    assert!(g.ttft.p50_ms > 0.0 && g.decode_tokens_per_s > 0.0, "{g:?}");
    assert_eq!(m.samples_ms.len(), 3);
}
