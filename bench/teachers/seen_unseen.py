"""Do a teacher's soft labels teach worse on images it was trained on? Random real IPC sets are drawn from the
teacher's own training data, and a teacher that nearly memorised them (airnet: 97.8 % on training images against
90.5 % on test) may label them differently from images it never saw. Split the training set in two halves per
class (A, B; seed 0), train each teacher on A only, draw the same-size random set from A (seen) and from B
(unseen), and train ConvNet-3 students on each from that teacher's soft labels under ddkit's protocol.

    python bench/teachers/seen_unseen.py [--archs airnet convnet3] [--draws 1] [--seeds 1] [--out bench/teachers/results/cifar10_seen_unseen]

Each step is a `ddkit` command, skipped when its output exists (resumable; teachers resume from their own
checkpoints); OUT/results.json is rewritten after every student, so one process per
--archs may run side by side. Budget on 2 CPU cores: an airnet teacher
(10 epochs on 25k images) ~30 min at 2 threads, a ConvNet-3 teacher (12 epochs) ~20 min, a student ~3 min.
"""
import argparse
import json
import subprocess
from pathlib import Path

import torch

from ddkit.data import load_data
from ddkit.utils import save_json, save_torch

RECIPES = {"airnet": ["--recipe", "airnet", "--epochs", "10"], "convnet3": ["--epochs", "12"]}


def halves(data: str, out: Path, seed: int = 0) -> dict[str, Path]:
    """Subset files A and B: a random half of every class each, disjoint, together the whole training set."""
    files = {side: out / f"half_{side}.pt" for side in "AB"}
    if all(f.exists() for f in files.values()):
        return files
    labels = load_data(data, "train").labels
    g = torch.Generator().manual_seed(seed)
    parts = {"A": [], "B": []}
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        parts["A"].append(idx[:len(idx) // 2])
        parts["B"].append(idx[len(idx) // 2:])
    for side, f in files.items():
        save_torch({"indices": torch.cat(parts[side]).sort().values, "num_samples": len(labels),
                    "criterion": f"random half {side} (seed {seed})"}, f)
    return files


def run(cmd: list[str], done: bool = False) -> None:
    if not done:
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/datasets/cifar10")
    ap.add_argument("--archs", nargs="+", default=["airnet", "convnet3"], choices=sorted(RECIPES))
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--draws", type=int, default=1, help="random sets per side (distill seeds 0, 1, ...)")
    ap.add_argument("--out", default="bench/teachers/results/cifar10_seen_unseen")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    files = halves(a.data, out)
    for arch in a.archs:
        teacher = out / f"teacher_{arch}_A.pt"
        run(["ddkit", "teacher", "--data", a.data, "--arch", arch, *RECIPES[arch], "--subset", str(files["A"]),
             "--out", str(teacher), "--quiet"], teacher.exists())
        for side in "AB":
            for draw in range(a.draws):
                student(a, arch, teacher, side, files[side], draw, out)


def student(a, arch: str, teacher: Path, side: str, subset: Path, draw: int, out: Path) -> None:
    """Random set `draw` of one half, its ConvNet-3 students from `teacher`'s soft labels, into results.json."""
    set_dir = out / "runs" / (f"random_ipc{a.ipc}_{side}_{arch}" + (f"_seed{draw}" if draw else ""))
    run(["ddkit", "distill", "--method", "random", "--ipc", str(a.ipc), "--seed", str(draw), "--data", a.data,
         "--subset", str(subset), "--teacher", str(teacher), "--out", str(set_dir), "--quiet"],
        (set_dir / "metrics.json").exists())
    metrics = json.loads((set_dir / "metrics.json").read_text())
    key = next((k for k in metrics.get("evaluation", {}) if k.startswith("convnet3/soft/")), None)
    if key is None or len(metrics["evaluation"][key]["seeds"]) < a.seeds:
        run(["ddkit", "evaluate", str(set_dir), "--seeds", str(a.seeds), "--labels", "soft",
             "--teacher", str(teacher), "--data", a.data, "--quiet"])
        metrics = json.loads((set_dir / "metrics.json").read_text())
    key, cell = next((k, v) for k, v in metrics["evaluation"].items() if k.startswith("convnet3/soft/"))
    accs = torch.tensor([round(100 * s["acc"], 2) for s in cell["seeds"].values()])
    ck = torch.load(teacher, weights_only=True)
    results_path = out / "results.json"
    # re-read before writing: one process per arch may run side by side
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results[f"{arch}/{side}/draw{draw}"] = {
        "teacher": str(teacher), "teacher_test_acc": ck["test_acc"], "teacher_train_time_s": ck["train_time_s"],
        "images_from": "A (the teacher's training half)" if side == "A" else "B (held out from the teacher)",
        "draw": draw, "key": key, "accs": [round(x, 2) for x in accs.tolist()], "mean": round(accs.mean().item(), 2),
        "std": round(accs.std().item(), 2) if len(accs) > 1 else 0.0}
    save_json(results, results_path)
    print(f"{arch} teacher, random draw {draw} from {side}: {accs.mean():.2f} % (n={len(accs)})", flush=True)


if __name__ == "__main__":
    main()
