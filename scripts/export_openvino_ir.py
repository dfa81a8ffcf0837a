#!/usr/bin/env python3
"""Converts the committed ONNX export of bert-tiny to OpenVINO IR (openvino_model.xml + .bin,
the layout optimum-intel writes) in fixtures/bert-tiny-ir/, so the OpenVINO engine's IR path
is tested against the same transformers reference as the ONNX path. Weights stay f32
(compress_to_fp16=False).

    ~/.cache/ipfs-accelerate/runtimes/venv/bin/python scripts/export_openvino_ir.py

Needs the openvino wheel (`ipfs-accelerate runtimes install`).
"""
import json
import shutil
from pathlib import Path

import openvino as ov

ROOT = Path(__file__).resolve().parent.parent
src, out = ROOT / "fixtures" / "bert-tiny", ROOT / "fixtures" / "bert-tiny-ir"
out.mkdir(exist_ok=True)
model = ov.convert_model(str(src / "onnx" / "model.onnx"))
ov.save_model(model, str(out / "openvino_model.xml"), compress_to_fp16=False)
for f in ("config.json", "weights_provenance.json"):
    shutil.copy(src / f, out / f)
(out / "export_meta.json").write_text(json.dumps({
    "generator": "scripts/export_openvino_ir.py", "openvino": ov.get_version(),
    "source": "fixtures/bert-tiny/onnx/model.onnx", "reference": "fixtures/bert-tiny/reference.safetensors"},
    indent=2))
print("wrote", out)
