#!/usr/bin/env python3
"""Reference training runs for the native engine's training step (bench --mode training).

For each tiny checkpoint under fixtures/, loads transformers' training class of it (BERT with
its masked-LM head, ViT with its classifier, the causal LMs, T5 for conditional generation),
dropout off, and runs STEPS steps of torch.optim.AdamW on one fixed labelled batch, in float32
on the CPU. Writes fixtures/<name>/training.safetensors:

    initial.<param>   every parameter before the first step, under the checkpoint's names (as
                      save_pretrained writes them: transformers 5 renames some modules in memory)
    final.<param>     every parameter after the last step
    input_ids, labels, pixel_values   the batch (labels of -100 are ignored by the loss)
    losses            the loss of each step

and the settings in its metadata. crates/ia-native/tests/training_parity.rs runs the same steps
from the same parameters and compares.

Regenerate: scripts/setup_pyref.sh && ~/.cache/ipfs-accelerate/pyref/bin/python scripts/make_training_fixtures.py
"""
import json
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
SEED = 4321
STEPS = 5
BATCH, SEQ = 2, 12
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

# fixture -> (transformers class, what the batch is)
MODELS = {
    "bert-tiny": ("BertForMaskedLM", "masked-lm"),
    "vit-tiny": ("ViTForImageClassification", "image-classification"),
    "llama-tiny": ("LlamaForCausalLM", "causal-lm"),
    "qwen2-tiny": ("Qwen2ForCausalLM", "causal-lm"),
    "qwen3-tiny": ("Qwen3ForCausalLM", "causal-lm"),
    "opt-tiny": ("OPTForCausalLM", "causal-lm"),
    "t5-tiny": ("T5ForConditionalGeneration", "seq2seq"),
}

DROPOUT_KEYS = [
    "hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
    "activation_dropout", "dropout_rate", "classifier_dropout",
]


def batch(kind, config, g):
    if kind == "image-classification":
        size = config.image_size
        pixels = torch.randn(BATCH, config.num_channels, size, size, generator=g)
        labels = torch.tensor([1, 3]) % config.num_labels
        return {"pixel_values": pixels, "labels": labels}
    ids = torch.randint(5, config.vocab_size, (BATCH, SEQ), generator=g)
    if kind == "masked-lm":
        labels = torch.full_like(ids, -100)
        positions = [i for i in range(1, SEQ) if i % 7 == 3 or i % 5 == 1]
        labels[:, positions] = ids[:, positions]
        ids = ids.clone()
        ids[:, positions] = 4  # [MASK] in the fixture's vocabulary
        return {"input_ids": ids, "labels": labels}
    if kind == "seq2seq":
        return {"input_ids": ids, "labels": ids.flip(1)}
    return {"input_ids": ids, "labels": ids.clone()}


def saved(model):
    """The parameters as save_pretrained writes them (checkpoint names, tied ones once)."""
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return load_file(Path(d) / "model.safetensors")


def run(name, cls, kind):
    folder = FIX / name
    config = transformers.AutoConfig.from_pretrained(folder)
    for k in DROPOUT_KEYS:
        if hasattr(config, k):
            setattr(config, k, 0.0)
    torch.manual_seed(SEED)
    model = getattr(transformers, cls).from_pretrained(folder, config=config).float()
    model.train()
    g = torch.Generator().manual_seed(SEED)
    inputs = batch(kind, config, g)
    initial = saved(model)
    tensors = {f"initial.{n}": p for n, p in initial.items()}
    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    tensors.update({f"final.{n}": p for n, p in saved(model).items()})
    for k, v in inputs.items():
        tensors[k] = v.contiguous()
    tensors["losses"] = torch.tensor(losses, dtype=torch.float32)
    metadata = {
        "generator": "scripts/make_training_fixtures.py",
        "class": cls,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "steps": str(STEPS),
        "adamw": json.dumps({**ADAMW, "betas": list(ADAMW["betas"])}),
        "seed": str(SEED),
    }
    save_file(tensors, folder / "training.safetensors", metadata=metadata)
    print(f"{name}: {cls}, {len(initial)} parameters, losses {[round(x, 4) for x in losses]}")


def main():
    for name, (cls, kind) in MODELS.items():
        run(name, cls, kind)


if __name__ == "__main__":
    main()
