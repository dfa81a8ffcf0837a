#!/usr/bin/env bash
# Builds the workspace exactly as the test suite does (release, every package, tests included)
# and prints the path of the ipfs-accelerate binary. Building a subset (`-p ...`) resolves
# build-dependency features differently and would compile DuckDB's C++ (~30 min) a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ipfs-accelerate/target}"
cargo build --quiet --release --workspace --bins --tests >&2
echo "$CARGO_TARGET_DIR/release/ipfs-accelerate"
