"""The default protocol (`ddkit`) beyond the study's cell: CIFAR-10 IPC 50 (100 epochs) and ResNet-18 students at
IPC 10, each set beside random real images, with the study's teacher and set recipes.

    python bench/protocol_study/checks.py [--checks ipc50 resnet18] [--protocol ddkit]

Sets go to runs/cifar10_ipc10/ (shared with bench/presets and bench/e2d_edc: the IPC 10 sets are the same
images as the study's draw 0) and runs/cifar10_ipc50/; students are stored in each run's metrics.json, so a
rerun resumes. Results: bench/protocol_study/results/checks.json.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import ddkit
from ddkit.rundir import read_json
from ddkit.utils import save_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# check -> (ipc, student arch, epochs, {set: student seeds})
CHECKS = {"ipc50": (50, "convnet3", 100, {"random": 2, "e2d": 2}),
          "resnet18": (10, "resnet18", 300, {"e2d": 2, "random": 2})}
SETTINGS = {"random": {}, "e2d": {"iterations": 200}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--teacher", default=str(REPO / "bench" / "teacher_convnet3_cifar10.pt"))
    ap.add_argument("--checks", nargs="+", default=list(CHECKS), choices=list(CHECKS))
    ap.add_argument("--protocol", default="ddkit")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "checks.json")
    a = ap.parse_args()
    out = read_json(a.out) if a.out.is_file() else {}
    for check in a.checks:
        ipc, arch, epochs, seeds = CHECKS[check]
        name = f"{check}/{a.protocol}"
        rows = out.setdefault(name, {"ipc": ipc, "arch": arch, "epochs": epochs, "protocol": a.protocol,
                                     "sets": {}})
        for method, n in seeds.items():
            run = REPO / "runs" / f"cifar10_ipc{ipc}" / f"{method}_ipc{ipc}"
            if not (run / "data.pt").is_file():
                ddkit.distill(method, a.data, a.teacher, ipc, out=run, device="cpu", progress=False,
                              settings=SETTINGS[method])
            (key, r), = ddkit.evaluate(run, protocol=a.protocol, arch=arch, epochs=epochs, seeds=n, device="cpu",
                                       progress=False).items()
            rows["sets"][method] = {"key": key, **{k: r[k] for k in ("mean", "std", "n", "accs", "wall_s_per_seed")}}
            if {"random", "e2d"} <= rows["sets"].keys():
                rows["margin"] = round(rows["sets"]["e2d"]["mean"] - rows["sets"]["random"]["mean"], 2)
            # only this check's row: a run of another check at the same time keeps its own
            save_json({**(read_json(a.out) if a.out.is_file() else {}), name: rows}, a.out)
            print(check, method, rows["sets"][method], flush=True)


if __name__ == "__main__":
    main()
