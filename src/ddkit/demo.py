"""`ddkit demo`: the whole pipeline offline on scikit-learn's 8x8 digits, in about two minutes on 2 cores.

Teacher -> every method at IPC 5 -> soft-label students (2 seeds) -> a table with each set's margin over
random real images (the floor every method must clear), plus random real with hard labels and the
full-data ceiling, and one line naming the student protocol. Budgets are small so it runs anywhere; the
numbers show the pipeline working, not the methods' ranking at scale (see the README's CIFAR-10 table).
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from .data import load_splits
from .distill import DistillConfig, distill
from .evaluate import EvalConfig, evaluate_set
from .methods import METHODS
from .protocols import Protocol, preset
from .report import table, write_report
from .rundir import DistilledSet, read_json, read_run
from .teacher import load_checkpoint, train_teacher
from .train import teacher_recipe
from .utils import resolve_device

IPC = 5
SETTINGS = {"sre2l": {"iterations": "300"}, "delt": {"iterations": "200", "round_iters": "40"},
            "e2d": {"iterations": "100"}}
PROTOCOL, EPOCHS, SEEDS = "ddkit", 100, 2   # the students' protocol (ddkit.protocols preset), epochs, seeds


def protocol_line(name: str, epochs: int, seeds: int) -> str:
    """One line naming the students' protocol and how it differs from the default (`ddkit`) protocol."""
    p, default = preset(name), preset("ddkit")
    changes = ", ".join(f"{f.name}={getattr(p, f.name)}" for f in dataclasses.fields(p)
                        if f.name != "name" and getattr(p, f.name) != getattr(default, f.name))
    return (f"students: protocol {name!r}" + (f" ({changes})" if changes else "") +
            f", ConvNet-3, {epochs} epochs, {seeds} seeds, final epoch; soft labels from the teacher")


def with_margins(rows: list[dict]) -> list[dict]:
    """Each soft-label row's margin over random real images with soft labels (same protocol), in points."""
    floor = next((r["mean"] for r in rows if r["set"].startswith("random ") and r["labels"] == "soft"), None)
    return [{**r, "Δ vs random": f"{r['mean'] - floor:+.1f}"} if floor is not None and r["labels"] == "soft"
            and not r["set"].startswith("random ") else r for r in rows]


def run_demo(out: str | Path = "runs/demo", device: str = "auto", progress: bool = True) -> list[dict]:
    out, dev = Path(out), resolve_device(device)
    t_start = time.time()
    train, test = load_splits("digits")
    _, ck = train_teacher(train, test, "convnet3", teacher_recipe(15), seed=0, device=dev,
                          out=out / "teacher.pt", progress=progress)
    print(f"teacher convnet3 on digits: test accuracy {100 * ck['test_acc']:.1f} %")
    teacher_path = str(out / "teacher.pt")
    teacher = load_checkpoint(teacher_path, device=dev)[0]
    soft = EvalConfig(seeds=SEEDS, epochs=EPOCHS, protocol=preset(PROTOCOL))
    rows = []
    for name in sorted(METHODS):
        run = out / f"{name}_ipc{IPC}"
        shutil.rmtree(run, ignore_errors=True)
        distill(DistillConfig(method=name, ipc=IPC, data="digits", teacher=teacher_path,
                              settings=SETTINGS.get(name, {})), run, dev, progress=progress)
        m = read_json(run / "metrics.json")
        protocols = [soft] + ([dataclasses.replace(soft, label_mode="hard")] if name == "random" else [])
        for cfg in protocols:
            r = next(iter(evaluate_set(read_run(run), test, teacher, cfg, dev, run=run,
                                       progress=progress).values()))
            rows.append({"set": f"{name} IPC{IPC}", "labels": cfg.label_mode, "mean": r["mean"],
                         "accuracy %": f"{r['mean']:.1f} ± {r['std']:.1f}",
                         "synthesis s": m["synthesis_wall_s"], "diversity (cos)": m.get("diversity_cos", "")})
        write_report(run)
    full = DistilledSet(train.images, train.labels, train.classes)
    r = next(iter(evaluate_set(full, test, None, EvalConfig(seeds=1, epochs=15, protocol=Protocol(batch_size=128),
                                                            label_mode="hard"), dev, progress=progress).values()))
    rows.append({"set": f"full real ({len(train)})", "labels": "hard", "accuracy %": f"{r['mean']:.1f}",
                 "synthesis s": 0})
    rows = with_margins(rows)
    print(f"\nddkit demo: digits (8x8, 10 classes), ConvNet-3 teacher; runs in {out}/; "
          f"total {time.time() - t_start:.0f} s")
    print(protocol_line(PROTOCOL, EPOCHS, SEEDS) + " (full real: hard labels, 15 epochs, 1 seed)\n")
    print(table(rows, ["set", "labels", "accuracy %", "Δ vs random", "synthesis s", "diversity (cos)"]))
    return rows
