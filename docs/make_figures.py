"""Figures of the results pages, drawn from the committed benchmark JSON (never typed in):

    python docs/make_figures.py        # writes docs/img/*.png

protocols.png: each set's accuracy under each student protocol (bench/protocols/results/cifar10_protocols; the
rded column from bench/presets/rded_preset.json);
scale.png: peak memory of every step at 1,000 classes (bench/scale/results/scale_memfix);
curve.png: accuracy against teacher passes for E²D and SRe2L (bench/cifar10/results/cifar10{,_curve}).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from ddkit.report import png_figure  # noqa: E402

OUT = ROOT / "docs" / "img"
# grid key -> label; the grid stores the earlier default under "ddkit"; its ddranking cells predate that preset's
# schedule correction; the rded cells come from the corrected preset's re-measurement of the same images
PROTOCOLS = {"ddkit/soft": "ddkit-v1", "rded/soft": "rded", "sre2l/soft": "sre2l",
             "ddranking/soft": "ddranking (earlier)", "edc/soft": "edc"}
RDED = {"random_ipc10": "random/0", "rded_ipc10": "rded_old/0", "e2d_ipc10": "e2d/0", "delt_ipc10": "delt/0",
        "sre2l_ipc10": "sre2l/0"}   # rows of bench/presets/rded_preset.json
SETS = [("random_ipc10", "random real"), ("rded_ipc10", "rded"), ("delt_ipc10", "delt"), ("e2d_ipc10", "e2d"),
        ("sre2l_ipc10", "sre2l")]


def protocols() -> None:
    folder = ROOT / "bench/protocols/results/cifar10_protocols"
    rows = {tag: json.loads((folder / f"{tag}.json").read_text())["results"] for tag, _ in SETS}
    corrected = json.loads((ROOT / "bench/presets/rded_preset.json").read_text())["rows"]
    for tag, _ in SETS:
        rows[tag]["rded/soft"] = corrected[RDED[tag]]["rded_corrected"]
    with png_figure(OUT / "protocols.png", figsize=(8, 3.6)) as (_, ax):
        width = 0.8 / len(SETS)
        for i, (tag, name) in enumerate(SETS):
            cells = [rows[tag].get(p, {}) for p in PROTOCOLS]
            xs = [j + (i - len(SETS) / 2 + 0.5) * width for j in range(len(PROTOCOLS))]
            ax.bar(xs, [c.get("mean", 0) for c in cells], width, yerr=[c.get("std", 0) for c in cells],
                   label=name, capsize=2)
        ax.set_xticks(range(len(PROTOCOLS)), list(PROTOCOLS.values()))
        ax.set(ylabel="test accuracy % (final epoch)", title="CIFAR-10 IPC 10, ConvNet-3 students, draw 0")
        ax.legend(fontsize=8, ncols=5, loc="upper left")
        ax.set_ylim(0, 85)


def scale() -> None:
    folder = ROOT / "bench/scale/results/scale_memfix"
    steps = ["teacher_import", "select_random", "select_loss", "teacher_train", "distill_random",
             "distill_rded", "distill_e2d", "distill_sre2l", "distill_ddoq", "evaluate"]
    with png_figure(OUT / "scale.png", figsize=(8, 3.6)) as (_, ax):
        for k, (ds, label) in enumerate((("c1000_n10", "10k photos"), ("c1000_n100", "100k photos"))):
            peaks = []
            for s in steps:
                p = folder / ds / f"{s}.json"
                peaks.append(json.loads(p.read_text())["peak_rss_mb"] / 1000 if p.is_file() else 0)
            ax.barh([i + 0.4 * k for i in range(len(steps))], peaks, 0.4, label=label)
        ax.set_yticks([i + 0.2 for i in range(len(steps))], steps)
        ax.invert_yaxis()
        ax.set(xlabel="peak RSS, GB", title="1,000 classes at 224 px, 2 CPU cores, streaming")
        ax.legend(fontsize=8)


def curve() -> None:
    points: dict[str, list] = {"e2d": [], "sre2l": []}
    for folder in ("cifar10", "cifar10_curve"):
        for p in sorted((ROOT / "bench/cifar10/results" / folder).glob("*.json")):
            row = json.loads(p.read_text())
            kind = row.get("method", "").split("_")[0]
            key = next((k for k in row.get("results", {}) if k.startswith("convnet3/soft/e300")), None)
            if kind in points and key and row.get("teacher_image_passes") and not row["set"].endswith(("seed1", "seed2")):
                r = row["results"][key]
                points[kind].append((row["teacher_image_passes"], r["mean"], r["std"]))
    with png_figure(OUT / "curve.png", figsize=(6, 3.6)) as (_, ax):
        for kind, pts in points.items():
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], marker="o", capsize=3,
                        label=kind)
        ax.set(xscale="log", xlabel="teacher image passes", ylabel="test accuracy %",
               title="CIFAR-10 IPC 10, ConvNet-3, soft labels (n=3)")
        ax.legend()


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    protocols()
    scale()
    curve()
    print(f"wrote {', '.join(sorted(p.name for p in OUT.glob('*.png')))}")
