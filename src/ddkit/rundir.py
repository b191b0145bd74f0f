"""The run directory: the one output format of every method.

    RUN/images/<class>/<n>.png   lossless 8-bit ImageFolder any tool can read
    RUN/data.pt                  full-precision images in [0, 1], labels, classes (+ per-image weights)
    RUN/config.json              everything needed to reproduce the run
    RUN/metrics.json             synthesis (and, after `evaluate`, evaluation) metrics

A run is built in a hidden sibling folder and renamed into place when complete, so RUN either does not
exist or is whole. `evaluate` also reads a plain ImageFolder of distilled images made elsewhere.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .utils import DDKitError, class_dirname, load_torch, save_json, save_torch

RUN_FORMAT = "ddkit-run-v1"


@dataclass
class DistilledSet:
    images: torch.Tensor                 # float [N, 3, H, W] in [0, 1]
    labels: torch.Tensor                 # int64 [N]
    classes: list[str]
    weights: torch.Tensor | None = None


safe_dirname = class_dirname  # a folder name that stays inside its parent whatever the class is called


def _to_uint8(images: torch.Tensor, chunk: int = 256) -> np.ndarray:
    """NHWC uint8 pixels; converted a chunk at a time, so no float temporary of the whole set is made."""
    out = torch.empty((len(images), *images.shape[2:], images.shape[1]), dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        out[i:i + chunk] = (images[i:i + chunk].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return out.numpy()


def write_run(out: str | os.PathLike, ds: DistilledSet, config: dict, metrics: dict,
              overwrite: bool = False) -> Path:
    """Write a complete run directory atomically (temp folder + rename)."""
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise DDKitError(f"output folder {out} already exists; pass --overwrite or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        root = tmp.resolve()
        pix = _to_uint8(ds.images)
        counters = [0] * len(ds.classes)
        for arr, c in zip(pix, ds.labels.tolist()):
            folder = (root / "images" / safe_dirname(ds.classes[c])).resolve()
            if folder.parent != root / "images":
                raise DDKitError(f"class name {ds.classes[c]!r} would write outside the run folder")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(folder / f"{counters[c]:04d}.png")
            counters[c] += 1
        blob = {"format": RUN_FORMAT, "images": ds.images.float().cpu(), "labels": ds.labels.long().cpu(),
                "classes": list(ds.classes)}
        if ds.weights is not None:
            blob["weights"] = ds.weights.float().cpu()
        save_torch(blob, root / "data.pt")
        save_json(config, root / "config.json")
        save_json(metrics, root / "metrics.json")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_run(path: str | os.PathLike, mmap: bool = False) -> DistilledSet:
    """Read a ddkit run (data.pt) or any plain ImageFolder (root/<class>/<image>, or root/images/...).
    mmap: a run's tensors stay in data.pt, read when touched (for a look at a few images of a large set)."""
    path = Path(path)
    if not path.exists():
        raise DDKitError(f"run folder not found: {path}")
    if (path / "data.pt").is_file():
        blob = load_torch(path / "data.pt", "run data", mmap=mmap)
        if not isinstance(blob, dict) or blob.get("format") != RUN_FORMAT:
            raise DDKitError(f"{path / 'data.pt'} is not a ddkit run file")
        return DistilledSet(blob["images"], blob["labels"], blob["classes"], blob.get("weights"))
    from .data import load_image_folder
    folder = path / "images" if (path / "images").is_dir() else path
    data = load_image_folder(folder, cache=False, stats=((0.0,), (1.0,)))
    return DistilledSet(data.images.float() / 255, data.labels, data.classes)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def update_metrics(run: str | os.PathLike, **entries) -> dict:
    """Merge entries into RUN/metrics.json (atomically)."""
    p = Path(run) / "metrics.json"
    metrics = read_json(p)
    metrics.update(entries)
    save_json(metrics, p)
    return metrics


def export_ddranking(run: str | os.PathLike, out: str | os.PathLike, teacher=None, mean=None, std=None) -> Path:
    """Write the tensors DD-Ranking's evaluators take: images.pt ([N, 3, H, W], normalised with the
    teacher's training mean/std when given, else in [0, 1]), labels.pt (the teacher's logits on each image
    when a teacher is given, i.e. soft labels; else the class indices) and hard_labels.pt.
    DD-Ranking (0.2) rebuilds the hard labels as IPC copies of each class in class order, so the images are
    written class-major and a set with unequal class counts is refused."""
    ds = read_run(run)
    counts = torch.bincount(ds.labels, minlength=len(ds.classes))
    if len(set(counts.tolist())) != 1:
        raise DDKitError(f"DD-Ranking needs the same number of images in every class; this run has "
                         f"{dict(zip(ds.classes, counts.tolist()))}")
    order = ds.labels.argsort(stable=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x, labels = ds.images[order].float(), ds.labels[order]
    if mean is not None:
        x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    save_torch(x, out / "images.pt")
    save_torch(labels, out / "hard_labels.pt")
    if teacher is not None:
        with torch.no_grad():
            dev = next(teacher.parameters()).device
            soft = torch.cat([teacher(x[i:i + 500].to(dev)).float().cpu() for i in range(0, len(x), 500)])
        save_torch(soft, out / "labels.pt")
    else:
        save_torch(labels, out / "labels.pt")
    return out
