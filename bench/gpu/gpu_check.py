"""GPU readiness check: every method, mixed precision, channels_last and torch.compile, E2D's paper recipe at
224 px with its five teacher architectures, and student training speed, on generated data with random
weights (what is timed is the code path, not accuracy). Each section's result (or its one-line error) is
written to the JSON as soon as it finishes, so a run stopped by the time limit keeps what it measured.

    bash bench/gpu_check.sh                       # CUDA, full sizes, <= 8 min on one H100
    bash bench/gpu_check.sh --device cpu --tiny   # the same code paths at toy sizes (the test runs this)

Sections:
- methods: `ddkit distill` of every registered method on a generated 4-class 32 px folder with a random ConvNet-3
  teacher, under the device's default precision (bf16 autocast on CUDA); e2d and edc again with `compile`.
- e2d_paper: the five torchvision architectures E2D recovers with (resnet18, mobilenet_v2, efficientnet_b0,
  shufflenet_v2_x0_5, alexnet; random weights, 10 classes) at 224 px (--tiny: alexnet at 64 px): the squeeze statistics pass (time, and
  the bytes one class's statistics take for the five: what 1,000 ImageNet classes need, x 1000) and
  `e2d --set recipe=paper` on 80 images (E2D's batch) for 200 iterations: seconds per image-iteration.
- student: ddkit.train.fit of a torchvision ResNet-18 at 224 px with the e2d protocol's settings (teacher
  online: an FKD replay skips that forward), images/s.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddkit.data import ImageData
from ddkit.distill import DistillConfig, distill
from ddkit.methods import METHODS, Context, build_method
from ddkit.models import build_model
from ddkit.protocols import preset
from ddkit.stats import squeeze
from ddkit.teacher import Ensemble, save_checkpoint
from ddkit.train import fit
from ddkit.utils import resolve_device

E2D_TEACHERS = ["resnet18", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5", "alexnet"]
TINY_TEACHERS = ["alexnet"]   # --tiny: the smallest (its in-place ReLUs follow Convs)
FAST = {"sre2l": {"iterations": "20"}, "delt": {"iterations": "20", "round_iters": "5"},
        "e2d": {"iterations": "20"}, "edc": {"iterations": "20"}, "rded": {"candidates": "8", "crops": "2"}}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def folder(root: Path, classes: int, per_class: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
            img[: size // 2, : size // 2, c % 3] = 230
            Image.fromarray(img).save(root / f"c{c}" / f"{i:03d}.png")
    return root


def section_methods(device, tiny: bool, work: Path, names: list[str]) -> dict:
    data = folder(work / "data", 4, 12, 32)
    from ddkit.data import load_data
    train = load_data(str(data))
    ckpt = work / "teacher.pt"
    save_checkpoint(ckpt, build_model("convnet3", 4, 32), "convnet3", train)
    runs = [(name, False) for name in names] + \
        [(name, True) for name in ("e2d", "edc") if device.type == "cuda"]  # inductor on CPU: minutes of C++
    out = {}
    for name, comp in runs:
        settings = {k: ("3" if tiny and k == "iterations" else v) for k, v in FAST.get(name, {}).items()}
        cfg = DistillConfig(method=name, ipc=2, data=str(data), teacher=str(ckpt), settings=settings, compile=comp)
        label = name + (" compile" if comp else "")
        t0 = time.perf_counter()
        try:
            run = distill(cfg, work / "runs" / label.replace(" ", "_"), device=str(device), progress=False)
            m = json.loads((run / "metrics.json").read_text())
            out[label] = {"ok": True, "wall_s": round(time.perf_counter() - t0, 2), "precision": m["precision"],
                          "settings": settings}
        except Exception as e:  # a broken method is a finding, not the end of the check
            out[label] = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return out


def teachers(archs: list[str], classes: int, size: int, device):
    torch.manual_seed(0)
    return Ensemble([build_model(f"torchvision:{a}", classes, size, native_stem=True) for a in archs]
                    ).to(device).eval()


def section_e2d_paper(device, tiny: bool, work: Path) -> dict:
    size, classes, ipc, iters, per = (64, 2, 1, 2, 2) if tiny else (224, 10, 8, 200, 32)
    archs = TINY_TEACHERS if tiny else E2D_TEACHERS
    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.randint(0, 256, (classes * per, 3, size, size), dtype=torch.uint8, generator=g),
                     torch.arange(classes).repeat_interleave(per), [f"c{c}" for c in range(classes)],
                     (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    teacher = teachers(archs, classes, size, device)
    sync(device)
    t0 = time.perf_counter()
    st = squeeze(teacher, data, work / "stats", device=device, progress=False)
    sync(device)
    squeeze_s = time.perf_counter() - t0
    per_class = (st.folder / "class_00000.pt").stat().st_size
    method = build_method("e2d", {"recipe": "paper", "iterations": str(iters), "early_stop": "0",
                                  "stats_dir": str(st.folder)})
    ctx = Context(data, teacher, ipc, device, torch.Generator().manual_seed(0), progress=False)
    out = method.run(ctx, list(range(classes)))
    info = out.info
    return {"image_size": size, "teachers": archs, "classes": classes, "images": classes * ipc,
            "iterations_run": info["iterations_run"], "recover_wall_s": info["recover_wall_s"],
            "s_per_image_iteration": info["recover_wall_s"] / max(1, info["image_updates"]),
            "squeeze_wall_s": round(squeeze_s, 2), "squeeze_images": len(data),
            "squeeze_s_per_image": squeeze_s / len(data), "stats_dims": st.layout.size,
            "stats_bytes_per_class": per_class, "stats_gb_for_1000_classes": round(per_class * 1000 / 1e9, 3),
            "hard_after_explore": info["hard_after_explore"],
            "curve_last": {k: v[-1] for k, v in info["curve"].items()}}


def section_student(device, tiny: bool) -> dict:
    size, n, epochs = (64, 4, 1) if tiny else (224, 400, 2)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g).to(device)
    labels = torch.arange(n) % 10
    data = ImageData(images.cpu()[:1], labels[:1], [str(c) for c in range(10)], (0.485, 0.456, 0.406),
                     (0.229, 0.224, 0.225))
    teacher = teachers(TINY_TEACHERS if tiny else E2D_TEACHERS[:2], 10, size, device)
    student = build_model("torchvision:resnet18", 10, size, native_stem=True)
    cfg = preset("e2d").train_config(epochs, 10, 10)
    sync(device)
    t0 = time.perf_counter()
    hist = fit(student, images, labels, data.normalize, cfg, device, teacher=teacher, progress=False)
    sync(device)
    wall = time.perf_counter() - t0
    return {"image_size": size, "images": n, "epochs": epochs, "batch_size": cfg.batch_size, "wall_s": round(wall, 2),
            "images_per_s": round(n * epochs / wall, 1), "precision": hist["precision"],
            "teacher": TINY_TEACHERS if tiny else E2D_TEACHERS[:2],
            "note": "teacher online; an FKD replay skips the teacher forward"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (the CPU test)")
    ap.add_argument("--out", default="bench/results/gpu")
    ap.add_argument("--sections", nargs="*", default=["methods", "e2d_paper", "student"])
    ap.add_argument("--methods", nargs="*", default=sorted(METHODS), help="for the methods section")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("gpu_check_tiny.json" if args.tiny else "gpu_check.json")
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "tiny": args.tiny, "command": "bash bench/gpu_check.sh " + " ".join(
                  sys.argv[1:] if argv is None else argv), "sections": {}}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ddkit-gpu-check-") as tmp:
        for name in args.sections:
            t0 = time.perf_counter()
            try:
                res = (section_methods(device, args.tiny, Path(tmp), args.methods) if name == "methods" else
                       section_e2d_paper(device, args.tiny, Path(tmp)) if name == "e2d_paper" else
                       section_student(device, args.tiny))
                res = {"ok": True, **res} if name != "methods" else {"ok": all(r["ok"] for r in res.values()),
                                                                      "runs": res}
            except Exception as e:
                traceback.print_exc()
                res = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            res["section_wall_s"] = round(time.perf_counter() - t0, 2)
            result["sections"][name] = res
            result["wall_s"] = round(time.perf_counter() - t_all, 2)
            path.write_text(json.dumps(result, indent=1) + "\n")
            print(f"{name}: {'ok' if res['ok'] else 'FAILED'} in {res['section_wall_s']} s", flush=True)
    print(path)
    return 0 if all(s["ok"] for s in result["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
