//! The ONNX exports of the fixtures (scripts/export_onnx_fixtures.py) on ONNX Runtime against
//! transformers' reference outputs, max abs <= 1e-4. Needs the library: `ipfs-accelerate
//! runtimes install` (scripts/test.sh runs it) or ORT_DYLIB_PATH.

use ia_engine::{Engine, Placement, Precision};
use ia_hardware::Platform;
use ia_models::{Checkpoint, Model, ModelSource};
use ia_ort::OrtEngine;
mod common;

use common::{fixture, max_abs, reference, reference_inputs};

fn session(name: &str) -> Box<dyn ia_engine::Session> {
    let src = Model::resolve(
        "test",
        ModelSource::Checkpoint(Checkpoint::open(&fixture(name)).unwrap()),
    )
    .unwrap();
    OrtEngine::new()
        .load(&src, Placement::new(Platform::Cpu, Precision::F32))
        .unwrap_or_else(|e| panic!("{e} (run `ipfs-accelerate runtimes install`)"))
}

#[test]
fn bert_tiny_onnx_matches_transformers() {
    let inputs = reference_inputs("bert-tiny");
    let out = session("bert-tiny").run(&inputs).unwrap();
    let (eshape, expected) = reference("bert-tiny", "last_hidden_state");
    let h = out.get("last_hidden_state").unwrap();
    assert_eq!(h.shape(), eshape);
    let d = max_abs(&h.to_f32_vec().unwrap(), &expected);
    eprintln!("bert-tiny onnxruntime last_hidden_state max abs diff {d:e}");
    assert!(d <= 1e-4, "max abs diff {d}");
}

#[test]
fn vit_tiny_onnx_matches_transformers() {
    let out = session("vit-tiny")
        .run(&reference_inputs("vit-tiny"))
        .unwrap();
    let (_, expected) = reference("vit-tiny", "logits");
    let d = max_abs(&out.get("logits").unwrap().to_f32_vec().unwrap(), &expected);
    eprintln!("vit-tiny onnxruntime logits max abs diff {d:e}");
    assert!(d <= 1e-4, "max abs diff {d}");
}

/// Wav2Vec2 (CTC logits from the raw clip, the feature extractor run in Rust) and DETR (class
/// logits and boxes), both layer-norm variants of Wav2Vec2.
#[test]
fn audio_and_detection_exports_match_transformers() {
    for (name, outputs) in [
        ("wav2vec2-tiny", &["logits"][..]),
        ("wav2vec2-tiny-stable", &["logits"]),
        ("detr-tiny", &["logits", "pred_boxes"]),
    ] {
        let out = session(name).run(&reference_inputs(name)).unwrap();
        for &output in outputs {
            let (shape, expected) = reference(name, output);
            let got = out.get(output).unwrap();
            assert_eq!(got.shape(), shape, "{name} {output}");
            let d = max_abs(&got.to_f32_vec().unwrap(), &expected);
            eprintln!("{name} onnxruntime {output} max abs diff {d:e}");
            assert!(d <= 1e-4, "{name} {output}: max abs diff {d}");
        }
    }
}

/// Whisper's three-graph export: logits through both decoder graphs within 1e-4, greedy and
/// beam tokens identical to transformers.
#[test]
fn whisper_matches_transformers() {
    let model = Model::resolve(
        "whisper-tiny",
        ModelSource::Checkpoint(Checkpoint::open(&fixture("whisper-tiny")).unwrap()),
    )
    .unwrap();
    let at = Placement::new(Platform::Cpu, Precision::F32);
    let engine = OrtEngine::new();
    let (mut whisper, _) = engine.whisper_model(&model, at).unwrap();
    let mut asr = engine.load_speech_recognizer(&model, at).unwrap();
    let worst = common::check_whisper(&mut whisper, asr.as_mut(), 1e-4);
    eprintln!("whisper-tiny onnxruntime logits max abs diff {worst:e}");
}

/// The same exports with the two decoders merged (onnx-community's and Optimum's CLI layout):
/// the same logits within 1e-4 and the same tokens.
#[test]
fn merged_decoders_decode_like_transformers() {
    let at = Placement::new(Platform::Cpu, Precision::F32);
    let engine = OrtEngine::new();
    let (_dir, model) = common::merged_layout("whisper-tiny");
    let (mut whisper, _) = engine.whisper_model(&model, at).unwrap();
    let mut asr = engine.load_speech_recognizer(&model, at).unwrap();
    let worst = common::check_whisper(&mut whisper, asr.as_mut(), 1e-4);
    eprintln!("whisper-tiny merged onnxruntime logits max abs diff {worst:e}");
    let (dir, model) = common::merged_layout("t5-tiny");
    let mut t5 = engine.load_generator(&model, at).unwrap();
    assert!(t5.info().parameter_count > 0);
    let worst = common::check_t5(t5.as_mut(), 1e-4);
    eprintln!("t5-tiny merged onnxruntime logits max abs diff {worst:e}");
    // Optimum's CLI names the merged graph decoder_model.onnx and writes no decoder with past.
    let onnx = dir.path().join("onnx");
    std::fs::rename(
        onnx.join("decoder_model_merged.onnx"),
        onnx.join("decoder_model.onnx"),
    )
    .unwrap();
    let source = ModelSource::Checkpoint(Checkpoint::open(dir.path()).unwrap());
    let model = Model::resolve("t5-tiny", source).unwrap();
    common::check_t5(engine.load_generator(&model, at).unwrap().as_mut(), 1e-4);
}

/// The real whisper-tiny.en export transcribes like transformers (greedy and 3 beams).
#[test]
fn whisper_tiny_en_real_weights_transcribe_like_transformers() {
    common::check_real_whisper(
        &OrtEngine::new(),
        Placement::new(Platform::Cpu, Precision::F32),
        &[1, 3],
    );
}

/// CTC transcription through the ONNX export spells transformers' transcript.
#[test]
fn wav2vec2_transcribes_like_transformers() {
    common::check_ctc_transcript(&OrtEngine::new(), Platform::Cpu);
}

#[test]
fn the_library_reports_its_execution_providers() {
    let providers = ia_ort::available_providers().unwrap();
    assert!(
        providers.iter().any(|p| p == "CPUExecutionProvider"),
        "{providers:?}"
    );
    let (path, version) = ia_ort::library().unwrap();
    assert!(path.exists() && !version.is_empty());
}

/// CLIP's two tower exports: embeddings and zero-shot logits within 1e-4 of transformers.
#[test]
fn clip_towers_match_transformers() {
    let worst = common::check_clip(session("clip-tiny").as_mut());
    eprintln!("clip-tiny onnxruntime max abs diff {worst:e}");
    assert!(worst <= 1e-4, "max abs diff {worst}");
}

/// CLAP's two tower exports: audio embeddings from the raw clip, text embeddings and
/// zero-shot logits within 1e-4 of transformers.
#[test]
fn clap_towers_match_transformers() {
    let worst = common::check_clap(session("clap-tiny").as_mut());
    eprintln!("clap-tiny onnxruntime max abs diff {worst:e}");
    assert!(worst <= 1e-4, "max abs diff {worst}");
}

#[test]
fn models_without_an_export_are_refused_with_the_reason() {
    // bert-tiny's checkpoint without its export.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("bert-tiny").join(f), dir.join(f)).unwrap();
    }
    let src = Model::resolve(
        "test",
        ModelSource::Checkpoint(Checkpoint::open(dir).unwrap()),
    )
    .unwrap();
    let e = OrtEngine::new()
        .load(&src, Placement::new(Platform::Cpu, Precision::F32))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no ONNX export (onnx/model.onnx or model.onnx)"),
        "{e}"
    );
    let e = OrtEngine::new()
        .load(
            &Model::resolve(
                "bert-tiny",
                ModelSource::Checkpoint(Checkpoint::open(&fixture("bert-tiny")).unwrap()),
            )
            .unwrap(),
            Placement::new(Platform::Cuda, Precision::F32),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("has no CUDAExecutionProvider (it offers") && e.contains("CPUExecutionProvider"),
        "{e}"
    );
}

/// A library that is missing or not a library is an error naming it, never a crash.
/// (Each nextest test runs in its own process, so the variable decides this test's library.)
#[test]
fn a_bad_library_path_is_a_clear_error() {
    if std::env::var_os("NEXTEST").is_none() {
        eprintln!("skipped: needs a process of its own (run with cargo nextest)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("libonnxruntime.so.1.99.0");
    std::fs::write(&junk, b"not a shared library").unwrap();
    // Safety: set before any thread of this test process reads the environment.
    unsafe { std::env::set_var("ORT_DYLIB_PATH", &junk) };
    let e = ia_ort::available_providers().unwrap_err().to_string();
    assert!(
        e.contains("cannot load ONNX Runtime")
            && e.contains("libonnxruntime.so.1.99.0 is not a shared library"),
        "{e}"
    );
}

/// The checkpoint's safetensors give the parameter count (as the native engine counts it); a
/// folder with only the export is counted from the graph's initializers.
#[test]
fn parameter_counts_come_from_the_checkpoint_or_else_the_graph() {
    let load = |dir: &std::path::Path| {
        OrtEngine::new()
            .load(
                &Model::resolve(
                    "test",
                    ModelSource::Checkpoint(Checkpoint::open(dir).unwrap()),
                )
                .unwrap(),
                Placement::new(Platform::Cpu, Precision::F32),
            )
            .unwrap()
            .info()
            .parameter_count
    };
    let full = fixture("bert-tiny");
    let from_checkpoint = load(&full);
    assert_eq!(
        from_checkpoint,
        ia_models::graph_weights::safetensors_parameter_count(&full.join("model.safetensors"))
            .unwrap()
    );
    let only_export = std::env::temp_dir().join(format!("ia-ort-onnx-only-{}", std::process::id()));
    std::fs::create_dir_all(only_export.join("onnx")).unwrap();
    std::fs::copy(full.join("config.json"), only_export.join("config.json")).unwrap();
    std::fs::copy(
        full.join("onnx/model.onnx"),
        only_export.join("onnx/model.onnx"),
    )
    .unwrap();
    let from_graph = load(&only_export);
    // The export (BertModel without its pooler, constants folded by the exporter) holds
    // fewer elements than the checkpoint.
    assert!(
        from_graph > 0 && from_graph < from_checkpoint,
        "{from_graph} vs {from_checkpoint}"
    );
    std::fs::remove_dir_all(&only_export).unwrap();
}
