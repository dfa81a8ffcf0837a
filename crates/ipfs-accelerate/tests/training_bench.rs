//! `bench --mode training` end to end: optimiser steps on the native engine, stored with
//! mode = training, the memory split, the losses, and what was asked (checkpointing, bf16).

mod common;

use common::{csv, fixture, run, stderr};

#[test]
fn training_steps_are_measured_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("train.duckdb");
    let models = format!(
        "{},{},{}",
        fixture("bert-tiny"),
        fixture("llama-tiny"),
        fixture("clip-tiny")
    );
    let o = run(&[
        "bench",
        "--models",
        &models,
        "--mode",
        "training",
        "--gradient-checkpointing",
        "false,true",
        "--precision",
        "f32,bf16",
        "--batch-sizes",
        "2",
        "--seq-len",
        "16",
        "--warmup",
        "1",
        "--min-iterations",
        "3",
        "--min-duration",
        "0",
        "--db-path",
        db.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = csv(
        &db,
        "SELECT m.model_name LIKE '%bert-tiny' AS bert, r.precision, r.gradient_checkpointing, \
         r.status, r.iterations >= 3, r.seq_len, \
         r.optimizer_state_mb = 2 * r.weight_mb, r.gradients_mb = r.weight_mb, \
         (r.precision = 'bf16-mixed' OR r.loss_last < r.loss_first), \
         abs(r.throughput_tokens_per_s - 16 * r.throughput_items_per_s) < 1e-6 * r.throughput_tokens_per_s \
         FROM performance_results r JOIN models m USING (model_id) \
         WHERE r.mode = 'training' AND m.model_name NOT LIKE '%clip-tiny' \
         ORDER BY bert, r.precision, r.gradient_checkpointing",
    );
    let lines: Vec<&str> = rows.lines().skip(1).collect();
    assert_eq!(lines.len(), 8, "{rows}");
    for (i, line) in lines.iter().enumerate() {
        let precision = if i % 4 < 2 { "bf16-mixed" } else { "f32" };
        let ckpt = i % 2 == 1;
        assert_eq!(
            *line,
            format!(
                "{},{precision},{ckpt},pass,true,16,true,true,true,true",
                i >= 4
            ),
            "{rows}"
        );
    }
    // CLIP has no training implementation: recorded as unavailable with the reason.
    let clip = csv(
        &db,
        "SELECT DISTINCT r.status, r.error LIKE '%trains BERT%' FROM performance_results r \
         JOIN models m USING (model_id) WHERE m.model_name LIKE '%clip-tiny'",
    );
    assert!(clip.contains("unavailable,true"), "{clip}");

    // select --mode training shows these measurements and the recomputation they measured on
    // the strategies that checkpoint activations.
    let o = run(&[
        "select",
        "--model",
        &fixture("llama-tiny"),
        "--mode",
        "training",
        "--gpus",
        "2",
        "--gpu-memory-gb",
        "1",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--db-path",
        db.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["measurements"].as_array().unwrap().len(), 4, "{out}");
    for s in out["strategies"].as_array().unwrap() {
        let ckpt = s["activation_checkpointing"].as_bool().unwrap();
        assert_eq!(s["measured_recompute_factor"].is_number(), ckpt, "{s}");
    }
}
