"""CIFAR-10 benchmark: every method side by side under one evaluation protocol.

For each (method, IPC): distill with the committed ConvNet-3 teacher, evaluate students from scratch
(soft and hard labels, seeds, architectures), then write bench/cifar10/results/cifar10/<set>.json and a markdown
table (mean ± std accuracy, synthesis and evaluation wall time, diversity, gain over random real).
Everything resumes: finished runs and finished seeds are reused, so the command can be rerun after an
interruption or extended with more methods.

    python bench/cifar10/cifar10.py                      # the README table: IPC10, ConvNet-3, soft+hard, 3 seeds
    python bench/cifar10/cifar10.py --quick              # smoke run: 3 classes' worth of budget, 1 seed
    python bench/cifar10/cifar10.py --methods rded e2d --ipc 50 --archs convnet3 resnet18
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ddkit.data import load_data
from ddkit.distill import DistillConfig, distill, diversity
from ddkit.evaluate import EvalConfig, evaluate_set, summarize_entry
from ddkit.protocols import preset
from ddkit.report import write_report
from ddkit.rundir import read_json, read_run, update_metrics
from ddkit.teacher import load_checkpoint, load_teachers
from ddkit.utils import atomic_path, listed, model_hash, one_or_list, resolve_device, save_json, tune_malloc

ROOT = Path(__file__).resolve().parents[1]  # bench/: the committed teacher lives here
HERE = ROOT / "cifar10"  # this study: results/
# Synthesis budgets (method defaults unless listed). Stated in the table.
BUDGETS = {"sre2l": {"iterations": "1000"}, "delt": {"iterations": "500", "round_iters": "100"},
           "e2d": {"iterations": "200"}, "rded": {}, "random": {}, "ddoq": {"encoder": "teacher"},
           "ddoq_pixel": {"encoder": "pixel"}, "ddoq_ae": {"encoder": "autoencoder"},
           "ddoq_unweighted": {"encoder": "teacher", "weighted": "false"},
           "ddoq_pixel_unweighted": {"encoder": "pixel", "weighted": "false"},
           "ddoq_ae_unweighted": {"encoder": "autoencoder", "weighted": "false"},
           "ddoq_pixel_medoid": {"encoder": "pixel", "decode": "medoid"},
           "ddoq_ae_medoid": {"encoder": "autoencoder", "decode": "medoid"},
           "delt_uniform": {"iterations": "500", "round_iters": "100", "early_late": "false"},
           "delt_randinit": {"iterations": "500", "round_iters": "100", "init": "random"},
           "e2d_explore_only": {"iterations": "200", "explore_frac": "1.0"},
           "e2d_noise": {"iterations": "200", "init": "noise"},
           "e2d_exploit_only": {"iterations": "200", "explore_frac": "0"},
           "e2d_no_early_stop": {"iterations": "200", "early_stop": "false"},
           "e2d_eps01": {"iterations": "200", "eps": "0.1"},  # a CIFAR teacher drives CE < 0.5 in tens of its
           "delt_noise": {"iterations": "500", "round_iters": "100", "init": "noise"},
           # BiLP for a distiller that reads no real image: match BN statistics of the (pruned) pool
           "sre2l_pool": {"iterations": "500", "bn_targets": "data"},
           # accuracy-vs-budget curve points (bench/cifar10/plot_curve.py)
           "e2d_it50": {"iterations": "50"}, "e2d_it100": {"iterations": "100"},
           "sre2l_it250": {"iterations": "250"}, "sre2l_it500": {"iterations": "500"}}
QUICK = {"iterations": "20", "round_iters": "5"}


def method_of(name: str) -> str:
    return name.split("_")[0]


def make_run(name, ipc, a, dev, teacher, test, runs: Path | None = None) -> tuple[str, Path]:
    """(tag, run folder) of one distilled set at its benchmark budget, distilled unless it exists."""
    settings = dict(BUDGETS.get(name, {}))
    if a.quick:
        settings.update({k: v for k, v in QUICK.items() if k in settings})
    tag = f"{name}_ipc{ipc}" + (f"_{Path(a.subset).stem}" if a.subset else "") + \
        (f"_seed{a.distill_seed}" if a.distill_seed else "")
    run = (runs or a.out / "runs") / tag
    if not (run / "data.pt").is_file():
        distill(DistillConfig(method=method_of(name), ipc=ipc, data=a.data, teacher=teacher_arg(a.teacher),
                              subset=a.subset, seed=a.distill_seed, settings=settings), run, dev,
                progress=not a.quiet)
    if read_json(run / "metrics.json").get("diversity_cos") is None:   # a run made without a teacher
        ds = read_run(run)
        update_metrics(run, diversity_cos=diversity(teacher, test.normalize(ds.images.to(dev)), ds.labels.to(dev)))
    return tag, run


def run_one(name, ipc, a, dev, teacher, test) -> dict:
    tag, run = make_run(name, ipc, a, dev, teacher, test)
    ds = read_run(run)
    for labels in a.labels:
        cfg = EvalConfig(archs=tuple(a.archs), seeds=a.seeds, label_mode=labels, epochs=a.epochs,
                         protocol=preset(a.protocol))
        evaluate_set(ds, test, teacher, cfg, dev, run=run, progress=not a.quiet)
    write_report(run)
    row = row_of(run, a)
    save_json(row, a.out / f"{tag}.json")
    return row


def row_of(run: Path, a) -> dict:
    """A table row from a run folder alone (its config and metrics): every protocol at --epochs, also
    ones run by earlier commands, with however many student seeds are stored so far (the table says n)."""
    d, m = read_json(run / "config.json")["distill"], read_json(run / "metrics.json")
    seed = d["seed"]   # synthesis draw: rows differing only in it form one draw group
    return {"set": run.name, "method": run.name.split(f"_ipc{d['ipc']}")[0], "ipc": d["ipc"],
            "settings": d["settings"], "distill_seed": seed,
            "draw_group": run.name.removesuffix(f"_seed{seed}") if seed else run.name,
            **{k: m.get(k) for k in ("synthesis_wall_s", "diversity_cos", "image_updates", "teacher_image_passes",
                                      "hard_after_explore", "quantization_error", "random_quantization_error")},
            "results": {k: summarize_entry(e) for k, e in m.get("evaluation", {}).items()
                        if f"/e{a.epochs}-" in k and e["seeds"]}}


def markdown(rows: list[dict], a) -> str:
    keys = sorted({k for r in rows for k in r["results"]}, key=lambda k: ("/soft/" not in k, k))  # soft first
    base = rows + [read_json(f) for f in sorted(a.baseline.glob("random_ipc*.json")) if a.baseline != a.out]
    floor = {(r["ipc"], k): r["results"][k]["mean"] for r in base
             if r["method"] == "random" and not r.get("distill_seed") for k in r["results"]}
    qe = any(r.get("quantization_error") is not None for r in rows)  # ddoq rows: the quantity it minimises
    proto = {k.split("-")[0]: k for k in keys}                       # "convnet3/soft/e300" -> full key
    gaps = [(proto[p], proto[p.replace("/soft/", "/hard/")]) for p in proto
            if "/soft/" in p and p.replace("/soft/", "/hard/") in proto]
    head = ["set", "synthesis s", "teacher passes", "diversity (cos ↓)"] + \
        ["quantization error (centres / random real)"] * qe + \
        [f"{k.split('-')[0]} % (n seeds)" for k in keys] + \
        [f"soft − hard ({ks.split('/')[0]})" for ks, _ in gaps] + \
        [f"Δ vs random ({k.split('-')[0]})" for k in keys] + [f"eval s/seed ({keys[0].split('-')[0]})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        passes = r.get("teacher_image_passes")
        cells = [r["set"], f"{r['synthesis_wall_s']:.0f}", f"{passes}" if passes else "–",
                 f"{r['diversity_cos']}" if r["diversity_cos"] else ""]
        if qe:
            cells.append(f"{r['quantization_error']:.1f} / {r['random_quantization_error']:.1f}"
                         if r.get("quantization_error") is not None else "")
        for k in keys:
            e = r["results"].get(k)
            cells.append("" if not e else f"{e['mean']:.2f} (n=1)" if e["n"] == 1 else
                         f"{e['mean']:.2f} ± {e['std']:.2f} (n={e['n']})")
        for ks, kh in gaps:
            es, eh = r["results"].get(ks), r["results"].get(kh)
            cells.append(f"{es['mean'] - eh['mean']:+.2f}" if es and eh else "")
        for k in keys:
            e, f = r["results"].get(k), floor.get((r["ipc"], k))
            cells.append(f"{e['mean'] - f:+.2f}" if e and f is not None else "")
        e0 = r["results"].get(keys[0])
        cells.append(f"{e0['wall_s_per_seed']:.0f}" if e0 else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += draws_table(rows, keys[0])
    budgets = "; ".join(f"{m}: " + (", ".join(f"{k}={v}" for k, v in st.items()) or "defaults")
                        for m, st in {r["method"]: r["settings"] for r in rows}.items())
    lines += ["", f"Students: {a.epochs} epochs, AdamW 1e-3 cosine, batch 64, RRC+flip, τ=4 for soft labels; "
              f"final-epoch accuracy, mean ± std over n student seeds (one synthesis draw per row). "
              f"Budgets: {budgets}. "
              f"Teacher: {a.teacher_info}."]
    return "\n".join(lines)


def draws_table(rows: list[dict], key: str) -> list[str]:
    """Sets synthesised more than once (--distill-seed): the spread across draws, which a single row's
    student-seed ± does not show."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if key in r["results"]:
            groups.setdefault(r.get("draw_group", r["set"]), []).append(r)
    lines = []
    for g, rs in groups.items():
        if len(rs) > 1:
            means = [r["results"][key]["mean"] for r in sorted(rs, key=lambda r: r.get("distill_seed", 0))]
            per = ", ".join(f"{m:.2f} (n={r['results'][key]['n']})" for m, r in zip(means, rs))
            lines.append(f"| {g} | {len(means)} | {statistics.fmean(means):.2f} ± {statistics.stdev(means):.2f} "
                         f"| {per} |")
    if not lines:
        return []
    return ["", f"Across synthesis draws ({key.split('-')[0]}): mean ± std of the draws' means.", "",
            "| set | draws | acc % | per draw (seed 0, 1, …) |", "|---|---|---|---|", *lines]


def teacher_arg(teacher) -> str | list[str]:
    """A --teacher value (one path or several) for DistillConfig: a string, or a list for an ensemble."""
    return one_or_list([str(p) for p in listed(teacher)])


def load_inputs(a, dev) -> tuple:
    """(teacher or ensemble, test split normalised with its statistics); sets a.teacher_info,
    a.teacher_acc (the first teacher's) and a.teacher_ids (members' hashes: part of an ensemble's
    evaluation keys) for the tables."""
    paths = listed(teacher_arg(a.teacher))
    teacher, ck = load_teachers(paths, device=dev)
    infos = [(c["arch"], c.get("test_acc")) for c in [ck] + [load_checkpoint(p)[1] for p in paths[1:]]]
    a.teacher_info = " + ".join(f"{arch} {100 * acc:.1f} % test" if acc else arch for arch, acc in infos)
    a.teacher_acc = ck.get("test_acc")
    a.teacher_ids = tuple(model_hash(m) for m in teacher.members) if len(paths) > 1 else ()
    return teacher, load_data(a.data, "test", stats=(tuple(ck["mean"]), tuple(ck["std"])))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--teacher", type=Path, default=ROOT / "teacher_convnet3_cifar10.pt")
    ap.add_argument("--methods", nargs="+", default=["random", "rded", "sre2l", "delt", "e2d", "ddoq"])
    ap.add_argument("--ipc", type=int, nargs="+", default=[10])
    ap.add_argument("--archs", nargs="+", default=["convnet3"])
    ap.add_argument("--labels", nargs="+", default=["soft", "hard"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--protocol", default="ddkit-v1", help="student protocol (the stored tables: ddkit-v1, "
                    "ddkit's default when they were measured)")
    ap.add_argument("--distill-seed", type=int, default=0,
                    help="synthesis seed (which real images, noise, crops); students' seeds are --seeds")
    ap.add_argument("--subset", help="a `ddkit select` index file: distill from the pruned data (BiLP)")
    ap.add_argument("--quick", action="store_true", help="tiny budgets, 1 seed, 20 student epochs")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cifar10")
    ap.add_argument("--baseline", type=Path, default=HERE / "results" / "cifar10",
                    help="folder whose random_ipc*.json rows give 'Δ vs random' when --methods has no random")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="only rebuild table.md from the rows in --out")
    a = ap.parse_args()
    if a.quick:
        a.seeds, a.epochs, a.out = 1, 20, a.out.with_name(a.out.name + "_quick")
    dev = resolve_device(a.device)
    teacher, test = load_inputs(a, dev)
    if a.table_only:  # rebuild rows and table from every run in --out (runs are not committed: rows are)
        rows = {p.parent.name: row_of(p.parent, a) for p in a.out.glob("runs/*/data.pt")}
        for tag, row in rows.items():
            save_json(row, a.out / f"{tag}.json")
        for f in a.out.glob("*.json"):
            rows.setdefault(f.stem, read_json(f))
        rows = sorted(rows.values(), key=lambda r: (r["ipc"], r["method"] != "random", r["set"]))
        with atomic_path(a.out / "table.md") as tmp:
            tmp.write_text(markdown(rows, a) + "\n")
        print(markdown(rows, a))
        return
    rows, t0 = [], time.time()
    for ipc in a.ipc:
        for name in a.methods:
            rows.append(run_one(name, ipc, a, dev, teacher, test))
            table = markdown(rows, a)
            with atomic_path(a.out / "table.md") as tmp:     # written as it goes
                tmp.write_text(table + "\n")
            print(f"[{time.time() - t0:.0f} s] {rows[-1]['set']} done", flush=True)
    print(table)


if __name__ == "__main__":
    tune_malloc()
    torch.set_float32_matmul_precision("high")
    main()
