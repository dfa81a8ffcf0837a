//! Properties of the training step that need no reference framework: gradient checkpointing
//! changes nothing but memory, bf16 autocast stays close to f32. The comparison with PyTorch
//! is `tests/training_parity.rs`.

mod common;

use candle_core::Tensor;
use ia_engine::training::{AdamW, TrainingOptions, TrainingPrecision};
use ia_engine::{Placement, Precision};
use ia_hardware::Platform;
use ia_models::Model;
use ia_native::training::TrainingSession;

fn fixture(name: &str) -> Model {
    common::source(name)
}

fn options(precision: TrainingPrecision, gradient_checkpointing: bool) -> TrainingOptions {
    TrainingOptions {
        batch_size: 2,
        seq_len: 12,
        precision,
        gradient_checkpointing,
        optimizer: AdamW {
            lr: 1e-3,
            ..AdamW::default()
        },
    }
}

fn after_steps(
    model: &Model,
    o: &TrainingOptions,
    steps: usize,
) -> (Vec<f32>, Vec<(String, Tensor)>) {
    let at = Placement::new(Platform::Cpu, Precision::F32);
    let mut s = TrainingSession::load(model, at, o).unwrap();
    let losses = (0..steps).map(|_| s.step().unwrap()).collect();
    (losses, s.parameters())
}

fn max_difference(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f32 {
    a.iter()
        .zip(b)
        .map(|((n, x), (m, y))| {
            assert_eq!(n, m);
            common::max_abs_diff(&x.flatten_all().unwrap().to_vec1().unwrap(), y)
        })
        .fold(0.0, f32::max)
}

#[test]
fn checkpointing_changes_no_parameter() {
    for name in [
        "bert-tiny",
        "vit-tiny",
        "llama-tiny",
        "qwen3-tiny",
        "opt-tiny",
        "t5-tiny",
    ] {
        let model = fixture(name);
        let (plain_loss, plain) = after_steps(&model, &options(TrainingPrecision::F32, false), 2);
        let (ckpt_loss, ckpt) = after_steps(&model, &options(TrainingPrecision::F32, true), 2);
        assert_eq!(plain.len(), ckpt.len(), "{name}");
        let d = max_difference(&plain, &ckpt);
        assert!(d < 1e-6, "{name}: checkpointing moved a parameter by {d}");
        assert!((plain_loss[1] - ckpt_loss[1]).abs() < 1e-5, "{name}");
        assert!(
            plain_loss[1] < plain_loss[0],
            "{name}: loss did not fall: {plain_loss:?}"
        );
    }
}

#[test]
fn bf16_autocast_stays_near_f32() {
    for name in ["bert-tiny", "llama-tiny"] {
        let model = fixture(name);
        let (f32_loss, _) = after_steps(&model, &options(TrainingPrecision::F32, false), 1);
        let (bf16_loss, _) = after_steps(&model, &options(TrainingPrecision::Bf16Mixed, false), 1);
        let rel = (f32_loss[0] - bf16_loss[0]).abs() / f32_loss[0];
        assert!(
            rel < 1e-2,
            "{name}: f32 loss {f32_loss:?}, bf16 {bf16_loss:?}"
        );
    }
}
