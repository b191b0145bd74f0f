"""Teacher ("squeeze"): train on the real data, cache by (data, arch, recipe, seed), load safely.

A checkpoint is a plain dict of tensors and JSON-able values, so it loads with weights_only=True:
{format, arch, num_classes, image_size, classes, mean, std, state_dict, recipe, test_acc, data_hash}.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn as nn

from . import dist
from .data import ImageData
from .models import build_model
from .train import TrainConfig, accuracy, config_id, fit, teacher_recipe
from .utils import DDKitError, cache_dir, check_output, load_torch, save_torch, stable_hash, tensor_hash

FORMAT = "ddkit-model-v1"


def data_hash(data: ImageData) -> str:
    return stable_hash([tensor_hash(data.images), tensor_hash(data.labels), data.classes])


def save_checkpoint(path, model: nn.Module, arch: str, data: ImageData, recipe: TrainConfig | None = None,
                    **extra) -> None:
    save_torch({"format": FORMAT, "arch": arch, "num_classes": data.num_classes, "image_size": data.image_size,
                "classes": list(data.classes), "mean": list(data.mean), "std": list(data.std),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "recipe": dataclasses.asdict(recipe) if recipe else {}, **extra}, path)


def load_checkpoint(path, classes: list[str] | None = None, arch: str | None = None,
                    device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Load a ddkit model checkpoint; refuse foreign files and mismatched arch/classes with one line."""
    ck = load_torch(path, "model checkpoint")
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise DDKitError(f"{path} is not a ddkit model checkpoint")
    missing = [k for k in ("arch", "num_classes", "image_size", "classes", "mean", "std", "state_dict")
               if k not in ck]
    if missing:
        raise DDKitError(f"checkpoint {path} is incomplete (no {', '.join(missing)})")
    if arch is not None and ck["arch"] != arch:
        raise DDKitError(f"checkpoint {path} is a {ck['arch']}, expected {arch}")
    if classes is not None and list(classes) != list(ck["classes"]):
        raise DDKitError(f"checkpoint {path} was trained on {ck['num_classes']} classes "
                         f"({', '.join(ck['classes'][:4])}...), data has {len(classes)} "
                         f"({', '.join(list(classes)[:4])}...)")
    model = build_model(ck["arch"], ck["num_classes"], ck["image_size"])
    try:
        model.load_state_dict(ck["state_dict"])
    except RuntimeError as e:
        raise DDKitError(f"checkpoint {path} does not fit a {ck['arch']}: {str(e).splitlines()[0]}") from e
    return model.to(device).eval(), ck


def train_teacher(train: ImageData, test: ImageData | None, arch: str = "convnet3",
                  recipe: TrainConfig | None = None, seed: int = 0, device: torch.device | str = "cpu",
                  out: str | Path | None = None, use_cache: bool = True, progress: bool = True
                  ) -> tuple[nn.Module, dict]:
    """Train (or fetch from cache) a teacher. Returns (model in eval mode, checkpoint dict)."""
    recipe = recipe or teacher_recipe()
    if out:
        check_output(out)  # before hours of training, not after
    key = stable_hash({"data": data_hash(train), "arch": arch, "recipe": config_id(recipe),
                       "seed": seed})
    cached = cache_dir() / "teachers" / f"{arch}_{key}.pt"
    if use_cache and cached.is_file():
        model, ck = load_checkpoint(cached, train.classes, arch, device)
        if out and dist.is_main():
            save_torch(load_torch(cached), out)
        return model, {**ck, "cached": True, "path": str(out or cached)}
    device = torch.device(device)
    torch.manual_seed(seed)  # the initial weights are part of what the seed reproduces
    model = build_model(arch, train.num_classes, train.image_size)
    t0 = time.time()
    hist = fit(model, train.images, train.labels, train.normalize, recipe, device, seed=seed,
               checkpoint=str(cached.with_suffix(".partial")), desc=f"teacher {arch}", progress=progress)
    train_time = time.time() - t0
    acc = accuracy(model, test.images, test.labels, train.normalize, device) if test is not None else None
    extra = {"test_acc": acc, "train_time_s": round(train_time, 1), "seed": seed, "data_hash": key,
             "loss": hist["loss"], "num_train": len(train),
             "skipped_images": train.skipped + (test.skipped if test is not None else [])}
    if dist.is_main():  # under torchrun every rank holds the same weights; one writes
        save_checkpoint(cached, model, arch, train, recipe, **extra)
        cached.with_suffix(".partial").unlink(missing_ok=True)
        if out:
            save_torch(load_torch(cached), out)
    dist.barrier()
    model, ck = load_checkpoint(cached, device=device)  # plain BatchNorm again if DDP made it SyncBatchNorm
    return model, {**ck, "cached": False, "path": str(out or cached)}


class Ensemble(nn.Module):
    """Several teachers as one: the mean of their logits (G-VBSM/EDC multi-teacher relabelling)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float() for m in self.members]).mean(0)


def load_teachers(paths: list[str], classes: list[str] | None = None, device: torch.device | str = "cpu"
                  ) -> tuple[nn.Module, dict]:
    """One teacher, or the Ensemble of several that agree on classes, image size and normalisation.
    Returns (model, the first checkpoint's info with "teachers": every path)."""
    loaded = [load_checkpoint(p, classes, device=device) for p in paths]
    first = loaded[0][1]
    for p, (_, ck) in zip(paths[1:], loaded[1:]):
        for k in ("classes", "image_size", "mean", "std"):
            if ck[k] != first[k]:
                raise DDKitError(f"teachers {paths[0]} and {p} differ in {k} ({str(first[k])[:40]} vs "
                                 f"{str(ck[k])[:40]}); an ensemble needs one class list and one normalisation")
    model = loaded[0][0] if len(loaded) == 1 else Ensemble([m for m, _ in loaded]).to(device).eval()
    return model, {**first, "teachers": [str(p) for p in paths]}
