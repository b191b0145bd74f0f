"""The Python API: the pipeline in a few calls, for notebooks and scripts.

    import ddkit
    t = ddkit.teacher(data="digits", epochs=3)                        # train (or fetch from the cache)
    run = ddkit.distill(method="e2d", data="digits", teacher=t, ipc=10, iterations=50)
    results = ddkit.evaluate(run, seeds=1, epochs=30)                 # {key: {mean, std, accs, ...}}

Each function does what the `ddkit` command of the same name does, through the same library calls, with the
same checks: bad input raises `ddkit.DDKitError` with the one-line message the command prints, before any
long work starts. Options that the command restricts to a list (``labels``, ``data_backend``, ``amp`` ...)
are checked against the command's own argument parser, so the two cannot drift apart.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from .rundir import DistilledSet, read_json, read_run
from .utils import DDKitError, listed, one_or_list

__all__ = ["Run", "Teacher", "distill", "evaluate", "select", "teacher", "load_run"]


@dataclass
class Run(DistilledSet):
    """A distilled set with what made it: `images` (float [N, C, H, W] in [0, 1]), `labels`, `classes`,
    `weights` (per-image, DDOQ; else None), and the run folder's `config`, `metrics` and `path` (None for a
    set built in memory)."""
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    path: Path | None = None

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return (f"Run(method={self.metrics.get('method', '?')!r}, images={tuple(self.images.shape)}, "
                f"classes={len(self.classes)}{where})")


@dataclass
class Teacher:
    """A teacher checkpoint: pass it wherever a teacher is taken (it is path-like). `model` is the network in
    eval mode; `test_acc` its test accuracy in % (None for an import)."""
    path: str
    arch: str
    test_acc: float | None
    info: dict
    model: torch.nn.Module | None = field(default=None, repr=False)

    def __fspath__(self) -> str:
        return self.path


def _choices(command: str, **values) -> None:
    """Refuse a value outside the command's `choices=` (one line, as argparse words it, as a DDKitError)."""
    from .cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "cmd").choices[command]
    opts = {a.dest: a for a in sub._actions}
    for name, value in values.items():
        choices = opts[name].choices
        if value is not None and choices is not None and value not in choices:
            raise DDKitError(f"{name}={value!r} is not one of {', '.join(map(str, choices))}")


def _spec(t) -> str | list[str] | None:
    """Teacher arguments: a path, a zoo spec, a Teacher, or a list of them (an ensemble)."""
    if t is None:
        return None
    items = [os.fspath(x) if isinstance(x, os.PathLike) else str(x) for x in listed(t)]
    return one_or_list([str(Path(x).resolve()) if Path(x).exists() else x for x in items])


def _text(v: Any) -> str:
    """A knob value as `--set key=value` spells it, so the same conversion and checks apply."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (tuple, list)):
        return ",".join(map(str, v))
    return str(v)


def load_run(path: str | os.PathLike) -> Run:
    """Read a run folder (or any ImageFolder of distilled images) with its config and metrics.

    Examples:
        >>> run = ddkit.load_run("runs/e2d10")
        >>> run.images.shape, run.metrics["method"]
    """
    ds = read_run(path)
    p = Path(path)
    return Run(ds.images, ds.labels, ds.classes, ds.weights, config=read_json(p / "config.json"),
               metrics=read_json(p / "metrics.json"), path=p)


def teacher(data: str | None = None, arch: str = "convnet3", epochs: int = 12, *, out: str | None = None,
            recipe: str = "default", seed: int = 0, subset: str | None = None, test_data: str | None = None,
            batch_size: int | None = None, lr: float | None = None, label_smoothing: float | None = None,
            import_spec: str | None = None, weights: str | None = None, stats: str | None = None,
            image_size: int | None = None, data_backend: str = "auto", on_bad_image: str = "error",
            amp: str = "auto", compile: bool = False, cache: bool = True, device: str = "auto",
            progress: bool = True) -> Teacher:
    """Train a teacher on `data` (`ddkit teacher`), fetched from the cache when the same data, arch, recipe
    and seed were trained before; or, with `import_spec` ("torchvision:resnet18", "timm:NAME",
    "module:function"), freeze a pretrained model into a ddkit checkpoint at `out` (`ddkit teacher --import`).

    Examples:
        >>> t = ddkit.teacher(data="digits", epochs=3)
        >>> t.test_acc, t.path
    """
    from .cli import cmd_teacher
    _choices("teacher", recipe=recipe, stats=stats, data_backend=data_backend, on_bad_image=on_bad_image, amp=amp)
    if import_spec and not out:
        raise DDKitError("import_spec needs out=FILE (the ddkit checkpoint to write)")
    a = SimpleNamespace(data=data, test_data=test_data, arch=arch, epochs=epochs, lr=lr, batch_size=batch_size,
                        recipe=recipe, label_smoothing=label_smoothing, seed=seed, subset=subset, out=out,
                        no_cache=not cache, import_spec=import_spec, teacher_weights=weights, stats=stats,
                        amp=amp, compile=compile, on_bad_image=on_bad_image, data_backend=data_backend,
                        image_size=image_size, device=device, quiet=not progress)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):   # the command's summary: one JSON line
        cmd_teacher(a)
    if not printed.getvalue().strip():   # a torchrun rank other than 0: rank 0 reports
        return None
    info = json.loads(printed.getvalue().strip().splitlines()[-1])
    from .teacher import load_checkpoint
    model, ck = load_checkpoint(info["teacher"])
    return Teacher(info["teacher"], ck["arch"], ck.get("test_acc"), info, model)


def distill(method: str, data: str, teacher=None, ipc: int = 10, *, out: str | os.PathLike | None = None,
            seed: int = 0, subset: str | None = None, classes_per_group: int = 0, teacher_weights=None,
            image_size: int | None = None, data_backend: str = "auto", on_bad_image: str = "error",
            amp: str = "auto", compile: bool = False, store: str = "uint8", device: str = "auto",
            overwrite: bool = False, progress: bool = True, settings: dict | None = None, **knobs) -> Run:
    """Distil `data` into `ipc` images per class with `method` (`ddkit distill`). Method knobs are keyword
    arguments (`iterations=50`, or `settings={"iterations": 50}`), checked like `--set key=value`.
    `teacher`: a checkpoint path, a zoo spec ("torchvision:resnet18"), a `Teacher`, or a list (an
    ensemble). With `out` the run folder is written there (PNGs, data.pt, config, metrics, report) and
    kept; without it, the set is returned and the folder removed.

    Examples:
        >>> run = ddkit.distill(method="rded", data="digits", teacher=t, ipc=10)
    """
    from .distill import DistillConfig, distill as _distill
    from .report import write_report
    _choices("distill", data_backend=data_backend, on_bad_image=on_bad_image, amp=amp, store=store)
    settings = {k: _text(v) for k, v in {**(settings or {}), **knobs}.items()}
    data = str(Path(data).resolve()) if Path(data).exists() else data
    cfg = DistillConfig(method=method, ipc=ipc, data=data, teacher=_spec(teacher), teacher_weights=_spec(teacher_weights),
                        subset=subset and str(Path(subset).resolve()), seed=seed, classes_per_group=classes_per_group,
                        settings=settings, on_bad_image=on_bad_image, data_backend=data_backend,
                        image_size=image_size, amp=amp, compile=compile, store=store)
    tmp = None if out is not None else Path(tempfile.mkdtemp(prefix="ddkit-run-"))
    try:
        path = _distill(cfg, out if out is not None else tmp / "run", device, overwrite=overwrite, progress=progress)
        if path is None:   # a torchrun rank other than 0
            return None
        if out is not None:
            write_report(path)
        run = load_run(path)
        if tmp is not None:
            run.path = None
        return run
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def evaluate(run: Run | DistilledSet | str | os.PathLike | None = None, *, data: str | None = None, teacher=None,
             protocol: str = "ddkit", arch: str | list[str] = "convnet3", seeds: int = 3, labels: str = "soft",
             epochs: int | None = None, batch_size: int | None = None, temperature: float | None = None,
             pset: dict | None = None, use_weights: bool = True, full: bool = False, subset: str | None = None,
             teacher_weights=None, test_data: str | None = None, image_size: int | None = None,
             data_backend: str = "auto", on_bad_image: str = "error", amp: str = "auto", compile: bool = False,
             device: str = "auto", progress: bool = True) -> dict:
    """Train students from scratch on a distilled set and test them (`ddkit evaluate`). Returns
    {result key: {"mean", "std", "n", "accs", "wall_s_per_seed", ...}}, one entry per student arch.

    `run`: a run folder (its data and teacher are the defaults, results are stored in its metrics.json and
    resume), a `Run` from `distill`/`load_run`, a `DistilledSet` of your own, or any ImageFolder of distilled
    images made by another tool (then `data` names the dataset whose test split is used). `full=True` trains
    on the full real data of `data` instead. `protocol` is a preset (ddkit, rded, sre2l, ddranking, edc);
    `pset` overrides its fields ({"lr": 0.002}).

    Examples:
        >>> ddkit.evaluate("runs/e2d10", protocol="edc", seeds=1)
    """
    from .cli import _eval_config, _load_eval_inputs
    from .evaluate import evaluate_set
    from .stream import open_data
    from .utils import resolve_device
    from . import dist
    _choices("evaluate", labels=labels, data_backend=data_backend, on_bad_image=on_bad_image, amp=amp)
    dev = dist.local_device(resolve_device(device))
    folder, cfg_run, ds = None, {}, None
    if isinstance(run, Run):
        ds, cfg_run = run, run.config.get("distill", {})
        folder = run.path if run.path and (Path(run.path) / "metrics.json").is_file() else None
    elif isinstance(run, DistilledSet):
        ds = run
    elif run is not None and not full:
        ds, cfg_run = read_run(run), read_json(Path(run) / "config.json").get("distill", {})
        folder = Path(run) if (Path(run) / "metrics.json").is_file() else None
    elif not full:
        raise DDKitError("give a run to evaluate, or full=True for the full-real-data baseline")
    data = data or cfg_run.get("data")
    image_size = image_size or cfg_run.get("image_size")
    if teacher is None and not full:
        teacher, teacher_weights = cfg_run.get("teacher"), cfg_run.get("teacher_weights")
    teachers = listed(_spec(teacher)) or None
    test, t, teacher_ids = _load_eval_inputs(data, teachers, listed(_spec(teacher_weights)) or None, dev, test_data,
                                             on_bad_image, image_size, data_backend)
    a = SimpleNamespace(pset=[f"{k}={_text(v)}" for k, v in (pset or {}).items()], batch_size=batch_size,
                        temperature=temperature, epochs=epochs, protocol=protocol, arch=listed(arch), seeds=seeds,
                        labels=labels, no_weights=not use_weights, amp=amp, compile=compile)
    cfg = _eval_config(a, teacher_ids, dev)
    if full:
        from .data import load_subset_file
        train = open_data(data, "train", image_size, data_backend, on_bad_image=on_bad_image)
        train = load_subset_file(subset, train) if subset else train
        ds = DistilledSet(train.fit_images, train.labels, train.classes)
    results = evaluate_set(ds, test, t, cfg, dev, run=folder, progress=progress)
    if folder is not None and dist.is_main():
        from .report import write_report
        write_report(folder)
    return results


def select(data: str, criterion: str = "loss", keep: float = 0.5, *, out: str | os.PathLike, keep_end: str = "low",
           proxy_epochs: int = 5, teacher=None, teacher_weights=None, reference: str | None = None, ipc: int = 10,
           seed: int = 0, subset: str | None = None, image_size: int | None = None, data_backend: str = "auto",
           on_bad_image: str = "error", device: str = "auto", progress: bool = True) -> dict:
    """Prune the real data before distillation (BiLP; `ddkit select`): keep the fraction `keep` of each class
    by `criterion` (loss, causal, random) and write the index file `out`, which distill/evaluate/teacher take
    as `subset`. Returns the summary (also written beside `out` as JSON).

    Examples:
        >>> ddkit.select(data="digits", criterion="random", keep=0.5, out="keep50.pt")
    """
    from .select import SelectConfig, select as _select
    _choices("select", criterion=criterion, keep_end=keep_end, data_backend=data_backend, on_bad_image=on_bad_image)
    cfg = SelectConfig(criterion=criterion, keep=keep, keep_end=keep_end, proxy_epochs=proxy_epochs,
                       teacher=_spec(teacher), teacher_weights=_spec(teacher_weights), reference=reference, ipc=ipc,
                       seed=seed, subset=subset, on_bad_image=on_bad_image, data_backend=data_backend,
                       image_size=image_size)
    return _select(data, cfg, out, device, progress=progress)

