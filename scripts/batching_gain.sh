#!/usr/bin/env bash
# Issue 17's batching gain: embeddings throughput of `serve` under the same closed-loop load
# (the `load` example: N clients for S seconds, loopback), with batching on and with
# `--no-batching`, alternating ROUNDS times so that drift of the machine falls on both alike.
# Prints one line per run and the ratio of the medians.
#
# usage: scripts/batching_gain.sh [MODEL] [CLIENTS] [SECONDS] [ROUNDS]
#   MODEL defaults to all-MiniLM-L6-v2 (scripts/bench.sh fetches it into the local cache).
#   PRECISION=bf16 serves it in bf16 (default f32).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-sentence-transformers/all-MiniLM-L6-v2}
clients=${2:-32}
seconds=${3:-20}
rounds=${4:-3}
port=${PORT:-8019}
precision=${PRECISION:-f32}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ipfs-accelerate/target}
cargo build -q --release -p ipfs-accelerate --bin ipfs-accelerate
cargo build -q --release -p ia-serve --example load
bin=$CARGO_TARGET_DIR/release/ipfs-accelerate
load=$CARGO_TARGET_DIR/release/examples/load

server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null || true' EXIT

run() { # $1: extra serve flag; prints "throughput mean_batch"
    "$bin" serve --models "$model" --port "$port" --precision "$precision" $1 >/tmp/batching_gain_serve.log 2>&1 &
    server=$!
    for _ in $(seq 120); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
        kill -0 "$server" 2>/dev/null || { cat /tmp/batching_gain_serve.log >&2; exit 1; }
        sleep 1
    done
    local report throughput metrics
    report=$("$load" --url "http://127.0.0.1:$port" --embed-model "$model" --clients "$clients" --seconds "$seconds")
    throughput=$(python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["server_errors_5xx"]==0, r; print(round(r["embed"]["throughput_per_s"],1))' <<<"$report")
    metrics=$(curl -sf "http://127.0.0.1:$port/metrics")
    kill -INT "$server"
    wait "$server" || true
    server=
    python3 - "$throughput" <<EOF
import re, sys
m = """$metrics"""
s = sum(float(v) for v in re.findall(r'^ia_batch_size_sum\{[^}]*\} (\S+)', m, re.M))
c = sum(float(v) for v in re.findall(r'^ia_batch_size_count\{[^}]*\} (\S+)', m, re.M))
print(sys.argv[1], round(s / c, 1) if c else 0)
EOF
}

on=()
off=()
for round in $(seq "$rounds"); do
    read -r t b < <(run "")
    echo "round $round batching on:  $t embeddings/s (texts per batch $b)"
    on+=("$t")
    read -r t b < <(run "--no-batching")
    echo "round $round batching off: $t embeddings/s"
    off+=("$t")
done
python3 - "${on[*]}" "${off[*]}" <<'EOF'
import statistics, sys
on = [float(v) for v in sys.argv[1].split()]
off = [float(v) for v in sys.argv[2].split()]
a, b = statistics.median(on), statistics.median(off)
print(f"median: batching on {a:.1f}/s, off {b:.1f}/s, gain x{a / b:.2f}")
EOF
