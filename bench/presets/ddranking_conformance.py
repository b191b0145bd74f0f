"""Conformance of ddkit's `ddranking` preset with DD-Ranking 0.2.0's own trainer, on one CIFAR-10 IPC 10 set.

The set: random real images, IPC 10, draw 0 (`ddkit.distill`, method `random`, seed 0, the committed
ConvNet-3 teacher), made in WORK/random_ipc10 unless --run names a ddkit run folder. Each side trains
ConvNet-3 (BatchNorm) students from scratch with the teacher labelling every CutMix batch online:

- DD-Ranking: its `LabelRobustScoreSoft` soft-label trainer (ConvNet-3-BN student, soft-label mode M, KL at
  T = 20 without T^2, AdamW, its `cosine` schedule, CutMix beta 1, tested every 20 epochs), run by
  ddranking_driver.py in the Python that has the `ddranking` package (--ddranking-python). The set goes in as
  ddkit's DD-Ranking export (`export_ddranking`: images normalised with the teacher's mean and std), the
  teacher as a ConvNet-3-BN state_dict (`head.*` renamed `classifier.*`, zero conv biases: BatchNorm
  follows each conv), the test set normalised with the teacher's mean and std too.
- ddkit: `evaluate_set` under the `ddranking` preset (students stored in the run's metrics.json).

lr, weight decay, batch, temperature, CutMix beta and the test interval are read from the preset for both
sides. Seeds 0 .. n-1 on each side, seeds outermost. Reported per side: the final-epoch accuracy and the
best of the tests every 20 epochs (the number DD-Ranking reports), mean ± std, n, and ddkit minus
DD-Ranking. Each finished student goes to the JSON at once (atomically); a rerun skips it.

    python bench/presets/ddranking_conformance.py                          # 3 + 3 students, 300 epochs
    python bench/presets/ddranking_conformance.py --epochs 2 --seeds 1 --work /tmp/c --out /tmp/c/c.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from ddkit.data import load_data
from ddkit.distill import DistillConfig, distill
from ddkit.evaluate import EvalConfig, evaluate_set, summarize
from ddkit.protocols import preset
from ddkit.rundir import export_ddranking, read_json, read_run
from ddkit.teacher import load_checkpoint, load_teachers
from ddkit.utils import resolve_device, save_json, save_torch, tune_malloc
from rded_preset import rel   # the script beside this one: paths recorded relative to the checkout

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DRIVER = HERE / "ddranking_driver.py"
EARLIER = ROOT / "bench" / "protocols" / "results" / "cifar10_protocols" / "random_ipc10.json"
# the shared CIFAR-10 ImageFolder beside the checkout (or beside the folder holding a worktree of it)
DATA = next((d for d in (ROOT.parent / "shared" / "datasets" / "cifar10",
                         ROOT.parents[1] / "shared" / "datasets" / "cifar10") if d.is_dir()),
            ROOT.parent / "shared" / "datasets" / "cifar10")


def ddranking_teacher(path: str, teacher_dir: Path) -> Path:
    """The ddkit convnet3 checkpoint as DD-Ranking's ConvNet-3-BN state_dict, where DD-Ranking looks for it."""
    _, ck = load_checkpoint(path, arch="convnet3")
    sd = {("classifier." + k[len("head."):] if k.startswith("head.") else k): v for k, v in ck["state_dict"].items()}
    for i in (0, 4, 8):   # DD-Ranking's convs have biases; ddkit's have none (a BatchNorm follows each)
        sd[f"features.{i}.bias"] = torch.zeros(sd[f"features.{i}.weight"].shape[0])
    out = teacher_dir / "CIFAR10" / "ConvNet-3-BN" / "ckpt_best.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_torch(sd, out)
    return out


def side_summary(students: dict) -> dict | None:
    if not students:
        return None
    seeds = sorted(students, key=int)
    final = [students[s]["final_acc"] / 100 for s in seeds]
    best = [students[s]["best_acc"] / 100 for s in seeds]
    return {"final": summarize(final), "best_of_tests": summarize(best), "seeds": [int(s) for s in seeds]}


def write(a, res: dict) -> None:
    for side in ("ddranking", "ddkit"):
        res[side]["summary"] = side_summary(res[side]["students"])
    d, k = res["ddranking"]["summary"], res["ddkit"]["summary"]
    res["difference_ddkit_minus_ddranking"] = None if not (d and k) else {
        "final": round(k["final"]["mean"] - d["final"]["mean"], 2),
        "best_of_tests": round(k["best_of_tests"]["mean"] - d["best_of_tests"]["mean"], 2)}
    save_json(res, a.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA), help="CIFAR-10 as an ImageFolder (train/, test/)")
    ap.add_argument("--teacher", default=str(ROOT / "bench" / "teacher_convnet3_cifar10.pt"))
    ap.add_argument("--run", type=Path, help="a ddkit run folder to evaluate (default: make WORK/random_ipc10)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "ddranking_conformance")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--ddranking-python", default=os.environ.get("DDRANKING_PYTHON", "python"),
                    help="a Python with the ddranking 0.2.0 package (its own environment: it needs numpy<2; "
                         "default: $DDRANKING_PYTHON, else python)")
    ap.add_argument("--out", type=Path, default=HERE / "ddranking_conformance.json")
    a = ap.parse_args()
    tune_malloc()
    dev = resolve_device("cpu")
    p = preset("ddranking")
    # DD-Ranking's `cosine` is 0.5 (1 + cos(pi e / 2E)) set per epoch; its tensor route has CutMix only
    if (p.schedule, p.lr_by_epoch, p.aug, p.soft_labels, p.kl_t2) != ("half_cosine", True, "none", "online", False):
        raise SystemExit(f"ddranking_conformance.py: the ddranking preset no longer matches DD-Ranking's trainer "
                         f"on a field this driver cannot pass ({p})")

    run = a.run or a.work / "random_ipc10"
    if not (run / "data.pt").is_file():
        if a.run:
            raise SystemExit(f"ddranking_conformance.py: {run} is not a ddkit run folder")
        distill(DistillConfig(method="random", ipc=10, data=a.data, teacher=a.teacher, seed=0), run, dev,
                progress=False)
    teacher, ck = load_teachers([a.teacher], device=dev)
    mean, std = list(ck["mean"]), list(ck["std"])
    inputs = a.work / "ddranking_inputs"
    export_ddranking(run, inputs, mean=mean, std=std)
    teacher_dir = inputs / "teachers"
    ddranking_teacher(a.teacher, teacher_dir)

    setup = {"run": rel(run), "data": rel(a.data), "teacher": rel(a.teacher), "epochs": a.epochs,
             "diversity_cos": read_json(run / "metrics.json").get("diversity_cos")}
    res = json.loads(a.out.read_text()) if a.out.is_file() else {}
    if res and res.get("setup") != setup:
        raise SystemExit(f"ddranking_conformance.py: {a.out} holds another setup ({res.get('setup')}); "
                         f"pass another --out")
    res = {"setup": setup, "ddranking": {"students": {}}, "ddkit": {"students": {}}, **res}
    cfg_key = EvalConfig(protocol=p, epochs=a.epochs).key("convnet3")
    earlier = read_json(EARLIER)
    if earlier.get("diversity_cos") is not None and setup["diversity_cos"] is not None and \
            abs(earlier["diversity_cos"] - setup["diversity_cos"]) <= 5e-4 and a.epochs == 300:
        # the same set (its teacher-feature fingerprint) in the protocol grid, under the preset before its schedule
        # was corrected (cosine to 0 set every step)
        res["earlier_preset_same_set"] = {"source": str(EARLIER.relative_to(ROOT)),
                                          **earlier["results"].get("ddranking/soft", {})}
    res.update(command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               protocol={"preset": "ddranking", "key": cfg_key, "lr": p.lr, "weight_decay": p.weight_decay,
                         "batch_size": p.batch_size, "temperature": p.temperature, "cutmix": p.cutmix,
                         "schedule": "0.5 (1 + cos(pi e / 2E)), set per epoch", "test_interval": p.eval_every},
               normalisation={"mean": mean, "std": std, "source": "the teacher's training statistics"})
    write(a, res)
    test = load_data(a.data, "test", stats=(tuple(mean), tuple(std)))
    ds = read_run(run)

    for seed in range(a.seeds):   # seeds outermost: both sides get a student before either gets another
        if str(seed) not in res["ddranking"]["students"]:
            out = a.work / f"ddranking_seed{seed}.json"
            cmd = [a.ddranking_python, str(DRIVER), "--images", str(inputs / "images.pt"), "--teacher-dir",
                   str(teacher_dir), "--data", a.data, "--mean", *map(str, mean), "--std", *map(str, std),
                   "--seed", str(seed), "--epochs", str(a.epochs), "--lr", str(p.lr), "--weight-decay",
                   str(p.weight_decay), "--batch-size", str(p.batch_size), "--temperature", str(p.temperature),
                   "--cutmix-beta", str(p.cutmix), "--test-interval", str(p.eval_every), "--out", str(out)]
            if seed == 0:
                cmd.append("--check-teacher")
            log = a.work / f"ddranking_seed{seed}.log"
            print(f"DD-Ranking student seed {seed} (log {log})", flush=True)
            with open(log, "w") as f:
                subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
            res["ddranking"]["students"][str(seed)] = json.loads(out.read_text())
            write(a, res)
        if str(seed) not in res["ddkit"]["students"]:
            print(f"ddkit student seed {seed}", flush=True)
            t0 = time.time()
            cfg = EvalConfig(protocol=p, seeds=seed + 1, epochs=a.epochs)
            evaluate_set(ds, test, teacher, cfg, dev, run=run, progress=False)
            r = read_json(run / "metrics.json")["evaluation"][cfg_key]["seeds"][str(seed)]
            res["ddkit"]["students"][str(seed)] = {
                "seed": seed, "final_acc": round(100 * r["acc"], 4),
                "best_acc": round(100 * r.get("best_acc_selected_on_test", r["acc"]), 4),
                "best_epoch": r.get("best_epoch", a.epochs), "wall_s": r["wall_s"],
                "this_call_s": round(time.time() - t0, 1)}
            write(a, res)
        for side in ("ddranking", "ddkit"):
            s = res[side]["students"][str(seed)]
            print(f"  {side} seed {seed}: final {s['final_acc']:.2f} %, best of tests {s['best_acc']:.2f} %",
                  flush=True)
    print("ddkit minus DD-Ranking:", json.dumps(res["difference_ddkit_minus_ddranking"]), flush=True)


if __name__ == "__main__":
    main()
