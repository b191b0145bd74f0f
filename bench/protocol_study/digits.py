"""The demo's digits sets (8x8, IPC 5, `ddkit demo`) under candidate student protocols: a default must not
only rank CIFAR-10 sets well but also leave the bundled demo meaningful.

    ddkit demo --out runs/demo                     # the sets (every method, IPC 5) and the teacher
    python bench/protocol_study/digits.py --protocols ddkit-v1 ddkit edc300 [--demo runs/demo]

Each set: 2 student seeds, 100 epochs (the demo's budget), final epoch, soft labels from the demo's teacher.
Students are stored in each run's metrics.json (resumable); the table goes to results/digits.json.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import ddkit
from ddkit.utils import save_json

HERE = Path(__file__).resolve().parent
EPOCHS, SEEDS = 100, 2
# name -> (preset, --pset overrides)
CANDIDATES = {"ddkit-v1": ("ddkit-v1", {}), "ddkit": ("ddkit", {}), "edc300": ("edc", {"eval_every": 0}),
              "ddkit+rrc0.5": ("ddkit", {"rrc_scale": "0.5,1"}), "ddkit-randaug": ("ddkit", {"randaug_ops": 0}),
              "ddkit+rrc0.5-randaug": ("ddkit", {"rrc_scale": "0.5,1", "randaug_ops": 0})}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=HERE.parents[1] / "runs" / "demo")
    ap.add_argument("--protocols", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "digits.json")
    a = ap.parse_args()
    runs = sorted(p for p in a.demo.glob("*_ipc5") if (p / "data.pt").is_file())
    out = {"epochs": EPOCHS, "seeds": SEEDS, "command": "python bench/protocol_study/digits.py --protocols "
           + " ".join(a.protocols), "rows": {}}
    for name in a.protocols:
        base, pset = CANDIDATES[name]
        rows = {}
        for run in runs:
            (r,) = ddkit.evaluate(run, protocol=base, pset=pset, epochs=EPOCHS, seeds=SEEDS, device="cpu",
                                  progress=False).values()
            rows[run.name.removesuffix("_ipc5")] = {"mean": r["mean"], "std": r["std"], "n": r["n"]}
        floor = rows.get("random", {}).get("mean")
        for m, r in rows.items():
            if floor is not None and m != "random":
                r["margin"] = round(r["mean"] - floor, 2)
        out["rows"][name] = rows
        print(name, {m: (r["mean"], r.get("margin")) for m, r in rows.items()}, flush=True)
        save_json(out, a.out)
    print("mean margin over random:", {n: round(statistics.fmean(r["margin"] for r in rows.values() if "margin" in r), 2)
                                       for n, rows in out["rows"].items()})


if __name__ == "__main__":
    main()
