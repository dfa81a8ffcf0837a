#!/usr/bin/env bash
# The web platforms' assets: onnxruntime-web from the npm registry, at the version pinned in
# web/package-lock.json, into <cache>/web (ia-browser serves its dist/ folder to the headless
# browser from 127.0.0.1). --ignore-scripts: no install script may download anything else.
# Idempotent: skips the install when the lock file is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${XDG_CACHE_HOME:-$HOME/.cache}/ipfs-accelerate/web"
mkdir -p "$dest"
if cmp -s web/package-lock.json "$dest/package-lock.json" \
   && [ -f "$dest/node_modules/onnxruntime-web/dist/ort.all.min.mjs" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "fetch_web_assets.sh: npm is required (Debian: apt-get install npm)" >&2
  exit 1
fi
cp web/package.json web/package-lock.json "$dest/"
(cd "$dest" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
echo "onnxruntime-web installed in $dest/node_modules/onnxruntime-web" >&2
