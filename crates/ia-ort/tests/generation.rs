//! Decoders exported with past key values (scripts/export_onnx_fixtures.py) generating on
//! ONNX Runtime, against transformers' reference for the same fixtures:
//! * next-token logits at every prompt position, fed one token at a time through the cache
//!   (the cache path), and after the whole prompt at once, within 1e-4 max abs;
//! * 32 greedy tokens identical to `generate(do_sample=False)`, alone and in a batch of 3.

mod common;

use common::{check_generation, fixture};
use ia_engine::{Engine, Placement, Precision, TextGenerator};
use ia_hardware::Platform;
use ia_models::{Checkpoint, Model, ModelSource};
use ia_ort::OrtEngine;

const TOLERANCE: f32 = 1e-4;

fn generator(name: &str) -> Box<dyn TextGenerator> {
    let src = Model::resolve(
        "test",
        ModelSource::Checkpoint(Checkpoint::open(&fixture(name)).unwrap()),
    )
    .unwrap();
    OrtEngine::new()
        .load_generator(&src, Placement::new(Platform::Cpu, Precision::F32))
        .unwrap_or_else(|e| panic!("{e} (run `ipfs-accelerate runtimes install`)"))
}

fn check(name: &str) {
    let mut gen = generator(name);
    assert!(gen.info().device.contains("CPUExecutionProvider"));
    assert!(gen.info().parameter_count > 0);
    let worst = check_generation(name, gen.as_mut(), true);
    eprintln!("{name} onnxruntime: logits max abs {worst:e}");
    assert!(worst <= TOLERANCE);
}

#[test]
fn llama_generates_like_transformers() {
    check("llama-tiny");
}

#[test]
fn qwen2_generates_like_transformers() {
    check("qwen2-tiny");
}

#[test]
fn qwen3_generates_like_transformers() {
    check("qwen3-tiny");
}

#[test]
fn opt_generates_like_transformers() {
    check("opt-tiny");
}

#[test]
fn a_step_before_prefill_and_an_overlong_prompt_are_errors() {
    let mut gen = generator("llama-tiny");
    let e = gen.step(5).unwrap_err().to_string();
    assert!(e.contains("prefilled batch"), "{e}");
    let too_long = vec![5u32; gen.max_context() + 1];
    let e = gen.prefill(&too_long).unwrap_err().to_string();
    assert!(e.contains("exceed the model's context"), "{e}");
    // The generator is still usable afterwards.
    assert_eq!(gen.prefill(&[5, 6]).unwrap().len(), 300);
}

/// T5's three-graph export (encoder, decoder, decoder with past) generates like transformers.
#[test]
fn t5_generates_like_transformers() {
    let mut gen = generator("t5-tiny");
    assert!(gen.info().parameter_count > 0);
    let worst = common::check_t5(gen.as_mut(), TOLERANCE);
    eprintln!("t5-tiny onnxruntime: logits max abs {worst:e}");
}
