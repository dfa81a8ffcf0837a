#!/usr/bin/env python3
"""Exports the committed tiny fixtures that the ONNX path supports to ONNX, in the layout
onnx-community / Xenova repositories use (`<fixture>/onnx/model.onnx`), so the ONNX Runtime
and OpenVINO engines are tested against the same transformers reference outputs
(`reference.safetensors`) as the native engine.

* Encoders (bert-tiny, vit-tiny): one graph, named inputs to one named output.
* CLIP (clip-tiny): two graphs as transformers.js lays them out, `onnx/text_model.onnx`
  (input_ids, attention_mask -> text_embeds) and `onnx/vision_model.onnx` (pixel_values ->
  image_embeds), the projections before CLIPModel's normalisation; the browser loads both
  parts, one after the other or in parallel.
* CLAP (clap-tiny): `onnx/text_model.onnx` and `onnx/audio_model.onnx` (input_features,
  is_longer -> audio_embeds), the features computed in Rust as on the native engine.
* Wav2Vec2 (wav2vec2-tiny, -stable): `input_values` -> `logits` (CTC), the waveform normalised
  by the feature extractor in Rust before it is fed, as on the native engine.
* DETR (detr-tiny): `pixel_values`, `pixel_mask` -> `logits`, `pred_boxes`.
* Whisper (whisper-tiny; --whisper DIR for a real checkpoint): Optimum's three graphs,
  `encoder_model.onnx`, `decoder_model.onnx` (first call: both caches out) and
  `decoder_with_past_model.onnx` (the self-attention cache grows, the cross-attention cache
  computed once is fed back), `past_key_values.{i}.decoder|encoder.key|value` and
  `present.{i}.decoder|encoder.key|value` [batch, heads, length, head_dim].
* T5 (t5-tiny; --t5 DIR): the same three graphs, the encoder on `input_ids` and
  `attention_mask`, both decoder graphs also taking `encoder_attention_mask`.
* Decoders (llama, qwen2, qwen3, opt): one graph with the KV cache as inputs and outputs,
  named like Optimum's and onnx-community's exports: `input_ids`, `attention_mask`,
  `position_ids` (not OPT, which derives positions from the mask),
  `past_key_values.{i}.key|value` [batch, kv_heads, past, head_dim] -> `logits`,
  `present.{i}.key|value`. The first step feeds an empty cache (past = 0), so the one graph
  does both prefill and decode. Traced with eager attention: the masks then trace as plain
  tensor ops.

    ~/.cache/ipfs-accelerate/pyref/bin/python scripts/export_onnx_fixtures.py

    ~/.cache/ipfs-accelerate/pyref/bin/python scripts/export_onnx_fixtures.py --decoder DIR
    ~/.cache/ipfs-accelerate/pyref/bin/python scripts/export_onnx_fixtures.py --bert DIR
    (also --wav2vec2 DIR, --detr DIR, --whisper DIR, --t5 DIR, --clip DIR, --clap DIR)
export one checkpoint folder of that family (for benchmarks at real sizes) the same way, in place.

Needs torch + transformers + onnx (scripts/setup_pyref.sh; pip install onnx). Exported with
the TorchScript exporter, opset 17, dynamic batch and sequence axes.
"""
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"


class Encoder(torch.nn.Module):
    """Fixes the positional order of the inputs and picks the outputs by name."""

    def __init__(self, model, inputs, outputs):
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs

    def forward(self, *args):
        out = self.model(**dict(zip(self.inputs, args)))
        return tuple(getattr(out, name) for name in self.outputs)


def export(name, model, inputs, output, dynamic, file="model.onnx", folder=None, axes=None):
    """`output` is one output name or a list; `axes` maps input and output names to their
    dynamic axes where the defaults (batch and sequence of 2-D inputs, batch of the rest and
    of the outputs) are not the graph's."""
    out = (Path(folder) if folder else FIX / name) / "onnx"
    out.mkdir(exist_ok=True)
    names = list(inputs)
    outputs = [output] if isinstance(output, str) else list(output)
    dynamic = dynamic if isinstance(dynamic, dict) and all(isinstance(k, int) for k in dynamic) \
        else None
    default = {n: (dynamic or ({0: "batch", 1: "sequence"} if inputs[n].dim() == 2 else {0: "batch"}))
               for n in names}
    dynamic_axes = {**default, **{o: {0: "batch"} for o in outputs}, **(axes or {})}
    torch.onnx.export(
        Encoder(model.eval(), names, outputs), tuple(inputs.values()), str(out / file),
        input_names=names, output_names=outputs, opset_version=17, dynamo=False,
        dynamic_axes=dynamic_axes)
    meta = "export_meta.json" if file == "model.onnx" else file.replace(".onnx", "_export_meta.json")
    (out / meta).write_text(json.dumps({
        "generator": "scripts/export_onnx_fixtures.py", "torch": torch.__version__,
        "opset": 17, "inputs": names, "outputs": outputs}, indent=2))
    print("exported", out / file)


def export_clip(name, folder=None):
    """CLIP's two towers as transformers.js lays them out: `onnx/text_model.onnx` (input_ids,
    attention_mask -> text_embeds) and `onnx/vision_model.onnx` (pixel_values -> image_embeds)."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
    folder = Path(folder) if folder else FIX / name
    ids = torch.tensor([[0, 10, 11, 12, 1, 1], [0, 13, 14, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    export(name, CLIPTextModelWithProjection.from_pretrained(folder),
           {"input_ids": ids, "attention_mask": mask}, "text_embeds", None, "text_model.onnx",
           folder=folder)
    vision = CLIPVisionModelWithProjection.from_pretrained(folder)
    size = vision.config.image_size
    export(name, vision, {"pixel_values": torch.randn(1, 3, size, size)}, "image_embeds", None,
           "vision_model.onnx", folder=folder)


class DecoderWithPast(torch.nn.Module):
    """Takes the cache as flat tensors (key, value per layer) and returns it the same way."""

    def __init__(self, model, inputs):
        super().__init__()
        self.model, self.inputs = model, inputs

    def forward(self, *args):
        from transformers.cache_utils import DynamicCache
        n = len(self.inputs)
        past = args[n:]
        cache = DynamicCache()
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(**dict(zip(self.inputs, args[:n])), past_key_values=cache, use_cache=True)
        flat = []
        for layer in out.past_key_values.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def export_decoder(name, folder=None):
    from transformers import AutoModelForCausalLM
    folder = Path(folder) if folder else FIX / name
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    past_len, new = 3, 2  # traced with a non-empty cache so that its length stays dynamic
    inputs = {"input_ids": torch.tensor([[5, 6]]),
              "attention_mask": torch.ones(1, past_len + new, dtype=torch.long)}
    if c.model_type != "opt":
        inputs["position_ids"] = torch.tensor([[past_len, past_len + 1]])
    kinds = [(i, k) for i in range(c.num_hidden_layers) for k in ("key", "value")]
    past_names = [f"past_key_values.{i}.{k}" for i, k in kinds]
    present_names = [f"present.{i}.{k}" for i, k in kinds]
    gen = torch.Generator().manual_seed(0)
    past = [torch.randn(1, heads, past_len, head_dim, generator=gen) for _ in kinds]
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
               "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"},
               **{n: {0: "batch", 2: "past"} for n in past_names},
               **{n: {0: "batch", 2: "total"} for n in present_names}}
    names = list(inputs) + past_names
    out = folder / "onnx"
    out.mkdir(exist_ok=True)
    torch.onnx.export(
        DecoderWithPast(model, list(inputs)), tuple(inputs.values()) + tuple(past),
        str(out / "model.onnx"), input_names=names, output_names=["logits"] + present_names,
        opset_version=17, dynamo=False,
        dynamic_axes={k: v for k, v in dynamic.items() if k in names + ["logits"] + present_names})
    (out / "export_meta.json").write_text(json.dumps({
        "generator": "scripts/export_onnx_fixtures.py", "torch": torch.__version__,
        "opset": 17, "inputs": names, "outputs": ["logits"] + present_names}, indent=2))
    print("exported", out / "model.onnx")


def export_bert(name, folder=None):
    from transformers import BertModel
    folder = Path(folder) if folder else FIX / name
    ids = torch.tensor([[2, 10, 11, 12, 3, 0]])
    export(name, BertModel.from_pretrained(folder, add_pooling_layer=False),
           {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)},
           "last_hidden_state", {0: "batch", 1: "sequence"}, folder=folder)


def export_clap(name, folder=None):
    """CLAP's two towers as transformers.js lays them out: `onnx/text_model.onnx` (input_ids,
    attention_mask -> text_embeds) and `onnx/audio_model.onnx` (input_features [batch, 4 fusion
    views, frames, mel bins], is_longer [batch, 1] bool -> audio_embeds), the projections before
    ClapModel's normalisation."""
    from transformers import ClapAudioModelWithProjection, ClapTextModelWithProjection
    folder = Path(folder) if folder else FIX / name
    ids = torch.tensor([[0, 10, 11, 12, 2, 1], [0, 13, 14, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    export(name, ClapTextModelWithProjection.from_pretrained(folder),
           {"input_ids": ids, "attention_mask": mask}, "text_embeds", None, "text_model.onnx",
           folder=folder)
    audio = ClapAudioModelWithProjection.from_pretrained(folder)
    c = audio.config
    channels = 4 if c.enable_fusion else 1
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    frames = 1 + int(pre["max_length_s"] * pre["sampling_rate"]) // pre["hop_length"]
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, channels, frames, c.num_mel_bins, generator=gen)
    export(name, audio, {"input_features": features, "is_longer": torch.tensor([[True]])},
           "audio_embeds", None, "audio_model.onnx", folder=folder,
           axes={"input_features": {0: "batch"}, "is_longer": {0: "batch"}})


def export_wav2vec2(name, folder=None):
    """Wav2Vec2 with its CTC head as Optimum exports it: `input_values` (the feature
    extractor's normalised waveform) [batch, samples] -> `logits` [batch, frames, vocab]."""
    from transformers import Wav2Vec2ForCTC
    folder = Path(folder) if folder else FIX / name
    gen = torch.Generator().manual_seed(0)
    export(name, Wav2Vec2ForCTC.from_pretrained(folder), {"input_values": torch.randn(1, 4000, generator=gen)},
           "logits", None, folder=folder, axes={"logits": {0: "batch", 1: "frames"}})


def export_detr(name, folder=None):
    """DETR as Optimum and onnx-community export it: `pixel_values` [batch, 3, height, width]
    and `pixel_mask` [batch, height, width] (1 on real pixels) -> `logits`, `pred_boxes`."""
    from transformers import DetrForObjectDetection
    folder = Path(folder) if folder else FIX / name
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, 64, 85, generator=gen)
    export(name, DetrForObjectDetection.from_pretrained(folder),
           {"pixel_values": pixels, "pixel_mask": torch.ones(1, 64, 85, dtype=torch.long)},
           ["logits", "pred_boxes"], None, folder=folder,
           axes={"pixel_values": {0: "batch", 2: "height", 3: "width"},
                 "pixel_mask": {0: "batch", 1: "height", 2: "width"}})


class WhisperEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_features):
        return self.model.model.encoder(input_features).last_hidden_state


def _flat(cache):
    """(self-attention key, value, cross-attention key, value) per layer, Optimum's order."""
    flat = []
    for own, cross in zip(cache.self_attention_cache.layers, cache.cross_attention_cache.layers):
        flat += [own.keys, own.values, cross.keys, cross.values]
    return flat


class DecoderFirst(torch.nn.Module):
    """The first decoder call of an encoder-decoder: tokens (T5: and the encoder's mask) and
    the encoder's output in, logits and both caches out."""

    def __init__(self, model, masked):
        super().__init__()
        self.model, self.masked = model, masked

    def forward(self, input_ids, *rest):
        mask = {"attention_mask": rest[0]} if self.masked else {}
        out = self.model(decoder_input_ids=input_ids, encoder_outputs=(rest[-1],), use_cache=True,
                         **mask)
        return (out.logits, *_flat(out.past_key_values))


class DecoderWithPast(torch.nn.Module):
    """Later calls: tokens (T5: and the encoder's mask) and both caches in; logits and the
    grown self-attention cache out (the cross-attention cache, computed once, stays the
    caller's)."""

    def __init__(self, model, layers, masked):
        super().__init__()
        self.model, self.layers, self.masked = model, layers, masked

    def forward(self, input_ids, *rest):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache
        mask = {"attention_mask": rest[0]} if self.masked else {}
        past = rest[1:] if self.masked else rest
        own, cross = DynamicCache(), DynamicCache()
        for i in range(self.layers):
            own.update(past[4 * i], past[4 * i + 1], i)
            cross.update(past[4 * i + 2], past[4 * i + 3], i)
        cache = EncoderDecoderCache(own, cross)
        # The encoder's output is not read when the cross-attention cache is set.
        width = getattr(self.model.config, "d_model")
        unused = torch.zeros(input_ids.shape[0], 1, width)
        out = self.model(decoder_input_ids=input_ids, encoder_outputs=(unused,),
                         past_key_values=cache, use_cache=True, **mask)
        flat = []
        for layer in out.past_key_values.self_attention_cache.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def export_decoders(model, out, layers, save, first_inputs, masked):
    """decoder_model.onnx and decoder_with_past_model.onnx of an encoder-decoder, traced on
    `first_inputs` (input_ids, [encoder_attention_mask], encoder_hidden_states)."""
    kinds = [(i, part, k) for i in range(layers) for part in ("decoder", "encoder") for k in ("key", "value")]
    present = [f"present.{i}.{p}.{k}" for i, p, k in kinds]
    past = [f"past_key_values.{i}.{p}.{k}" for i, p, k in kinds]
    mask_names = ["encoder_attention_mask"] if masked else []
    mask_axes = {"encoder_attention_mask": {0: "batch", 1: "frames"}} if masked else {}
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "encoder_hidden_states": {0: "batch", 1: "frames"},
            "logits": {0: "batch", 1: "sequence"}, **mask_axes,
            **{n: {0: "batch", 2: "total" if ".decoder." in n else "frames"} for n in present}}
    save(DecoderFirst(model, masked), first_inputs, "decoder_model.onnx",
         ["input_ids", *mask_names, "encoder_hidden_states"], ["logits"] + present, axes)
    with torch.no_grad():
        first = DecoderFirst(model, masked)(*first_inputs)
    own_present = [n for n in present if ".decoder." in n]
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}, **mask_axes,
            **{n: {0: "batch", 2: "past" if ".decoder." in n else "frames"} for n in past},
            **{n: {0: "batch", 2: "total"} for n in own_present}}
    mask_args = (first_inputs[1],) if masked else ()
    save(DecoderWithPast(model, layers, masked), (torch.tensor([[7]]), *mask_args, *first[1:]),
         "decoder_with_past_model.onnx", ["input_ids", *mask_names, *past], ["logits"] + own_present, axes)


def saver(out):
    def save(module, args, file, inputs, outputs, axes):
        torch.onnx.export(module, args, str(out / file), input_names=inputs, output_names=outputs,
                          opset_version=17, dynamo=False, dynamic_axes=axes)
        (out / file.replace(".onnx", "_export_meta.json")).write_text(json.dumps({
            "generator": "scripts/export_onnx_fixtures.py", "torch": torch.__version__,
            "opset": 17, "inputs": inputs, "outputs": outputs}, indent=2))
        print("exported", out / file)
    return save


def export_whisper(name, folder=None):
    """Whisper in Optimum's three-graph layout: `encoder_model.onnx` (input_features ->
    last_hidden_state), `decoder_model.onnx` (input_ids, encoder_hidden_states -> logits,
    present.{i}.decoder|encoder.key|value) and `decoder_with_past_model.onnx` (input_ids,
    past_key_values.{i}.decoder|encoder.key|value -> logits, present.{i}.decoder.key|value)."""
    from transformers import WhisperForConditionalGeneration
    folder = Path(folder) if folder else FIX / name
    # f32 whatever the checkpoint stores (the converted whisper-tiny.en is f16): the exports run in f32.
    model = WhisperForConditionalGeneration.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32).eval()
    c = model.config
    out = folder / "onnx"
    out.mkdir(exist_ok=True)
    save = saver(out)
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, c.num_mel_bins, 2 * c.max_source_positions, generator=gen)
    save(WhisperEncoder(model), (features,), "encoder_model.onnx", ["input_features"],
         ["last_hidden_state"], {"input_features": {0: "batch"}, "last_hidden_state": {0: "batch"}})
    with torch.no_grad():
        enc = model.model.encoder(features).last_hidden_state
    ids = torch.tensor([[c.decoder_start_token_id, 5, 6]])
    export_decoders(model, out, c.decoder_layers, save, (ids, enc), masked=False)


class T5Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_t5(name, folder=None):
    """T5 in Optimum's three-graph layout: `encoder_model.onnx` (input_ids, attention_mask ->
    last_hidden_state), `decoder_model.onnx` (input_ids, encoder_attention_mask,
    encoder_hidden_states -> logits, present.*) and `decoder_with_past_model.onnx` (input_ids,
    encoder_attention_mask, past_key_values.* -> logits, present.{i}.decoder.*)."""
    from transformers import T5ForConditionalGeneration
    folder = Path(folder) if folder else FIX / name
    model = T5ForConditionalGeneration.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32).eval()
    c = model.config
    out = folder / "onnx"
    out.mkdir(exist_ok=True)
    save = saver(out)
    ids = torch.tensor([[5, 6, 7, 8, 2]])
    mask = torch.ones_like(ids)
    save(T5Encoder(model), (ids, mask), "encoder_model.onnx", ["input_ids", "attention_mask"],
         ["last_hidden_state"], {"input_ids": {0: "batch", 1: "sequence"},
                                 "attention_mask": {0: "batch", 1: "sequence"},
                                 "last_hidden_state": {0: "batch", 1: "sequence"}})
    with torch.no_grad():
        enc = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    start = torch.tensor([[c.decoder_start_token_id, 9, 10]])
    export_decoders(model, out, c.num_decoder_layers, save, (start, mask, enc), masked=True)


def main():
    from transformers import ViTForImageClassification
    export_bert("bert-tiny")
    export("vit-tiny", ViTForImageClassification.from_pretrained(FIX / "vit-tiny"),
           {"pixel_values": torch.randn(1, 3, 32, 32)}, "logits", {0: "batch"})
    export_clip("clip-tiny")
    export_clap("clap-tiny")
    export_wav2vec2("wav2vec2-tiny")
    export_wav2vec2("wav2vec2-tiny-stable")
    export_detr("detr-tiny")
    export_whisper("whisper-tiny")
    export_t5("t5-tiny")
    for name in ["llama-tiny", "qwen2-tiny", "qwen3-tiny", "opt-tiny"]:
        export_decoder(name)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:2] == ["--decoder"]:
        # Any decoder checkpoint folder (e.g. scripts/make_bench_checkpoints.py's), exported
        # in place to <folder>/onnx/model.onnx (+ external data past 2 GB).
        export_decoder(Path(sys.argv[2]).name, sys.argv[2])
    elif sys.argv[1:2] == ["--bert"]:
        # A BERT checkpoint folder (e.g. the MiniLM of scripts/fetch_checkpoints.sh), exported
        # in place to <folder>/onnx/model.onnx.
        export_bert(Path(sys.argv[2]).name, sys.argv[2])
    elif sys.argv[1:2] == ["--wav2vec2"]:
        export_wav2vec2(Path(sys.argv[2]).name, sys.argv[2])
    elif sys.argv[1:2] == ["--whisper"]:
        export_whisper(Path(sys.argv[2]).name, sys.argv[2])
    elif sys.argv[1:2] == ["--t5"]:
        export_t5(Path(sys.argv[2]).name, sys.argv[2])
    elif sys.argv[1:2] == ["--detr"]:
        export_detr(Path(sys.argv[2]).name, sys.argv[2])
    elif sys.argv[1:2] == ["--clip"]:
        export_clip(Path(sys.argv[2]).name, sys.argv[2])
    elif sys.argv[1:2] == ["--clap"]:
        export_clap(Path(sys.argv[2]).name, sys.argv[2])
    else:
        main()
