#!/usr/bin/env python3
"""Native engine vs PyTorch (transformers, CPU), same weights, same thread count, one run.

Suite "encoders" (default): random-initialised bert-base (BertModel) and ViT-base
(ViTForImageClassification). Suite "media": ViT-base b=1, CLIP ViT-B/32 image features b=1
(random CLIPModel), whisper-tiny.en (the real checkpoint from scripts/fetch_checkpoints.sh)
transcribing fixtures/media/speech-16k.wav greedily, feature extraction included, and
wav2vec2-base (random Wav2Vec2ForCTC) CTC logits on the same clip, normalisation included,
and DETR with a ResNet-50 backbone (random DetrForObjectDetection, transformers' ResNet) on
an 800 x 800 image (the native side's test picture as DETR's processor resizes it);
each case's PyTorch and native sides run back to back, --rounds times (medians reported).
Suite "runtimes": the same bert-base and ViT-base (b=1 and 8) on every engine in one run:
native f32 and bf16 (AMX or AVX512-BF16; refused without), ONNX Runtime (CPU EP), OpenVINO f32 and bf16
(their ONNX exports, written next to the checkpoints), and PyTorch, each case on every engine
back to back, --rounds times (medians and the per-round ratios reported); then the FLOP/s each
engine achieved on bert-base b=8 against the matmul rate `hardware --calibrate` measures for
it. Needs `ipfs-accelerate runtimes install`.
Suite "generation": a random-initialised OPT-125m-sized
OPTForCausalLM, batch 1, greedy, prompt --seq-len tokens, --new-tokens generated: TTFT and
decode tokens/s, PyTorch looping over forward() with past_key_values as the native engine
loops over its KV cache. Checkpoints are built once with transformers, then measured one
after the other on this machine:
  * PyTorch: torch.inference_mode, warm-up, then timed iterations until both --min-iterations
    and --min-duration are met (the same protocol as `ipfs-accelerate bench`);
  * native: `ipfs-accelerate bench --json` on the same checkpoint folders.
Prints mean and p50 latency per case and the ratio native / PyTorch (> 1 means native is slower),
and stores both sides in the DuckDB file (--db-path): the native side as `bench` does, the
PyTorch side (engine = pytorch) through `ipfs-accelerate db import`.

Usage (needs the reference env from scripts/setup_pyref.sh):
    ~/.cache/ipfs-accelerate/pyref/bin/python scripts/compare_pytorch.py [--suite encoders|generation]
        [--threads N] [--json FILE]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("IPFS_ACCELERATE_CACHE", Path.home() / ".cache" / "ipfs-accelerate"))


def physical_cores():
    cores = set()
    phys = "0"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("physical id"):
                phys = line.split(":")[1].strip()
            elif line.startswith("core id"):
                cores.add((phys, line.split(":")[1].strip()))
    except OSError:
        pass
    return len(cores) or os.cpu_count() or 1


def mark_random(path):
    (path / "weights_provenance.json").write_text(json.dumps(
        {"weights": "random", "generator": "scripts/compare_pytorch.py", "seed": 0}))


def make_opt_checkpoint():
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    path = CACHE / "compare" / "opt-125m-random"
    if not (path / "model.safetensors").exists():
        torch.manual_seed(0)
        OPTForCausalLM(OPTConfig()).eval().save_pretrained(path)  # OPTConfig() is opt-125m
    mark_random(path)
    return path


def pytorch_generation(path, args):
    import torch
    from transformers import OPTForCausalLM

    torch.set_num_threads(args.threads)
    model, load_ms = load_timed(lambda: OPTForCausalLM.from_pretrained(path))
    prompt = torch.randint(1000, 30000, (1, args.seq_len))

    def once():
        with torch.inference_mode():
            t = time.perf_counter()
            out = model(input_ids=prompt, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            ttft = (time.perf_counter() - t) * 1e3
            past, steps = out.past_key_values, []
            for _ in range(args.new_tokens - 1):
                t = time.perf_counter()
                out = model(input_ids=tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                steps.append((time.perf_counter() - t) * 1e3)
        return ttft, steps

    t = time.perf_counter()
    once()
    first_ms = (time.perf_counter() - t) * 1e3
    for _ in range(args.warmup):
        once()
    ttfts, steps, totals, start = [], [], [], time.perf_counter()
    while len(ttfts) < args.min_iterations or time.perf_counter() - start < args.min_duration:
        t = time.perf_counter()
        ttft, s = once()
        totals.append((time.perf_counter() - t) * 1e3)
        ttfts.append(ttft)
        steps.extend(s)
    row = external(path, model, 1, args.seq_len, load_ms, {"first_ms": first_ms, "samples": totals}, args,
                   generation={"prompt_tokens": args.seq_len, "new_tokens": args.new_tokens,
                               # prefill and the first token's argmax are one timing here
                               "ttft_ms": ttfts, "prefill_ms": ttfts, "tpot_ms": steps})
    return {"ttft_ms": statistics.median(ttfts), "tpot_p50_ms": statistics.median(steps),
            "decode_tok_s": len(steps) / (sum(steps) / 1e3), "n": len(ttfts)}, row


def native_generation(path, args):
    exe, env = native_binary(args)
    o = bench_rows(exe, env, path, args, "--batch-sizes", "1", "--seq-len", str(args.seq_len),
                   "--new-tokens", str(args.new_tokens))[0]["outcome"]
    if o["status"] != "pass":
        sys.exit(f"native generation did not run: {o}")
    g = o["generation"]
    return {"ttft_ms": g["ttft"]["p50_ms"], "tpot_p50_ms": g["tpot"]["p50_ms"],
            "decode_tok_s": g["decode_tokens_per_s"], "n": o["latency"]["count"]}


def generation_suite(args):
    import torch

    path = make_opt_checkpoint()
    (t, row), n = pytorch_generation(path, args), native_generation(path, args)
    import_into_db([row], args)
    print(f"threads={args.threads} prompt={args.seq_len} new_tokens={args.new_tokens} torch={torch.__version__} "
          f"protocol: warmup {args.warmup}, >= {args.min_iterations} generations and >= {args.min_duration}s")
    print(f"{'opt-125m b=1':<16}{'torch':>12}{'native':>12}{'native/torch':>14}")
    for key, label in (("ttft_ms", "TTFT p50 ms"), ("tpot_p50_ms", "TPOT p50 ms"), ("decode_tok_s", "decode tok/s")):
        print(f"{label:<16}{t[key]:>12.2f}{n[key]:>12.2f}{n[key] / t[key]:>13.2f}x")
    return {"suite": "generation", "torch": t, "native": n}


def make_checkpoints():
    import torch
    from transformers import BertConfig, BertModel, ViTConfig, ViTForImageClassification

    out = CACHE / "compare"
    bert_dir, vit_dir = out / "bert-base-random", out / "vit-base-random"
    torch.manual_seed(0)
    if not (bert_dir / "model.safetensors").exists():
        BertModel(BertConfig(), add_pooling_layer=False).eval().save_pretrained(bert_dir)
    if not (vit_dir / "model.safetensors").exists():
        cfg = ViTConfig(num_labels=1000, id2label={i: f"LABEL_{i}" for i in range(1000)},
                        label2id={f"LABEL_{i}": i for i in range(1000)})
        ViTForImageClassification(cfg).eval().save_pretrained(vit_dir)
    for d in (bert_dir, vit_dir):
        mark_random(d)
    return bert_dir, vit_dir


def time_pytorch(model, inputs, warmup, min_iters, min_duration):
    import torch

    with torch.inference_mode():
        t = time.perf_counter()
        model(**inputs)
        first = (time.perf_counter() - t) * 1e3
        for _ in range(warmup):
            model(**inputs)
        samples = []
        start = time.perf_counter()
        while len(samples) < min_iters or time.perf_counter() - start < min_duration:
            t = time.perf_counter()
            model(**inputs)
            samples.append((time.perf_counter() - t) * 1e3)
    return {"first_ms": first, "mean_ms": statistics.fmean(samples),
            "p50_ms": statistics.median(samples), "n": len(samples), "samples": samples}


def external(path, model, batch, seq_len, load_ms, timing, args, generation=None):
    """A PyTorch measurement in the shape `ipfs-accelerate db import` takes."""
    import torch

    return {"model": str(path), "engine": "pytorch", "engine_version": torch.__version__,
            "platform": "cpu", "device": "cpu", "precision": "f32", "scenario": "single-stream",
            "batch_size": batch, "seq_len": seq_len,
            "parameter_count": sum(p.numel() for p in model.parameters()),
            "load_time_ms": load_ms, "first_inference_ms": timing["first_ms"],
            "warmup_iterations": args.warmup, "samples_ms": timing["samples"],
            "peak_rss_bytes": None, "generation": generation}


def load_timed(load):
    """A model from `load()` in eval mode, and the milliseconds loading took."""
    t = time.perf_counter()
    model = load().eval()
    return model, (time.perf_counter() - t) * 1e3


def bert_inputs(batch, seq_len):
    """BertModel's inputs: `batch` sequences of `seq_len` random token ids, no padding."""
    import torch

    ids = torch.randint(1000, 30000, (batch, seq_len))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def import_into_db(rows, args):
    if args.no_db:
        return
    exe, env = native_binary(args)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(rows, f)
    subprocess.run([str(exe), "db", "--db-path", args.db_path, "import", "--file", f.name], env=env, check=True)
    os.unlink(f.name)


def pytorch_side(bert_dir, vit_dir, args):
    import torch
    from transformers import BertModel, ViTForImageClassification

    torch.set_num_threads(args.threads)
    res, rows = {}, []
    bert, load_ms = load_timed(lambda: BertModel.from_pretrained(bert_dir, add_pooling_layer=False))
    for b in (1, 8):
        res[("bert-base", b)] = time_pytorch(bert, bert_inputs(b, args.seq_len), args.warmup, args.min_iterations,
                                             args.min_duration)
        rows.append(external(bert_dir, bert, b, args.seq_len, load_ms, res[("bert-base", b)], args))
    del bert
    vit, load_ms = load_timed(lambda: ViTForImageClassification.from_pretrained(vit_dir))
    for b in (1, 8):
        res[("vit-base", b)] = time_pytorch(vit, {"pixel_values": torch.randn(b, 3, 224, 224)},
                                            args.warmup, args.min_iterations, args.min_duration)
        rows.append(external(vit_dir, vit, b, None, load_ms, res[("vit-base", b)], args))
    return res, torch.__version__, rows


def db_args(args):
    return ["--no-db"] if args.no_db else ["--db-path", args.db_path]


def native_binary(args):
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    exe = subprocess.run([str(ROOT / "scripts" / "build.sh")], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    return Path(exe), env


def bench_rows(exe, env, path, args, *options):
    """`ipfs-accelerate bench --json` of one model with the script's protocol (and its DB
    choice); `options` add the batch sizes, targets and inputs. Returns bench's result rows."""
    out = subprocess.run(
        [str(exe), "bench", "--models", str(path), *options, "--warmup", str(args.warmup),
         "--min-iterations", str(args.min_iterations), "--min-duration", str(args.min_duration),
         *db_args(args), "--json"], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def latency_of(o):
    """First inference and p50/mean latency of a passed bench outcome."""
    lat = o["latency"]
    return {"first_ms": o["first_inference_ms"], "mean_ms": lat["mean_ms"], "p50_ms": lat["p50_ms"],
            "n": lat["count"]}


def native_side(bert_dir, vit_dir, args):
    exe, env = native_binary(args)
    res = {}
    for name, path, batches in (("bert-base", bert_dir, "1,8"), ("vit-base", vit_dir, "1,8")):
        for row in bench_rows(exe, env, path, args, "--batch-sizes", batches, "--seq-len", str(args.seq_len)):
            o = row["outcome"]
            if o["status"] != "pass":
                sys.exit(f"native {name} b={row['batch_size']} did not run: {o}")
            res[(name, row["batch_size"])] = latency_of(o)
    return res


SPEECH = ROOT / "fixtures" / "media" / "speech-16k.wav"


def make_media_checkpoints():
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, DetrConfig,
                              DetrForObjectDetection, Wav2Vec2Config, Wav2Vec2FeatureExtractor,
                              Wav2Vec2ForCTC)

    out = CACHE / "compare"
    clip_dir, w2v_dir = out / "clip-vit-b32-random", out / "wav2vec2-base-random"
    detr_dir = out / "detr-resnet-50-random"
    torch.manual_seed(0)
    if not (clip_dir / "model.safetensors").exists():
        CLIPModel(CLIPConfig()).eval().save_pretrained(clip_dir)  # CLIPConfig() is ViT-B/32
        CLIPImageProcessor().save_pretrained(clip_dir)
    if not (w2v_dir / "model.safetensors").exists():
        Wav2Vec2ForCTC(Wav2Vec2Config()).eval().save_pretrained(w2v_dir)  # the base architecture
        Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(w2v_dir)
    if not (detr_dir / "model.safetensors").exists():
        # transformers' own ResNet-50 (timm is not needed); no processor file: the native
        # side's default DETR processor resizes to 800 on the shortest edge, as transformers'.
        config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False)
        DetrForObjectDetection(config).eval().save_pretrained(detr_dir)
    for d in (clip_dir, w2v_dir, detr_dir):
        mark_random(d)
    whisper_dir = CACHE / "models" / "openai--whisper-tiny.en"
    if not (whisper_dir / "model.safetensors").exists():
        sys.exit(f"{whisper_dir} missing: run scripts/fetch_checkpoints.sh")
    return clip_dir, whisper_dir, w2v_dir, detr_dir


def read_speech():
    import wave

    import numpy as np
    with wave.open(str(SPEECH)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


class Call:
    """A timed unit of work for time_pytorch: model(**inputs) is fn()."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, **_):
        return self.fn()


def media_suite(args):
    import torch
    from transformers import (CLIPModel, DetrForObjectDetection, ViTForImageClassification,
                              Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration)

    torch.set_num_threads(args.threads)
    _, vit_dir = make_checkpoints()
    clip_dir, whisper_dir, w2v_dir, detr_dir = make_media_checkpoints()
    speech = read_speech()
    seconds = len(speech) / 16000
    rows = []
    exe, env = native_binary(args)
    # Each case's two sides are measured back to back, round after round (PyTorch, native,
    # PyTorch, native, ...), so a slow spell of the machine lands on both sides of a pair
    # instead of on every case of one side.
    rounds = {name: [] for name in MEDIA_CASES}

    def native(name, path, extra):
        o = bench_rows(exe, env, path, args, "--batch-sizes", "1", *extra)[0]["outcome"]
        if o["status"] != "pass":
            sys.exit(f"native {name} did not run: {o}")
        return latency_of(o)

    def measure(name, path, model, fn, load_ms, audio=False, extra=()):
        for _ in range(args.rounds):
            r = time_pytorch(Call(fn), {}, args.warmup, args.min_iterations, args.min_duration)
            row = external(path, model, 1, None, load_ms, r, args)
            if audio:
                row["audio_seconds"] = seconds
            rows.append(row)
            rounds[name].append((r, native(name, path, list(extra))))

    def load(cls, path):
        return load_timed(lambda: cls.from_pretrained(path, dtype=torch.float32))

    audio = ["--audio-file", str(SPEECH)]
    vit, ms = load(ViTForImageClassification, vit_dir)
    px = torch.randn(1, 3, 224, 224)
    measure("vit-base", vit_dir, vit, lambda: vit(pixel_values=px), ms)
    clip, ms = load(CLIPModel, clip_dir)
    measure("clip-vit-b32", clip_dir, clip, lambda: clip.get_image_features(pixel_values=px), ms)
    whisper, ms = load(WhisperForConditionalGeneration, whisper_dir)
    wfe = WhisperFeatureExtractor.from_pretrained(whisper_dir)
    tokens = {}

    def transcribe():
        feats = wfe(speech, sampling_rate=16000, return_tensors="pt").input_features
        out = whisper.generate(feats)
        tokens["whisper"] = out[0].tolist()
        return out
    measure("whisper-tiny.en", whisper_dir, whisper, transcribe, ms, audio=True, extra=audio)
    w2v, ms = load(Wav2Vec2ForCTC, w2v_dir)
    vfe = Wav2Vec2FeatureExtractor.from_pretrained(w2v_dir)
    measure("wav2vec2-base", w2v_dir, w2v,
            lambda: w2v(vfe(speech, sampling_rate=16000, return_tensors="pt").input_values), ms,
            audio=True, extra=audio)
    detr, ms = load(DetrForObjectDetection, detr_dir)
    px800 = torch.randn(1, 3, 800, 800)
    measure("detr-resnet-50", detr_dir, detr, lambda: detr(pixel_values=px800), ms)

    import_into_db(rows, args)
    print(f"threads={args.threads} torch={torch.__version__} audio={SPEECH.name} ({seconds:.2f} s) "
          f"protocol: warmup {args.warmup}, >= {args.min_iterations} iterations and >= {args.min_duration}s; "
          f"{args.rounds} round(s) of PyTorch then native per case")
    print(f"whisper tokens (PyTorch): {tokens.get('whisper')}")
    print(f"{'case':<18}{'torch p50':>11}{'native p50':>12}{'ratio (p50)':>13}  per round")
    out_rows = []
    for name in MEDIA_CASES:
        pairs = rounds[name]
        ratios = [n["p50_ms"] / t["p50_ms"] for t, n in pairs]
        t_p50 = statistics.median(t["p50_ms"] for t, _ in pairs)
        n_p50 = statistics.median(n["p50_ms"] for _, n in pairs)
        ratio = statistics.median(ratios)
        each = " ".join(f"{t['p50_ms']:.1f}/{n['p50_ms']:.1f}" for t, n in pairs)
        print(f"{name:<18}{t_p50:>9.2f}ms{n_p50:>10.2f}ms{ratio:>12.2f}x  {each if len(pairs) > 1 else ''}")
        out_rows.append({"case": name, "torch_p50_ms": t_p50, "native_p50_ms": n_p50,
                         "native_over_torch_p50": ratio,
                         "rounds": [{"torch": {k: v for k, v in t.items() if k != "samples"}, "native": n,
                                     "native_over_torch_p50": n["p50_ms"] / t["p50_ms"]} for t, n in pairs]})
    if args.rounds > 1:
        print("p50 columns and the ratio are medians over the rounds; per round: PyTorch/native p50 ms")
    return {"suite": "media", "threads": args.threads, "torch": torch.__version__, "rounds": args.rounds,
            "rows": out_rows}


MEDIA_CASES = ("vit-base", "clip-vit-b32", "whisper-tiny.en", "wav2vec2-base", "detr-resnet-50")


def runtimes_suite(args):
    import torch
    sys.path.insert(0, str(ROOT / "scripts"))
    from export_onnx_fixtures import Encoder

    from transformers import BertModel, ViTForImageClassification

    torch.set_num_threads(args.threads)
    bert_dir, vit_dir = make_checkpoints()
    for path, cls, inputs, output, dyn in (
            (bert_dir, lambda p: BertModel.from_pretrained(p, add_pooling_layer=False),
             bert_inputs(1, args.seq_len),
             "last_hidden_state", {0: "batch", 1: "sequence"}),
            (vit_dir, ViTForImageClassification.from_pretrained,
             {"pixel_values": torch.randn(1, 3, 224, 224)}, "logits", {0: "batch"})):
        onnx = path / "onnx" / "model.onnx"
        if not onnx.exists():
            onnx.parent.mkdir(exist_ok=True)
            names = list(inputs)
            torch.onnx.export(Encoder(cls(path).eval(), names, [output]), tuple(inputs.values()), str(onnx),
                              input_names=names, output_names=[output], opset_version=17, dynamo=False,
                              dynamic_axes={**{n: dyn for n in names}, output: {0: "batch"}})
    exe, env = native_binary(args)
    loads = {"bert-base": load_timed(lambda: BertModel.from_pretrained(bert_dir, add_pooling_layer=False)),
             "vit-base": load_timed(lambda: ViTForImageClassification.from_pretrained(vit_dir))}
    bert, vit = loads["bert-base"][0], loads["vit-base"][0]
    cases = [("bert-base", 1), ("bert-base", 8), ("vit-base", 1), ("vit-base", 8)]
    columns = [("native", "f32"), ("onnxruntime", "f32"), ("openvino", "f32"), ("native", "bf16"),
               ("openvino", "bf16")]
    # Each case on every engine back to back, round after round (PyTorch, then `bench` over the
    # three runtimes), so a slow spell of the machine lands on every engine of a round.
    rounds = {key: [] for key in cases}
    rows = []
    for _ in range(args.rounds):
        for name, b in cases:
            path, model = (bert_dir, bert) if name == "bert-base" else (vit_dir, vit)
            inputs = (bert_inputs(b, args.seq_len) if name == "bert-base"
                      else {"pixel_values": torch.randn(b, 3, 224, 224)})
            timing = time_pytorch(model, inputs, args.warmup, args.min_iterations, args.min_duration)
            rows.append(external(path, model, b, args.seq_len if name == "bert-base" else None, loads[name][1],
                                 timing, args))
            cells = {("pytorch", "f32"): timing["p50_ms"]}
            for row in bench_rows(exe, env, path, args, "--batch-sizes", str(b),
                                  "--hardware", "cpu,onnxruntime,openvino", "--precision", "f32,bf16",
                                  "--seq-len", str(args.seq_len)):
                o = row["outcome"]
                if o["status"] == "pass":
                    cells[(row["engine"], row["precision"])] = o["latency"]["p50_ms"]
            rounds[(name, b)].append(cells)
    import_into_db(rows, args)

    def median_of(key, column):
        values = [cells[column] for cells in rounds[key] if column in cells]
        return statistics.median(values) if values else None

    def ratios(key, over):
        return [cells[("native", "f32")] / cells[over] for cells in rounds[key]
                if ("native", "f32") in cells and over in cells]

    print(f"threads={args.threads} seq_len={args.seq_len} torch={torch.__version__} p50 ms; "
          f"protocol: warmup {args.warmup}, >= {args.min_iterations} iterations and >= {args.min_duration}s; "
          f"{args.rounds} round(s) of every engine per case" + ("; medians over the rounds" if args.rounds > 1 else ""))
    print(f"{'case':<14}" + "".join(f"{e + ' ' + p:>18}" for e, p in columns) + f"{'pytorch f32':>14}"
          + f"{'native/ort':>12}{'native/torch':>14}")
    table, res = [], {}
    for key in cases:
        cells = [median_of(key, c) for c in columns]
        t = median_of(key, ("pytorch", "f32"))
        for c, v in zip(columns, cells):
            if v is not None:
                res[(*key, *c)] = v
        over_ort, over_torch = ratios(key, ("onnxruntime", "f32")), ratios(key, ("pytorch", "f32"))
        ratio = lambda r: f"{statistics.median(r):.2f}x" if r else "-"
        print(f"{key[0] + ' b=' + str(key[1]):<14}" + "".join(
            f"{c:>16.2f}ms" if c is not None else f"{'-':>18}" for c in cells) + f"{t:>12.2f}ms"
            + f"{ratio(over_ort):>12}{ratio(over_torch):>14}")
        table.append({"case": f"{key[0]} b={key[1]}", "pytorch_f32_p50_ms": t,
                      **{f"{e}_{p}_p50_ms": c for (e, p), c in zip(columns, cells)},
                      "native_over_onnxruntime_f32": statistics.median(over_ort) if over_ort else None,
                      "native_over_pytorch_f32": statistics.median(over_torch) if over_torch else None,
                      "rounds": [{f"{e}_{p}_p50_ms": v for (e, p), v in r.items()} for r in rounds[key]]})
    if args.rounds > 1:
        print("per round, native / ONNX Runtime f32 and native / PyTorch f32 (p50):")
        for key in cases:
            pairs = zip(ratios(key, ("onnxruntime", "f32")), ratios(key, ("pytorch", "f32")))
            print(f"  {key[0] + ' b=' + str(key[1]):<14}" + "  ".join(f"{a:.2f} / {b:.2f}" for a, b in pairs))
    rates = achieved_rates(exe, env, bert_dir, args, res)
    return {"suite": "runtimes", "threads": args.threads, "torch": torch.__version__, "rounds": args.rounds,
            "rows": table, "bert_base_b8_gflops": rates}


def bert_flops(config, batch, seq):
    """FLOPs of one BertModel forward: 2 per multiply-add of the projections, the FFN and
    attention's two products (embeddings, norms and softmax are not counted)."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    tokens = batch * seq
    per_layer = 2 * tokens * (4 * h * h + 2 * h * i) + 2 * 2 * batch * seq * seq * h
    return layers * per_layer


def achieved_rates(exe, env, bert_dir, args, res):
    """bert-base b=8: the FLOP/s each engine achieved, against the matmul rate
    `hardware --calibrate` measures for it on this machine (into a scratch store)."""
    flops = bert_flops(json.loads((bert_dir / "config.json").read_text()), 8, args.seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        report = json.loads(subprocess.run(
            [str(exe), "hardware", "--calibrate", "--no-browser", "--json",
             "--db-path", str(Path(tmp) / "calibration.duckdb")],
            env=env, check=True, capture_output=True, text=True).stdout)
    peaks = {(c["engine"], c["precision"]): c["value"] for c in report.get("calibrations", [])
             if c["kind"] == "matmul" and c["platform"] in ("cpu", "openvino")}
    print(f"bert-base b=8: {flops / 1e9:.1f} GFLOP per batch; achieved vs the calibrated matmul peak:")
    out = []
    for engine, precision in [("native", "f32"), ("onnxruntime", "f32"), ("openvino", "f32"),
                              ("native", "bf16"), ("openvino", "bf16")]:
        p50 = res.get(("bert-base", 8, engine, precision))
        peak = peaks.get((engine, precision))
        if p50 is None:
            continue
        rate = flops / (p50 / 1e3) / 1e9
        share = f" of {peak / 1e9:.1f} peak ({rate / (peak / 1e9):.0%})" if peak else " (no calibration)"
        print(f"  {engine} {precision}: {rate:.1f} GFLOP/s{share}")
        out.append({"engine": engine, "precision": precision, "gflops": rate,
                    "peak_gflops": peak / 1e9 if peak else None})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--min-iterations", type=int, default=10)
    ap.add_argument("--min-duration", type=float, default=5.0)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1,
                    help="media and runtimes suites: measure each case on every side back to back this many "
                         "times and report the medians (default 1)")
    ap.add_argument("--suite", choices=["encoders", "generation", "media", "runtimes"], default="encoders")
    ap.add_argument("--db-path", default=os.environ.get("BENCHMARK_DB_PATH", "./benchmark_db.duckdb"),
                    help="both sides are stored here (PyTorch via `ipfs-accelerate db import`)")
    ap.add_argument("--no-db", action="store_true")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}: at least 1")

    if args.suite in ("generation", "media", "runtimes"):
        result = {"generation": generation_suite, "media": media_suite,
                  "runtimes": runtimes_suite}[args.suite](args)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return

    bert_dir, vit_dir = make_checkpoints()
    torch_res, torch_version, rows = pytorch_side(bert_dir, vit_dir, args)
    native_res = native_side(bert_dir, vit_dir, args)
    import_into_db(rows, args)

    print(f"threads={args.threads} seq_len={args.seq_len} torch={torch_version} "
          f"protocol: warmup {args.warmup}, >= {args.min_iterations} iterations and >= {args.min_duration}s")
    print(f"{'case':<16}{'torch mean':>12}{'torch p50':>11}{'native mean':>13}{'native p50':>12}{'ratio (p50)':>13}")
    rows = []
    for key in [("bert-base", 1), ("bert-base", 8), ("vit-base", 1), ("vit-base", 8)]:
        t, n = torch_res[key], native_res[key]
        ratio = n["p50_ms"] / t["p50_ms"]
        label = f"{key[0]} b={key[1]}"
        print(f"{label:<16}{t['mean_ms']:>10.2f}ms{t['p50_ms']:>9.2f}ms{n['mean_ms']:>11.2f}ms"
              f"{n['p50_ms']:>10.2f}ms{ratio:>12.2f}x")
        rows.append({"case": label, "torch": t, "native": n, "native_over_torch_p50": ratio})
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "torch": torch_version, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
