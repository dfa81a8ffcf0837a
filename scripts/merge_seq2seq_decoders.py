#!/usr/bin/env python3
"""Writes the merged decoder of an encoder-decoder export, as onnx-community's repositories and
Optimum's CLI ship Whisper and T5: `decoder_model.onnx` and `decoder_with_past_model.onnx`
fused by Optimum's own `merge_decoders` into one graph that branches on a `use_cache_branch`
input (the first call feeds an empty cache; on later calls the cross-attention outputs are
placeholders and the cache fed in stays).

    ~/.cache/ipfs-accelerate/pyref/bin/python scripts/merge_seq2seq_decoders.py [DIR ...]

Each DIR (default: the whisper-tiny and t5-tiny fixtures) gets
`onnx-merged/decoder_model_merged.onnx` beside its three-graph `onnx/`; the tests lay a
checkpoint out with `onnx/encoder_model.onnx` and that file only. Needs onnx and optimum
(scripts/setup_pyref.sh installs both).
"""
import json
import sys
from pathlib import Path

import onnx
from optimum.onnx.graph_transformations import merge_decoders

ROOT = Path(__file__).resolve().parent.parent


def merge(folder):
    folder = Path(folder)
    out = folder / "onnx-merged"
    out.mkdir(exist_ok=True)
    target = out / "decoder_model_merged.onnx"
    merged = merge_decoders(folder / "onnx" / "decoder_model.onnx",
                            folder / "onnx" / "decoder_with_past_model.onnx", strict=False,
                            save_path=target)
    (out / "decoder_model_merged_export_meta.json").write_text(json.dumps({
        "generator": "scripts/merge_seq2seq_decoders.py", "onnx": onnx.__version__,
        "merged": ["onnx/decoder_model.onnx", "onnx/decoder_with_past_model.onnx"],
        "inputs": [i.name for i in merged.graph.input],
        "outputs": [o.name for o in merged.graph.output]}, indent=2))
    print("merged", out / "decoder_model_merged.onnx")


if __name__ == "__main__":
    for d in sys.argv[1:] or [ROOT / "fixtures" / "whisper-tiny", ROOT / "fixtures" / "t5-tiny"]:
        merge(d)
