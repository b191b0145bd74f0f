"""The run directory: the one output format of every method.

    RUN/images/<class>/<n>.png   the set's pixels, 8-bit, lossless: an ImageFolder any tool can read
    RUN/data.pt                  labels, classes, per-image weights (DDOQ), the PNGs' order; with
                                 store="float32" also the unquantised images in [0, 1]
    RUN/config.json              everything needed to reproduce the run
    RUN/metrics.json             synthesis (and, after `evaluate`, evaluation) metrics

Every method outputs pixels, and 8 bits per channel is what the PNGs (and the peers' released sets) keep, so
by default the PNGs are the set and data.pt holds no second copy of it (ImageNet-1K at IPC 10: 10,000 PNGs,
not 6 GB of float32). Runs written before (format v1: float images in data.pt) still load.

A run is built in a hidden sibling folder and renamed into place when complete, so RUN either does not
exist or is whole. `evaluate` also reads a plain ImageFolder of distilled images made elsewhere.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .utils import DDKitError, class_dirname, load_torch, save_json, save_torch

RUN_FORMAT = "ddkit-run-v2"
OLD_FORMATS = ("ddkit-run-v1",)   # float32 images inside data.pt
STORES = ("uint8", "float32")


@dataclass
class DistilledSet:
    images: torch.Tensor                 # float [N, 3, H, W] in [0, 1] (uint8 where read_run was asked for it)
    labels: torch.Tensor                 # int64 [N]
    classes: list[str]
    weights: torch.Tensor | None = None


safe_dirname = class_dirname  # a folder name that stays inside its parent whatever the class is called


def _to_uint8(images: torch.Tensor, chunk: int = 256) -> np.ndarray:
    """NHWC uint8 pixels; converted a chunk at a time, so no float temporary of the whole set is made."""
    if images.dtype == torch.uint8:
        return images.permute(0, 2, 3, 1).contiguous().numpy()
    out = torch.empty((len(images), *images.shape[2:], images.shape[1]), dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        out[i:i + chunk] = (images[i:i + chunk].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return out.numpy()


def write_run(out: str | os.PathLike, ds: DistilledSet, config: dict, metrics: dict,
              overwrite: bool = False, store: str = "uint8") -> Path:
    """Write a complete run directory atomically (temp folder + rename). store: uint8 (the PNGs are the set)
    or float32 (data.pt also keeps the images unquantised, 4 bytes per value)."""
    if store not in STORES:
        raise DDKitError(f"unknown store {store!r}; choose one of {', '.join(STORES)}")
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise DDKitError(f"output folder {out} already exists; pass --overwrite or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        root = tmp.resolve()
        pix = _to_uint8(ds.images)
        counters, files = [0] * len(ds.classes), []
        for arr, c in zip(pix, ds.labels.tolist()):
            folder = (root / "images" / safe_dirname(ds.classes[c])).resolve()
            if folder.parent != root / "images":
                raise DDKitError(f"class name {ds.classes[c]!r} would write outside the run folder")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(folder / f"{counters[c]:04d}.png")
            files.append(f"images/{folder.name}/{counters[c]:04d}.png")
            counters[c] += 1
        blob = {"format": RUN_FORMAT, "store": store, "files": files, "shape": list(ds.images.shape[1:]),
                "labels": ds.labels.long().cpu(), "classes": list(ds.classes)}
        if store == "float32":
            blob["images"] = ds.images.float().cpu()
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


def _read_png(path: Path, shape: list[int]) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as e:
        raise DDKitError(f"cannot read {path}: {e}") from None
    arr = arr[..., None] if arr.ndim == 2 else arr
    if arr.shape != (shape[1], shape[2], shape[0]):
        raise DDKitError(f"{path} is {arr.shape[1]}x{arr.shape[0]}x{arr.shape[2]}, the run's images are "
                         f"{shape[2]}x{shape[1]}x{shape[0]}: the run folder was changed")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def read_pixels(run: Path, blob: dict, index: list[int] | None = None) -> torch.Tensor:
    """uint8 [k, C, H, W] of the images at `index` (default all) of a run's data.pt `blob`: decoded from its
    PNGs (in threads: PIL releases the GIL), or quantised from float images stored in data.pt."""
    index = range(len(blob["labels"])) if index is None else index
    if "images" in blob:   # v1, or store=float32: the same rounding as the PNGs
        return torch.from_numpy(_to_uint8(blob["images"][list(index)])).permute(0, 3, 1, 2)
    out = torch.empty((len(index), *blob["shape"]), dtype=torch.uint8)
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for k, x in enumerate(pool.map(lambda i: _read_png(run / blob["files"][i], blob["shape"]), index)):
            out[k] = x
    return out


def load_run_blob(path: Path, mmap: bool = False) -> dict:
    blob = load_torch(path / "data.pt", "run data", mmap=mmap)
    if not isinstance(blob, dict) or blob.get("format") not in (RUN_FORMAT, *OLD_FORMATS):
        raise DDKitError(f"{path / 'data.pt'} is not a ddkit run file")
    if "images" not in blob and len(blob["files"]) != len(blob["labels"]):
        raise DDKitError(f"{path / 'data.pt'} lists {len(blob['files'])} images for {len(blob['labels'])} labels")
    return blob


def read_run(path: str | os.PathLike, mmap: bool = False, dtype: torch.dtype = torch.float32) -> DistilledSet:
    """Read a ddkit run (data.pt, with its PNGs) or any plain ImageFolder (root/<class>/<image>, or
    root/images/...). Images come as float in [0, 1] (a run stored as float32: exactly as stored), or as
    uint8 with dtype=torch.uint8. mmap: float images stored in data.pt stay there until touched."""
    path = Path(path)
    if not path.exists():
        raise DDKitError(f"run folder not found: {path}")
    if (path / "data.pt").is_file():
        blob = load_run_blob(path, mmap)
        if "images" in blob and dtype != torch.uint8:
            images = blob["images"]
        else:
            images = read_pixels(path, blob)
            images = images if dtype == torch.uint8 else images.to(dtype) / 255
        return DistilledSet(images, blob["labels"], blob["classes"], blob.get("weights"))
    from .data import load_image_folder
    folder = path / "images" if (path / "images").is_dir() else path
    data = load_image_folder(folder, cache=False, stats=((0.0,), (1.0,)))
    return DistilledSet(data.images if dtype == torch.uint8 else data.images.to(dtype) / 255, data.labels,
                        data.classes)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


@contextlib.contextmanager
def _metrics_lock(run: Path):
    """Serialise read-modify-writes of RUN/metrics.json across processes (two evaluations of one run, e.g.
    two protocols on two GPUs, would otherwise drop each other's students)."""
    try:
        import fcntl
    except ImportError:   # no POSIX locks: writes stay atomic, only concurrent writers are unprotected
        yield
        return
    with open(run / ".metrics.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def update_metrics(run: str | os.PathLike, **entries) -> dict:
    """Merge entries into RUN/metrics.json (atomically, under a lock)."""
    with _metrics_lock(Path(run)):
        p = Path(run) / "metrics.json"
        metrics = read_json(p)
        metrics.update(entries)
        save_json(metrics, p)
    return metrics


def update_evaluation(run: str | os.PathLike, key: str, entry: dict) -> None:
    """Store one result key's entry in RUN/metrics.json's `evaluation`, keeping the other keys as they are on
    disk now (another process may have added some since this one read the file)."""
    with _metrics_lock(Path(run)):
        p = Path(run) / "metrics.json"
        metrics = read_json(p)
        metrics.setdefault("evaluation", {})[key] = entry
        save_json(metrics, p)


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
