#!/usr/bin/env python3
"""Training script emitted by `ipfs-accelerate plan-training`: the plan beside it (plan.json)
says the model, the strategy and the batch; launch.sh starts it with torchrun (DDP, FSDP) or
the deepspeed launcher (ZeRO). A skeleton to start from: it trains on synthetic batches of the
model's input shape; replace `batches()` with your data loader.

    bash launch.sh                      # as planned (CUDA, NCCL)
    torchrun --nproc-per-node 2 train.py --device cpu --steps 20   # a dry run on the CPU (gloo)

Each rank reports its peak memory with --report FILE: on CUDA the allocator's
max_memory_allocated; on the CPU the bytes glibc's malloc holds beyond those held before the
model was built (mallinfo2), sampled after each forward, backward and optimizer step.
"""
import argparse
import ctypes
import json
import os
import resource
import time

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))


def rss_peak_bytes():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


class HeapPeak:
    """The most bytes glibc's malloc held beyond those it held at creation, over the samples
    taken (the CPU's counterpart of CUDA's max_memory_allocated)."""

    def __init__(self):
        self.libc = ctypes.CDLL("libc.so.6")
        self.libc.mallinfo2.restype = _MallInfo2
        self.base, self.peak = self.in_use(), 0

    def in_use(self):
        m = self.libc.mallinfo2()
        return m.uordblks + m.hblkhd

    def sample(self):
        self.peak = max(self.peak, self.in_use() - self.base)


def build_model(plan):
    import transformers
    auto = getattr(transformers, plan["auto_class"])
    path = os.path.join(HERE, plan["model_path"])  # relative paths are the emitted folder's
    if plan["weights"] == "checkpoint":
        model = auto.from_pretrained(path, dtype=torch.float32)
    else:
        config = transformers.AutoConfig.from_pretrained(path)
        model = auto.from_config(config, dtype=torch.float32)
    if plan["activation_checkpointing"]:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    return model


def batches(plan, config, device, generator):
    """Synthetic batches of the model's input shape (token ids for text models, pixels and
    labels for image classifiers)."""
    b, s = plan["micro_batch"], plan["seq_len"]
    while True:
        if plan["auto_class"] == "AutoModelForImageClassification":
            size = config.image_size
            pixels = torch.randn(b, config.num_channels, size, size, generator=generator)
            labels = torch.randint(0, config.num_labels, (b,), generator=generator)
            yield {"pixel_values": pixels.to(device), "labels": labels.to(device)}
            continue
        vocab = config.get_text_config().vocab_size
        ids = torch.randint(0, vocab, (b, s), generator=generator).to(device)
        # Causal LMs shift the labels themselves; T5 derives its decoder inputs from them;
        # BERT's masked-LM loss then covers every position.
        yield {"input_ids": ids, "labels": ids.clone()}


def compute_dtype(plan):
    """The 16-bit type of mixed precision (None: fp32 throughout)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan["precision"])


def wrap_torch(plan, model, device):
    strategy = plan["strategy"]
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        model.to(device)
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, bucket_cap_mb=plan["bucket_mb"])
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    kwargs = {"reshard_after_forward": strategy != "fsdp-grad-op"}
    if compute_dtype(plan) is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype(plan), reduce_dtype=torch.float32)
    if strategy == "fsdp-full-offload":
        kwargs["offload_policy"] = CPUOffloadPolicy()
    else:
        model.to(device)
    # Each transformer block its own unit (the classes transformers keeps whole), then the root.
    # A block holding a tied parameter (BERT's embeddings, shared with its MLM head) stays in
    # the root unit with the other holder.
    seen, tied = set(), set()
    for _, p in model.named_parameters(remove_duplicate=False):
        (tied if id(p) in seen else seen).add(id(p))
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for module in list(model.modules()):
        if type(module).__name__ in blocks and not any(id(p) in tied for p in module.parameters()):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default=os.path.join(HERE, "plan.json"))
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the plan's)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--report", default=None, help="append each rank's measurements to this JSON-lines file")
    ap.add_argument("--deepspeed", default=None, help="DeepSpeed config (set by launch.sh for ZeRO plans)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    with open(args.plan) as f:
        plan = json.load(f)
    steps = args.steps or plan["steps"]
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(plan["seed"])
    import transformers  # noqa: F401  (its import is not the training's memory)
    baseline = rss_peak_bytes()
    heap = HeapPeak() if device.type == "cpu" else None
    model = build_model(plan)
    config = model.config
    opt = plan["optimizer"]
    if plan["engine"] == "deepspeed":
        import deepspeed
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                               config=args.deepspeed or os.path.join(HERE, "ds_config.json"))
        step_model = engine
    else:
        model = wrap_torch(plan, model, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=opt["lr"], betas=tuple(opt["betas"]),
                                      eps=opt["eps"], weight_decay=opt["weight_decay"])
        step_model = model
    # DDP autocasts its fp32 weights; FSDP's mixed-precision policy and DeepSpeed cast their own.
    dtype = compute_dtype(plan) or torch.float32
    autocast = compute_dtype(plan) is not None and plan["strategy"] == "ddp"
    # fp16 needs loss scaling (DeepSpeed scales its own).
    scaler = torch.amp.GradScaler(device.type, enabled=plan["precision"] == "fp16" and plan["engine"] == "torch")
    data = batches(plan, config, device, torch.Generator().manual_seed(plan["seed"] + rank))
    accumulation = plan["gradient_accumulation"]
    losses, start = [], time.perf_counter()
    for step in range(steps):
        for micro in range(accumulation):
            batch = next(data)
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                loss = step_model(**batch).loss
            if heap:
                heap.sample()
            if plan["engine"] == "deepspeed":
                step_model.backward(loss)
                step_model.step()
            else:
                scaler.scale(loss / accumulation).backward()
            if heap:
                heap.sample()
        if plan["engine"] != "deepspeed":
            scaler.step(optimizer)
            scaler.update()
            if heap:
                heap.sample()
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    # CUDA: the caching allocator's peak. CPU: glibc's bytes in use (what the tensors hold,
    # like CUDA's figure) at the largest of the phase boundaries sampled above.
    peak = torch.cuda.max_memory_allocated(device) if heap is None else heap.peak
    report = {"rank": rank, "world": world, "strategy": plan["strategy"], "device": device.type,
              "steps": steps, "peak_bytes": peak, "rss_growth_bytes": rss_peak_bytes() - baseline, "planned_bytes": plan["per_rank_bytes"],
              "loss_first": losses[0], "loss_last": losses[-1],
              "samples_per_s": steps * accumulation * plan["micro_batch"] / elapsed}
    if args.report:
        with open(args.report, "a") as f:
            f.write(json.dumps(report) + "\n")
    print(json.dumps(report), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
