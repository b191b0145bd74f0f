"""`ddkit` command line: teacher, distill, evaluate, select, report, demo.

Every user-facing problem is a DDKitError, printed as one line on stderr with exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

from . import dist
from .train import TEACHER_RECIPES
from .utils import DDKitError, check_output, listed, one_or_list, request_stop, save_json, tune_malloc


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
    p.add_argument("--image-size", type=int, help="working resolution S of the real and distilled images "
                   "(default: the images' own size, or 224 for photos of mixed size)" + size_help)


def _accel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="mixed precision: bf16 autocast "
                   "where the GPU has it, else fp16 with loss scaling; auto = on for CUDA, off for CPU; on = also "
                   "bf16 on the CPU (faster where it has AVX-512 BF16 or AMX)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models trained and the teacher's "
                   "forward (pays off on long GPU runs)")


def finite_float(raw: str) -> float:
    v = float(raw)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {raw!r}")
    return v


def positive_float(raw: str) -> float:
    v = finite_float(raw)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {raw!r}")
    return v


def fraction(raw: str) -> float:
    v = finite_float(raw)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {raw!r}")
    return v


def positive_int(raw: str) -> int:
    try:
        v = int(raw)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}")
    return v


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", nargs="+", default=["convnet3"], help="student architectures")
    p.add_argument("--test-data", help="test ImageFolder for the students if not <data>/test (or val/)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--labels", choices=["soft", "hard"], default="soft")
    p.add_argument("--epochs", type=int, help="student epochs (default: the protocol's: 1000 for edc, else 300)")
    p.add_argument("--protocol", default="ddkit", help="student-training protocol: ddkit, rded, sre2l, "
                   "ddranking, edc, e2d (see README, Protocols)")
    p.add_argument("--pset", action="append", metavar="KEY=VALUE", help="protocol field, repeatable "
                   "(e.g. lr=0.002, cutmix=0)")
    p.add_argument("--batch-size", type=int, help="student batch (default: the protocol's)")
    p.add_argument("--temperature", type=positive_float, help="soft-label temperature (default: the protocol's)")
    p.add_argument("--no-weights", action="store_true", help="ignore per-image weights (e.g. DDOQ masses)")


def _teacher_args(p: argparse.ArgumentParser, help: str, several: bool = False) -> None:
    nargs = "+" if several else None
    p.add_argument("--teacher", nargs=nargs, help=f"{help}: a ddkit checkpoint, or a pretrained model: "
                   "torchvision:NAME, timm:NAME, module:function")
    p.add_argument("--teacher-weights", nargs=nargs, metavar="PATH", help="state dict of a torchvision:/timm:/"
                   "module:function teacher (default: the library's cache, or its download where the internet is "
                   "reachable)" + ("; one per such teacher, in order" if several else ""))


def _eval_config(a, teacher_ids: tuple[str, ...], device):
    from .accel import amp_setting
    from .evaluate import EvalConfig
    from .protocols import DEFAULT_EPOCHS, preset
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
        print(json.dumps({"teacher": ck["path"], "arch": ck["arch"], "test_acc": ck.get("test_acc"),
                          "test_acc_flip_tta": ck.get("test_acc_flip_tta"), "train_time_s": ck.get("train_time_s"),
                          "cached": ck["cached"], "precision": ck.get("precision")}))


def cmd_import(a) -> None:
    """`ddkit teacher --import SPEC --out FILE`: freeze a pretrained model into a ddkit checkpoint."""
    from .stream import open_data
    from .teacher import import_teacher
    from .utils import save_torch
    if not a.out:
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
    print(json.dumps({"teacher": a.out, "arch": ck["arch"], "classes": ck["num_classes"],
                      "image_size": ck["image_size"], "mean": ck["mean"], "std": ck["std"],
                      "stats_from": ck["stats_from"], "weights": ck["imported_from"]}))


def _load_eval_inputs(data: str | None, teachers: list[str] | None, weights: list[str] | None, device,
                      test_data: str | None = None, on_bad_image: str = "error", image_size: int | None = None,
                      backend: str = "auto"):
    """Test split (DATA's test/ or val/, or --test-data), teacher (several: their ensemble; each a checkpoint
    or a zoo spec) and the members' content hashes; the test set is normalised with the teachers' statistics."""
    from .stream import open_data, open_splits
    from .teacher import load_teachers
    from .utils import model_hash
    if not data:
        raise DDKitError("no data to evaluate on: pass --data (a dataset name or ImageFolder root)")
    if not teachers:
        return open_splits(data, test_data, image_size, backend, on_bad_image)[1], None, ()
    test = open_data(test_data, "train", image_size, backend, on_bad_image=on_bad_image) if test_data \
        else open_data(data, "test", image_size, backend, on_bad_image=on_bad_image)
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
    size = a.image_size
    if a.full:
        cfg_data = a.data
    else:
        if not a.run:
            raise DDKitError("give a RUN folder to evaluate, or --full for the full-real-data baseline")
        run_cfg = read_json(Path(a.run) / "config.json").get("distill", {})
        cfg_data = a.data or run_cfg.get("data")
        size = size or run_cfg.get("image_size")  # the resolution the set was distilled at, if one was set
        if not a.teacher:  # the run's teacher, with its weights
            a.teacher, a.teacher_weights = (listed(run_cfg.get(k)) or None for k in ("teacher", "teacher_weights"))
    if a.json:
        check_output(a.json)
    test, teacher, teacher_ids = _load_eval_inputs(cfg_data, a.teacher, a.teacher_weights, dev, a.test_data,
                                                   a.on_bad_image, size, a.data_backend)
    cfg = _eval_config(a, teacher_ids, dev)
    if a.full:
        train = open_data(a.data, "train", size, a.data_backend, on_bad_image=a.on_bad_image)
        if a.subset:
            train = load_subset_file(a.subset, train)
        ds = DistilledSet(train.fit_images, train.labels, train.classes)  # uint8 or a stream: fit takes both
        results = evaluate_set(ds, test, teacher, cfg, dev, progress=not a.quiet)
        title = f"full real data ({len(train)} images)"
    else:
        ds = read_run(a.run)
        is_ddkit_run = (Path(a.run) / "metrics.json").is_file()
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
    print(json.dumps({**label_robustness(**inputs), **inputs}))


def cmd_distill(a) -> None:
    from .distill import DistillConfig, distill
    from .report import write_report

    def absolute(p):  # the run's config must still point at its inputs when read from another folder
        return str(Path(p).resolve()) if p and Path(p).exists() else p
    cfg = DistillConfig(method=a.method, ipc=a.ipc, data=absolute(a.data),
                        teacher=one_or_list([absolute(p) for p in a.teacher or []]),
                        teacher_weights=one_or_list([absolute(p) for p in a.teacher_weights or []]),
                        subset=absolute(a.subset), seed=a.seed,
                        classes_per_group=a.classes_per_group, settings=_settings(a.set),
                        on_bad_image=a.on_bad_image, data_backend=a.data_backend, image_size=a.image_size,
                        amp=a.amp, compile=a.compile)
    out = distill(cfg, a.out, a.device, overwrite=a.overwrite, progress=not a.quiet)
    if out is not None:  # None on torchrun ranks other than 0: rank 0 writes the run
        write_report(out)
        from .rundir import read_json
        m = read_json(out / "metrics.json")
        print(json.dumps({"run": str(out), "images": m["num_images"], "synthesis_wall_s": m["synthesis_wall_s"],
                          "diversity_cos": m.get("diversity_cos")}))
    if a.evaluate:
        dist.barrier()  # every rank trains the students; the run must exist first
        a.run, a.full, a.data, a.subset, a.teacher = str(a.out), False, None, None, None  # the run's own
        cmd_evaluate(a)


def cmd_select(a) -> None:
    from .select import SelectConfig, select
    cfg = SelectConfig(criterion=a.criterion, keep=a.keep, keep_end=a.keep_end, proxy_epochs=a.proxy_epochs,
                       teacher=a.teacher, teacher_weights=a.teacher_weights, reference=a.reference, ipc=a.ipc,
                       seed=a.seed, subset=a.subset, on_bad_image=a.on_bad_image, data_backend=a.data_backend,
                       image_size=a.image_size)
    info = select(a.data, cfg, a.out, a.device, progress=not a.quiet)
    print(json.dumps(info))


def cmd_report(a) -> None:
    from .report import write_report
    print(write_report(a.run))


def cmd_export(a) -> None:
    from .rundir import export_ddranking, read_json, read_run
    from .teacher import load_teachers
    config = read_json(Path(a.run) / "config.json")
    if not a.teacher:  # the run's teacher(s), with their weights
        a.teacher, a.teacher_weights = (config.get("distill", {}).get(k) for k in ("teacher", "teacher_weights"))
    teacher, ck = None, {}
    if a.teacher:
        teacher, ck = load_teachers(listed(a.teacher), listed(a.teacher_weights) or None, read_run(a.run).classes,
                                    config.get("data", {}).get("image_size"))
    out = export_ddranking(a.run, check_output(a.out, folder=True), teacher, ck.get("mean"), ck.get("std"))
    print(json.dumps({"export": str(out), "soft_labels": teacher is not None}))


def cmd_demo(a) -> None:
    from .demo import run_demo
    run_demo(a.out, a.device, progress=not a.quiet)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ddkit", description="Dataset distillation toolkit.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("teacher", help="train (or fetch from cache) a teacher on real data, or import a "
                       "pretrained one (--import)")
    p.add_argument("--data", help="dataset name (digits, cifar10, cifar100) or ImageFolder root; with --import: "
                   "names the classes and sets the resolution")
    p.add_argument("--test-data", help="test ImageFolder if not <data>/test")
    p.add_argument("--arch", default="convnet3")
    p.add_argument("--epochs", type=int, default=12)
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
    p.add_argument("--ipc", type=int, required=True, help="images per class")
    p.add_argument("--data", required=True)
    _teacher_args(p, "teacher (from `ddkit teacher`); several: soft labels and scores from the mean of their "
                  "logits, pixels optimised against one of them per step, in turn", several=True)
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method setting, repeatable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", help="index file from `ddkit select`: distil from the kept samples only")
    p.add_argument("--classes-per-group", type=int, default=0, help="classes optimised together (0 = all)")
    p.add_argument("--overwrite", action="store_true")
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
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--pset", action="append", metavar="KEY=VALUE", help="protocol fields the runs used")
    p.set_defaults(fn=cmd_ddranking)

    p = sub.add_parser("select", help="prune the real data before distillation (BiLP)")
    p.add_argument("--data", required=True)
    p.add_argument("--keep", type=finite_float, required=True, help="fraction of each class to keep, in (0, 1]")
    p.add_argument("--criterion", choices=["loss", "causal", "random"], default="loss")
    p.add_argument("--keep-end", choices=["low", "high"], default="low", help="loss criterion: keep the "
                   "low-loss (easy, the paper's choice) or high-loss end")
    p.add_argument("--proxy-epochs", type=int, default=5)
    _teacher_args(p, "loss: score with this model instead of training a proxy; causal: the BN teacher "
                  "whose statistics the distiller matches")
    p.add_argument("--reference", help="causal: a distilled run used as the synthetic set")
    p.add_argument("--ipc", type=int, default=10, help="causal without --reference: random real images "
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

    p = sub.add_parser("export", help="write a run as DD-Ranking tensors (images.pt, labels.pt)")
    p.add_argument("run")
    p.add_argument("--out", required=True)
    _teacher_args(p, "teacher for soft labels (default: the run's)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("demo", help="offline end-to-end demo on scikit-learn's digits (< 2 min on 2 cores)")
    p.add_argument("--out", default="runs/demo")
    _common(p)
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # a log shared by stdout and stderr keeps results and progress in order
        sys.stdout.reconfigure(line_buffering=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_stop)  # pre-emption: save state, exit with a message
    tune_malloc()
    try:
        dist.setup()  # under torchrun: one process group for the whole command
        args.fn(args)
    except (DDKitError, OSError) as e:  # OSError: the file system said no (disk full, permissions...)
        print(f"ddkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddkit: interrupted (finished work is kept; rerun the same command to resume)", file=sys.stderr)
        return 130
    finally:
        dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
