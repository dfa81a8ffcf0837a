//! Decoders exported with past key values (scripts/export_onnx_fixtures.py) generating on
//! ONNX Runtime, against transformers' reference for the same fixtures:
//! * next-token logits at every prompt position, fed one token at a time through the cache
//!   (the cache path), and after the whole prompt at once, within 1e-4 max abs;
//! * 32 greedy tokens identical to `generate(do_sample=False)`, alone and in a batch of 3.

mod common;

use common::{fixture, max_abs, reference};
use ia_engine::generation::{generate, generate_batch_greedy, GenerateOptions, Sampling};
use ia_engine::{Engine, Precision, TextGenerator};
use ia_hardware::Platform;
use ia_models::{Checkpoint, ModelSource};
use ia_ort::OrtEngine;

const TOLERANCE: f32 = 1e-4;

fn generator(name: &str) -> Box<dyn TextGenerator> {
    let src = ModelSource::Checkpoint(Checkpoint::open(&fixture(name)).unwrap());
    OrtEngine::new()
        .load_generator(&src, Platform::Cpu, Precision::F32)
        .unwrap_or_else(|e| panic!("{e} (run `ipfs-accelerate runtimes install`)"))
}

fn ids(name: &str, key: &str) -> Vec<u32> {
    reference(name, key).1.iter().map(|&x| x as u32).collect()
}

fn check(name: &str) {
    let mut gen = generator(name);
    assert!(gen.info().device.contains("CPUExecutionProvider"));
    assert!(gen.info().parameter_count > 0);
    for p in 0..2 {
        let prompt = ids(name, &format!("prompt{p}_input_ids"));
        let (shape, logits) = reference(name, &format!("prompt{p}_logits"));
        let vocab = shape[2];
        let row = |pos: usize| &logits[pos * vocab..(pos + 1) * vocab];
        let mut got = gen.prefill(&prompt[..1]).unwrap();
        let mut worst = 0f32;
        for (pos, &token) in prompt.iter().enumerate() {
            if pos > 0 {
                got = gen.step(token).unwrap();
            }
            worst = worst.max(max_abs(&got, row(pos)));
        }
        let whole = max_abs(&gen.prefill(&prompt).unwrap(), row(prompt.len() - 1));
        eprintln!(
            "{name} prompt {p} onnxruntime: cached steps max abs {worst:e}, prefill {whole:e}"
        );
        assert!(worst <= TOLERANCE && whole <= TOLERANCE);

        let expected = ids(name, &format!("prompt{p}_greedy"));
        let opts = GenerateOptions {
            max_new_tokens: expected.len(),
            sampling: Sampling::greedy(),
            stop_tokens: vec![],
            ignore_eos: true,
        };
        let (tokens, _) = generate(gen.as_mut(), &prompt, &opts, |_| {}).unwrap();
        assert_eq!(
            tokens, expected,
            "{name}: greedy tokens differ from transformers"
        );
        let batch = vec![prompt.clone(); 3];
        let (rows, stats) = generate_batch_greedy(gen.as_mut(), &batch, expected.len()).unwrap();
        assert_eq!(stats.batch_size, 3);
        assert!(
            rows.iter().all(|r| r == &expected),
            "{name}: batched greedy differs"
        );
    }
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
