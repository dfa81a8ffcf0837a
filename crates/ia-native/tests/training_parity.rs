//! The native training step against PyTorch: from the same parameters, on the same batch, with
//! the same AdamW settings, five steps give the same losses and the same parameters
//! (fixtures/<name>/training.safetensors, made by scripts/make_training_fixtures.py).

mod common;

use candle_core::{Device, Tensor};
use ia_engine::training::{AdamW, TrainingOptions, TrainingPrecision};
use ia_engine::{Placement, Precision};
use ia_hardware::Platform;
use ia_models::{Checkpoint, Model, ModelSource};
use ia_native::training::{Batch, TrainingSession};
use std::collections::HashMap;

/// The script's settings.
const STEPS: usize = 5;
const ADAMW: AdamW = AdamW {
    lr: 1e-3,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.01,
};
/// Max abs difference of a parameter after five steps of lr 1e-3 (each step moves a parameter
/// by up to about lr): f32 rounding in a different order, amplified where a gradient is near
/// zero and AdamW's normalised step follows its sign.
const PARAMETER_TOLERANCE: f32 = 5e-5;
const LOSS_TOLERANCE: f32 = 1e-5;

fn values_i64(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

fn check(name: &str) {
    let reference = candle_core::safetensors::load(
        common::fixture(name).join("training.safetensors"),
        &Device::Cpu,
    )
    .expect("training.safetensors");
    let prefixed = |prefix: &str| -> HashMap<String, Tensor> {
        reference
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
            .collect()
    };
    let initial = prefixed("initial.");
    let expected = prefixed("final.");
    // A checkpoint of the initial parameters (the new heads included).
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::fixture(name).join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    candle_core::safetensors::save(&initial, dir.path().join("model.safetensors")).unwrap();
    let model = Model::resolve(
        name,
        ModelSource::Checkpoint(Checkpoint::open(dir.path()).unwrap()),
    )
    .unwrap();

    let labels = values_i64(&reference["labels"]);
    let batch = if let Some(pixels) = reference.get("pixel_values") {
        let shape: [usize; 4] = pixels.dims().try_into().unwrap();
        Batch::Pixels {
            shape,
            pixel_values: pixels.flatten_all().unwrap().to_vec1().unwrap(),
            labels,
        }
    } else {
        let ids = &reference["input_ids"];
        let (b, s) = ids.dims2().unwrap();
        let input_ids: Vec<u32> = values_i64(ids).into_iter().map(|i| i as u32).collect();
        if name.starts_with("t5") {
            Batch::Seq2Seq {
                batch: b,
                seq_len: s,
                input_ids,
                target_len: labels.len() / b,
                labels,
            }
        } else {
            Batch::Tokens {
                batch: b,
                seq_len: s,
                input_ids,
                labels,
            }
        }
    };
    let options = TrainingOptions {
        batch_size: 2,
        seq_len: 12,
        precision: TrainingPrecision::F32,
        gradient_checkpointing: false,
        optimizer: ADAMW,
    };
    let mut session = TrainingSession::load_with_batch(
        &model,
        Placement::new(Platform::Cpu, Precision::F32),
        &options,
        batch,
    )
    .unwrap();
    assert!(
        session.initialised.is_empty(),
        "{name}: parameters PyTorch does not have: {:?}",
        session.initialised
    );
    let expected_losses = reference["losses"].to_vec1::<f32>().unwrap();
    assert_eq!(expected_losses.len(), STEPS);
    for (step, want) in expected_losses.iter().enumerate() {
        let got = session.step().unwrap();
        assert!(
            (got - want).abs() < LOSS_TOLERANCE * want.abs().max(1.0),
            "{name}: step {step} loss {got}, PyTorch {want}"
        );
    }
    let ours: HashMap<String, Tensor> = session.parameters().into_iter().collect();
    let mut names: Vec<&String> = expected.keys().collect();
    names.sort();
    assert_eq!(ours.len(), expected.len(), "{name}: parameter count");
    let mut worst = (0.0f32, String::new());
    for n in names {
        let mine = ours
            .get(n)
            .unwrap_or_else(|| panic!("{name}: no parameter {n}"));
        let d = common::max_abs_diff(
            &mine.flatten_all().unwrap().to_vec1().unwrap(),
            &expected[n],
        );
        if d > worst.0 {
            worst = (d, n.clone());
        }
    }
    eprintln!(
        "{name}: max parameter difference {:e} ({})",
        worst.0, worst.1
    );
    assert!(
        worst.0 < PARAMETER_TOLERANCE,
        "{name}: {} differs by {} after {STEPS} steps",
        worst.1,
        worst.0
    );
}

#[test]
fn bert_masked_lm_matches_pytorch() {
    check("bert-tiny");
}

#[test]
fn vit_classification_matches_pytorch() {
    check("vit-tiny");
}

#[test]
fn llama_causal_lm_matches_pytorch() {
    check("llama-tiny");
}

#[test]
fn qwen2_causal_lm_matches_pytorch() {
    check("qwen2-tiny");
}

#[test]
fn qwen3_causal_lm_matches_pytorch() {
    check("qwen3-tiny");
}

#[test]
fn opt_causal_lm_matches_pytorch() {
    check("opt-tiny");
}

#[test]
fn t5_conditional_generation_matches_pytorch() {
    check("t5-tiny");
}
