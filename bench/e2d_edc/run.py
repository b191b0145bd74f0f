"""CIFAR-10 IPC10: E2D on SRe2L's BN loss vs E2D on EDC's statistic matching (its paper recipe) vs EDC as a
method, with random real images beside them, all with the committed ConvNet-3 teacher, ConvNet-3 students under
the `rded` protocol (300 epochs) and, with --protocols, under `edc` (1000 epochs). Resumable: finished sets,
finished student seeds and the seed in progress (its checkpoint) are reused; results are rewritten after every
student.

    python bench/e2d_edc/run.py [--seeds 3] [--protocols rded edc] [--data /path/to/cifar10]

Run folders live under runs/cifar10_ipc10/ (not committed), shared with bench/presets/rded_preset.py: `random`
and `e2d_bn` are that bench's `random_ipc10` and `e2d_ipc10`, so students either bench trained under the same
protocol are found there and not trained again. Writes bench/e2d_edc/results/results.json (accuracy mean ± std
over seeds, n, synthesis time, E2D's exploration counters: the high-loss boxes that exploitation may revisit).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ddkit.data import load_data
from ddkit.distill import DistillConfig, distill
from ddkit.evaluate import EvalConfig, evaluate_set
from ddkit.protocols import DEFAULT_EPOCHS, preset
from ddkit.rundir import read_json, read_run
from ddkit.teacher import load_checkpoint
from ddkit.utils import resolve_device, save_json, tune_malloc

ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "bench/teacher_convnet3_cifar10.pt"
# set name -> (run folder under --work, method, --set knobs)
SETS = {"random": ("random_ipc10", "random", {}),
        "e2d_bn": ("e2d_ipc10", "e2d", {"iterations": "200"}),   # SRe2L's BN loss, r 0.01 (the README's e2d set)
        "e2d_paper": ("e2d_paper_ipc10", "e2d", {"recipe": "paper"}),   # EDC's statistic matching, r 0.1
        "edc": ("edc_ipc10", "edc", {})}                       # EDC's CIFAR-10 recover: 75 its, r 0.01


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "cifar10_ipc10"))
    ap.add_argument("--out", default=str(ROOT / "bench/e2d_edc/results/results.json"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--protocols", nargs="+", default=["rded"], choices=["rded", "edc"],
                    help="student protocols, each at its preset's epochs (rded 300, edc 1000)")
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    tune_malloc()
    device = resolve_device(args.device)
    work = Path(args.work)
    teacher, ck = load_checkpoint(TEACHER, device=device)
    test = load_data(args.data, "test", stats=(ck["mean"], ck["std"]))
    prior = read_json(Path(args.out)) if Path(args.out).is_file() else {}
    cmd = (f"python bench/e2d_edc/run.py --seeds {args.seeds} --protocols {' '.join(args.protocols)} "
           f"--sets {' '.join(args.sets)}")
    out = {"commands": sorted(set(prior.get("commands", [])) | {cmd}),   # every command whose students are here
           "teacher": str(TEACHER.relative_to(ROOT)), "teacher_test_acc": ck.get("test_acc"), "ipc": 10,
           "student": "convnet3", "sets": prior.get("sets", {})}
    runs = {}
    for name in args.sets:
        folder, method, knobs = SETS[name]
        run = work / folder
        if not (run / "metrics.json").is_file():
            settings = {**knobs, **({"stats_dir": str(work / "stats")} if method in ("e2d", "edc") else {})}
            distill(DistillConfig(method=method, ipc=10, data=args.data, teacher=str(TEACHER), settings=settings),
                    run, device=str(device), progress=False)
        runs[name] = run
        m = read_json(run / "metrics.json")
        g = m["groups"][0]
        out["sets"].setdefault(name, {}).update(
            {"method": method, "settings": knobs, "synthesis_wall_s": m["synthesis_wall_s"],
             **{k: g[k] for k in ("iterations_run", "hard_after_explore", "exploit_steps", "memory_left",
                                  "squeeze_wall_s") if k in g}, "diversity_cos": m.get("diversity_cos")})
        save_json(out, args.out)
    for proto in args.protocols:
        epochs = DEFAULT_EPOCHS.get(proto, 300)
        for seed in range(args.seeds):   # seed by seed across the sets: a stopped run leaves comparable rows
            for name, run in runs.items():
                t0 = time.time()
                cfg = EvalConfig(protocol=preset(proto), epochs=epochs, seeds=seed + 1, archs=("convnet3",))
                (key, r), = evaluate_set(read_run(run), test, teacher, cfg, device, run=run, progress=False).items()
                res = {"key": key, "epochs": epochs,
                       **{k: r[k] for k in ("mean", "std", "n", "accs", "wall_s_per_seed", "best_selected_on_test")
                          if k in r}}
                out["sets"][name][f"{proto}/soft"] = res
                save_json(out, args.out)
                print(f"{proto} {name} seed {seed}: {json.dumps(res)} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
