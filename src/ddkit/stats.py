"""EDC's squeeze statistics: global and per-class statistics of a teacher's features over the real pool.

For every BatchNorm2d input and every Conv2d output of each teacher (each ensemble member), in module
order ("stat layers"): the per-channel mean and biased variance over (H, W), and for Conv2d outputs also,
per 16x16 patch position, the mean and variance over (C, 16, 16) after a bilinear resize of the map to a
multiple of 16 (EDC/E2D's patch statistics). Each real image contributes one RandomResizedCrop + flip view
(the squeeze's `views`), so one pass gives, per class c and per statistic s:

    mean_c = mean over the class's views of s_i,   var_c = mean of v_i,   sq_c = mean of s_i^2

where s_i is the view's mean and v_i its variance over the pixels (per channel, or per patch position).
mean_c / var_c are EDC's per-class targets (its code averages per-image statistics within a class); the
global targets, pooled over every view, follow from the class rows: mean = E[s_i], var = E[v_i] + Var(s_i).

Storage (one folder per (data, subset, teacher, views) hash): manifest.json (the key and the layout of the
statistics), class_00000.pt ... (float32 [3, D]: mean, var, sq of one class, and its view count), and
global.pt (float32 [2, D]). A group of classes reads only its own class files. Classes are written one
file at a time, atomically, so an interrupted pass resumes where it stopped; under torchrun rank r takes
classes c with c % world == r, and every view's crop is drawn from (seed, class), never from the rank.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import dist
from .augment import crop_resize, sample_boxes
from .progress import steps
from .utils import DDKitError, cache_dir, inference_batch, load_torch, model_hash, save_json, save_torch, stable_hash

FORMAT = "ddkit-edc-stats-v1"
PATCH = 16


def members(model: nn.Module) -> list[nn.Module]:
    """The models of an ensemble teacher (ddkit.teacher.Ensemble), or the teacher itself."""
    return list(getattr(model, "members", [model]))


def stat_layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "bn" | "conv") of one model, in module order: what EDC's hooks watch."""
    return [(m, "bn" if isinstance(m, nn.BatchNorm2d) else "conv") for m in model.modules()
            if isinstance(m, (nn.BatchNorm2d, nn.Conv2d))]


def checked_layers(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """stat_layers of every member, refusing (one line) a member with neither BatchNorm2d nor Conv2d."""
    out = [stat_layers(m) for m in members(model)]
    for i, layers in enumerate(out):
        if not layers:
            raise DDKitError(f"teacher{f' member {i}' if len(out) > 1 else ''} has no BatchNorm2d or Conv2d "
                             f"layer: EDC's statistic matching needs one")
    return out


def patches(a: torch.Tensor, p: int = PATCH) -> torch.Tensor:
    """a [N, C, H, W] resized (bilinear) to multiples of p and viewed as [N, C, U, p, V, p]."""
    n, c, h, w = a.shape
    hh, ww = math.ceil(h / p) * p, math.ceil(w / p) * p
    if (hh, ww) != (h, w):
        a = F.interpolate(a, size=(hh, ww), mode="bilinear", align_corners=False)
    return a.reshape(n, c, hh // p, p, ww // p, p)


def dims(shape: torch.Size, kind: str, p: int = PATCH) -> list[int]:
    """Lengths of a layer's statistics: [C] for BN, [C, patch positions] for Conv."""
    c, h, w = shape[1:]
    return [c] if kind == "bn" else [c, math.ceil(h / p) * math.ceil(w / p)]


def per_image(a: torch.Tensor, kind: str, p: int = PATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mean, variance) of every image of a [N, C, H, W] map, [N, D] each: per channel over (H, W), and for
    Conv per patch position over (C, p, p)."""
    v, m = torch.var_mean(a, dim=(2, 3), correction=0)
    out = [(m, v)]
    if kind == "conv":
        v, m = torch.var_mean(patches(a, p), dim=(1, 3, 5), correction=0)
        out.append((m.flatten(1), v.flatten(1)))
    return out


def _keep(store: dict, kind: str, what=lambda t: t):
    """A forward hook that records what(feature) of a stat layer (its input for BN, its output for Conv)."""
    def hook(module, inputs, output):
        store[module] = what(inputs[0] if kind == "bn" else output)
    return hook


@dataclass
class Layout:
    """Where each stat layer's statistics sit in the flat [D] rows: per member, per layer, its kind and the
    lengths of its parts (channel; patch for Conv)."""
    layers: list[list[dict]]

    @property
    def size(self) -> int:
        return sum(sum(l["dims"]) for m in self.layers for l in m)

    def slices(self) -> list[list[list[slice]]]:
        at, out = 0, []
        for m in self.layers:
            out.append([])
            for layer in m:
                parts = []
                for d in layer["dims"]:
                    parts.append(slice(at, at + d))
                    at += d
                out[-1].append(parts)
        return out


@torch.no_grad()
def probe_layout(model: nn.Module, image_size: int, device) -> Layout:
    """The layout of `model`'s statistics at `image_size` (one forward of a blank image per member)."""
    layers = []
    for member, found in zip(members(model), checked_layers(model)):
        shapes = {}
        hooks = [m.register_forward_hook(_keep(shapes, k, lambda t: t.shape)) for m, k in found]
        try:
            member.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
        finally:
            for h in hooks:
                h.remove()
        layers.append([{"kind": k, "dims": dims(shapes[m], k)} for m, k in found if m in shapes])
    return Layout(layers)


class ClassStats:
    """A finished squeeze folder: global targets and per-class targets, read class by class."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest
        self.layout = Layout(manifest["layout"])
        self._global = None

    def global_targets(self) -> torch.Tensor:
        """float32 [2, D]: mean and variance pooled over every view of every class."""
        if self._global is None:
            self._global = load_torch(self.folder / "global.pt", "statistics file")["stats"]
        return self._global

    def class_targets(self, classes: list[int]) -> torch.Tensor:
        """float32 [len(classes), 2, D]: EDC's per-class mean and variance, from those classes' files only."""
        return torch.stack([load_torch(self.folder / f"class_{c:05d}.pt", "statistics file")["stats"][:2]
                            for c in classes])

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.iterdir() if f.is_file())


def stats_key(data, teacher: nn.Module, scale: tuple[float, float], seed: int) -> dict:
    """What a squeeze folder was made from: the pool (its content names a subset too), the teacher's weights,
    the views."""
    return {"format": FORMAT, "data": data.content_hash(), "teacher": model_hash(teacher),
            "image_size": data.image_size, "views": {"scale": list(scale), "flip": True, "seed": seed,
                                                     "patch": PATCH}}


def class_seed(seed: int, c: int) -> int:
    """The seed of class c's views: from the squeeze's seed and the class alone (never the rank)."""
    return int(stable_hash([seed, c], 12), 16) % 2 ** 62


def views(data, idx: torch.Tensor, batch: int, scale, seed: int, device):
    """One RandomResizedCrop(scale) + flip view per sample of `idx` (uint8 on the device), drawn from `seed`
    alone: the stream decodes them from the original photo, memory crops the stored image."""
    from .stream import StreamData  # the data backends sit beside this module
    if isinstance(data, StreamData):
        views = data._decoded([[(int(p), seed + int(p)) for p in idx[i:i + batch]]
                               for i in range(0, len(idx), batch)], ("train", tuple(scale)))
        for x in views:
            yield x.to(device, non_blocking=True)
        return
    gen = torch.Generator().manual_seed(seed)
    s = data.image_size
    boxes = sample_boxes(len(idx), s, s, tuple(scale), generator=gen)
    flips = torch.rand(len(idx), generator=gen) < 0.5
    for at, x in zip(range(0, len(idx), batch), data.batches(idx, batch)):
        x = crop_resize(x.to(device).float(), boxes[at:at + len(x)], s)
        f = flips[at:at + len(x)].to(device)
        yield torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x).round_().clamp_(0, 255).to(torch.uint8)


@torch.no_grad()
def _class_rows(model, layers, layout: Layout, data, idx, scale, seed, device) -> torch.Tensor:
    """float64 [3, D] sums over the views of one class (mean, var, mean^2), and the count."""
    acc = torch.zeros(3, layout.size, dtype=torch.float64, device=device)
    spans = layout.slices()
    feats: dict = {}
    hooks = [m.register_forward_hook(_keep(feats, k)) for found in layers for m, k in found]
    try:
        for x in views(data, idx, inference_batch(data.image_size, 256), scale, seed, device):
            x = data.normalize(x).contiguous(memory_format=torch.channels_last)
            for member, found, mspans in zip(members(model), layers, spans):
                feats.clear()
                member(x)
                for (m, k), parts in zip(found, mspans):
                    for sl, (mu, var) in zip(parts, per_image(feats[m].float(), k)):
                        acc[0, sl] += mu.sum(0).double()
                        acc[1, sl] += var.sum(0).double()
                        acc[2, sl] += mu.double().square().sum(0)
    finally:
        for h in hooks:
            h.remove()
    return acc


def squeeze(model: nn.Module, data, folder: str | Path | None = None, root: str | Path | None = None,
            scale=(0.08, 1.0), seed: int = 0, device="cpu", progress: bool = True) -> ClassStats:
    """The statistics of (model, data) in `folder` (default: root/<hash of the key>, root defaulting to the
    cache), computed (or completed) first; every rank calls it. A folder holding statistics of other data,
    another subset, teacher or views is refused (one line)."""
    key = stats_key(data, model, scale, seed)
    h = stable_hash(key)
    folder = Path(folder) if folder else Path(root or cache_dir() / "stats") / h
    mpath = folder / "manifest.json"
    model.eval()
    if dist.is_main() and not mpath.is_file():
        save_json({"hash": h, "key": key, "layout": probe_layout(model, data.image_size, device).layers}, mpath)
    dist.barrier()
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise DDKitError(f"{mpath} is not a readable statistics manifest ({e})") from None
    if manifest.get("hash") != h:
        diff = [k for k in ("data", "teacher", "image_size", "views") if manifest.get("key", {}).get(k) != key[k]]
        raise DDKitError(f"statistics in {folder} were computed on other {' and '.join(diff) or 'inputs'} "
                         f"(hash {manifest.get('hash')}, this run {h}); delete the folder or choose another "
                         f"stats_dir")
    stats = ClassStats(folder, manifest)
    if (folder / "global.pt").is_file():
        return stats
    layers = checked_layers(model)
    rank, world = dist.rank_world()
    todo = [c for c in range(data.num_classes) if c % world == rank and not (folder / f"class_{c:05d}.pt").is_file()]
    t0 = time.time()
    for c in steps(0, len(todo), "squeeze statistics", enabled=progress):
        cls = todo[c]
        idx = data.class_indices(cls)
        sums = _class_rows(model, layers, stats.layout, data, idx, scale, class_seed(seed, cls), device)
        save_torch({"stats": (sums / len(idx)).float().cpu(), "n": len(idx)}, folder / f"class_{cls:05d}.pt")
    dist.barrier()
    if dist.is_main():
        tot, n = torch.zeros(3, stats.layout.size, dtype=torch.float64), 0
        for c in range(data.num_classes):
            blob = load_torch(folder / f"class_{c:05d}.pt", "statistics file")
            tot += blob["stats"].double() * blob["n"]
            n += blob["n"]
        mean = tot[0] / n
        glob = torch.stack([mean, (tot[1] / n + tot[2] / n - mean.square()).clamp_min(0)]).float()
        save_torch({"stats": glob, "n": n, "wall_s": round(time.time() - t0, 2)}, folder / "global.pt")
    dist.barrier()
    return stats
