"""`ddkit` command line: teacher, distill, evaluate, select, report, demo.

Every user-facing problem is a DDKitError, printed as one line on stderr with exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

from . import INTERRUPTED, dist
from .protocols import Protocol
from .train import TEACHER_RECIPES
from .utils import (AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, UNIT, DDKitError, Range, check_output, error_line,
                    listed, one_or_list, request_stop, save_json, to_json, tune_malloc)

IMAGE_SIZE = Range(8)  # px: the smallest input the architectures' pooling takes


class Parser(argparse.ArgumentParser):
    """A usage error is one line too, like every other refusal (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"ddkit: error: {message} (see `{self.prog} --help`)\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--quiet", action="store_true", help="no progress output (a bar on a terminal; in a log, "
                   "a line per phase every DDKIT_PROGRESS_S seconds, default 30, and at its end)")


def _data_args(p: argparse.ArgumentParser, size_help: str = "") -> None:
    p.add_argument("--on-bad-image", choices=["error", "skip"], default="error",
                   help="an unreadable image stops the command (error), or is left out with a warning (skip)")
    p.add_argument("--data-backend", choices=["auto", "memory", "stream"], default="auto",
                   help="memory: decode the split once into one tensor (CIFAR scale); stream: keep a file index "
                   "and decode lazily with DataLoader workers (ImageNet scale, photos of any size, WebDataset "
                   "shards). auto: stream for WebDataset shards, for photos of mixed or non-square size (64 "
                   "sampled headers), or when N x 3 x S x S bytes exceed DDKIT_STREAM_GB (default 8) GB")
    p.add_argument("--image-size", type=ranged(int, IMAGE_SIZE), help="working resolution S of the real and "
                   "distilled images (default: the images' own size, or 224 for photos of mixed size)" + size_help)


def _accel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="mixed precision: bf16 autocast "
                   "where the GPU has it, else fp16 with loss scaling; auto = on for CUDA, off for CPU; on = also "
                   "bf16 on the CPU (faster where it has AVX-512 BF16 or AMX)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models trained and the teacher's "
                   "forward (pays off on long GPU runs)")


def ranged(kind: type, valid: Range | None = None):
    """An argparse type: an int or finite float in `valid`, the Range a flag shares with the knob or
    protocol field it sets."""
    def parse(raw: str):
        what = "an integer" if kind is int else "a finite number"
        try:
            v = kind(raw)
        except ValueError:
            v = None
        if v is None or (kind is float and not math.isfinite(v)) or (valid is not None and not valid.holds(v)):
            raise argparse.ArgumentTypeError(f"expected {what}{f' {valid}' if valid else ''}, got {raw!r}")
        return v
    return parse


positive_float, fraction = ranged(float, POSITIVE), ranged(float, FRACTION)
positive_int, count = ranged(int, AT_LEAST_1), ranged(int, NON_NEGATIVE)


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", nargs="+", default=["convnet3"], help="student architectures")
    p.add_argument("--test-data", help="test ImageFolder for the students if not <data>/test (or val/)")
    p.add_argument("--seeds", type=positive_int, default=3)
    p.add_argument("--labels", choices=["soft", "hard"], default="soft")
    p.add_argument("--epochs", type=positive_int, help="student epochs (default: the protocol's: 1000 for edc, "
                   "else 300)")
    p.add_argument("--protocol", default="ddkit", help="student-training protocol: ddkit (the default), "
                   "ddkit-v1 (the earlier default), rded, sre2l, ddranking, edc, e2d (see docs/protocols/index.md)")
    p.add_argument("--pset", action="append", metavar="KEY=VALUE", help="protocol field, repeatable "
                   "(e.g. lr=0.002, cutmix=0)")
    p.add_argument("--batch-size", type=ranged(int, Protocol.RANGES["batch_size"]),
                   help="student batch (default: the protocol's)")
    p.add_argument("--temperature", type=ranged(float, Protocol.RANGES["temperature"]),
                   help="soft-label temperature (default: the protocol's)")
    p.add_argument("--no-weights", action="store_true", help="ignore per-image weights (e.g. DDOQ masses)")


def _teacher_args(p: argparse.ArgumentParser, help: str, several: bool = False) -> None:
    nargs = "+" if several else None
    p.add_argument("--teacher", nargs=nargs, help=f"{help}: a ddkit checkpoint, or a pretrained model: "
                   "torchvision:NAME, timm:NAME, module:function")
    p.add_argument("--teacher-weights", nargs=nargs, metavar="PATH", help="state dict of a torchvision:/timm:/"
                   "module:function teacher (default: the library's cache, or its download where the internet is "
                   "reachable)" + ("; one per such teacher, in order" if several else ""))


def _eval_config(a, teacher_ids: tuple[str, ...], device):
    """The students' configuration from the flags, every part of it checked (before any work)."""
    from .accel import amp_setting
    from .evaluate import EvalConfig
    from .models import check_arch
    from .protocols import DEFAULT_EPOCHS, preset
    for arch in a.arch:
        check_arch(arch)
    fields = _settings(a.pset, "--pset")
    fields.update({k: v for k, v in (("batch_size", a.batch_size), ("temperature", a.temperature)) if v is not None})
    epochs = a.epochs if a.epochs is not None else DEFAULT_EPOCHS.get(a.protocol, 300)
    return EvalConfig(archs=tuple(a.arch), seeds=a.seeds, label_mode=a.labels, epochs=epochs,
                      use_weights=not a.no_weights, protocol=preset(a.protocol, fields), teachers=teacher_ids,
                      amp=amp_setting(a.amp, device), compile=a.compile)


def _settings(pairs: list[str], flag: str = "--set") -> dict[str, str]:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise DDKitError(f"{flag} expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_teacher(a) -> None:
    from .accel import amp_setting
    from .data import load_subset_file
    from .stream import open_splits
    from .teacher import train_teacher
    from .train import teacher_recipe
    from .utils import resolve_device
    if a.import_spec:
        return cmd_import(a)
    if not a.data:
        raise DDKitError("ddkit teacher needs --data to train on (or --import SPEC to freeze a pretrained model)")
    if a.teacher_weights or a.stats:
        raise DDKitError("--teacher-weights and --stats go with --import")
    if a.out is not None:
        check_output(a.out)  # before the data is read (an empty --out too)
    train, test = open_splits(a.data, a.test_data, a.image_size, a.data_backend, a.on_bad_image)
    if a.subset:
        train = load_subset_file(a.subset, train)
    dev = dist.local_device(resolve_device(a.device))
    recipe = teacher_recipe(a.epochs, a.recipe)
    batch = a.batch_size or recipe.batch_size  # another batch scales the recipe's LR linearly (unless --lr)
    recipe = dataclasses.replace(recipe, batch_size=batch, lr=a.lr or recipe.lr * batch / recipe.batch_size,
                                 amp=amp_setting(a.amp, dev), compile=a.compile,
                                 label_smoothing=recipe.label_smoothing if a.label_smoothing is None
                                 else a.label_smoothing)
    _, ck = train_teacher(train, test, a.arch, recipe, a.seed, dev, a.out, use_cache=not a.no_cache,
                          progress=not a.quiet)
    if dist.is_main():
        print(to_json({"teacher": ck["path"], "arch": ck["arch"], "test_acc": ck.get("test_acc"),
                       "test_acc_flip_tta": ck.get("test_acc_flip_tta"), "train_time_s": ck.get("train_time_s"),
                       "cached": ck["cached"], "precision": ck.get("precision")}))


def cmd_import(a) -> None:
    """`ddkit teacher --import SPEC --out FILE`: freeze a pretrained model into a ddkit checkpoint."""
    from .stream import open_data
    from .teacher import import_teacher
    from .utils import save_torch
    if a.out is None:
        raise DDKitError("--import needs --out FILE (the ddkit checkpoint to write)")
    check_output(a.out)
    # the data names the classes (and gives --stats data); --image-size is the resolution the import is used at
    train = open_data(a.data, "train", None, a.data_backend, on_bad_image=a.on_bad_image) if a.data else None
    if a.stats == "data" and train is None:
        raise DDKitError("--stats data needs --data")
    _, ck = import_teacher(a.import_spec, a.teacher_weights, train and train.classes,
                           a.image_size or (train and train.image_size),
                           (train.mean, train.std) if a.stats == "data" else None)
    save_torch(ck, a.out)
    print(to_json({"teacher": a.out, "arch": ck["arch"], "classes": ck["num_classes"],
                   "image_size": ck["image_size"], "mean": ck["mean"], "std": ck["std"],
                   "stats_from": ck["stats_from"], "weights": ck["imported_from"]}))


def _check_test_classes(test_classes: list[str] | None, classes: list[str] | None, what: str) -> None:
    """The test split must hold every class of the set evaluated (in any order)."""
    missing = [c for c in classes or [] if c not in (test_classes or classes)]
    if missing:
        few = ", ".join(map(repr, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DDKitError(f"the test split ({len(test_classes)} classes) lacks {few}, a class of {what}; has "
                         f"{', '.join(map(repr, test_classes[:5]))}{'...' if len(test_classes) > 5 else ''}")


def _load_eval_inputs(data: str | None, teachers: list[str] | None, weights: list[str] | None, device,
                      test_data: str | None = None, on_bad_image: str = "error", image_size: int | None = None,
                      backend: str = "auto", classes: list[str] | None = None):
    """Test split (DATA's test/ or val/, or --test-data), teacher (several: their ensemble; each a checkpoint
    or a zoo spec) and the members' content hashes; the test set is normalised with the teachers' statistics.
    `classes`: those of the distilled set, which the test split must hold (checked before the teacher's)."""
    from .stream import open_data, open_splits
    from .teacher import load_teachers
    from .utils import model_hash
    if not data:
        raise DDKitError("no data to evaluate on: pass --data (a dataset name or ImageFolder root)")
    if not teachers:
        test = open_splits(data, test_data, image_size, backend, on_bad_image)[1]
        _check_test_classes(test.classes, classes, "the distilled set")
        return test, None, ()
    test = open_data(test_data, "train", image_size, backend, on_bad_image=on_bad_image) if test_data \
        else open_data(data, "test", image_size, backend, on_bad_image=on_bad_image)
    _check_test_classes(test.classes, classes, "the distilled set")
    # an import takes the test split's class names and resolution; a checkpoint must match them
    teacher, ck = load_teachers(teachers, weights, test.classes, test.image_size, device)
    test.mean, test.std = tuple(ck["mean"]), tuple(ck["std"])
    members = teacher.members if len(teachers) > 1 else [teacher]
    return test, teacher, tuple(model_hash(m) for m in members)


def _print_results(title: str, results: dict) -> None:
    from .evaluate import mean_std
    from .report import table
    rows = [{"protocol": k, "accuracy %": mean_std(r), "seeds": r["n"],
             "best epoch % (selected on test)": mean_std(r.get("best_selected_on_test")),
             "s/seed": r["wall_s_per_seed"],
             "label store MB": f"{r['label_store_bytes'] / 1e6:.1f}" if "label_store_bytes" in r else "–"}
            for k, r in results.items()]
    print(f"\n{title}\n" + table(rows, ["protocol", "accuracy %", "seeds", "best epoch % (selected on test)",
                                         "s/seed", "label store MB"]))


def cmd_evaluate(a) -> None:
    from .data import load_subset_file
    from .evaluate import evaluate_set
    from .stream import open_data
    from .report import write_report
    from .rundir import DistilledSet, read_json, read_run
    from .utils import resolve_device
    dev = dist.local_device(resolve_device(a.device))
    cfg = _eval_config(a, (), dev)  # every flag checked before any data is read
    size, ds, is_ddkit_run = a.image_size, None, False
    if a.full:
        cfg_data = a.data
    else:
        if not a.run:
            raise DDKitError("give a RUN folder to evaluate, or --full for the full-real-data baseline")
        run = Path(a.run)
        if not run.exists():
            raise DDKitError(f"run folder not found: {run}")
        is_ddkit_run = (run / "metrics.json").is_file()
        if is_ddkit_run and not os.access(run, os.W_OK | os.X_OK):
            raise DDKitError(f"run folder {run} is not writable: evaluate stores each student's result and "
                             f"checkpoint there (make it writable, or evaluate a copy)")
        run_cfg = read_json(run / "config.json").get("distill", {})
        cfg_data = a.data or run_cfg.get("data")
        size = size or run_cfg.get("image_size")  # the resolution the set was distilled at, if one was set
        if not a.teacher:  # the run's teacher, with its weights
            a.teacher, a.teacher_weights = (listed(run_cfg.get(k)) or None for k in ("teacher", "teacher_weights"))
        ds = read_run(run) if is_ddkit_run and not getattr(a, "class_map", None) else None  # its classes, checked
    if a.json is not None:
        check_output(a.json)
    test, teacher, teacher_ids = _load_eval_inputs(cfg_data, a.teacher, a.teacher_weights, dev, a.test_data,
                                                   a.on_bad_image, size, a.data_backend, ds and ds.classes)
    cfg = dataclasses.replace(cfg, teachers=teacher_ids)
    if a.full:
        train = open_data(a.data, "train", size, a.data_backend, on_bad_image=a.on_bad_image)
        if a.subset:
            train = load_subset_file(a.subset, train)
        ds = DistilledSet(train.fit_images, train.labels, train.classes)  # uint8 or a stream: fit takes both
        results = evaluate_set(ds, test, teacher, cfg, dev, progress=not a.quiet)
        title = f"full real data ({len(train)} images)"
    else:
        if ds is None:  # another tool's set (a peer's layout, a plain folder) or a renamed one
            from .layouts import read_set
            ds = read_set(a.run, test.classes, getattr(a, "layout", "auto"), getattr(a, "classes_by_index", False),
                          getattr(a, "class_map", None), test.mean, test.std)
        t0 = time.time()
        results = evaluate_set(ds, test, teacher, cfg, dev, run=a.run if is_ddkit_run else None,
                               progress=not a.quiet)
        title = f"{a.run}: {len(ds.labels)} images, evaluated in {time.time() - t0:.0f} s"
        if is_ddkit_run and dist.is_main():
            write_report(a.run)
    if not dist.is_main():
        return  # under torchrun, rank 0 reports
    _print_results(title, results)
    if a.json:
        save_json(results, a.json)


def cmd_ddranking(a) -> None:
    from .evaluate import EvalConfig, stored_summary
    from .protocols import label_robustness, preset
    proto = preset("ddranking", _settings(a.pset, "--pset"))

    def acc(run, labels):  # stored mean accuracy as a fraction
        cfg = EvalConfig(label_mode=labels, epochs=a.epochs, protocol=proto)
        return stored_summary(run, cfg, a.arch)["mean"] / 100
    inputs = {"syn_soft": acc(a.run, "soft"), "syn_hard": acc(a.run, "hard"), "random_soft": acc(a.random, "soft"),
              "real_hard": a.full_hard}
    print(to_json({**label_robustness(**inputs), **inputs}))


def _check_evaluation(a) -> None:
    """`distill --evaluate`: the evaluation's flags and test split, checked before the synthesis (a failure
    after it would leave a run folder the corrected command then refuses as existing)."""
    from .stream import split_classes
    from .utils import resolve_device
    _eval_config(a, (), resolve_device(a.device))
    if a.json is not None:
        check_output(a.json)
    if a.labels == "soft" and not a.teacher:
        raise DDKitError("--evaluate with soft labels needs --teacher (or --labels hard)")
    test = split_classes(a.test_data, "train") if a.test_data else split_classes(a.data, "test")
    _check_test_classes(test, split_classes(a.data, "train"), f"the training split {a.data}")


def cmd_distill(a) -> None:
    from .distill import DistillConfig, distill
    from .report import write_report
    if a.evaluate:
        _check_evaluation(a)

    def absolute(p):  # the run's config must still point at its inputs when read from another folder
        return str(Path(p).resolve()) if p and Path(p).exists() else p
    cfg = DistillConfig(method=a.method, ipc=a.ipc, data=absolute(a.data),
                        teacher=one_or_list([absolute(p) for p in a.teacher or []]),
                        teacher_weights=one_or_list([absolute(p) for p in a.teacher_weights or []]),
                        subset=absolute(a.subset), seed=a.seed,
                        classes_per_group=a.classes_per_group, settings=_settings(a.set),
                        on_bad_image=a.on_bad_image, data_backend=a.data_backend, image_size=a.image_size,
                        amp=a.amp, compile=a.compile, store=a.store)
    out = distill(cfg, a.out, a.device, overwrite=a.overwrite, progress=not a.quiet)
    if out is not None:  # None on torchrun ranks other than 0: rank 0 writes the run
        write_report(out)
        from .rundir import read_json
        m = read_json(out / "metrics.json")
        print(to_json({"run": str(out), "images": m["num_images"], "synthesis_wall_s": m["synthesis_wall_s"],
                       "diversity_cos": m.get("diversity_cos")}))
    if a.evaluate:
        dist.barrier()  # every rank trains the students; the run must exist first
        a.run, a.full, a.data, a.subset, a.teacher = str(a.out), False, None, None, None  # the run's own
        cmd_evaluate(a)


def cmd_select(a) -> None:
    from .select import SelectConfig, select
    cfg = SelectConfig(criterion=a.criterion, keep=a.keep, keep_end=a.keep_end, proxy_epochs=a.proxy_epochs,
                       proxy_arch=a.proxy_arch, proxy_batch=a.proxy_batch or 0,
                       teacher=a.teacher, teacher_weights=a.teacher_weights, reference=a.reference, ipc=a.ipc,
                       seed=a.seed, subset=a.subset, on_bad_image=a.on_bad_image, data_backend=a.data_backend,
                       image_size=a.image_size)
    info = select(a.data, cfg, a.out, a.device, progress=not a.quiet)
    print(to_json(info))


def cmd_report(a) -> None:
    from .report import write_report
    print(write_report(a.run))


def cmd_export(a) -> None:
    from .rundir import export_ddranking, read_json, read_run
    from .teacher import load_teachers
    if a.layout != "ddranking":
        from .layouts import write_indexed
        ds = read_run(a.run)
        out = write_indexed(ds, check_output(a.out, folder=True), a.layout)
        print(to_json({"export": str(out), "layout": a.layout, "classes": ds.classes}))
        return
    config = read_json(Path(a.run) / "config.json")
    if not a.teacher:  # the run's teacher(s), with their weights
        a.teacher, a.teacher_weights = (config.get("distill", {}).get(k) for k in ("teacher", "teacher_weights"))
    teacher, ck = None, {}
    if a.teacher:
        teacher, ck = load_teachers(listed(a.teacher), listed(a.teacher_weights) or None, read_run(a.run).classes,
                                    config.get("data", {}).get("image_size"))
    out = export_ddranking(a.run, check_output(a.out, folder=True), teacher, ck.get("mean"), ck.get("std"))
    print(to_json({"export": str(out), "soft_labels": teacher is not None}))


def cmd_demo(a) -> None:
    from .demo import run_demo
    run_demo(a.out, a.device, progress=not a.quiet)


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="ddkit", description="Dataset distillation toolkit.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("teacher", help="train (or fetch from cache) a teacher on real data, or import a "
                       "pretrained one (--import)")
    p.add_argument("--data", help="dataset name (digits, cifar10, cifar100) or ImageFolder root; with --import: "
                   "names the classes and sets the resolution")
    p.add_argument("--test-data", help="test ImageFolder if not <data>/test")
    p.add_argument("--arch", default="convnet3")
    p.add_argument("--epochs", type=positive_int, default=12)
    p.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default: the recipe's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="batch size (default: the recipe's); the "
                   "peak LR scales with it unless --lr is given")
    p.add_argument("--recipe", default="default", choices=list(TEACHER_RECIPES),
                   help="training recipe: default (SGD 0.1, batch 256) or airnet (SGD 0.4, batch 512, for --arch "
                   "airnet); both one-cycle, label smoothing 0.2, translate+flip")
    p.add_argument("--label-smoothing", type=fraction, default=None, help="label smoothing of the "
                   "cross-entropy (default: the recipe's 0.2; 0 keeps more of the class similarities that soft "
                   "labels pass on, cf. Mueller et al. 2019)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", help="index file from `ddkit select`")
    p.add_argument("--out", help="also copy the checkpoint here")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--import", dest="import_spec", metavar="SPEC", help="freeze a pretrained model "
                   "(torchvision:NAME, timm:NAME, module:function) into a ddkit checkpoint at --out")
    p.add_argument("--teacher-weights", metavar="PATH", help="with --import: its state dict (default: the "
                   "library's cache, or its download where the internet is reachable)")
    p.add_argument("--stats", choices=["model", "data"], help="with --import: normalise as the weights were "
                   "trained (model, the default) or with --data's channel statistics")
    _accel_args(p)
    _data_args(p, "; with --import: the resolution it is used at (default: --data's, else its pretrained input size)")
    _common(p)
    p.set_defaults(fn=cmd_teacher)

    p = sub.add_parser("distill", help="synthesise a distilled set into a run folder")
    p.add_argument("--method", required=True)
    p.add_argument("--ipc", type=positive_int, required=True, help="images per class")
    p.add_argument("--data", required=True)
    _teacher_args(p, "teacher (from `ddkit teacher`); several: soft labels and scores from the mean of their "
                  "logits, pixels optimised against one of them per step, in turn", several=True)
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method setting, repeatable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", help="index file from `ddkit select`: distil from the kept samples only")
    p.add_argument("--classes-per-group", type=count, default=0, help="classes optimised together (0 = all)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--store", choices=["uint8", "float32"], default="uint8", help="uint8: the run's PNGs are "
                   "the set (lossless 8-bit); float32: data.pt also keeps the unquantised images (4x the PNGs' "
                   "raw size)")
    p.add_argument("--evaluate", action="store_true", help="evaluate the run afterwards")
    p.add_argument("--json", help="write evaluation results to this file")
    _eval_args(p)
    _accel_args(p)
    _data_args(p)
    _common(p)
    p.set_defaults(fn=cmd_distill)

    p = sub.add_parser("evaluate", help="train students on a distilled set (or full data), report test accuracy")
    p.add_argument("run", nargs="?", help="run folder, or any ImageFolder of distilled images")
    p.add_argument("--data", help="dataset whose test split is used (default: the run's)")
    _teacher_args(p, "teacher for soft labels (default: the run's); several: the mean of their logits (they "
                  "must share classes and normalisation)", several=True)
    p.add_argument("--full", action="store_true", help="baseline: students on the full real training data")
    p.add_argument("--layout", default="auto", choices=["auto", "ddkit", "folder", "ddranking", "rded", "sre2l"],
                   help="the set's layout (auto: detected): a ddkit run, an ImageFolder, DD-Ranking's images.pt, "
                   "RDED's 00000/..., SRe2L's new000/... (docs/guides/peer-layouts.md)")
    p.add_argument("--classes-by-index", action="store_true", help="class folders (or tensor labels) named by "
                   "index: index c is the dataset's c-th class; refused when the counts differ")
    p.add_argument("--class-map", metavar="FILE", help="JSON {\"folder or index\": \"class name\"} naming the set's classes")
    p.add_argument("--subset", help="with --full: train on the kept samples of this index file")
    p.add_argument("--json", help="write results to this file")
    _eval_args(p)
    _accel_args(p)
    _data_args(p)
    _common(p)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("ddranking", help="DD-Ranking's HLR, IOR and LRS from stored ddranking-protocol results")
    p.add_argument("run", help="the distilled run, evaluated with --protocol ddranking, soft and hard labels")
    p.add_argument("--random", required=True, help="random real images at the same IPC (`ddkit distill "
                   "--method random`), evaluated with --protocol ddranking, soft labels")
    p.add_argument("--full-hard", type=float, required=True, help="accuracy (a fraction) of the full real "
                   "training data with hard labels: `ddkit evaluate --full --labels hard --protocol ddranking`")
    p.add_argument("--arch", default="convnet3")
    p.add_argument("--epochs", type=positive_int, default=300)
    p.add_argument("--pset", action="append", metavar="KEY=VALUE", help="protocol fields the runs used")
    p.set_defaults(fn=cmd_ddranking)

    p = sub.add_parser("select", help="prune the real data before distillation (BiLP)")
    p.add_argument("--data", required=True)
    p.add_argument("--keep", type=ranged(float, UNIT), required=True, help="fraction of each class to keep, "
                   "in (0, 1]")
    p.add_argument("--criterion", choices=["loss", "causal", "random"], default="loss")
    p.add_argument("--keep-end", choices=["low", "high"], default="low", help="loss criterion: keep the "
                   "low-loss (easy, the paper's choice) or high-loss end")
    p.add_argument("--proxy-epochs", type=positive_int, default=5)
    p.add_argument("--proxy-arch", default="auto", help="loss without --teacher: the proxy trained to score the "
                   "samples (auto: convnet3 up to 64 px, resnet18 above, whose strided stem keeps activations "
                   "small at 224 px)")
    p.add_argument("--proxy-batch", type=positive_int, help="the proxy's training batch (default: the recipe's "
                   "256, lowered only where it cannot fit in the memory there is; a batch that cannot is refused)")
    _teacher_args(p, "loss: score with this model instead of training a proxy; causal: the BN teacher "
                  "whose statistics the distiller matches")
    p.add_argument("--reference", help="causal: a distilled run used as the synthetic set")
    p.add_argument("--ipc", type=positive_int, default=10, help="causal without --reference: random real images "
                   "per class standing in for the synthetic set")
    p.add_argument("--subset", help="select within an earlier selection (e.g. causal after loss)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="index file to write (.pt); a report is written beside it")
    _data_args(p)
    _common(p)
    p.set_defaults(fn=cmd_select)

    p = sub.add_parser("report", help="(re)write report.md, grid.png and curves.png of a run")
    p.add_argument("run")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("export", help="write a run as DD-Ranking tensors (images.pt, labels.pt) or in RDED's or "
                       "SRe2L's folder layout")
    p.add_argument("run")
    p.add_argument("--out", required=True)
    p.add_argument("--layout", default="ddranking", choices=["ddranking", "rded", "sre2l"],
                   help="ddranking: tensors; rded: 00000/class00000_id00000.png; sre2l: new000/class000_id000.png")
    _teacher_args(p, "teacher for soft labels (default: the run's)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("demo", help="offline end-to-end demo on scikit-learn's digits (< 2 min on 2 cores)")
    p.add_argument("--out", default="runs/demo")
    _common(p)
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (its one line is printed) or --help
        return e.code if isinstance(e.code, int) else 2
    if hasattr(sys.stdout, "reconfigure"):  # a log shared by stdout and stderr keeps results and progress in order
        sys.stdout.reconfigure(line_buffering=True)
    # pre-emption: save state, exit with a message; only while the command runs, since a caller in the same
    # process (Python code, tests) and processes it forks later must keep SIGTERM's own meaning: a pool that
    # SIGTERMs its forked workers would otherwise wait on them forever
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, request_stop) if main_thread else None
    tune_malloc()
    try:
        dist.setup()  # under torchrun: one process group for the whole command
        args.fn(args)
    except Exception as e:
        line = error_line(e)  # bad input, the file system or memory saying no; anything else is a bug: traceback
        if line is None:
            raise
        print(f"ddkit: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    finally:
        dist.shutdown()
        if main_thread:   # None: a handler installed outside Python, which Python cannot put back
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
