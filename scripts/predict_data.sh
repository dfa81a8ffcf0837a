#!/usr/bin/env bash
# Fills a results store with real runs for the predictor's held-out evaluation, then prints it
# (`ipfs-accelerate predict --evaluate`):
#   * this machine's calibration (`hardware --calibrate`);
#   * five families with ONNX exports (BERT, ViT, LLaMA, Qwen2, OPT: the fixtures' checkpoints)
#     on every target the machine has (native cpu, onnxruntime, openvino, wasm, webgpu; absent
#     ones are stored unavailable with the reason) x 4 batch sizes x 2 sequence lengths;
#   * the small catalog models at their real sizes on the native engine (BERT = MiniLM,
#     ViT-tiny, Whisper-tiny.en, and the T5 fixture; random weights where no
#     checkpoint is cached, and every result says which).
# Short time budgets (5 iterations, 0.2 s). usage: scripts/predict_data.sh [DB]
# (default ./predict_db.duckdb); IA_BIN=path uses a built binary instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."
db=${1:-./predict_db.duckdb}
exe=${IA_BIN:-$(scripts/build.sh)}
scripts/fetch_checkpoints.sh >&2
"$exe" hardware --calibrate --db-path "$db" >&2
common=(--batch-sizes 1,2,4,8 --warmup 1 --min-iterations 5 --min-duration 0.2
        --new-tokens 8 --audio-seconds 2 --db-path "$db")
for seq in 16 64; do
  "$exe" bench --models fixtures/bert-tiny,fixtures/vit-tiny,fixtures/llama-tiny,fixtures/qwen2-tiny,fixtures/opt-tiny \
    --hardware cpu,onnxruntime,openvino,wasm,webgpu --seq-len "$seq" "${common[@]}" >&2 || true
  "$exe" bench --models bert,vit,whisper,fixtures/t5-tiny --small-models --random-weights \
    --hardware cpu --seq-len "$seq" "${common[@]}" >&2 || true
done
"$exe" predict --evaluate --db-path "$db"
