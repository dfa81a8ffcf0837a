#!/usr/bin/env bash
# Browser assets from the npm registry, at the versions pinned in web/package-lock.json, into
# <cache>/web: onnxruntime-web (ia-browser serves its dist/ folder to the headless browser from
# 127.0.0.1) and Chart.js (`serve --db-path` serves its UMD build to the dashboard).
# --ignore-scripts: no install script may download anything else.
# Idempotent: skips the install when the lock file is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${XDG_CACHE_HOME:-$HOME/.cache}/ipfs-accelerate/web"
mkdir -p "$dest"
if cmp -s web/package-lock.json "$dest/package-lock.json" \
   && [ -f "$dest/node_modules/onnxruntime-web/dist/ort.all.min.mjs" ] \
   && [ -f "$dest/node_modules/chart.js/dist/chart.umd.js" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "fetch_web_assets.sh: npm is required (Debian: apt-get install npm)" >&2
  exit 1
fi
cp web/package.json web/package-lock.json "$dest/"
(cd "$dest" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
echo "onnxruntime-web and chart.js installed in $dest/node_modules" >&2
