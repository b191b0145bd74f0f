"""CIFAR-10 IPC10: the same distilled sets under the field's evaluation protocols, side by side.

Sets: random real (2 synthesis draws), rded (2 draws), e2d (2 draws), delt, sre2l at bench/cifar10/cifar10.py's budgets,
in bench/cifar10/cifar10.py's run folders (bench/cifar10/results/cifar10/runs/<tag>: reused when that benchmark made them,
distilled otherwise, with the same tags so it reuses ours). Protocols (ddkit.protocols): ddkit, rded,
sre2l, ddranking; soft labels; ConvNet-3 teacher and student. For DD-Ranking's metrics, hard-label runs of
every set under ddranking, and the full real training set with hard labels under ddranking (HLR's
reference: the teacher's test accuracy, or with --full-epochs N an N-epoch ddranking-protocol run).
`ddkit`-protocol cells that bench/cifar10/cifar10.py already measured on the same set are read from its results
(see earlier_ddkit) instead of re-trained. Every finished student seed is stored in its run's metrics.json, so the
command resumes; rows go to bench/protocols/results/cifar10_protocols/<tag>.json and the tables to table.md.

    python bench/protocols/protocols.py                                  # the whole grid (CPU hours; resumable)
    python bench/protocols/protocols.py --protocols rded sre2l ddranking # ... with ddkit's cells from bench/cifar10/cifar10.py
    python bench/protocols/protocols.py --protocols rded --sets rded     # a slice of it
    python bench/protocols/protocols.py --table-only                     # rebuild rows and table.md from what is stored
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cifar10"))
from cifar10 import ROOT, load_inputs, make_run  # noqa: E402
from ddkit.data import load_data  # noqa: E402
from ddkit.evaluate import EvalConfig, evaluate_set, mean_std, summarize_entry  # noqa: E402
from ddkit.protocols import DEFAULT_EPOCHS, PRESETS, label_robustness, preset  # noqa: E402
from ddkit.rundir import DistilledSet, read_json, read_run  # noqa: E402
from ddkit.utils import atomic_path, resolve_device, save_json, tune_malloc  # noqa: E402

SETS = {"random": [0, 1], "rded": [0, 1], "e2d": [0, 1], "delt": [0], "sre2l": [0], "ddoq": [0]}  # name -> draws
ARCHS = ("convnet3", "resnet18")   # students
# Published CIFAR-10 IPC10 figures (docs/methods.md), best epoch as those papers report it
PUBLISHED = {"rded": "RDED, ConvNet-3: 50.2", "delt": "DELT, ResNet-18m: 43.0 (RDED on it: 37.1)"}
HARD = "ddranking"   # the protocol whose hard-label runs give HLR
# presets corrected after their stored cells were measured (the stored cells are kept and not re-trained, since
# they hold n seeds): named under the table; drop an entry once its column is measured again
EARLIER_PRESET = {"rded": "RDED's views, BN warm-up on the mixed batch and weight decay were corrected",
                  "ddranking": "its schedule was corrected to DD-Ranking's half cosine set per epoch"}


def epochs(a, name: str) -> int:
    """Student epochs under protocol `name`: --epochs, else the protocol's (edc 1000, the others 300)."""
    return a.epochs or DEFAULT_EPOCHS.get(name, 300)


def configs(a, name: str, labels: str, arch: str = "convnet3") -> EvalConfig:
    return EvalConfig(archs=(arch,), seeds=a.seeds, label_mode=labels, epochs=epochs(a, name),
                      protocol=preset(name), teachers=a.teacher_ids if labels == "soft" else ())


def cell(p: str, labels: str, arch: str) -> str:
    """A row's results key: `rded/soft` for ConvNet-3 students (the rows' first format), `rded/soft/resnet18`."""
    return f"{p}/{labels}" + ("" if arch == "convnet3" else f"/{arch}")


def evaluate_row(tag: str, run: Path, a, dev, teacher, test) -> dict:
    ds, done = read_run(run), row_of(tag, run, a)["results"]
    todo = [(p, "soft", arch) for arch in a.archs for p in a.protocols] + \
        [(HARD, "hard", arch) for arch in a.archs if HARD in a.protocols]
    for p, labels, arch in todo:
        if done.get(cell(p, labels, arch), {}).get("n", 0) < a.seeds:  # stored with enough seeds: not re-trained
            evaluate_set(ds, test, teacher if labels == "soft" else None, configs(a, p, labels, arch), dev, run=run,
                         progress=not a.quiet)
    return row_of(tag, run, a)


def row_of(tag: str, run: Path, a) -> dict:
    """A row from the run's stored evaluations: every protocol and student at its epochs, with the seeds
    stored so far; cells the run lacks come from the stored row of the same set (stored_cells), `ddkit`
    cells from bench/cifar10/cifar10.py's result of it (earlier_ddkit)."""
    d, m = read_json(run / "config.json")["distill"], read_json(run / "metrics.json")
    results = stored_cells(a, tag, m.get("diversity_cos"))
    for arch in ARCHS:
        for p in PRESETS:
            for labels in ("soft", "hard"):
                key = configs(a, p, labels, arch).key(arch)
                e = m.get("evaluation", {}).get(key)
                if e and e["seeds"]:
                    results[cell(p, labels, arch)] = summarize_entry(e)
                elif p == "ddkit" and (earlier := earlier_ddkit(a.runs.parent, tag, key, m.get("diversity_cos"))):
                    results[cell(p, labels, arch)] = earlier
    return {"set": tag, "method": tag.split("_ipc")[0], "draw": d["seed"], "diversity_cos": m.get("diversity_cos"),
            "results": results}


def same_set(a: float | None, b: float | None) -> bool:
    """Whether two teacher-feature diversities fingerprint the same set: within 5e-4 (another draw, synthesis
    or teacher moves it by 4e-3 or more in bench/cifar10/cifar10.py's draws; the same synthesis at another thread
    count, by float summation order: 1e-4 for the real-image methods, up to 6e-4 for sre2l, which optimises
    from noise, so its re-syntheses may fall either side of the bound)."""
    return a is not None and b is not None and abs(a - b) <= 5e-4


def stored_cells(a, tag: str, fingerprint) -> dict:
    """The cells of this set's stored row (OUT/<tag>.json) when measured on the same images: a run folder made
    again (a fresh machine) holds only what was evaluated since. Rows stored before they carried the
    fingerprint were matched to bench/cifar10/cifar10.py's set (their ddkit cells name it as source): its fingerprint."""
    row = read_json(a.out / f"{tag}.json")
    fp = row.get("diversity_cos")
    if fp is None and "source" in row.get("results", {}).get("ddkit/soft", {}):
        fp = read_json(a.runs.parent / f"{tag}.json").get("diversity_cos")
    if row.get("results") and fp is not None and not same_set(fp, fingerprint):
        # a run folder made again with another set (e.g. synthesis at another thread count): its row would
        # replace the stored one and drop the cells measured on the old set
        raise SystemExit(f"protocols.py: {a.runs / tag} holds another set than {a.out / tag}.json (teacher-feature "
                         f"diversity {fingerprint} vs {fp}); move that row away to measure this set")
    return dict(row.get("results", {})) if same_set(fp, fingerprint) else {}


def earlier_ddkit(folder: Path, tag: str, key: str, fingerprint) -> dict | None:
    """bench/cifar10/cifar10.py's stored ddkit-protocol result of this set (its rows beside the --runs folder),
    when that benchmark evaluated the same set: same tag and seed, and the same teacher-feature diversity
    (see same_set). Saves re-training students whose result is already measured; marked with its source."""
    old = read_json(folder / f"{tag}.json")
    if not same_set(old.get("diversity_cos"), fingerprint) or key not in old.get("results", {}):
        return None
    return {**old["results"][key], "source": str((folder / f"{tag}.json").resolve().relative_to(ROOT.parent))}


def full_hard(a, dev, test, train_now: bool) -> dict | None:
    """Full real training data, hard labels (HLR's reference): with --full-epochs N, a ddranking-protocol
    run of N epochs (resumable, in OUT/runs/full_real) when `train_now`, else that stored run; with
    --full-epochs 0, the teacher's own test accuracy (a ConvNet-3 trained on the full data with hard labels
    by the teacher recipe; DD-Ranking too trains this reference with a real-data recipe)."""
    folder = a.out / "runs" / "full_real"
    if a.full_epochs == 0:
        return {"mean": 100 * a.teacher_acc, "n": 1, "source": f"teacher ({a.teacher_info})"}
    if not train_now:
        e = read_json(folder / "metrics.json").get("evaluation", {})
        return next((summarize_entry(v) for v in e.values()), None)
    folder.mkdir(parents=True, exist_ok=True)
    train = load_data(a.data, "train")
    cfg = EvalConfig(seeds=1, label_mode="hard", epochs=a.full_epochs, protocol=preset(HARD))
    r = evaluate_set(DistilledSet(train.images, train.labels, train.classes), test, None, cfg, dev, run=folder,
                     progress=not a.quiet)
    return next(iter(r.values()))


def markdown(rows: list[dict], full: dict | None, a) -> str:
    cols = [(p, arch) for arch in ARCHS for p in PRESETS if any(cell(p, "soft", arch) in r["results"] for r in rows)]
    names = {c: c[0] + ("" if c[1] == "convnet3" else f" {c[1]}") for c in cols}

    def acc(r, k):
        return r["results"].get(k, {}).get("mean")

    def floor(k):  # random real: the mean over its synthesis draws
        vals = [acc(r, k) for r in rows if r["method"] == "random" and acc(r, k) is not None]
        return statistics.fmean(vals) if vals else None
    head = ["set"] + [f"{names[c]} % (n)" for c in cols] + [f"Δ vs random ({names[c]})" for c in cols] + \
        ["gains most under"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells, deltas = [r["set"]], {}
        for c in cols:
            e = r["results"].get(cell(c[0], "soft", c[1]))
            cells.append(f"{mean_std(e)} (n={e['n']})" if e else "")
        for c in cols:
            f, v = floor(cell(c[0], "soft", c[1])), acc(r, cell(c[0], "soft", c[1]))
            if f is not None and v is not None:
                deltas[names[c]] = v - f
            cells.append(f"{deltas[names[c]]:+.2f}" if names[c] in deltas else "")
        cells.append(max(deltas, key=deltas.get) if len(deltas) > 1 and r["method"] != "random" else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Δ vs random: against the mean of the random-real draws under the same protocol. Final-epoch "
              "accuracy, mean ± std over n student seeds, one synthesis draw per row."]
    if any("source" in e for r in rows for e in r["results"].values()):
        lines += ["ddkit-protocol cells: bench/cifar10/cifar10.py's measurement of the same set (README's main table; "
                  "the set matched by tag, seed and its teacher-feature fingerprint), not re-trained here."]
    for p in dict.fromkeys(c[0] for c in cols):
        if p in EARLIER_PRESET:
            also = " (and DD-Ranking's metrics below)" if p == HARD else ""
            lines += [f"{p} cells{also}: measured under the earlier {p} preset, before {EARLIER_PRESET[p]} "
                      f"(docs/protocols/audit.md; bench/presets/ re-measures some of them)."]
    lines += _ddranking_table(rows, full, floor) + _published_table(rows)
    store = [r["results"]["sre2l/soft"]["label_store_bytes"] for r in rows
             if "label_store_bytes" in r["results"].get("sre2l/soft", {})]
    if store:
        lines += ["", f"sre2l protocol FKD label store: {statistics.fmean(store) / 1e6:.2f} MB per set "
                  f"({epochs(a, 'sre2l')} epochs of views and fp16 logits)."]
    n_ep = ", ".join(f"{p} {epochs(a, p)}" for p in dict.fromkeys(c[0] for c in cols))
    lines += ["", f"Students: {', '.join(sorted({c[1] for c in cols}))}; epochs: {n_ep}; protocols as in README "
              f"§ Protocols. "
              f"Teacher: {a.teacher_info}."]
    return "\n".join(lines)


def _ddranking_table(rows, full, floor) -> list[str]:
    rand = floor(f"{HARD}/soft")
    if full is None or rand is None:
        return ["", "DD-Ranking metrics: need the full-data hard-label run (--full-epochs) and random real."]
    lines = ["", f"DD-Ranking metrics under its protocol (fractions; HLR's reference: full real data, hard "
             f"labels, {full['mean']:.2f} %, n={full['n']}, {full.get('source', 'ddranking protocol')}):", "",
             "| set | soft % | hard % | HLR ↓ | IOR ↑ | LRS ↑ |", "|---|---|---|---|---|---|"]
    for r in rows:
        s, h = r["results"].get(f"{HARD}/soft"), r["results"].get(f"{HARD}/hard")
        if s and h:
            m = label_robustness(s["mean"] / 100, h["mean"] / 100, rand / 100, full["mean"] / 100)
            lines.append(f"| {r['set']} | {s['mean']:.2f} | {h['mean']:.2f} | {m['hlr']:.4f} | {m['ior']:+.4f} "
                         f"| {m['lrs']:.4f} |")
    return lines


def _published_table(rows) -> list[str]:
    lines = ["", "rded protocol next to the papers (they report the best epoch, tested every 10 epochs; ours "
             "is selected on the test set too, and shown beside the final epoch):", "",
             "| set | final % | best epoch % (selected on test) | published |", "|---|---|---|---|"]
    for r in rows:
        e = r["results"].get("rded/soft")
        if e and r["method"] in ("rded", "delt", "random"):
            lines.append(f"| {r['set']} | {mean_std(e)} | {mean_std(e.get('best_selected_on_test'), '')} | "
                         f"{PUBLISHED.get(r['method'], '')} |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--teacher", type=Path, nargs="+", default=[ROOT / "teacher_convnet3_cifar10.pt"],
                    help="several: the sets are distilled against their ensemble and students learn its mean logits")
    ap.add_argument("--sets", nargs="+", default=[s for s in SETS if s != "ddoq"], choices=list(SETS))
    ap.add_argument("--protocols", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--archs", nargs="+", default=["convnet3"], choices=ARCHS, help="students")
    ap.add_argument("--draws", type=int, nargs="+", help="only these synthesis draws of each set (default: all "
                    "of them; --table-only always reads all)")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="student epochs (default: the protocol's: edc 1000, "
                    "the others 300)")
    ap.add_argument("--full-epochs", type=int, default=0, help="epochs of a full-data hard-label run under "
                    "ddranking (HLR's reference; 300 is ~15 CPU hours); 0: the teacher's test accuracy")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny synthesis budgets (with --runs and "
                    "--out elsewhere)")
    ap.add_argument("--runs", type=Path, default=ROOT / "cifar10" / "results" / "cifar10" / "runs",
                    help="run folders (bench/cifar10/cifar10.py's, so each set is distilled once)")
    ap.add_argument("--out", type=Path, default=ROOT / "protocols" / "results" / "cifar10_protocols")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--table-only", action="store_true")
    a = ap.parse_args()
    a.subset = None
    dev = resolve_device(a.device)
    teacher, test = load_inputs(a, dev)
    rows, t0 = [], time.time()
    for name in a.sets:
        for draw in SETS[name]:
            if a.draws is not None and draw not in a.draws and not a.table_only:
                continue
            a.distill_seed = draw
            if a.table_only:  # rows from the run folders present (seeds stored so far), else the stored rows
                tag = f"{name}_ipc{a.ipc}" + (f"_seed{draw}" if draw else "")
                if (a.runs / tag / "metrics.json").is_file():
                    rows.append(row_of(tag, a.runs / tag, a))
                    save_json(rows[-1], a.out / f"{tag}.json")
                elif (a.out / f"{tag}.json").is_file():
                    rows.append(read_json(a.out / f"{tag}.json"))
                continue
            tag, run = make_run(name, a.ipc, a, dev, teacher, test, runs=a.runs)
            rows.append(evaluate_row(tag, run, a, dev, teacher, test))
            save_json(rows[-1], a.out / f"{tag}.json")
            print(f"[{time.time() - t0:.0f} s] {tag} done", flush=True)
    full = full_hard(a, dev, test, train_now=HARD in a.protocols and not a.table_only)
    table = markdown(rows, full, a)
    with atomic_path(a.out / "table.md") as tmp:
        tmp.write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    tune_malloc()
    torch.set_float32_matmul_precision("high")
    main()
