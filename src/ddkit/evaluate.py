"""Evaluate a distilled set: train students from scratch on it, report real test accuracy.

One protocol for every method (see docs/methods.md §0): random-resized-crop + flip views, AdamW,
cosine LR, `soft` = KL to the teacher's softmax on the same view at temperature tau (online relabeling),
`hard` = cross-entropy on the class labels; per-image weights (DDOQ) scale the loss when present.
The reported number is the final-epoch accuracy (picking the best epoch would select on the test set),
mean ± std over seeds. Each finished (arch, seed) is stored at once, so a rerun skips it.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from . import dist
from .data import ImageData
from .models import build_model
from .rundir import DistilledSet, read_json, update_metrics
from .train import TrainConfig, accuracy, fit, student_recipe
from .utils import DDKitError, stable_hash


@dataclass
class EvalConfig:
    archs: tuple[str, ...] = ("convnet3",)
    seeds: int = 3
    label_mode: str = "soft"        # soft | hard
    epochs: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    temperature: float = 4.0
    use_weights: bool = True        # apply per-image weights when the set has them

    def key(self, arch: str) -> str:
        """Results of one protocol and arch, e.g. convnet3/soft/e300-<hash of the rest>."""
        rest = stable_hash({k: v for k, v in dataclasses.asdict(self).items() if k not in ("archs", "seeds")}, 6)
        return f"{arch}/{self.label_mode}/e{self.epochs}-{rest}"

    def train_config(self) -> TrainConfig:
        cfg = student_recipe(self.epochs)
        return dataclasses.replace(cfg, batch_size=self.batch_size, lr=self.lr, temperature=self.temperature)


def align_classes(ds: DistilledSet, classes: list[str]) -> torch.Tensor:
    """Labels of `ds` re-indexed into `classes` by name (a distilled set may list its classes in another
    order, or hold only some of them). Unknown class names are an error, never a silent shift."""
    index = {c: i for i, c in enumerate(classes)}
    missing = [c for c in ds.classes if c not in index]
    if missing:
        raise DDKitError(f"distilled classes {missing[:3]} are not among the teacher/test classes "
                         f"{classes[:3]}...")
    lut = torch.tensor([index[c] for c in ds.classes])
    return lut[ds.labels]


def summarize(accs: list[float]) -> dict:
    return {"mean": round(100 * statistics.fmean(accs), 2),
            "std": round(100 * statistics.stdev(accs), 2) if len(accs) > 1 else 0.0, "n": len(accs)}


def summarize_entry(entry: dict, seeds: int | None = None) -> dict:
    """Mean ± std and mean wall time of a stored evaluation entry (its first `seeds` seeds, or all)."""
    runs = list(entry["seeds"].values()) if seeds is None else [entry["seeds"][str(s)] for s in range(seeds)]
    return {**summarize([r["acc"] for r in runs]),
            "wall_s_per_seed": round(statistics.fmean(r["wall_s"] for r in runs), 1)}


def evaluate_set(ds: DistilledSet, test: ImageData, teacher: nn.Module | None, cfg: EvalConfig,
                 device: torch.device, run: str | Path | None = None, progress: bool = True) -> dict:
    """Train cfg.seeds students per arch on `ds`; returns {key: {accs, mean, std, wall_s}}.

    `test` carries the normalisation (the teacher's training statistics) and the class list. With `run`,
    every finished seed is merged into RUN/metrics.json and reused on a rerun, and the seed in progress
    checkpoints (RUN/.student-*.ckpt, see fit), so an interrupted evaluation resumes mid-training.
    """
    if cfg.label_mode not in ("soft", "hard"):
        raise DDKitError(f"unknown label mode {cfg.label_mode!r}; choose soft or hard")
    if cfg.label_mode == "soft" and teacher is None:
        raise DDKitError("soft-label evaluation needs a teacher (--teacher CHECKPOINT), or use --labels hard")
    if cfg.seeds < 1:
        raise DDKitError("--seeds must be at least 1")
    labels = align_classes(ds, test.classes)
    weights = None
    if cfg.use_weights and ds.weights is not None:
        weights = ds.weights.float() * len(ds.weights) / ds.weights.float().sum()  # mean 1 over the set
    tcfg = cfg.train_config()
    results = {}
    stored = read_json(Path(run) / "metrics.json").get("evaluation", {}) if run else {}
    on = f" on {Path(run).name}" if run else ""  # which set, in a log of many evaluations
    for arch in cfg.archs:
        key = cfg.key(arch)
        entry = stored.get(key, {"config": dataclasses.asdict(cfg), "seeds": {}})
        for seed in range(cfg.seeds):
            if str(seed) in entry["seeds"]:
                continue
            t0 = time.time()
            torch.manual_seed(seed)
            student = build_model(arch, len(test.classes), test.image_size)
            ckpt = Path(run) / f".student-{stable_hash([key, seed])}.ckpt" if run else None  # mid-seed resume
            hist = fit(student, ds.images, labels, test.normalize, tcfg, device, seed=seed,
                       teacher=teacher if cfg.label_mode == "soft" else None, weights=weights,
                       checkpoint=ckpt and str(ckpt), desc=f"student {arch} seed {seed}{on}", progress=progress)
            acc = accuracy(student, test.images, test.labels, test.normalize, device)
            entry["seeds"][str(seed)] = {"acc": acc, "wall_s": round(time.time() - t0 + hist["resumed_s"], 1),
                                         "final_loss": round(hist["loss"][-1], 4)}
            if run and dist.is_main():  # under torchrun every rank trained the same student
                stored[key] = entry
                update_metrics(run, evaluation=stored)
                ckpt.unlink(missing_ok=True)
        results[key] = {**summarize_entry(entry, cfg.seeds),
                        "accs": [entry["seeds"][str(s)]["acc"] for s in range(cfg.seeds)],
                        "num_images": len(labels)}
    return results
