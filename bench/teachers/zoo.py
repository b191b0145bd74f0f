"""A small zoo of CIFAR-10 teachers (other architectures, shorter training), and what their soft labels (alone and
averaged, `--teacher A B ...`) teach students, ConvNet-3 by default (EDC relabels with several small
nets; three seeds of one ConvNet-3 added nothing, bench/teachers/results/cifar10_strong/teacher_seeds/). Teachers that exist
under bench/ are reused; the others are trained by `ddkit teacher` and written to bench/teacher_NAME_cifar10.pt.

    python bench/teachers/zoo.py --teachers convnet3_e4 convnet4 mobilenet_v2            # train these (resumable)
    python bench/teachers/zoo.py --cells convnet3_e4 convnet3+convnet4+mobilenet_v2 [--protocol edc] [--method e2d]
    python bench/teachers/zoo.py --cells convnet3 convnet3_e2 --protocol edc --pset soft_loss=kl ce_weight=0
    python bench/teachers/zoo.py --cells convnet3_e4 --protocol edc --arch resnet18          # ResNet-18 students

A cell is a teacher name, or names joined by '+' (their ensemble: the mean of the logits). Its students train on
a copy of random draw 0 (`ddkit distill --method random --ipc 10 --seed 0`, the tables' draw 0; one run folder
keeps the students of one teacher), or with `--method e2d` on an E2D set distilled against the cell's teacher(s)
(an ensemble's members in turn). Every step is a `ddkit` command, skipped when its output exists;
OUT/results.json is re-read and rewritten after every cell, so several processes may run side by side.
Budget on 2 CPU cores at 1 thread each, two jobs side by side: ConvNet-3 ~2.7 min per teacher epoch (convnet4
the same, mobilenet_v2 ~3.3), a `ddkit`-protocol student ~2.5 min, an `edc` one (1000 epochs, no test passes
during training) ~12 min (ResNet-18: ~62 min); each extra teacher adds its forward to every student step.
"""
import argparse
import json
import shutil
import statistics
import subprocess
from pathlib import Path

import torch

from ddkit.rundir import read_json
from ddkit.utils import save_json

# name -> `ddkit teacher` arguments; a committed checkpoint (bench/teacher_NAME_cifar10.pt) is not retrained
ZOO = {
    "convnet3": ["--arch", "convnet3", "--epochs", "12"],
    "convnet3_s1": ["--arch", "convnet3", "--epochs", "12", "--seed", "1"],
    "airnet_e3": ["--arch", "airnet", "--recipe", "airnet", "--epochs", "3"],
    "airnet_e45_bf16": ["--arch", "airnet", "--recipe", "airnet", "--epochs", "45", "--amp", "on"],
    # airbench96's widths and residual third convs: 3 epochs pair airnet_e3 (1,028 s per fp32 epoch on an AVX2-only
    # CPU); a bf16 epoch took 337 s on 2 cores with AVX-512 BF16 (airnet: 95), so 15 need 1.4 h there
    "airnet_wide_e3": ["--arch", "airnet_wide", "--recipe", "airnet", "--epochs", "3"],
    "airnet_wide_e15_bf16": ["--arch", "airnet_wide", "--recipe", "airnet", "--epochs", "15", "--amp", "on"],
    "convnet3_e1": ["--arch", "convnet3", "--epochs", "1"],
    "convnet3_e2": ["--arch", "convnet3", "--epochs", "2"],
    "convnet3_e4": ["--arch", "convnet3", "--epochs", "4"],
    "convnet3_e8": ["--arch", "convnet3", "--epochs", "8"],
    "convnet4": ["--arch", "convnet4", "--epochs", "8"],
    "mobilenet_v2": ["--arch", "mobilenet_v2", "--epochs", "6"],
    # recipe vs architecture: each net under the other's recipe (airnet: batch 512, peak LR 0.4)
    "convnet3_airrecipe": ["--arch", "convnet3", "--recipe", "airnet", "--epochs", "12"],
    "airnet_e3_default": ["--arch", "airnet", "--recipe", "default", "--epochs", "3"],
}


def teacher_path(name: str) -> Path:
    return Path("bench") / f"teacher_{name}_cifar10.pt"


def run(cmd: list[str], done: bool = False) -> None:
    if not done:
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def train_teacher(name: str, data: str) -> None:
    run(["ddkit", "teacher", "--data", data, *ZOO[name], "--out", str(teacher_path(name))],
        teacher_path(name).exists())


def student_set(a, names: list[str], out: Path) -> tuple[Path, str]:
    """The run folder the cell's students train on, and the cell's name. random: a copy of draw 0 per cell
    (one run folder keeps the students of one teacher); e2d: distilled against the cell's teacher(s)."""
    label = "+".join(names)
    if a.method == "e2d":
        run_dir = out / "runs" / f"e2d_{label}"
        run(["ddkit", "distill", "--method", "e2d", "--ipc", "10", "--seed", "0", "--set", "iterations=200",
             "--data", a.data, "--teacher", *map(str, map(teacher_path, names)), "--out", str(run_dir), "--quiet"],
            (run_dir / "metrics.json").exists())
        return run_dir, f"e2d/{label}"
    draw = out / "runs" / "random_ipc10"
    run(["ddkit", "distill", "--method", "random", "--ipc", "10", "--seed", "0", "--data", a.data,
         "--teacher", str(teacher_path("convnet3")), "--out", str(draw), "--quiet"], (draw / "metrics.json").exists())
    copy = out / "runs" / f"{label}_{a.protocol}{variant(a)}"  # one protocol variant per folder: one result key
    if not copy.exists():
        tmp = copy.with_name(copy.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(draw, tmp)  # the draw has no students yet: the copy's metrics.json gets this cell's
        tmp.rename(copy)
    return copy, label


def variant(a) -> str:
    """The suffix that tells a protocol with `--pset` overrides from the preset, in folder and result names."""
    return "".join(f"+{kv}" for kv in a.pset)


def cell(a, names: list[str], out: Path) -> None:
    """`a.arch` students on the cell's set, soft labels from `names` (their ensemble if several)."""
    run_dir, label = student_set(a, names, out)
    pset = (["eval_every=0"] if a.protocol == "edc" else []) + a.pset  # edc: final EMA only, no test passes
    run(["ddkit", "evaluate", str(run_dir), "--seeds", str(a.seeds), "--labels", "soft", "--protocol", a.protocol,
         "--arch", a.arch, *[x for kv in pset for x in ("--pset", kv)],
         "--teacher", *map(str, map(teacher_path, names)),
         "--data", a.data, "--quiet"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    prefix = a.arch + {"ddkit": "/soft/e300-", "edc": "/soft/edc/e1000-"}[a.protocol]
    key, res = next((k, v) for k, v in metrics["evaluation"].items() if k.startswith(prefix))
    accs = [round(100 * s["acc"], 2) for s in res["seeds"].values()]
    mean, std = round(statistics.mean(accs), 2), round(statistics.stdev(accs), 2) if len(accs) > 1 else 0.0
    teachers = {n: torch.load(teacher_path(n), weights_only=True) for n in names}
    results_path = out / "results.json"
    results = read_json(results_path)
    student = "" if a.arch == "convnet3" else f"/{a.arch}"  # ConvNet-3 keys keep their first format
    results[f"{label}/{a.protocol}{variant(a)}{student}"] = {
        "teachers": {n: {"arch": ck["arch"], "test_acc": ck["test_acc"],
                         "test_acc_flip_tta": ck.get("test_acc_flip_tta"), "train_time_s": ck.get("train_time_s"),
                         "epochs": ck["recipe"].get("epochs"), "path": str(teacher_path(n))}
                     for n, ck in teachers.items()},
        "student": a.arch, "protocol": a.protocol, "pset": a.pset, "key": key, "accs": accs, "mean": mean,
        "std": std, "n": len(accs),
        "set": (f"e2d_ipc10 (ddkit distill --method e2d --ipc 10 --seed 0 --set iterations=200, against the "
                f"cell's teacher(s); diversity {metrics.get('diversity_cos')})") if a.method == "e2d" else
               "random_ipc10 draw 0 (ddkit distill --method random --ipc 10 --seed 0)"}
    save_json(results, results_path)
    print(f"{label} ({a.protocol}{variant(a)}{student}): {mean:.2f} % (n={len(accs)})", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/datasets/cifar10")
    ap.add_argument("--teachers", nargs="*", default=[], choices=sorted(ZOO), help="train these first")
    ap.add_argument("--cells", nargs="*", default=[], help="teacher names, or names joined by '+' (an ensemble)")
    ap.add_argument("--protocol", default="ddkit", choices=["ddkit", "edc"])
    ap.add_argument("--method", default="random", choices=["random", "e2d"],
                    help="the students' images: random draw 0, or e2d distilled against the cell's teacher(s)")
    ap.add_argument("--pset", nargs="*", default=[], metavar="KEY=VALUE",
                    help="protocol overrides, as `ddkit evaluate --pset` (e.g. soft_loss=kl ce_weight=0)")
    ap.add_argument("--arch", default="convnet3", choices=["convnet3", "resnet18"], help="the students")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--out", default="bench/teachers/results/cifar10_strong/zoo")
    a = ap.parse_args()
    if a.pset and a.method == "e2d":  # an e2d set's folder serves every protocol: one variant per key only
        raise SystemExit("zoo.py: --pset goes with --method random")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.teachers:
        train_teacher(name, a.data)
    for c in a.cells:
        names = c.split("+")
        unknown = [n for n in names if n not in ZOO]
        if unknown:
            raise SystemExit(f"zoo.py: unknown teacher {unknown[0]!r}; choose from {', '.join(ZOO)}")
        for n in names:
            train_teacher(n, a.data)
        cell(a, names, out)


if __name__ == "__main__":
    main()
