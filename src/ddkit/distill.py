"""The distill driver: data (+ subset) -> teacher -> method, group by group -> run directory.

Classes are split into groups (`classes_per_group`, 0 = all in one batch). Each group runs with its own
generator seeded by (seed, first class of the group), so a group's images do not depend on which process
made it or on which groups ran before it. Finished groups are saved in a work folder beside the output
and never redone when the same command is rerun; under `torchrun` the ranks take groups round-robin and
rank 0 merges. The run directory appears only when every group is done.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import dist
from .accel import amp_setting, mixed_precision
from .data import Images, load_subset_file
from .methods import Context, build_method
from .models import embed
from .rundir import STORES, DistilledSet, write_run
from .stream import open_data
from .teacher import load_teachers
from .utils import (DDKitError, check_output, listed, load_torch, memory_available, resolve_device, save_torch,
                    stable_hash, trim_malloc)


@dataclass
class DistillConfig:
    method: str = "random"
    ipc: int = 10
    data: str = "digits"
    teacher: str | list[str] | None = None   # checkpoint path or zoo spec (required by methods that need
    #                                          one); several: an ensemble (see prepare)
    teacher_weights: str | list[str] | None = None   # state dict of each zoo-spec teacher (default: the cache)
    subset: str | None = None            # `ddkit select` index file
    seed: int = 0
    classes_per_group: int = 0           # 0: all classes in one batch (best throughput at CIFAR scale)
    settings: dict[str, str] = field(default_factory=dict)   # method knobs (--set key=value)
    on_bad_image: str = "error"          # error | skip: unreadable files stop the run, or are left out
    data_backend: str = "auto"           # auto | memory | stream (see ddkit.stream.choose_backend)
    image_size: int | None = None        # working resolution (default: the images' own, or 224 for photos)
    amp: str = "auto"                    # mixed precision: auto (on CUDA) | on | off (ddkit.accel)
    compile: bool = False                # torch.compile the teacher's forward in the engine
    store: str = "uint8"                 # uint8: the PNGs are the set; float32: data.pt keeps it unquantised


def group_seed(seed: int, first_class: int) -> int:
    return int(stable_hash([seed, first_class], 12), 16)


def class_groups(num_classes: int, per_group: int) -> list[list[int]]:
    per = per_group or num_classes
    return [list(range(i, min(i + per, num_classes))) for i in range(0, num_classes, per)]


@torch.no_grad()
def diversity(teacher: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise cosine similarity of teacher penultimate features within each class (lower = more
    diverse), averaged over classes. `x` is normalised. Classes with one image are skipped."""
    feats, _ = embed(teacher, x)
    feats = F.normalize(feats.float(), dim=1)
    sims = []
    for c in labels.unique():
        f = feats[labels == c]
        n = len(f)
        if n > 1:
            sims.append(((f @ f.T).sum() - n) / (n * (n - 1)))
    return round(torch.stack(sims).mean().item(), 4) if sims else float("nan")


def prepare(cfg: DistillConfig, method, device) -> tuple[Images, torch.nn.Module | None, dict]:
    """Training data (pruned by the subset file) and the teacher, checked against each other."""
    train = open_data(cfg.data, "train", cfg.image_size, cfg.data_backend, on_bad_image=cfg.on_bad_image)
    if cfg.subset:
        train = load_subset_file(cfg.subset, train)
    teacher, tinfo = None, {}
    if method.needs_teacher or cfg.teacher:
        if not cfg.teacher:
            raise DDKitError(f"method {cfg.method!r} needs a teacher: pass --teacher CHECKPOINT "
                             f"(make one with `ddkit teacher`) or a pretrained one, e.g. torchvision:resnet18")
        # several teachers: soft labels and scores from the mean of their logits, pixel optimisation
        # against one member per step (ddkit.engine.recover)
        teacher, ck = load_teachers(listed(cfg.teacher), listed(cfg.teacher_weights) or None, train.classes,
                                    train.image_size, device)
        if ck["image_size"] != train.image_size:
            raise DDKitError(f"teacher {cfg.teacher} was trained on {ck['image_size']} px images, "
                             f"data has {train.image_size} px (--image-size sets the data's)")
        train.mean, train.std = tuple(ck["mean"]), tuple(ck["std"])  # synthesise in the teacher's space
        tinfo = {"arch": ck["arch"], "test_acc": ck.get("test_acc"), "path": cfg.teacher,
                 "weights": ck.get("imported_from"), "stats_from": ck.get("stats_from")}
    if cfg.ipc < 1:
        raise DDKitError(f"--ipc must be at least 1, got {cfg.ipc}")
    if cfg.store not in STORES:
        raise DDKitError(f"unknown --store {cfg.store!r}; choose one of {', '.join(STORES)}")
    return train, teacher, tinfo


def check_sizes(cfg: DistillConfig, method, train: Images) -> None:
    """Refuse, before any work, a set that cannot be made: a class with fewer real images than the method
    takes, or a set larger than the memory that must hold it whole (at the end of the run)."""
    need = method.images_needed(cfg.ipc, train.image_size)
    counts = torch.bincount(train.labels, minlength=train.num_classes)
    c = int(counts.argmin())
    if counts[c] < need:
        per = f" x {need // cfg.ipc} = {need} (the real images {cfg.method} stitches into each distilled image " \
              f"at {train.image_size} px)" if need != cfg.ipc else ""
        raise DDKitError(f"class {train.classes[c]!r} has {int(counts[c])} images, fewer than IPC={cfg.ipc}{per}")
    size = cfg.ipc * train.num_classes * 3 * train.image_size ** 2 * 4  # float32
    avail = memory_available()
    if avail is not None and size > avail:
        raise DDKitError(f"the distilled set would hold {cfg.ipc * train.num_classes:,} images of 3x"
                         f"{train.image_size}x{train.image_size} ({size / 1e9:,.1f} GB as float32), more than the "
                         f"{avail / 1e9:.1f} GB of memory available: lower --ipc or --image-size")


def assemble(paths: list[Path]) -> tuple[torch.Tensor, list[dict]]:
    """The groups' images in one tensor, and the groups' other fields. The images are copied into one
    preallocated tensor a group at a time (shapes read from memory-mapped files first): at 1,000 classes the
    set is the largest thing a run holds, and a second copy of it would set the peak memory."""
    heads = [load_torch(p, "group result", mmap=True)["x"] for p in paths]
    shapes = [h.shape for h in heads]
    x = torch.empty((sum(s[0] for s in shapes), *shapes[0][1:]), dtype=heads[0].dtype)
    del heads
    parts, at = [], 0
    for p, shape in zip(paths, shapes):
        part = load_torch(p, "group result")
        x[at:at + shape[0]] = part.pop("x")
        at += shape[0]
        parts.append(part)
    return x, parts


def distill(cfg: DistillConfig, out: str | os.PathLike, device: str = "auto", overwrite: bool = False,
            progress: bool = True) -> Path | None:
    """Run a method and write the run directory `out`. Returns its path (None on ranks other than 0)."""
    out = check_output(out, folder=True)
    rank, world = dist.setup()
    dev = dist.local_device(resolve_device(device))
    if out.exists() and not overwrite:
        raise DDKitError(f"output folder {out} already exists; pass --overwrite or choose another --out")
    amp = amp_setting(cfg.amp, dev)
    method = build_method(cfg.method, cfg.settings)
    train, teacher, tinfo = prepare(cfg, method, dev)
    check_sizes(cfg, method, train)
    key = stable_hash({"cfg": dataclasses.asdict(cfg), "method": dataclasses.asdict(method.cfg)})
    work = out.parent / f".{out.name}.work-{key}"
    work.mkdir(parents=True, exist_ok=True)
    groups = class_groups(train.num_classes, cfg.classes_per_group)
    t0 = time.time()
    # squeeze statistics live beside a checkpoint teacher (one folder per hash), else (a zoo teacher, an
    # ensemble, a read-only folder) in the cache
    one = listed(cfg.teacher)
    beside = len(one) == 1 and Path(one[0]).is_file() and os.access(Path(one[0]).resolve().parent, os.W_OK)
    stats_root = f"{one[0]}.stats" if beside else None
    try:
        method.prepare(Context(train, teacher, cfg.ipc, dev, torch.Generator().manual_seed(cfg.seed), progress,
                               amp=amp, compile=cfg.compile, stats_root=stats_root))
        for gi, classes in enumerate(groups):
            path = work / f"group{gi:05d}.pt"
            if gi % world != rank or path.is_file():
                continue  # another rank's group, or finished before an interruption
            gen = torch.Generator().manual_seed(group_seed(cfg.seed, classes[0]))
            ctx = Context(train, teacher, cfg.ipc, dev, gen, progress, checkpoint=str(path.with_suffix(".ckpt")),
                          amp=amp, compile=cfg.compile, stats_root=stats_root)
            tg = time.time()
            res = method.run(ctx, classes)
            wall = time.time() - tg + res.info.get("resumed_wall_s", 0)  # with the work before an interruption
            save_torch({"x": res.x, "labels": res.labels, "weights": res.weights, "skipped": list(train.skipped),
                        "info": {**res.info, "wall_s": round(wall, 2)}}, path)
            trim_malloc()  # what this group freed: a group's peak RSS must not depend on the groups before it
    except BaseException:
        with contextlib.suppress(OSError):  # only if empty: a failure before any saved state leaves no folder
            work.rmdir()
        raise
    dist.barrier()
    if rank != 0:
        return None
    x, parts = assemble([work / f"group{gi:05d}.pt" for gi in range(len(groups))])
    labels = torch.cat([p["labels"] for p in parts]).long()
    weights = torch.cat([p["weights"] for p in parts]) if parts[0]["weights"] is not None else None
    infos = [p["info"] for p in parts]
    metrics = {"method": cfg.method, "ipc": cfg.ipc, "num_images": len(labels),
               "synthesis_wall_s": round(sum(i["wall_s"] for i in infos), 2),
               "driver_wall_s": round(time.time() - t0, 2), "groups": infos,
               "num_real": len(train), "teacher": tinfo,
               # unreadable files: the load's, and those a stream met decoding each group (on any rank)
               "skipped_images": list(dict.fromkeys(train.skipped + [s for p in parts for s in p["skipped"]])),
               "precision": mixed_precision(dev, amp).name}
    for k in ("teacher_image_passes", "image_updates", "hard_after_explore"):  # counters add up over groups
        if k in infos[0]:
            metrics[k] = sum(i[k] for i in infos)
    for k in ("quantization_error", "random_quantization_error"):  # per-class means average
        if k in infos[0]:
            metrics[k] = round(sum(i[k] * len(g) for i, g in zip(infos, groups)) / train.num_classes, 5)
    if teacher is not None:
        metrics["diversity_cos"] = diversity(teacher, x.to(dev), labels.to(dev))
    ds = DistilledSet(train.denormalize(x, inplace=True).clamp_(0, 1), labels, list(train.classes), weights)
    config = {"distill": dataclasses.asdict(cfg), "method_config": dataclasses.asdict(method.cfg),
              "data": {"name": train.name, "mean": list(train.mean), "std": list(train.std),
                       "num_train": len(train), "image_size": train.image_size}}
    write_run(out, ds, config, metrics, overwrite=overwrite, store=cfg.store)
    shutil.rmtree(work, ignore_errors=True)
    return out
