#!/usr/bin/env python3
"""Exports the committed tiny fixtures that the ONNX path supports to ONNX, in the layout
onnx-community / Xenova repositories use (`<fixture>/onnx/model.onnx`), so the ONNX Runtime
and OpenVINO engines are tested against the same transformers reference outputs
(`reference.safetensors`) as the native engine.

    ~/.cache/ipfs-accelerate/pyref/bin/python scripts/export_onnx_fixtures.py

Needs torch + transformers + onnx (scripts/setup_pyref.sh; pip install onnx). Exported with
the TorchScript exporter, opset 17, dynamic batch and sequence axes.
"""
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"


class Encoder(torch.nn.Module):
    """Fixes the positional order of the inputs and picks the output by name."""

    def __init__(self, model, inputs, output):
        super().__init__()
        self.model, self.inputs, self.output = model, inputs, output

    def forward(self, *args):
        return getattr(self.model(**dict(zip(self.inputs, args))), self.output)


def export(name, model, inputs, output, dynamic):
    out = FIX / name / "onnx"
    out.mkdir(exist_ok=True)
    names = list(inputs)
    torch.onnx.export(
        Encoder(model.eval(), names, output), tuple(inputs.values()), str(out / "model.onnx"),
        input_names=names, output_names=[output], opset_version=17, dynamo=False,
        dynamic_axes={**{n: dynamic for n in names}, output: {0: "batch"}})
    (out / "export_meta.json").write_text(json.dumps({
        "generator": "scripts/export_onnx_fixtures.py", "torch": torch.__version__,
        "opset": 17, "inputs": names, "output": output}, indent=2))
    print("exported", out / "model.onnx")


def main():
    from transformers import BertModel, ViTForImageClassification
    ids = torch.tensor([[2, 10, 11, 12, 3, 0]])
    export("bert-tiny", BertModel.from_pretrained(FIX / "bert-tiny", add_pooling_layer=False),
           {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)},
           "last_hidden_state", {0: "batch", 1: "sequence"})
    export("vit-tiny", ViTForImageClassification.from_pretrained(FIX / "vit-tiny"),
           {"pixel_values": torch.randn(1, 3, 32, 32)}, "logits", {0: "batch"})


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
