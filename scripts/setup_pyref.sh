#!/usr/bin/env bash
# Creates the Python reference environment (PyTorch + transformers from PyPI) used to generate
# fixtures and to run the PyTorch side of the speed comparisons (onnx: torch.onnx.export writes
# the runtimes suite's exports with it). Not needed by the test suite.
set -euo pipefail
cache="${IPFS_ACCELERATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ipfs-accelerate}"
venv="$cache/pyref"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  torch transformers safetensors sentence-transformers numpy pillow onnx
# The ASR pipeline resamples with torchaudio; its newest wheel may trail torch's version, so
# it goes in without letting pip replace torch.
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps torchaudio
# Optimum's decoder merging (scripts/merge_seq2seq_decoders.py): pure Python over onnx; its
# pinned transformers range must not replace the installed one.
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "optimum==1.27.0"
"$venv/bin/python" -c "import torch, transformers; print('pyref:', torch.__version__, transformers.__version__)"
