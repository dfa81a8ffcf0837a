//! onnxruntime-web in a real headless Chromium (Debian's chromium + chromium-driver; the
//! assets from `scripts/fetch_web_assets.sh`; scripts/test.sh installs both):
//! * the fixtures' ONNX exports on wasm and WebGPU match transformers' reference outputs
//!   within 1e-3, with the execution provider that ran the nodes confirmed from
//!   onnxruntime-web's log;
//! * WebNN is recorded unavailable with the browser's own words where it cannot run;
//! * a missing model file or an export the page cannot load is a failed combination with a
//!   one-line error, not a hang.

use ia_bench::{Combination, ModelPlan, Outcome, Protocol, Scenario};
use ia_browser::{BrowserHost, WebBench, WebOptions, WebRun};
use ia_engine::{Inputs, Precision};
use ia_hardware::Platform;
use ia_models::{Checkpoint, ModelSource};
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOLERANCE: f32 = 1e-3;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn reference(name: &str, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    let data = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I64 => t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        other => panic!("{key}: {other:?}"),
    };
    (t.shape().to_vec(), data)
}

fn reference_inputs(name: &str) -> Inputs {
    if name == "bert-tiny" {
        let (shape, ids) = reference(name, "input_ids");
        let as_u32 = |v: Vec<f32>| v.into_iter().map(|x| x as u32).collect::<Vec<_>>();
        Inputs::Text {
            batch: shape[0],
            seq_len: shape[1],
            input_ids: as_u32(ids),
            attention_mask: as_u32(reference(name, "attention_mask").1),
            token_type_ids: as_u32(reference(name, "token_type_ids").1),
        }
    } else {
        let (shape, pixels) = reference(name, "pixel_values");
        Inputs::Image {
            shape: [shape[0], shape[1], shape[2], shape[3]],
            pixel_values: pixels,
        }
    }
}

fn combination(dir: &Path, platform: Platform, batch: usize) -> Combination {
    let source = ModelSource::Checkpoint(Checkpoint::open(dir).unwrap());
    Combination {
        model: ModelPlan::classify(dir.display().to_string(), source).unwrap(),
        platform,
        batch_size: batch,
        seq_len: 16,
        precision: Precision::F32,
        scenario: Scenario::SingleStream,
        new_tokens: 0,
        audio_seconds: 1.0,
        audio_file: None,
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

fn measured(run: &WebRun) -> &ia_bench::Measurement {
    match &run.outcome {
        Outcome::Measured(m) => m,
        other => panic!("not measured: {other:?}"),
    }
}

fn check_fixture(web: &mut WebBench, name: &str, output: &str, platform: Platform) {
    let inputs = reference_inputs(name);
    let combo = combination(&fixture(name), platform, inputs.batch_size());
    let run = web.measure_inputs(&combo, Some(&inputs), Ok(()), &quick());
    let m = measured(&run);
    assert_eq!(m.samples_ms.len(), 3);
    assert!(m.first_inference_ms > 0.0 && m.load_time_ms > 0.0);
    let details = run.details.as_ref().unwrap();
    assert!(!details.fell_back, "{details:?}");
    assert!(
        details.executed_ep.starts_with(platform.as_str()),
        "{platform}: nodes ran on {}",
        details.executed_ep
    );
    let (shape, expected) = reference(name, output);
    let (got_shape, got) = &run.outputs[&format!("model/{output}")];
    assert_eq!(got_shape, &shape);
    let d = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "{name} on {platform} ({}): {output} max abs {d:e}, first {:.1} ms, p50 {:.1} ms",
        m.session.device, m.first_inference_ms, m.latency.p50_ms
    );
    assert!(d <= TOLERANCE, "{name} on {platform}: max abs {d}");
}

#[test]
fn fixtures_match_transformers_on_wasm_and_webgpu() {
    let mut web = bench();
    for platform in [Platform::Wasm, Platform::Webgpu] {
        check_fixture(&mut web, "bert-tiny", "last_hidden_state", platform);
        check_fixture(&mut web, "vit-tiny", "logits", platform);
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
    let run = web.measure(&combo, available, &quick());
    match (&run.outcome, status.available) {
        (Outcome::Unavailable { reason }, false) => assert_eq!(reason, &status.detail),
        (Outcome::Measured(_), true) => {
            assert_eq!(run.details.unwrap().requested_ep, "webnn");
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
    let run = web.measure(
        &combination(dir.path(), Platform::Wasm, 1),
        Ok(()),
        &quick(),
    );
    match &run.outcome {
        Outcome::Failed { stage, error } => {
            assert_eq!(stage, "load");
            assert!(!error.contains('\n') && !error.is_empty(), "{error}");
            eprintln!("corrupt export: {error}");
        }
        other => panic!("{other:?}"),
    }
    // A checkpoint without an export is refused before the browser is asked.
    std::fs::remove_file(dir.path().join("onnx/model.onnx")).unwrap();
    let run = web.measure(
        &combination(dir.path(), Platform::Wasm, 1),
        Ok(()),
        &quick(),
    );
    assert!(
        matches!(&run.outcome, Outcome::Unavailable { reason } if reason.contains("no ONNX export")),
        "{:?}",
        run.outcome
    );
}
