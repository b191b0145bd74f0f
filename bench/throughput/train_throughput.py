"""Training throughput (images/s) of `ddkit.train.fit` for the teacher and the soft-label student recipes,
with glibc's default malloc and with `tune_malloc()`, and with the tuned malloc in CPU bf16 autocast
(`--amp on`), each in its own process, alternating.

    python bench/throughput/train_throughput.py [--images 2000] [--repeats 2] [--arch convnet3]

Writes bench/throughput/results/train_throughput.json. Random uint8 images at 32 px, 10 classes, one epoch per
measurement after a short warm-up; the student recipe uses a fixed random teacher for its soft labels.
"""
import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ddkit.accel import cpu_bf16_native


def measure(recipe: str, n: int, arch: str, amp: bool | str) -> float:
    from ddkit.models import build_model
    from ddkit.train import fit, student_recipe, teacher_recipe
    torch.manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(n) % 10
    cfg = teacher_recipe(1, "airnet" if arch.startswith("airnet") else "default") if recipe == "teacher" \
        else student_recipe(1)
    cfg = dataclasses.replace(cfg, amp=amp)
    teacher = build_model(arch, 10, 32).eval() if recipe == "student" else None
    model = build_model(arch, 10, 32)
    norm = lambda t: t.float() / 255  # noqa: E731
    fit(model, x[:cfg.batch_size * 2], y[:cfg.batch_size * 2], norm, cfg, torch.device("cpu"), teacher=teacher,
        progress=False)
    t0 = time.perf_counter()
    fit(model, x, y, norm, cfg, torch.device("cpu"), teacher=teacher, progress=False)
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--arch", default="convnet3")
    ap.add_argument("--child", nargs=3, metavar=("RECIPE", "MALLOC", "PRECISION"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default="bench/throughput/results/train_throughput.json")
    a = ap.parse_args()
    if a.child:
        if a.child[1] == "tuned":
            from ddkit.utils import tune_malloc
            assert tune_malloc()
        print(measure(a.child[0], a.images, a.arch, "on" if a.child[2] == "bf16" else False))
        return
    runs = {}
    for _ in range(a.repeats):
        for recipe in ("teacher", "student"):
            for malloc, prec in (("default", "fp32"), ("tuned", "fp32"), ("tuned", "bf16")):
                out = subprocess.run([sys.executable, __file__, "--child", recipe, malloc, prec, "--images",
                                      str(a.images), "--arch", a.arch], check=True, capture_output=True, text=True,
                                     env={**os.environ, "DDKIT_MALLOC": malloc})
                key = f"{recipe}_{malloc}" + ("_bf16" if prec == "bf16" else "")
                runs.setdefault(key, []).append(float(out.stdout.split()[-1]))
    res = {"arch": a.arch, "images": a.images, "repeats": a.repeats, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "machine": platform.machine(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_native": cpu_bf16_native()}
    for k, v in runs.items():
        res[f"{k}_img_per_s"] = round(statistics.median(v), 1)
    for recipe in ("teacher", "student"):
        res[f"{recipe}_speedup"] = round(res[f"{recipe}_tuned_img_per_s"] / res[f"{recipe}_default_img_per_s"], 2)
        res[f"{recipe}_bf16_speedup"] = round(res[f"{recipe}_tuned_bf16_img_per_s"] / res[f"{recipe}_tuned_img_per_s"],
                                              2)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
