//! Quantised decoders against the same model in f32: close logits, agreeing greedy tokens,
//! smaller weights. (There is no transformers reference for GGUF quantisation; the reference
//! is our own f32 path, which tests/text_parity.rs ties to transformers.)

mod common;

use candle_core::{DType, Device, Tensor};
use common::fixture;
use ia_engine::generation::{generate, GenerateOptions, Sampling};
use ia_engine::{Engine, Placement, Precision, TextGenerator};
use ia_hardware::Platform;
use ia_models::{Checkpoint, Model, ModelSource};
use ia_native::NativeEngine;
use std::collections::HashMap;
use std::path::Path;

fn load(dir: &Path, p: Precision) -> Box<dyn TextGenerator> {
    let src = Model::resolve(
        "test",
        ModelSource::Checkpoint(Checkpoint::open(dir).unwrap()),
    )
    .unwrap();
    NativeEngine::new()
        .load_generator(&src, Placement::new(Platform::Cpu, p))
        .unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

fn greedy(m: &mut dyn TextGenerator, prompt: &[u32], n: usize) -> Vec<u32> {
    let o = GenerateOptions {
        max_new_tokens: n,
        sampling: Sampling::greedy(),
        stop_tokens: vec![],
        ignore_eos: true,
    };
    generate(m, prompt, &o, |_| std::ops::ControlFlow::Continue(()))
        .unwrap()
        .0
}

/// Logits of quantised and f32 models along a fixed token sequence.
fn compare(
    dir: &Path,
    p: Precision,
    prompt: &[u32],
) -> (f32, Box<dyn TextGenerator>, Box<dyn TextGenerator>) {
    let mut f = load(dir, Precision::F32);
    let mut q = load(dir, p);
    let mut worst = 1.0f32;
    let (mut lf, mut lq) = (
        f.prefill(&prompt[..1]).unwrap(),
        q.prefill(&prompt[..1]).unwrap(),
    );
    for &t in &prompt[1..] {
        worst = worst.min(cosine(&lf, &lq));
        lf = f.step(t).unwrap();
        lq = q.step(t).unwrap();
    }
    worst = worst.min(cosine(&lf, &lq));
    (worst, f, q)
}

#[test]
fn q8_0_tracks_f32_on_every_decoder_fixture() {
    let prompt: Vec<u32> = vec![50, 81, 70, 72, 290, 83, 270, 264, 289, 76, 80, 72];
    for name in ["llama-tiny", "qwen2-tiny", "qwen3-tiny"] {
        let (worst, mut f, mut q) = compare(&fixture(name), Precision::Q8_0, &prompt);
        assert!(worst > 0.999, "{name}: worst logits cosine {worst}");
        assert_eq!(q.info().precision, Precision::Q8_0);
        assert!(
            q.weight_bytes().unwrap() < f.weight_bytes().unwrap() / 3,
            "{name}: q8_0 should be ~1/4 of f32"
        );
        let (a, b) = (
            greedy(f.as_mut(), &prompt, 16),
            greedy(q.as_mut(), &prompt, 16),
        );
        let agree = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        println!("{name}: q8_0 worst cosine {worst:.6}, greedy prefix agreement {agree}/16");
    }
}

/// A random LLaMA whose matrices are multiples of 256 wide, so Q4_K really applies.
fn random_llama(dir: &Path) {
    let (vocab, hidden, inter, layers, heads, kv) =
        (512usize, 256usize, 512usize, 2usize, 4usize, 2usize);
    let hd = hidden / heads;
    let config = serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false, "eos_token_id": 2
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let dev = Device::Cpu;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut seed = 1.0f64;
    let mut randn = |shape: &[usize]| {
        seed += 1.0;
        // Deterministic pseudo-random values, std ~0.05: enough structure for peaked logits.
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| {
                (((i as f64 * 12.9898 + seed * 78.233).sin() * 43758.5453).fract() as f32 - 0.5)
                    * 0.17
            })
            .collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    t.insert("model.embed_tokens.weight".into(), randn(&[vocab, hidden]));
    t.insert("lm_head.weight".into(), randn(&[vocab, hidden]));
    t.insert(
        "model.norm.weight".into(),
        Tensor::ones(hidden, DType::F32, &dev).unwrap(),
    );
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        t.insert(
            format!("{p}.input_layernorm.weight"),
            Tensor::ones(hidden, DType::F32, &dev).unwrap(),
        );
        t.insert(
            format!("{p}.post_attention_layernorm.weight"),
            Tensor::ones(hidden, DType::F32, &dev).unwrap(),
        );
        t.insert(
            format!("{p}.self_attn.q_proj.weight"),
            randn(&[heads * hd, hidden]),
        );
        t.insert(
            format!("{p}.self_attn.k_proj.weight"),
            randn(&[kv * hd, hidden]),
        );
        t.insert(
            format!("{p}.self_attn.v_proj.weight"),
            randn(&[kv * hd, hidden]),
        );
        t.insert(
            format!("{p}.self_attn.o_proj.weight"),
            randn(&[hidden, heads * hd]),
        );
        t.insert(format!("{p}.mlp.gate_proj.weight"), randn(&[inter, hidden]));
        t.insert(format!("{p}.mlp.up_proj.weight"), randn(&[inter, hidden]));
        t.insert(format!("{p}.mlp.down_proj.weight"), randn(&[hidden, inter]));
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
}

#[test]
fn q4_k_really_quantises_and_tracks_f32() {
    let dir = tempfile::tempdir().unwrap();
    random_llama(dir.path());
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 % 500) as u32 + 3).collect();
    let (q8, ..) = compare(dir.path(), Precision::Q8_0, &prompt);
    let (q4, f, q) = compare(dir.path(), Precision::Q4K, &prompt);
    println!("worst logits cosine vs f32: q8_0 {q8:.5}, q4_k {q4:.5}");
    assert!(q8 > 0.999, "q8_0 {q8}");
    assert!(q4 > 0.98, "q4_k {q4}");
    assert!(q8 >= q4, "q8_0 should be at least as close as q4_k");
    // Q4_K is 4.5 bits per weight in a file; the kernel's layout holds 6 (4-bit values, an
    // f32 scale and min per block of 32): under a fifth of f32, and less than Q8_0's 9.
    assert!(q.weight_bytes().unwrap() * 5 < f.weight_bytes().unwrap());
    let q8 = load(dir.path(), Precision::Q8_0);
    assert!(q.weight_bytes().unwrap() < q8.weight_bytes().unwrap() * 3 / 4);
}

#[test]
fn a_gguf_file_loads_like_the_in_memory_conversion() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(fixture("llama-tiny").join(f), dir.path().join(f)).unwrap();
    }
    let src = Model::resolve(
        "test",
        ModelSource::Checkpoint(Checkpoint::open(&fixture("llama-tiny")).unwrap()),
    )
    .unwrap();
    let formats = ia_native::models::quantized::write_gguf(
        &src.source,
        Precision::Q8_0,
        &dir.path().join("model-q8_0.gguf"),
    )
    .unwrap();
    assert!(formats.contains_key("q8_0"), "{formats:?}");
    let prompt = [50u32, 81, 70, 72];
    let a = load(&fixture("llama-tiny"), Precision::Q8_0)
        .prefill(&prompt)
        .unwrap();
    // The file's Q8_0 blocks (its query and key rows in llama.cpp's interleaved order, put
    // back on load) go to the same decoder and kernel as the safetensors quantised at load:
    // the same logits, to the bit.
    let mut from_file = load(dir.path(), Precision::Q8_0);
    assert_eq!(from_file.prefill(&prompt).unwrap(), a);
    assert_eq!(
        from_file.weight_bytes(),
        load(&fixture("llama-tiny"), Precision::Q8_0).weight_bytes()
    );
}

/// A Q8_0 .gguf file of Qwen3 runs in the native decoder, so it batches (candle's quantised
/// Qwen3 keeps one sequence's cache).
#[test]
fn a_gguf_qwen3_batches_like_single() {
    let dir = gguf_copy(&fixture("qwen3-tiny"), Precision::Q8_0, None);
    let mut q = load(dir.path(), Precision::Q8_0);
    let prompt = vec![5u32, 6, 7];
    let single = greedy(q.as_mut(), &prompt, 6);
    let (rows, _) = ia_engine::generation::generate_batch_greedy(
        q.as_mut(),
        &[prompt.clone(), prompt.clone()],
        6,
    )
    .unwrap();
    assert_eq!(rows, vec![single.clone(), single]);
}

/// A file's own head (`output.weight`) is the head even where config.json says the
/// embeddings are tied, as llama.cpp reads such a file.
#[test]
fn a_gguf_files_own_head_wins_over_a_tied_config() {
    let dir = gguf_copy(&fixture("qwen3-tiny"), Precision::Q8_0, None);
    let prompt = [5u32, 6, 7];
    let untied = load(dir.path(), Precision::Q8_0).prefill(&prompt).unwrap();
    let config = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    cfg["tie_word_embeddings"] = serde_json::Value::Bool(true);
    std::fs::write(&config, cfg.to_string()).unwrap();
    assert_eq!(
        load(dir.path(), Precision::Q8_0).prefill(&prompt).unwrap(),
        untied
    );
}

/// A Q4_K file's blocks (LLaMA's query and key rows of blocks put back in transformers'
/// order) give the logits of the safetensors quantised to q4_k at load.
#[test]
fn a_q4_k_gguf_file_equals_the_quantised_safetensors() {
    let src = tempfile::tempdir().unwrap();
    random_llama(src.path());
    let dir = gguf_copy(src.path(), Precision::Q4K, None);
    let prompt = [5u32, 6, 7, 8];
    let a = load(src.path(), Precision::Q4K).prefill(&prompt).unwrap();
    assert_eq!(
        load(dir.path(), Precision::Q4K).prefill(&prompt).unwrap(),
        a
    );
}

/// A folder holding `source`'s config and tokenizer and a `precision` .gguf of its weights, with
/// the tensor `requantised` (if any) in Q4_0, a format the native kernel does not multiply.
fn gguf_copy(source: &Path, precision: Precision, requantised: Option<&str>) -> tempfile::TempDir {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        if source.join(f).exists() {
            std::fs::copy(source.join(f), dir.path().join(f)).unwrap();
        }
    }
    let src = Model::resolve(
        "test",
        ModelSource::Checkpoint(Checkpoint::open(source).unwrap()),
    )
    .unwrap();
    let path = dir.path().join(format!("model-{precision}.gguf"));
    ia_native::models::quantized::write_gguf(&src.source, precision, &path).unwrap();
    if let Some(name) = requantised {
        let mut reader = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut reader).unwrap();
        let mut tensors = Vec::new();
        for n in content.tensor_infos.keys() {
            let mut q = content.tensor(&mut reader, n, &Device::Cpu).unwrap();
            if n == name {
                let f = q.dequantize(&Device::Cpu).unwrap();
                q = QTensor::quantize(&f, GgmlDType::Q4_0).unwrap();
            }
            tensors.push((n.clone(), q));
        }
        let metadata: Vec<(&str, &gguf_file::Value)> = content
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut out = std::fs::File::create(&path).unwrap();
        gguf_file::write(&mut out, &metadata, &tensors).unwrap();
    }
    dir
}

#[test]
fn quantised_precisions_are_refused_where_they_do_not_exist() {
    let src = Model::resolve(
        "test",
        ModelSource::Checkpoint(Checkpoint::open(&fixture("opt-tiny")).unwrap()),
    )
    .unwrap();
    let e = NativeEngine::new()
        .load_generator(&src, Placement::new(Platform::Cpu, Precision::Q4K))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("q4_k"), "{e}");
    let src = Model::resolve(
        "test",
        ModelSource::Checkpoint(Checkpoint::open(&fixture("bert-tiny")).unwrap()),
    )
    .unwrap();
    assert!(NativeEngine::new()
        .load(&src, Placement::new(Platform::Cpu, Precision::Q8_0))
        .is_err());
}

#[test]
fn batched_quantised_generation_matches_single() {
    let prompt: Vec<u32> = vec![50, 81, 70, 72, 290, 83];
    for (name, precision) in [
        ("llama-tiny", Precision::Q8_0),
        ("qwen2-tiny", Precision::Q8_0),
        ("qwen3-tiny", Precision::Q8_0),
        ("qwen3-tiny", Precision::Q4K),
    ] {
        let mut q = load(&fixture(name), precision);
        let single = greedy(q.as_mut(), &prompt, 12);
        let (rows, _) = ia_engine::generation::generate_batch_greedy(
            q.as_mut(),
            &[prompt.clone(), prompt.clone()],
            12,
        )
        .unwrap();
        for row in rows {
            assert_eq!(row, single, "{name}");
        }
    }
}

/// A .gguf file with a tensor in a block format the native kernel does not multiply runs in
/// candle's quantised model instead, whose Qwen3 keeps one sequence's cache: batching it is
/// refused, not crashed.
#[test]
fn a_gguf_in_other_formats_runs_in_candle_and_batched_qwen3_is_refused() {
    let dir = gguf_copy(
        &fixture("qwen3-tiny"),
        Precision::Q8_0,
        Some("blk.0.ffn_down.weight"),
    );
    let mut q = load(dir.path(), Precision::Q8_0);
    assert_eq!(greedy(q.as_mut(), &[5, 6], 2).len(), 2);
    let e = ia_engine::generation::generate_batch_greedy(q.as_mut(), &[vec![5, 6], vec![5, 6]], 2)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("unsupported") && e.contains("Qwen3"), "{e}");
}
