#!/usr/bin/env bash
# Creates the Python reference environment (PyTorch + transformers from PyPI) used to generate
# fixtures, to run the PyTorch side of the speed comparisons (onnx: torch.onnx.export writes
# the runtimes suite's exports with it) and, in the test suite, to run the launch files
# `plan-training --emit` writes (torch.distributed with gloo, and DeepSpeed on its CPU
# accelerator).
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
# DeepSpeed's sdist builds against the installed torch (no isolated build environment, which
# would download another torch); its ops compile on first use with the ninja it brings.
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-build-isolation deepspeed
"$venv/bin/python" -c "import torch, transformers; print('pyref:', torch.__version__, transformers.__version__)"
