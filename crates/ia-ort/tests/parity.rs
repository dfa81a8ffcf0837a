//! The ONNX exports of the fixtures (scripts/export_onnx_fixtures.py) on ONNX Runtime against
//! transformers' reference outputs, max abs <= 1e-4. Needs the library: `ipfs-accelerate
//! runtimes install` (scripts/test.sh runs it) or ORT_DYLIB_PATH.

use ia_engine::{Engine, Inputs, Precision};
use ia_hardware::Platform;
use ia_models::{Checkpoint, ModelSource};
use ia_ort::OrtEngine;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// A reference tensor as f32 (int64 ids converted).
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

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn session(name: &str) -> Box<dyn ia_engine::Session> {
    let src = ModelSource::Checkpoint(Checkpoint::open(&fixture(name)).unwrap());
    OrtEngine::new()
        .load(&src, Platform::Cpu, Precision::F32)
        .unwrap_or_else(|e| panic!("{e} (run `ipfs-accelerate runtimes install`)"))
}

#[test]
fn bert_tiny_onnx_matches_transformers() {
    let (shape, ids) = reference("bert-tiny", "input_ids");
    let as_u32 = |v: Vec<f32>| v.into_iter().map(|x| x as u32).collect::<Vec<_>>();
    let inputs = Inputs::Text {
        batch: shape[0],
        seq_len: shape[1],
        input_ids: as_u32(ids),
        attention_mask: as_u32(reference("bert-tiny", "attention_mask").1),
        token_type_ids: as_u32(reference("bert-tiny", "token_type_ids").1),
    };
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
    let (shape, pixels) = reference("vit-tiny", "pixel_values");
    let out = session("vit-tiny")
        .run(&Inputs::Image {
            shape: [shape[0], shape[1], shape[2], shape[3]],
            pixel_values: pixels,
        })
        .unwrap();
    let (_, expected) = reference("vit-tiny", "logits");
    let d = max_abs(&out.get("logits").unwrap().to_f32_vec().unwrap(), &expected);
    eprintln!("vit-tiny onnxruntime logits max abs diff {d:e}");
    assert!(d <= 1e-4, "max abs diff {d}");
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

#[test]
fn models_without_an_export_are_refused_with_the_reason() {
    let src = ModelSource::Checkpoint(Checkpoint::open(&fixture("clip-tiny")).unwrap());
    let e = OrtEngine::new()
        .load(&src, Platform::Cpu, Precision::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no ONNX path for clip"), "{e}");
    let e = OrtEngine::new()
        .load(
            &ModelSource::Checkpoint(Checkpoint::open(&fixture("bert-tiny")).unwrap()),
            Platform::Cuda,
            Precision::F32,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("CPU execution provider only"), "{e}");
}
