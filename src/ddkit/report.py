"""Per-run report: image grid (one row per class), loss-curve plot and report.md, from the run files."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torchvision.utils import save_image

from .evaluate import mean_std, summarize_entry
from .rundir import read_json, read_run
from .utils import DDKitError, atomic_path, to_json

MAX_PER_ROW = 20
MAX_ROWS = 100  # classes shown in the grid: evenly spaced over the classes of a larger set (ImageNet: 1 in 10)


def table(rows: list[dict], cols: list[str]) -> str:
    """A markdown table of `rows` (dicts) in the order of `cols`; missing cells stay empty."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def image_grid(run: Path, out: Path) -> None:
    """One row per class (at most MAX_ROWS classes, evenly spaced), up to MAX_PER_ROW images each."""
    ds = read_run(run, mmap=True)  # only the rows shown are read
    n = len(ds.classes)
    shown = sorted({c * n // min(n, MAX_ROWS) for c in range(min(n, MAX_ROWS))})
    width = min(MAX_PER_ROW, max(int((ds.labels == c).sum()) for c in shown))
    rows = []
    for c in shown:  # padded to the widest row only: 1,000 classes x 20 x 224 px of padding would be 12 GB
        imgs = ds.images[ds.labels == c][:width]
        rows.append(torch.cat([imgs, torch.ones(width - len(imgs), *ds.images.shape[1:])]))
    grid = torch.cat(rows)
    if grid.shape[-1] < 32:  # tiny images (8x8 digits) are unreadable at 1:1
        grid = torch.nn.functional.interpolate(grid, scale_factor=32 // grid.shape[-1], mode="nearest")
    with atomic_path(out) as tmp:
        save_image(grid, tmp, nrow=width, padding=1, pad_value=1.0, format="png")


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
    lines += ["", "## Images (one row per class)", "", "![grid](grid.png)", ""]
    if has_curve:
        lines += ["## Synthesis loss curves", "", "![curves](curves.png)", ""]
    lines += ["## Metrics", "", "```json", to_json(brief, indent=2), "```", "",
              "## Config", "", "```json", to_json(config, indent=2), "```", ""]
    with atomic_path(run / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
    return run / "report.md"
