"""Engine throughput: recover steps/s vs a bare teacher forward+backward on the same batch.

The bare loop is the machine's limit for the network: forward the batch, backward to the input pixels,
nothing else. The engine adds the crop/flip augmentation, BN-statistics hooks and loss, Adam and the clamp.
Target: engine >= 80 % of bare. Writes bench/throughput/results/engine_throughput.json.

    python bench/throughput/engine_throughput.py [--batch 100] [--size 32] [--iters 30] [--rounds 3] [--device auto]
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddkit.engine import RecoverConfig, recover
from ddkit.models import build_model
from ddkit.utils import resolve_device, tune_malloc


def bare(teacher, x, y, iters):
    x = x.clone().requires_grad_(True)
    for i in range(iters + 3):
        if i == 3:
            sync(x.device)
            t0 = time.perf_counter()
        loss = F.cross_entropy(teacher(x.contiguous(memory_format=torch.channels_last)), y)
        x.grad = None
        loss.backward()
    sync(x.device)
    return iters / (time.perf_counter() - t0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine(teacher, x, y, iters, crop):
    cfg = RecoverConfig(iterations=iters, crop=crop, log_every=10**9)
    lo, hi = torch.full((3,), -3.0), torch.full((3,), 3.0)
    recover(teacher, x, y, RecoverConfig(iterations=3, crop=crop), lo, hi, torch.Generator(), progress=False)
    sync(x.device)
    t0 = time.perf_counter()
    recover(teacher, x, y, cfg, lo, hi, torch.Generator().manual_seed(0), progress=False)
    sync(x.device)
    return iters / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arch", default="convnet3")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="bench/throughput/results/engine_throughput.json")
    a = ap.parse_args()
    dev = resolve_device(a.device)
    torch.manual_seed(0)
    teacher = build_model(a.arch, 10, a.size).to(dev).eval().to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
    y = torch.arange(a.batch, device=dev) % 10
    res = {"arch": a.arch, "batch": a.batch, "size": a.size, "iters": a.iters, "rounds": a.rounds,
           "device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine()}
    # Variants are interleaved over rounds and the median kept, so drift on a shared machine hits all alike.
    runs = {"bare": [], **{c: [] for c in ("none", "shared", "per_image")}}
    for _ in range(a.rounds):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            runs["bare"].append(bare(teacher, x, y, a.iters))
        for crop in ("none", "shared", "per_image"):
            runs[crop].append(engine(teacher, x, y, a.iters, crop))
    ref = statistics.median(runs["bare"])
    res["bare_fwd_bwd_steps_per_s"] = round(ref, 3)
    for crop in ("none", "shared", "per_image"):
        s = statistics.median(runs[crop])
        res[f"engine_{crop}_steps_per_s"] = round(s, 3)
        res[f"engine_{crop}_vs_bare"] = round(s / ref, 3)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    tune_malloc()
    main()
