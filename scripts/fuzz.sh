#!/usr/bin/env bash
# Long fuzzing runs: every target of crates/ia-fuzz under libFuzzer (cargo-fuzz, coverage-
# guided), seeded from the fixtures and from crates/ia-fuzz/regressions/.
#   scripts/fuzz.sh [SECONDS_PER_TARGET=300] [TARGET...]
# The test suite runs the same targets for a few seconds each with a stable-Rust mutation
# fuzzer (crates/ia-fuzz/tests/fuzz.rs); this script is the long run. Crashes land in
# fuzz/artifacts/<target>/: copy them into crates/ia-fuzz/regressions/<target>/ with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
shift || true
export CARGO_TARGET_DIR_MAIN="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ipfs-accelerate/target}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(config preprocessor image audio safetensors gguf onnx openvino_ir import)
fi
# Corpora: the seeds the tests use, written by the library that defines them.
CARGO_TARGET_DIR="$CARGO_TARGET_DIR_MAIN" cargo run --quiet --release -p ia-fuzz \
  --example write_seeds -- fuzz/corpus
# libFuzzer's instrumentation needs flags stable rustc accepts only with RUSTC_BOOTSTRAP (no
# nightly toolchain can be fetched here); AddressSanitizer's runtime ships with the toolchain.
case "$(rustc --version)" in *nightly*) ;; *) export RUSTC_BOOTSTRAP=1 ;; esac
status=0
for t in "${targets[@]}"; do
  echo "== $t: ${seconds} s"
  if ! (cd fuzz && cargo fuzz run --release "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=1048576 2>&1 | tail -n 5); then
    status=1
  fi
  if compgen -G "fuzz/artifacts/$t/*" >/dev/null; then
    echo "findings for $t:"; ls -l "fuzz/artifacts/$t"
    status=1
  fi
done
exit $status
