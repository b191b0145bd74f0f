"""Accuracy vs synthesis budget for e2d and sre2l: one point per budget row of bench/cifar10/cifar10.py.

    python bench/cifar10/plot_curve.py --results bench/cifar10/results/cifar10 bench/cifar10/results/cifar10_curve \
        --out bench/cifar10/results/cifar10_curve/curve.png

x = teacher forward+backward image passes spent on synthesis (machine-independent; wall times were taken
under different machine loads, so they are printed, not plotted); y = accuracy, mean ± std over the row's
seeds (n in the label). The random real-image floor is drawn as a line. Prints the points as JSON.
"""
import argparse
import json
from pathlib import Path

from ddkit.report import png_figure

FAMILIES = ("e2d", "sre2l")


def points(dirs: list[Path], key_prefix: str) -> dict:
    out = {f: [] for f in FAMILIES + ("random",)}
    for d in dirs:
        for f in sorted(d.glob("*.json")):
            row = json.loads(f.read_text())
            family, rest = row["method"].split("_")[0], row["method"].split("_")[1:]
            plain = row["set"] == f"{row['method']}_ipc{row['ipc']}"  # not a pruned (--subset) set
            if family not in out or (rest and not rest[0].startswith("it")) or not plain:
                continue  # ablations and pruned sets are not budget points
            res = next((v for k, v in row["results"].items() if k.startswith(key_prefix)), None)
            if res:
                out[family].append({"set": row["set"], "passes": row.get("image_updates") or 0,
                                    "wall_s": row["synthesis_wall_s"], "acc": res["mean"], "std": res["std"],
                                    "seeds": res["n"]})
    return {k: sorted(v, key=lambda p: p["passes"]) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, nargs="+", required=True)
    ap.add_argument("--protocol", default="convnet3/soft/e300")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    pts = points(a.results, a.protocol)
    with png_figure(a.out, figsize=(6, 3.8)) as (_, ax):
        for fam in FAMILIES:
            p = pts[fam]
            ax.errorbar([q["passes"] for q in p], [q["acc"] for q in p], yerr=[q["std"] for q in p], marker="o",
                        capsize=3, label=fam)
            for q in p:
                ax.annotate(f"{q['set'].split('_ipc')[0]} (n={q['seeds']})", (q["passes"], q["acc"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        if pts["random"]:
            ax.axhline(pts["random"][0]["acc"], color="gray", ls="--", label="random real (its init)")
        ax.set(xscale="log", xlabel="teacher image passes spent on synthesis", ylabel=f"{a.protocol} accuracy %")
        ax.legend()
    print(json.dumps(pts, indent=1))


if __name__ == "__main__":
    main()
