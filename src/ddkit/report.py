"""Per-run report: a named image grid of a sample of classes, loss-curve plot and report.md, from the run files."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .evaluate import mean_std, summarize_entry
from .rundir import read_json, read_run
from .utils import DDKitError, atomic_path, to_json

GRID_CLASSES = 10    # rows: classes evenly spaced over the set (ImageNet: 1 in 100); images/ holds all
GRID_PER_CLASS = 10  # columns: a class's first images
GRID_CELL = (64, 128)  # thumbnails are scaled into this range of sizes (px): small images up, photos down
LABEL_W = 150        # px of class name left of each row


def table(rows: list[dict], cols: list[str]) -> str:
    """A markdown table of `rows` (dicts) in the order of `cols`; missing cells stay empty."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _font(size: int = 14):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):   # Pillow < 10.1, or built without FreeType: the small bitmap font
        return ImageFont.load_default()


def grid_rows(num_classes: int) -> list[int]:
    """The classes shown: at most GRID_CLASSES, evenly spaced."""
    k = min(num_classes, GRID_CLASSES)
    return sorted({c * num_classes // k for c in range(k)})


def image_grid(run: Path, out: Path) -> None:
    """A grid a person can look at: GRID_CLASSES classes (evenly spaced) × GRID_PER_CLASS images, each class
    named, thumbnails of 64–128 px. Only the images shown are read."""
    from PIL import Image, ImageDraw
    from .rundir import load_run_blob, read_pixels
    run = Path(run)
    if (run / "data.pt").is_file():
        blob = load_run_blob(run, mmap=True)
        labels, classes = blob["labels"], blob["classes"]
        pixels = lambda idx: read_pixels(run, blob, idx)   # noqa: E731
    else:   # a plain ImageFolder of distilled images
        ds = read_run(run, dtype=torch.uint8)
        labels, classes = ds.labels, ds.classes
        pixels = lambda idx: ds.images[idx]                 # noqa: E731
    shown = grid_rows(len(classes))
    rows = {c: (labels == c).nonzero().flatten()[:GRID_PER_CLASS].tolist() for c in shown}
    width = max(1, max(len(r) for r in rows.values()))
    x = pixels([i for c in shown for i in rows[c]]) if any(rows.values()) else torch.zeros(0, 3, 8, 8)
    h = x.shape[-1] if len(x) else 8
    cell = max(GRID_CELL[0] // h * h, h) if h < GRID_CELL[0] else min(h, GRID_CELL[1])
    font = _font()
    grid = Image.new("RGB", (LABEL_W + width * (cell + 2), len(shown) * (cell + 2)), "white")
    draw, k = ImageDraw.Draw(grid), 0
    for r, c in enumerate(shown):
        name = classes[c] if len(classes[c]) <= 18 else classes[c][:17] + "…"
        draw.text((4, r * (cell + 2) + cell // 2 - 8), f"{c}: {name}", fill="black", font=font)
        for j in range(len(rows[c])):
            im = Image.fromarray(x[k].permute(1, 2, 0).squeeze(-1).numpy())
            im = im.resize((cell, cell), Image.NEAREST if cell > h else Image.LANCZOS) if cell != h else im
            grid.paste(im.convert("RGB"), (LABEL_W + j * (cell + 2) + 1, r * (cell + 2) + 1))
            k += 1
    with atomic_path(out) as tmp:
        grid.save(tmp, format="PNG")


@contextlib.contextmanager
def png_figure(path: Path, **subplots):
    """A headless matplotlib figure, written atomically to `path` as PNG when the block ends."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


def loss_plot(groups: list[dict], out: Path) -> bool:
    curves = [g["curve"] for g in groups if g.get("curve", {}).get("iteration")]
    if not curves:
        return False
    with png_figure(out, ncols=2, figsize=(9, 3.2)) as (_, axes):
        for gi, c in enumerate(curves):
            axes[0].plot(c["iteration"], c["ce"], label=f"group {gi}" if len(curves) > 1 else None)
            axes[1].plot(c["iteration"], c["bn"])
        axes[0].set(title="cross-entropy", xlabel="iteration", yscale="log")
        axes[1].set(title="BN-statistics loss", xlabel="iteration", yscale="log")
    return True


def _eval_table(evaluation: dict) -> list[str]:
    lines = ["| protocol | accuracy (%) | seeds | best epoch (%, selected on test) | student wall s/seed |",
             "|---|---|---|---|---|"]
    for key, e in evaluation.items():
        s = summarize_entry(e)
        lines.append(f"| {key} | {mean_std(s)} | {s['n']} | {mean_std(s.get('best_selected_on_test'))} | "
                     f"{s['wall_s_per_seed']:.0f} |")
    return lines


def write_report(run: str | Path) -> Path:
    run = Path(run)
    if not (run / "metrics.json").is_file():
        raise DDKitError(f"run folder not found: {run}" if not run.exists() else
                         f"{run} is not a run folder (no metrics.json): `ddkit distill` makes one")
    metrics, config = read_json(run / "metrics.json"), read_json(run / "config.json")
    image_grid(run, run / "grid.png")
    has_curve = loss_plot(metrics.get("groups", []), run / "curves.png")
    brief = {k: v for k, v in metrics.items() if k not in ("groups", "evaluation")}
    lines = [f"# ddkit run `{run.name}`", "",
             f"Method **{metrics.get('method', '?')}**, IPC {metrics.get('ipc', '?')}, "
             f"{metrics.get('num_images', '?')} images; synthesis {metrics.get('synthesis_wall_s', '?')} s; "
             f"intra-class feature cosine similarity {metrics.get('diversity_cos', 'n/a')} (lower = more diverse).",
             "", "## Evaluation", ""]
    lines += _eval_table(metrics["evaluation"]) if metrics.get("evaluation") else ["Not evaluated yet: "
                                                                                   "`ddkit evaluate RUN`."]
    lines += ["", "## Images (a sample of classes; every image is in images/)", "", "![grid](grid.png)", ""]
    if has_curve:
        lines += ["## Synthesis loss curves", "", "![curves](curves.png)", ""]
    lines += ["## Metrics", "", "```json", to_json(brief, indent=2), "```", "",
              "## Config", "", "```json", to_json(config, indent=2), "```", ""]
    with atomic_path(run / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
    return run / "report.md"
