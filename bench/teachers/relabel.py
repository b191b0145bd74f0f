"""Stored CIFAR-10 sets relabelled by another teacher: the same images, students taught by a teacher
other than the one the set was distilled against. Each set is copied from RUNS/<set> without its students
(their metrics stay with the original) into OUT/runs/<set>_labels_<teacher>, and `ddkit evaluate` trains
--arch students (ConvNet-3 by default) there from TEACHER's soft labels; OUT/<set>_labels_<teacher>_<protocol>
[_<arch>].json keeps the command and the stored evaluation. Resumable: the copy is kept and `ddkit evaluate` skips
stored seeds. With the set's own teacher it gives a set fresh students, e.g. further ResNet-18 seeds.

    python bench/teachers/relabel.py --sets e2d_ipc10 random_ipc10_seed1 delt_ipc10 \
        --teacher bench/teacher_convnet3_e4_cifar10.pt
    python bench/teachers/relabel.py --sets e2d_ipc10 --teacher bench/teacher_convnet3_cifar10.pt --arch resnet18 --seeds 2

Budget on 2 CPU cores, two jobs side by side at 1 thread each: an `edc` student (1000 epochs, final EMA, no test
passes during training) ~8.5 min, a ResNet-18 one ~62 min.
"""
import argparse
import shutil
import subprocess
from pathlib import Path

from ddkit.rundir import read_json
from ddkit.utils import save_json


def copy_set(src: Path, dst: Path) -> None:
    """The set's files without its students: metrics.json without `evaluation`, no student checkpoints (dot
    files) or FKD label stores (fkd-*), which belong to the original's teacher."""
    if dst.exists():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.name.startswith((".", "fkd-")) or f.name == "metrics.json":
            continue
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
    metrics = read_json(src / "metrics.json")
    metrics.pop("evaluation", None)
    save_json(metrics, tmp / "metrics.json")
    tmp.rename(dst)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", required=True, help="run folder names under --runs")
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--protocol", default="edc")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arch", default="convnet3", help="the students")
    ap.add_argument("--runs", type=Path, default=Path("bench/cifar10/results/cifar10/runs"))
    ap.add_argument("--data", default="../shared/datasets/cifar10")
    ap.add_argument("--out", type=Path, default=Path("bench/teachers/results/cifar10_strong/relabel"))
    a = ap.parse_args()
    teacher = a.teacher.stem.removeprefix("teacher_").removesuffix("_cifar10")
    for name in a.sets:
        src, dst = a.runs / name, a.out / "runs" / f"{name}_labels_{teacher}"
        if not (src / "data.pt").exists():
            raise SystemExit(f"relabel.py: {src} holds no distilled set (data.pt)")
        copy_set(src, dst)
        pset = ["--pset", "eval_every=0"] if a.protocol == "edc" else []  # edc: final EMA only, no test passes
        cmd = ["ddkit", "evaluate", str(dst), "--seeds", str(a.seeds), "--labels", "soft", "--protocol", a.protocol,
               "--arch", a.arch, *pset, "--teacher", str(a.teacher), "--data", a.data, "--quiet"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        metrics = read_json(dst / "metrics.json")
        save_json({"set": f"{name} ({src}, teacher-feature diversity {metrics.get('diversity_cos')}), its "
                          f"students' soft labels from {a.teacher}",
                   "command": " ".join(cmd), "evaluation": metrics["evaluation"]},
                  a.out / f"{name}_labels_{teacher}_{a.protocol}{'' if a.arch == 'convnet3' else '_' + a.arch}.json")


if __name__ == "__main__":
    main()
