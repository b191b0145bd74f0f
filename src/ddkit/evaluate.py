"""Evaluate a distilled set: train students from scratch on it, report real test accuracy.

How students are trained is a named protocol (ddkit.protocols: `ddkit`, the default, or a peer's), saved
with every result and part of its key: `soft` = KL to the teacher('s ensemble) on each view, online or
replayed from stored FKD labels; `hard` = cross-entropy on the class labels; per-image weights (DDOQ)
scale the loss when present. The reported number is the final-epoch accuracy (of the weight EMA where the
protocol keeps one: edc), mean ± std over seeds; a protocol whose paper reports its best epoch also records
that (edc and rded: only after 80 % of training), labelled as selected on the test set.
Each finished (arch, seed) is stored at once, so a rerun skips it.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import dist
from .augment import default_stitch_factor
from .data import Images
from .fkd import label_store
from .models import build_model
from .protocols import Protocol, preset
from .rundir import DistilledSet, read_json, update_evaluation
from .train import accuracy, fit
from .utils import DDKitError, cache_dir, inference_batch, model_hash, stable_hash


@dataclass
class EvalConfig:
    archs: tuple[str, ...] = ("convnet3",)
    seeds: int = 3
    label_mode: str = "soft"        # soft | hard
    epochs: int = 300
    use_weights: bool = True        # apply per-image weights when the set has them
    protocol: Protocol = field(default_factory=lambda: preset("ddkit"))
    teachers: tuple[str, ...] = ()  # content hashes of an ensemble's members (soft labels from several)
    # how students are computed, like the device: saved with each result, not part of its key
    amp: bool | str = True          # mixed precision: True (auto), False, "on" (ddkit.accel.amp_setting)
    compile: bool = False           # torch.compile the students and the online teacher

    def key(self, arch: str) -> str:
        """Results of one protocol and arch: convnet3/soft/e300-<hash> for the `ddkit-v1` protocol (the key it
        had before protocols were named, so stored results resume), else e.g. convnet3/soft/rded/e300-<hash>
        with the hash over the fields that differ from `ddkit-v1`'s and the ensemble."""
        p, changed = self.protocol, self.protocol.changes()
        name = "ddkit" if p.name == "ddkit-v1" else p.name   # its results were stored when it was the default
        ensemble = list(self.teachers) if self.label_mode == "soft" and len(self.teachers) > 1 else []
        if set(changed) <= set(Protocol.LEGACY) and not ensemble:
            legacy = {"label_mode": self.label_mode, "epochs": self.epochs, "batch_size": p.batch_size,
                      "lr": p.lr, "temperature": p.temperature, "use_weights": self.use_weights}
            return f"{arch}/{self.label_mode}/e{self.epochs}-{stable_hash(legacy, 6)}"
        rest = stable_hash({"label_mode": self.label_mode, "epochs": self.epochs, "use_weights": self.use_weights,
                            "protocol": changed, "teachers": ensemble}, 6)
        return f"{arch}/{self.label_mode}/{name}/e{self.epochs}-{rest}"


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


def stitch_factor(run: str | Path | None, image_size: int) -> int:
    """Patches per side of a distilled set (RDED's training views shuffle them): an `rded` run's own factor
    (its method_config; 0 there means by resolution), else RDED's convention by resolution."""
    config = read_json(Path(run) / "config.json") if run else {}
    own = config.get("method_config", {}).get("factor", 0) if config.get("distill", {}).get("method") == "rded" else 0
    return own or default_stitch_factor(image_size)


def summarize(accs: list[float]) -> dict:
    return {"mean": round(100 * statistics.fmean(accs), 2),
            "std": round(100 * statistics.stdev(accs), 2) if len(accs) > 1 else 0.0, "n": len(accs)}


def mean_std(s: dict | None, missing: str = "–") -> str:
    """'47.36 ± 0.41' from a summary (mean, std in %)."""
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s else missing


def summarize_entry(entry: dict, seeds: int | None = None) -> dict:
    """Mean ± std and mean wall time of a stored evaluation entry (its first `seeds` seeds, or all)."""
    runs = list(entry["seeds"].values()) if seeds is None else [entry["seeds"][str(s)] for s in range(seeds)]
    out = {**summarize([r["acc"] for r in runs]),
           "wall_s_per_seed": round(statistics.fmean(r["wall_s"] for r in runs), 1)}
    if all("best_acc_selected_on_test" in r for r in runs):
        out["best_selected_on_test"] = summarize([r["best_acc_selected_on_test"] for r in runs])
    if "label_store_bytes" in entry:
        out["label_store_bytes"] = entry["label_store_bytes"]
    return out


def stored_summary(run: str | Path, cfg: EvalConfig, arch: str) -> dict:
    """The stored results of cfg on RUN (summarize_entry); a one-line error naming the command that makes them."""
    key = cfg.key(arch)
    entry = read_json(Path(run) / "metrics.json").get("evaluation", {}).get(key)
    if not entry or not entry["seeds"]:
        raise DDKitError(f"{run} has no {key} results; run `ddkit evaluate {run} --protocol {cfg.protocol.name} "
                         f"--labels {cfg.label_mode} --epochs {cfg.epochs} --arch {arch}` first")
    return summarize_entry(entry)


def _best(hist: dict, final_acc: float, cfg: EvalConfig) -> dict:
    """The best of the every-N-epochs test accuracies (after best_after of training) and the final one, for
    protocols whose papers report it; named for what it is: selected on the test set."""
    p = cfg.protocol
    if not p.eval_every:
        return {}
    epoch, acc = max(hist.get("test", []) + [[cfg.epochs, final_acc]], key=lambda r: r[1])
    return {"best_acc_selected_on_test": acc, "best_epoch": epoch, "tested_every": p.eval_every,
            **({"tested_after_epoch": int(p.best_after * cfg.epochs)} if p.best_after else {})}


def evaluate_set(ds: DistilledSet, test: Images, teacher: nn.Module | None, cfg: EvalConfig,
                 device: torch.device, run: str | Path | None = None, progress: bool = True) -> dict:
    """Train cfg.seeds students per arch on `ds`; returns {key: {accs, mean, std, wall_s}}.

    `test` carries the normalisation (the teacher's training statistics) and the class list. With `run`,
    every finished seed is merged into RUN/metrics.json and reused on a rerun, and the seed in progress
    checkpoints (RUN/.student-*.ckpt, see fit), so an interrupted evaluation resumes mid-training. FKD
    labels (protocol soft_labels=fkd) are stored in RUN (or the cache without one) and shared by all seeds.
    """
    if cfg.label_mode not in ("soft", "hard"):
        raise DDKitError(f"unknown label mode {cfg.label_mode!r}; choose soft or hard")
    if cfg.label_mode == "soft" and teacher is None:
        raise DDKitError("soft-label evaluation needs a teacher (--teacher CHECKPOINT), or use --labels hard")
    if cfg.seeds < 1 or cfg.epochs < 1:
        raise DDKitError(f"--seeds and --epochs must be at least 1, got {cfg.seeds} and {cfg.epochs}")
    labels = align_classes(ds, test.classes)
    weights = None
    if cfg.use_weights and ds.weights is not None:
        weights = ds.weights.float() * len(ds.weights) / ds.weights.float().sum()  # mean 1 over the set
    p = cfg.protocol
    ipc = round(len(labels) / len(labels.unique()))
    tcfg = dataclasses.replace(p.train_config(cfg.epochs, ipc, len(test.classes), stitch_factor(run, test.image_size)),
                               amp=cfg.amp, compile=cfg.compile)
    fkd = cfg.label_mode == "soft" and p.soft_labels == "fkd"
    if fkd and not torch.is_tensor(ds.images):
        raise DDKitError("stored (FKD) soft labels need the images in memory: use --data-backend memory")
    store = None
    view = "test" if p.test_resize else "center"  # the peers' Resize(s // 7 * 8) + CenterCrop(s), or as stored

    def test_acc(model) -> float:
        batches = test.batches(None, inference_batch(test.image_size, 1000), view)
        return accuracy(model, batches, test.labels, test.normalize, device)

    def every(epochs_done: int, model):  # the best-epoch record (_best adds the final epoch)
        due = epochs_done % p.eval_every == 0 and p.best_after * cfg.epochs < epochs_done < cfg.epochs
        return test_acc(model) if due else None
    results = {}
    stored = read_json(Path(run) / "metrics.json").get("evaluation", {}) if run else {}
    on = f" on {Path(run).name}" if run else ""  # which set, in a log of many evaluations
    # the soft-label teacher is not (yet) part of a single teacher's key: record it with each result and
    # refuse to mix students of two teachers under one key (entries made before this was recorded: unchecked)
    soft_from = [model_hash(m) for m in getattr(teacher, "members", [teacher])] \
        if cfg.label_mode == "soft" and teacher is not None else None
    for arch in cfg.archs:
        key = cfg.key(arch)
        entry = stored.get(key, {"config": dataclasses.asdict(cfg), "train": dataclasses.asdict(tcfg),
                                 "seeds": {}, "soft_labels_from": soft_from})
        if soft_from and entry.get("soft_labels_from", soft_from) != soft_from:
            raise DDKitError(f"{run} holds {key} results with soft labels from another teacher; evaluate a copy "
                             f"of the run folder to compare teachers on one set")
        for seed in range(cfg.seeds):
            if str(seed) in entry["seeds"]:
                continue
            if fkd and store is None:  # relabel once, before any student; students then need no teacher
                t_relabel = time.time()
                store = label_store(Path(run) if run else cache_dir() / "fkd", ds.images, test.normalize,
                                    teacher, tcfg, device, progress=progress)
                entry["label_store_bytes"] = store.size_bytes()
                entry.setdefault("relabel_wall_s", round(time.time() - t_relabel, 1))  # the first, real pass
            t0 = time.time()
            torch.manual_seed(seed)
            student = build_model(arch, len(test.classes), test.image_size)
            ckpt = Path(run) / f".student-{stable_hash([key, seed])}.ckpt" if run else None  # mid-seed resume
            hist = fit(student, ds.images, labels, test.normalize, tcfg, device, seed=seed,
                       teacher=teacher if cfg.label_mode == "soft" and not fkd else None, weights=weights,
                       checkpoint=ckpt and str(ckpt), desc=f"student {arch} seed {seed}{on}", progress=progress,
                       labels_from=store, on_epoch=every if p.eval_every else None)
            acc = test_acc(student)
            entry["seeds"][str(seed)] = {"acc": acc, "wall_s": round(time.time() - t0 + hist["resumed_s"], 1),
                                         "final_loss": round(hist["loss"][-1], 4), "precision": hist["precision"],
                                         **_best(hist, acc, cfg)}
            if run and dist.is_main():  # under torchrun every rank trained the same student
                update_evaluation(run, key, entry)
                ckpt.unlink(missing_ok=True)
        results[key] = {**summarize_entry(entry, cfg.seeds),
                        "accs": [entry["seeds"][str(s)]["acc"] for s in range(cfg.seeds)],
                        "num_images": len(labels)}
    return results
