//! Fixture access for the ONNX engines' tests (ia-ort, and ia-openvino through `#[path]`):
//! the committed ONNX exports and transformers' reference tensors.
#![allow(dead_code)]

use ia_engine::Inputs;
use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// A reference tensor as f32 (int64 ids converted).
pub fn reference(name: &str, key: &str) -> (Vec<usize>, Vec<f32>) {
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

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The fixture's reference inputs: token ids for bert-tiny, pixels for vit-tiny.
pub fn reference_inputs(name: &str) -> Inputs {
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
