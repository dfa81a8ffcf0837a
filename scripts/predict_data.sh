#!/usr/bin/env bash
# Fills a results store with real runs for the predictor's held-out evaluation, then prints it
# (`ipfs-accelerate predict --evaluate`):
#   * this machine's calibration (`hardware --calibrate`);
#   * five families with ONNX exports (BERT, ViT, LLaMA, Qwen2, OPT: the fixtures' checkpoints)
#     on every target the machine has (native cpu, onnxruntime, openvino, wasm, webgpu; absent
#     ones are stored unavailable with the reason) x 4 batch sizes x 2 sequence lengths;
#   * the small catalog models at their real sizes on the native engine (BERT = MiniLM,
#     ViT-tiny, Whisper-tiny.en, and the T5 fixture; random weights where no
#     checkpoint is cached, and every result says which), and Whisper-tiny.en on ONNX Runtime
#     and OpenVINO (its checkpoint's exports; on wasm one iteration of it takes 2 s at b=1).
# Each configuration (model, target, batch size, length) runs in a process of its own, so that
# its peak memory is what it takes alone: in one process for every model and target, the
# fixtures' peaks (models of under 1 MB) grew from 100 to 200 MB in the order they ran, as
# runtimes loaded their libraries; in one process per model and target, a batch of 1 (the
# first run) peaked 6-12 MB under the larger batches that ran after it (medians of each fixture
# on each target).
# Every configuration is measured in IA_PREDICT_PASSES passes (default 3), one after the other,
# so the evaluation can say how far repeats of one configuration differ (the floor under any
# prediction's error) and score each configuration by the median of its repeats, which leaves
# out a pass a slow spell of the machine caught: on a store of 3 passes at 64 tokens (Zen 4,
# 2026-12-07) the held-out configurations' MAPE against that median was 9.6%, against 11.7%
# on the same store's last 2 passes. 3 passes take about 40 minutes at one length on a 2-core
# machine, twice that at two. Each run has budgets of IA_PREDICT_MIN_ITERATIONS iterations
# (default 10) and IA_PREDICT_MIN_DURATION seconds (default: `bench`'s own, 2). A shared VM has
# slow spells of up to a second at up to 2.5x: with half a second, three processes of one
# configuration (llama-tiny on the native engine, b=2, 64 tokens) read its p50 at 0.51, 1.28
# and 1.32 ms, with two seconds at 0.52, 0.54 and 0.54 ms (2-core Zen 4 EPYC, 2026-12-06).
# usage: scripts/predict_data.sh [DB] (default ./predict_db.duckdb); IA_BIN=path uses a built
# binary instead of building; IA_PREDICT_LENGTHS="64" measures those sequence lengths only
# (default "16 64"; Whisper on the runtimes runs with the first).
set -euo pipefail
cd "$(dirname "$0")/.."
db=${1:-./predict_db.duckdb}
exe=${IA_BIN:-$(scripts/build.sh)}
passes=${IA_PREDICT_PASSES:-3}
read -r -a lengths <<< "${IA_PREDICT_LENGTHS:-16 64}"
scripts/fetch_checkpoints.sh >&2
"$exe" hardware --calibrate --db-path "$db" >&2
common=(--warmup 2 --min-iterations "${IA_PREDICT_MIN_ITERATIONS:-10}"
        --new-tokens 8 --audio-seconds 2 --db-path "$db")
# Unset, the duration is bench's own default.
if [[ -n ${IA_PREDICT_MIN_DURATION:-} ]]; then
  common+=(--min-duration "$IA_PREDICT_MIN_DURATION")
fi
for pass in $(seq 1 "$passes"); do
  echo "pass $pass of $passes" >&2
  for seq in "${lengths[@]}"; do
    for batch in 1 2 4 8; do
      for model in fixtures/bert-tiny fixtures/vit-tiny fixtures/llama-tiny fixtures/qwen2-tiny fixtures/opt-tiny; do
        for target in cpu onnxruntime openvino wasm webgpu; do
          "$exe" bench --models "$model" --hardware "$target" --batch-sizes "$batch" \
            --seq-len "$seq" "${common[@]}" >&2 || true
        done
      done
      for model in bert vit whisper fixtures/t5-tiny; do
        "$exe" bench --models "$model" --small-models --random-weights --hardware cpu \
          --batch-sizes "$batch" --seq-len "$seq" "${common[@]}" >&2 || true
      done
      # A real-size model on the runtimes too (the one small catalog model whose checkpoint
      # comes with ONNX exports), once a pass: its input does not have a length.
      if [[ $seq == "${lengths[0]}" ]]; then
        for target in onnxruntime openvino; do
          "$exe" bench --models whisper --small-models --hardware "$target" \
            --batch-sizes "$batch" "${common[@]}" >&2 || true
        done
      fi
    done
  done
done
"$exe" predict --evaluate --db-path "$db"
