"""Student protocols at a fixed budget of 300 epochs: which one should ddkit evaluate sets with by default?

CIFAR-10 IPC 10, ConvNet-3 teacher (bench/teacher_convnet3_cifar10.pt) and ConvNet-3 students, soft labels
from the teacher online. Two sets per synthesis draw: random real images (`ddkit distill --method random`)
and e2d (`ddkit distill --method e2d --set iterations=200`, bench/cifar10/cifar10.py's budget). Variants: today's
default (`ddkit`), EDC's protocol shortened to 300 epochs (`edc300`), and one ingredient changed at a time
from either (VARIANTS, in the order they are run). Every variant is tested at its final epoch only
(eval_every=0: no best-epoch record, which costs test passes and is selected on the test set anyway).

Each finished student is written at once to OUT/results/<variant>/<set>_d<draw>_s<seed>.json, and a student
in progress checkpoints (ddkit.train.fit) in RUNS, so the command resumes where it stopped; --table-only
rebuilds results.json, table.md and docs/img/protocol_study.png from the stored students.

    # the screen: one draw, one student seed, every variant (two students at a time, one thread each)
    OMP_NUM_THREADS=1 nice -n 10 python bench/protocol_study/study.py --workers 2
    # confirming a few variants: 3 student seeds on 2 synthesis draws
    OMP_NUM_THREADS=1 nice -n 10 python bench/protocol_study/study.py --variants edc300 ddkit --draws 0 1 --seeds 3
    python bench/protocol_study/study.py --table-only
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import multiprocessing as mp
import statistics
import subprocess
import time
from pathlib import Path

import torch

from ddkit.data import load_data
from ddkit.distill import DistillConfig, distill
from ddkit.evaluate import align_classes
from ddkit.models import build_model
from ddkit.protocols import Protocol, preset
from ddkit.rundir import read_json, read_run
from ddkit.teacher import load_checkpoint
from ddkit.train import accuracy, fit
from ddkit.utils import atomic_path, inference_batch, save_json, tune_malloc

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
REPO = BENCH.parent
EPOCHS = 300
ARCH = "convnet3"
SETS = {"random": {}, "e2d": {"iterations": "200"}}   # method -> synthesis settings (bench/cifar10/cifar10.py's budget)
_EDC300 = {"eval_every": "0"}   # edc's preset at 300 epochs: its LR steps are fractions of training, so they scale
# name -> (base preset, overrides), in the order the screen runs them (the most informative first)
VARIANTS: dict[str, tuple[str, dict]] = {
    "ddkit-v1": ("ddkit-v1", {}),
    "edc300": ("edc", _EDC300),
    "edc300+cosine": ("edc", {**_EDC300, "schedule": "cosine", "lr_by_epoch": "false"}),
    "ddkit+randaug": ("ddkit-v1", {"randaug_ops": "2"}),
    "edc300+cutmix": ("edc", {**_EDC300, "cutmix": "1.0"}),
    "ddkit+rrc0.08": ("ddkit-v1", {"rrc_scale": "0.08,1.0"}),
    "edc300-ema": ("edc", {**_EDC300, "ema": "0"}),
    "ddkit+kl_t20": ("ddkit-v1", {"temperature": "20", "kl_t2": "false"}),
    "edc300+kl_t4": ("edc", {**_EDC300, "soft_loss": "kl", "ce_weight": "0", "temperature": "4"}),
    "ddkit+ema": ("ddkit-v1", {"ema": "0.99"}),
    "edc300-randaug": ("edc", {**_EDC300, "randaug_ops": "0"}),
    "ddkit+mse_ce": ("ddkit-v1", {"soft_loss": "mse", "ce_weight": "0.025"}),
    "ddkit+cutmix": ("ddkit-v1", {"cutmix": "1.0"}),
    "edc300+bs64": ("edc", {**_EDC300, "batch_size": "64"}),
    "edc300+bs10": ("edc", {**_EDC300, "batch_size": "10"}),
    "edc300+bs10+cutmix": ("edc", {**_EDC300, "batch_size": "10", "cutmix": "1.0"}),   # = `ddkit` here
    "ddkit+bs25": ("ddkit-v1", {"batch_size": "25"}),
    "edc300+rrc0.5": ("edc", {**_EDC300, "rrc_scale": "0.5,1.0"}),
    "ddkit+per_epoch": ("ddkit-v1", {"lr_by_epoch": "true"}),
    "edc300+lr2e-3": ("edc", {**_EDC300, "lr": "2e-3"}),
    "edc300+kl_t20": ("edc", {**_EDC300, "soft_loss": "kl", "ce_weight": "0", "temperature": "20",
                              "kl_t2": "false"}),
    "edc300+ema0.999": ("edc", {**_EDC300, "ema": "0.999"}),
    "ddkit+kl_t20_t2": ("ddkit-v1", {"temperature": "20"}),
    "ddkit+lr2e-3": ("ddkit-v1", {"lr": "2e-3"}),
}
# the two best single changes of edc300 together (EDC's CIFAR-10 script uses both): the default `ddkit` preset
COMBINED = {"edc300+bs10+cutmix"}
# the earlier grid's edc cells at 1000 epochs (same teacher, student and set recipe; bench/protocols/protocols.py)
GRID = BENCH / "protocols" / "results" / "cifar10_protocols"


def protocol(variant: str) -> Protocol:
    base, overrides = VARIANTS[variant]
    p = preset(base, overrides)
    return dataclasses.replace(p, name=variant)


def set_tag(method: str, draw: int) -> str:
    return f"{method}_ipc10_d{draw}"


def result_path(out: Path, variant: str, method: str, draw: int, seed: int) -> Path:
    return out / "results" / variant / f"{method}_d{draw}_s{seed}.json"


def set_hash(run: Path) -> str:
    """A fingerprint of the set's pixels: a set distilled again elsewhere (e.g. at another thread count) may
    differ, and its students are then not the same measurement."""
    return hashlib.sha256(read_run(run).images.mul(255).round().to(torch.uint8).numpy().tobytes()).hexdigest()[:12]


def make_sets(a, draws) -> dict[str, str]:
    """Distill the sets that are missing (2 threads); returns {tag: fingerprint}."""
    out = {}
    for draw in draws:
        for method, settings in SETS.items():
            run = a.runs / "sets" / set_tag(method, draw)
            if not (run / "data.pt").is_file():
                t0 = time.time()
                distill(DistillConfig(method=method, ipc=10, data=a.data, teacher=str(a.teacher), seed=draw,
                                      settings=dict(settings)), run, "cpu", progress=False)
                print(f"distilled {run.name} in {time.time() - t0:.0f} s", flush=True)
            out[run.name] = set_hash(run)
    return out


def jobs(a) -> list[tuple]:
    """(variant, method, draw, seed) not stored yet: seeds outermost, so every variant gets its first
    student before any gets a second; random and e2d of one variant next to each other."""
    return [(v, m, d, s) for s in range(a.seeds) for d in a.draws for v in a.variants for m in SETS
            if not result_path(a.out, v, m, d, s).is_file()]


def worker(queue, a, fingerprints: dict, threads: int):
    torch.set_num_threads(threads)
    tune_malloc()
    dev = torch.device("cpu")
    teacher, ck = load_checkpoint(a.teacher, device=dev)
    test = load_data(a.data, "test", stats=(tuple(ck["mean"]), tuple(ck["std"])))
    while (job := queue.get()) is not None:
        run_student(*job, a=a, teacher=teacher, test=test, fingerprints=fingerprints, dev=dev)


def run_student(variant, method, draw, seed, *, a, teacher, test, fingerprints, dev):
    tag = set_tag(method, draw)
    ds = read_run(a.runs / "sets" / tag)
    labels = align_classes(ds, test.classes)
    p = protocol(variant)
    tcfg = p.train_config(EPOCHS, round(len(labels) / len(labels.unique())), len(test.classes))
    ckpt = a.runs / "students" / variant / f"{tag}_s{seed}.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(seed)   # as ddkit.evaluate.evaluate_set seeds a student
    student = build_model(ARCH, len(test.classes), test.image_size)
    hist = fit(student, ds.images, labels, test.normalize, tcfg, dev, seed=seed, teacher=teacher,
               checkpoint=str(ckpt), desc=f"{variant} {tag} s{seed}", progress=False)
    view = "test" if p.test_resize else "center"
    acc = accuracy(student, test.batches(None, inference_batch(test.image_size, 1000), view), test.labels,
                   test.normalize, dev)
    steps = EPOCHS * math.ceil(len(labels) / min(tcfg.batch_size, len(labels)))
    save_json({"variant": variant, "set": tag, "method": method, "draw": draw, "seed": seed, "acc": acc,
               "wall_s": round(time.time() - t0 + hist["resumed_s"], 1), "epochs": EPOCHS, "steps": steps,
               "batch_size": tcfg.batch_size, "final_loss": round(hist["loss"][-1], 4),
               "threads": torch.get_num_threads(), "set_fingerprint": fingerprints[tag],
               "protocol": dataclasses.asdict(p), "changes_vs_ddkit": p.changes(), "ddkit_commit": a.commit},
              result_path(a.out, variant, method, draw, seed))
    ckpt.unlink(missing_ok=True)
    print(f"{time.strftime('%H:%M:%S')} {variant:18s} {tag:14s} s{seed}: {100 * acc:.2f} % "
          f"({time.time() - t0:.0f} s)", flush=True)


# ---------------------------------------------------------------- tables and figure (from the stored JSON)

def load_results(out: Path) -> list[dict]:
    return [read_json(f) for f in sorted((out / "results").glob("*/*.json"))]


def summary(results: list[dict]) -> list[dict]:
    """Per variant: random and e2d accuracy (mean ± std over every stored student, n), the e2d − random
    margin (per draw: mean e2d − mean random over that draw's students; then the mean over draws that
    have both), its cost."""
    rows = []
    for v in dict.fromkeys([*VARIANTS, *(r["variant"] for r in results)]):
        rs = [r for r in results if r["variant"] == v]
        if not rs:
            continue
        row = {"variant": v, "changes_vs_base": VARIANTS.get(v, ("?", {}))[1], "base": VARIANTS.get(v, ("?",))[0]}
        for m in SETS:
            accs = [100 * r["acc"] for r in rs if r["method"] == m]
            row[m] = {"mean": round(statistics.fmean(accs), 2), "std": round(statistics.stdev(accs), 2)
                      if len(accs) > 1 else 0.0, "n": len(accs),
                      "draws": sorted({r["draw"] for r in rs if r["method"] == m})} if accs else None
        margins = []
        for d in sorted({r["draw"] for r in rs}):
            by = {m: [100 * r["acc"] for r in rs if r["method"] == m and r["draw"] == d] for m in SETS}
            if by["random"] and by["e2d"]:
                margins.append(statistics.fmean(by["e2d"]) - statistics.fmean(by["random"]))
        row["margin"] = round(statistics.fmean(margins), 2) if margins else None
        row["margin_draws"] = len(margins)
        row["steps"], row["batch_size"] = rs[0]["steps"], rs[0]["batch_size"]
        row["wall_s_per_student"] = round(statistics.fmean(r["wall_s"] for r in rs), 0)
        rows.append(row)
    return rows


def grid_rows(sets: dict) -> list[dict]:
    """The earlier grid's cells (bench/protocols/protocols.py: 3 student seeds each) for the study's draw-0 sets, where
    they are the same images: the teacher-feature diversity of both sets within 5e-4 of the grid's (the
    criterion of bench/protocols/protocols.py's same_set)."""
    rows = []
    grid = {m: read_json(GRID / f"{m}_ipc10.json") for m in SETS}
    same = all(sets.get(set_tag(m, 0), {}).get("diversity_cos") is not None and grid[m].get("diversity_cos")
               is not None and abs(sets[set_tag(m, 0)]["diversity_cos"] - grid[m]["diversity_cos"]) <= 5e-4
               for m in SETS)
    for name, epochs, steps, bs in (("ddkit", 300, 2, 64), ("rded", 300, 2, 50), ("edc", 1000, 4, 25)):
        label = "ddkit-v1" if name == "ddkit" else name   # the grid's `ddkit` cells: the earlier default
        cells = {m: grid[m].get("results", {}).get(f"{name}/soft") for m in SETS}
        if same and all(cells.values()):
            rows.append({"variant": f"{label}, {epochs} epochs (earlier grid)", "epochs": epochs,
                         "steps": steps * epochs, "batch_size": bs,
                         "margin": round(cells["e2d"]["mean"] - cells["random"]["mean"], 2),
                         "wall_s_per_student": cells["e2d"]["wall_s_per_seed"],
                         **{m: {k: cells[m][k] for k in ("mean", "std", "n")} for m in SETS}})
    return rows


def cell(s: dict | None) -> str:
    if not s:
        return ""
    return f"{s['mean']:.2f} (n=1)" if s["n"] == 1 else f"{s['mean']:.2f} ± {s['std']:.2f} (n={s['n']})"


def markdown(rows: list[dict], results: list[dict], grid: list[dict]) -> str:
    head = ["variant", "from", "change", "random %", "e2d %", "margin (e2d − random)", "draws", "student cost",
            "wall s / student"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        change = ", ".join(f"{k}={v}" for k, v in r["changes_vs_base"].items() if k != "eval_every") or "–"
        margin = f"{r['margin']:+.2f}" if r["margin"] is not None else ""
        name = r["variant"] + (" (= `ddkit`)" if r["variant"] in COMBINED else "")
        lines.append(f"| {name} | {r['base']} | {change} | {cell(r['random'])} | {cell(r['e2d'])} | {margin} "
                     f"| {r['margin_draws']} | {EPOCHS} × {r['steps'] // EPOCHS} = {r['steps']} steps "
                     f"(batch {r['batch_size']}) | {r['wall_s_per_student']:.0f} |")
    for g in grid:
        lines.append(f"| {g['variant']} | – | – | {cell(g['random'])} | {cell(g['e2d'])} | {g['margin']:+.2f} | 1 "
                     f"| {g['epochs']} × {g['steps'] // g['epochs']} = {g['steps']} steps (batch {g['batch_size']}) | "
                     f"{g['wall_s_per_student']:.0f} |")
    prints = sorted({(r["set"], r["set_fingerprint"]) for r in results})
    lines += ["", "CIFAR-10 IPC 10, ConvNet-3 teacher (bench/teacher_convnet3_cifar10.pt) and ConvNet-3 students, "
              f"soft labels online, {EPOCHS} epochs, final-epoch test accuracy; mean ± std over every student "
              "stored (student seeds × synthesis draws). Margin: per draw, mean e2d − mean random; averaged over "
              "the draws that have both. `from`: the preset changed (edc300 = `edc` at 300 epochs, tested at the "
              "final epoch only). Wall time: one thread per student, two students at a time, on a 2-core machine "
              "shared with other jobs (an upper bound, for comparing variants with each other).",
              "", "Sets (pixel fingerprints): " + ", ".join(f"{s} {h}" for s, h in prints) + "."]
    if grid:
        lines += ["Earlier-grid rows: bench/protocols/results/cifar10_protocols (bench/protocols/protocols.py; the ddkit cells "
                  "from bench/cifar10/cifar10.py) on the same draw-0 sets (teacher-feature diversity equal within 5e-4), 3 "
                  "student seeds each; `rded` is the preset before its correction to RDED's code; their wall "
                  "times were measured there, under other loads."]
    return "\n".join(lines)


def figure(rows: list[dict], grid: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r["random"] and r["e2d"]] + grid
    rows.sort(key=lambda r: r["e2d"]["mean"])
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.5))
    y = range(len(rows))
    for off, m, color in ((-0.18, "random", "#999999"), (0.18, "e2d", "#1f77b4")):
        ax.barh([i + off for i in y], [r[m]["mean"] for r in rows], height=0.36, color=color,
                xerr=[r[m]["std"] for r in rows], label=f"{m} (IPC 10)", error_kw={"lw": 0.8})
    for i, r in zip(y, rows):
        ax.text(max(r["e2d"]["mean"], r["random"]["mean"]) + 1, i,
                f"{r['margin']:+.1f}  (n={r['random']['n']}/{r['e2d']['n']})", va="center", fontsize=8)
    ax.set_yticks(list(y), [r["variant"] for r in rows], fontsize=8)
    lo = min(r[m]["mean"] for r in rows for m in SETS)
    ax.set_xlim(max(0, lo - 10), 85)
    ax.set_xlabel("CIFAR-10 test accuracy % (final epoch); text: e2d − random (n random / e2d)")
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("Student protocols, CIFAR-10 IPC 10, ConvNet-3: random real vs e2d\n"
                 "(300 epochs unless named; mean ± std over students)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_outputs(out: Path, runs: Path, fig: Path | None = None) -> str:
    results = load_results(out)
    rows = summary(results)
    sets = read_json(out / "results.json").get("sets", {})   # kept where the run folders are gone
    for run in sorted((runs / "sets").glob("*/metrics.json")):
        sets[run.parent.name] = {"diversity_cos": read_json(run).get("diversity_cos"),
                                 "synthesis_wall_s": read_json(run).get("synthesis_wall_s")}
    grid = grid_rows(sets)
    save_json({"epochs": EPOCHS, "arch": ARCH, "sets": sets, "summary": rows, "earlier_grid": grid,
               "students": results}, out / "results.json")
    table = markdown(rows, results, grid)
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(table + "\n")
    if rows:
        figure(rows, grid, fig or out / "protocol_study.png")
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--teacher", type=Path, default=BENCH / "teacher_convnet3_cifar10.pt")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--draws", type=int, nargs="+", default=[0], help="synthesis draws (seeds) of both sets")
    ap.add_argument("--seeds", type=int, default=1, help="student seeds 0..N-1")
    ap.add_argument("--workers", type=int, default=2, help="students trained at once, one thread each")
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "protocol_study", help="sets and checkpoints")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--figure", type=Path, default=REPO / "docs" / "img" / "protocol_study.png",
                    help="where the figure goes (the docs show it from there)")
    ap.add_argument("--table-only", action="store_true")
    a = ap.parse_args()
    if not a.table_only:
        a.commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                  text=True).stdout.strip()
        torch.set_num_threads(2)
        fingerprints = make_sets(a, a.draws)
        todo = jobs(a)
        print(f"{len(todo)} students to train ({a.workers} at a time)", flush=True)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        for j in todo:
            queue.put(j)
        for _ in range(a.workers):
            queue.put(None)
        procs = [ctx.Process(target=worker, args=(queue, a, fingerprints, 1)) for _ in range(a.workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    print(write_outputs(a.out, a.runs, a.figure))


if __name__ == "__main__":
    main()
