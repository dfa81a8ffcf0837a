#!/usr/bin/env python3
"""Random-weight checkpoints at real sizes, for benchmarks where no registry package ships the
trained weights. Each folder gets weights_provenance.json ({"weights": "random"}), so every
result measured on it is stored and reported as weights = random.

    ~/.cache/ipfs-accelerate/pyref/bin/python scripts/make_bench_checkpoints.py qwen2-0.5b
writes $IPFS_ACCELERATE_CACHE/bench-checkpoints/qwen2-0.5b-random (Qwen/Qwen2-0.5B's config);
`wav2vec2-base` writes wav2vec2-base-random (facebook/wav2vec2-base-960h's architecture: the
transformers defaults, a 32-letter CTC head, its feature extractor settings).
"""
import json
import os
import sys
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

CACHE = Path(os.environ.get("IPFS_ACCELERATE_CACHE", Path.home() / ".cache" / "ipfs-accelerate"))

# Qwen/Qwen2-0.5B config.json values.
QWEN2_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=131072,
                 rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                 bos_token_id=151643, eos_token_id=151643)


def wav2vec2_base():
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC
    out = CACHE / "bench-checkpoints" / "wav2vec2-base-random"
    if not (out / "model.safetensors").exists():
        torch.manual_seed(0)
        # facebook/wav2vec2-base-960h: the defaults with group-norm features and 32 letters.
        Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=32, pad_token_id=0)).eval().save_pretrained(out)
        Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(out)
        (out / "weights_provenance.json").write_text(json.dumps(
            {"weights": "random", "generator": "scripts/make_bench_checkpoints.py", "seed": 0,
             "architecture_of": "facebook/wav2vec2-base-960h"}))
    print(out)


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "qwen2-0.5b"
    if which == "wav2vec2-base":
        return wav2vec2_base()
    if which != "qwen2-0.5b":
        sys.exit(f"unknown checkpoint '{which}' (known: qwen2-0.5b, wav2vec2-base)")
    out = CACHE / "bench-checkpoints" / "qwen2-0.5b-random"
    if not (out / "model.safetensors").exists():
        torch.manual_seed(0)
        Qwen2ForCausalLM(Qwen2Config(**QWEN2_05B)).eval().save_pretrained(out)
        (out / "weights_provenance.json").write_text(json.dumps(
            {"weights": "random", "generator": "scripts/make_bench_checkpoints.py", "seed": 0,
             "architecture_of": "Qwen/Qwen2-0.5B"}))
    print(out)


if __name__ == "__main__":
    main()
