"""Scale benchmark: peak memory and time of the ddkit CLI on ImageNet-shaped folders, 10k -> 100k
training images and 10 -> 1,000 classes, with a ResNet-18 at 224 px and tiny budgets.

    python bench/scale/scale.py                       # the CPU ladder (hours on 2 cores), results in bench/scale/results/scale/
    python bench/scale/scale.py --quick               # smoke test: tiny 32-px folders, today's memory backend, minutes
    python bench/scale/scale.py --table               # only rewrite table.md from the stored measurements
    bash bench/scale/scale_gpu.sh                     # the same at full ImageNet-1K IPC10 budgets on a CUDA device

Data: bench/scale/scale_data.py makes the folders under a cache directory ($DDKIT_CACHE/bench_scale), never the repo.
Every measurement is one `python -m ddkit ...` subprocess: wall time, peak RSS of its largest process (the
kernel's ru_maxrss, from wait4 in a small launcher) and peak PSS of its whole process tree (DataLoader workers included; /proc
sampled twice a second, shared pages counted once). One JSON per measurement, written as soon as it ends:
a rerun skips those that succeeded, so an interrupted ladder resumes. Command lines are templates (`--show`
prints them, `--templates FILE.json` replaces any of them); the data arguments default to the streaming
backend, `--data-backend stream --image-size 224` (`--backend-args` to change them). The `throughput` step
measures, in a child process, decoding with a DataLoader (torchvision ImageFolder, RandomResizedCrop(224) +
flip, the work a streaming loader does per image) against the teacher's forward and forward+backward.

Teachers: distill/select/evaluate use a randomly initialised ResNet-18 imported with `ddkit teacher --import`
(their cost does not depend on the weights; e2d runs with early_stop=false, so its iterations are the
budget's); `teacher_train` measures training one. At `--budget full` the trained teacher is used.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_data import dataset_name, default_root, generate  # noqa: E402

HERE = Path(__file__).resolve().parent
# (classes, training images per class): 10k images over 10 / 100 / 1,000 classes, then 30k and 100k at 1,000
LADDER = [(10, 1000), (100, 100), (1000, 10), (1000, 30), (1000, 100)]
QUICK_LADDER = [(3, 8), (3, 16)]

COMMON = "--device {device} --quiet"
TEMPLATES = {
    "teacher_import": "{ddkit} teacher --import torchvision:resnet18 --teacher-weights {weights} --data {data} "
                      "--image-size {size} --out {work}/teacher.pt {backend} {common}",
    "select_random": "{ddkit} select --data {data} --criterion random --keep {keep} --out {work}/random.pt "
                     "{backend} {common}",
    "teacher_train": "{ddkit} teacher --data {data} --arch resnet18 --epochs {teacher_epochs} --subset "
                     "{work}/random.pt --batch-size {batch} --no-cache --out {work}/trained.pt {backend} {common}",
    "select_loss": "{ddkit} select --data {data} --criterion loss --teacher {teacher} --keep 0.5 --out "
                   "{work}/loss.pt {backend} {common}",
    "select_proxy": "{ddkit} select --data {data} --criterion loss --proxy-epochs 1 --proxy-batch {batch} --keep 0.5 "
                    "--out {work}/proxy.pt {backend} {common}",
    "distill_random": "{ddkit} distill --method random --ipc {ipc} --data {data} --out {work}/random --overwrite "
                      "--classes-per-group {group} {backend} {common}",
    "distill_e2d": "{ddkit} distill --method e2d --ipc {ipc} --data {data} --teacher {teacher} --out {work}/e2d "
                   "--overwrite --classes-per-group {group} --set iterations={e2d_iters} --set early_stop=false "
                   "{backend} {common}",
    "distill_sre2l": "{ddkit} distill --method sre2l --ipc {ipc} --data {data} --teacher {teacher} --out "
                     "{work}/sre2l --overwrite --classes-per-group {group} --set iterations={sre2l_iters} "
                     "{backend} {common}",
    "distill_rded": "{ddkit} distill --method rded --ipc {ipc} --data {data} --teacher {teacher} --out {work}/rded "
                    "--overwrite --classes-per-group {group} --set candidates={rded_candidates} --set "
                    "crops={rded_crops} {backend} {common}",
    "distill_ddoq": "{ddkit} distill --method ddoq --ipc {ipc} --data {data} --teacher {teacher} --out {work}/ddoq "
                    "--overwrite --set encoder=teacher --set max_samples={ddoq_samples} --set restarts=1 "
                    "{backend} {common}",
    "evaluate": "{ddkit} evaluate {work}/random --teacher {teacher} --arch resnet18 --epochs {eval_epochs} --seeds 1 "
                "--json {work}/evaluate.json {backend} {common}",
    "throughput": "{python} {bench}/scale.py --throughput {data} --size {size} --batch {batch} --device {device} "
                  "--workers {workers}",
}
# tiny budgets on CPU; `full` is ImageNet-1K IPC10 as the papers run it (E2D 200 iterations, SRe2L 1k, batch 100)
BUDGETS = {
    "quick": dict(ipc=1, group=3, e2d_iters=2, sre2l_iters=2, rded_candidates=4, rded_crops=1, ddoq_samples=8,
                  keep=0.25, teacher_epochs=1, eval_epochs=1, batch=8, size=32, teacher="{work}/teacher.pt"),
    "cpu": dict(ipc=1, group=10, e2d_iters=3, sre2l_iters=3, rded_candidates=4, rded_crops=2, ddoq_samples=20,
                keep=0.02, teacher_epochs=1, eval_epochs=1, batch=32, size=224, teacher="{work}/teacher.pt"),
    "full": dict(ipc=10, group=10, e2d_iters=200, sre2l_iters=1000, rded_candidates=300, rded_crops=5,
                 ddoq_samples=0, keep=1.0, teacher_epochs=5, eval_epochs=10, batch=100, size=224,
                 teacher="{work}/trained.pt"),
}
STEPS = list(TEMPLATES)
# what a step reads from an earlier step: (path, the step that writes it). A missing input (a fresh cache, or a
# ladder run step by step) is made first by its step, unmeasured, so each step can be measured on its own.
# evaluate trains students on the random set: a student's cost depends on the set's size, not its content.
_TEACHER = ("{teacher}", None)  # written by teacher_import, or teacher_train at --budget full
NEEDS = {"teacher_train": [("{work}/random.pt", "select_random")], "select_loss": [_TEACHER],
         "evaluate": [_TEACHER, ("{work}/random/metrics.json", "distill_random")],
         **{f"distill_{m}": [_TEACHER] for m in ("e2d", "sre2l", "rded", "ddoq")}}


# ---------------------------------------------------------------- measuring one command
def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _pss_kb(pid: int) -> int:
    """Proportional set size (shared pages split between their users); RSS where smaps_rollup is missing."""
    for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1])
        except OSError:
            continue
    return 0


class TreeSampler(threading.Thread):
    """Peak summed PSS of the descendants of a process, sampled every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak_kb, self.done = pid, every, 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            pids, total = _children(self.pid), 0
            while pids:
                p = pids.pop()
                total += _pss_kb(p)
                pids += _children(p)
            self.peak_kb = max(self.peak_kb, total)
            self.done.wait(self.every)


# A process's ru_maxrss starts at the RSS of the process it was forked from (exec keeps the maximum), so the
# command is spawned by this small launcher (python -S: a few MB), never by the harness, whose imports would be
# counted in every measurement. The launcher reports the command's own rusage (wait4: its largest process).
LAUNCHER = ("import json, os, sys; p = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ); "
            "_, st, ru = os.wait4(p, 0); open(sys.argv[1], 'w').write(json.dumps("
            "[os.waitstatus_to_exitcode(st), ru.ru_maxrss, ru.ru_utime + ru.ru_stime]))")


def measure(argv: list[str], log: Path, env: dict | None) -> dict:
    """Run one command; its wall/CPU time and memory peaks."""
    log.parent.mkdir(parents=True, exist_ok=True)
    usage = log.with_suffix(".rusage")
    usage.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, str(usage), *argv], stdout=f,
                             stderr=subprocess.STDOUT, env=env)
    sampler = TreeSampler(p.pid)
    sampler.start()
    p.wait()
    wall = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    rc, maxrss_kb, cpu = json.loads(usage.read_text()) if usage.is_file() else (p.returncode, 0, 0.0)
    return {"rc": rc, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(maxrss_kb / 1024, 1),
            "peak_tree_pss_mb": round(sampler.peak_kb / 1024, 1)}


def _last_json(text: str):
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _run_metrics(run: Path) -> dict:
    """What a distill run says about its own cost (metrics.json), in the table's terms."""
    f = run / "metrics.json"
    if not f.is_file():
        return {}
    m = json.loads(f.read_text())
    groups = m.get("groups", [])
    return {k: v for k, v in {
        "synthesis_wall_s": m.get("synthesis_wall_s"), "driver_wall_s": m.get("driver_wall_s"),
        "num_images": m.get("num_images"), "num_real": m.get("num_real"), "precision": m.get("precision"),
        "teacher_image_passes": m.get("teacher_image_passes"),
        "recover_wall_s": round(sum(g.get("recover_wall_s", 0) for g in groups), 2) if groups else None,
        "iterations_run": sum(g.get("iterations_run", 0) for g in groups) if groups else None,
        "groups": len(groups)}.items() if v is not None}


# ---------------------------------------------------------------- the ladder
def random_weights(path: Path, classes: int) -> Path:
    """A randomly initialised torchvision ResNet-18 state dict with `classes` outputs (seeded, made once)."""
    if not path.is_file():
        import torch
        import torchvision
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.resnet18(num_classes=classes).state_dict(), path)
    return path


def fill(template: str, values: dict) -> list[str]:
    text = template.format(**values)
    return shlex.split(text.format(**values))  # a second pass for values that name others ({work} in {teacher})


def run_ladder(a) -> None:
    budget = dict(BUDGETS[a.budget])
    templates = {**TEMPLATES, **(json.loads(Path(a.templates).read_text()) if a.templates else {})}
    steps = a.steps or STEPS
    unknown = [s for s in steps if s not in templates]
    if unknown:
        sys.exit(f"unknown steps {unknown}; known: {', '.join(templates)}")
    env = {**os.environ, "DDKIT_CACHE": str(a.root / "ddkit_cache"), "PYTHONPATH": os.pathsep.join(
        [str(HERE.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    for classes, per_class in a.ladder:
        name = dataset_name(classes, per_class)
        data = generate(a.root, classes, per_class, a.test_per_class, workers=a.workers,
                        size=(budget["size"],) * 2 if a.quick else None)
        work = a.root / "runs" / a.budget / name
        values = {**budget, "ddkit": f"{shlex.quote(sys.executable)} -m ddkit", "python": shlex.quote(sys.executable),
                  "bench": str(HERE), "data": str(data), "work": str(work), "device": a.device,
                  "workers": a.workers, "backend": a.backend_args, "common": COMMON.format(device=a.device),
                  "weights": str(random_weights(a.root / "weights" / f"resnet18_random_{classes}.pth", classes))}
        teacher_step = "teacher_train" if budget["teacher"].endswith("trained.pt") else "teacher_import"

        def prepare(step: str) -> None:
            for path, maker in NEEDS.get(step, []):
                maker = maker or teacher_step
                if not Path(fill(path, values)[0]).exists():
                    prepare(maker)
                    print(f"[{name}] {step} needs {maker} (unmeasured)", flush=True)
                    log = a.root / "logs" / a.budget / name / f"{maker}.prereq.log"
                    log.parent.mkdir(parents=True, exist_ok=True)
                    with open(log, "w") as f:
                        if subprocess.run(fill(templates[maker], values), stdout=f, stderr=subprocess.STDOUT,
                                          env=env).returncode:
                            sys.exit(f"[{name}] {maker} failed, see {log}")

        for step in steps:
            out = a.out / name / f"{step}.json"
            if out.is_file() and json.loads(out.read_text()).get("rc") == 0:
                continue
            prepare(step)
            argv = fill(templates[step], values)
            print(f"[{name}] {step}: {shlex.join(argv)}", flush=True)
            log = a.root / "logs" / a.budget / name / f"{step}.log"
            res = measure(argv, log, env)
            text = log.read_text(errors="replace")
            rec = {"dataset": name, "classes": classes, "per_class": per_class, "num_train": classes * per_class,
                   "step": step, "budget": a.budget, "command": shlex.join(argv),
                   **res, "output": _last_json(text),
                   "error": None if res["rc"] == 0 else (text.strip().splitlines() or [""])[-1][:300],
                   "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "host": platform.node()},
                   "commit": commit}
            if step.startswith("distill_"):
                rec["run"] = _run_metrics(work / step.split("_", 1)[1])
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(rec, indent=1).replace(str(a.root), "$ROOT") + "\n")
            os.replace(tmp, out)
            print(f"    rc={res['rc']} wall={res['wall_s']} s rss={res['peak_rss_mb']} MB "
                  f"tree={res['peak_tree_pss_mb']} MB" + (f"  {rec['error']}" if rec["error"] else ""), flush=True)


# ---------------------------------------------------------------- loader vs teacher throughput (child process)
def throughput(a) -> None:
    """Images/s of decoding (DataLoader workers) and of the teacher's forward and forward+backward."""
    import torch
    import torchvision
    from torchvision import transforms as T
    from torch.utils.flop_counter import FlopCounterMode
    dev = torch.device(a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    tf = T.Compose([T.RandomResizedCrop(a.size), T.RandomHorizontalFlip(), T.PILToTensor()])
    ds = torchvision.datasets.ImageFolder(str(Path(a.throughput) / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers,
                                         pin_memory=dev.type == "cuda", persistent_workers=False)
    n, t0, budget = 0, None, max(4 * a.batch, 200)
    for i, (x, _) in enumerate(loader):
        if i == 1:  # after the workers' start-up
            t0, n = time.perf_counter(), 0
        n += len(x)
        if t0 is not None and n >= budget:
            break
    decode = n / (time.perf_counter() - t0) if t0 and n else float("nan")
    model = torchvision.models.resnet18(num_classes=len(ds.classes)).to(dev).eval()
    model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=torch.channels_last)

    def timed(fn, reps=3) -> float:
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return reps * a.batch / (time.perf_counter() - t)

    def fwd():
        with torch.no_grad():
            model(x)

    def fwd_bwd():  # a synthesis step: gradient to the pixels through the frozen teacher
        xi = x.clone().requires_grad_(True)
        model(xi).logsumexp(1).sum().backward()
    flops = {}
    for k, fn in (("forward", fwd), ("forward_backward", fwd_bwd)):
        with FlopCounterMode(display=False) as fc:
            fn()
        flops[k] = fc.get_total_flops() / a.batch
    print(json.dumps({"device": str(dev), "batch": a.batch, "size": a.size, "workers": a.workers,
                      "decode_img_per_s": round(decode, 1), "forward_img_per_s": round(timed(fwd), 1),
                      "forward_backward_img_per_s": round(timed(fwd_bwd), 1),
                      "gflop_per_image": {k: round(v / 1e9, 3) for k, v in flops.items()}}))


# ---------------------------------------------------------------- the report
def _load(out: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(out.glob("*/*.json"))]


def _fmt(v, spec="{:.1f}") -> str:
    return "–" if v is None else spec.format(v)


def write_table(out: Path, gpu_tflops: float, gpu_util: float, gpu_out: Path | None) -> str:
    recs = _load(out)
    ok = [r for r in recs if r["rc"] == 0]
    datasets = sorted({(r["classes"], r["num_train"], r["dataset"]) for r in recs})
    steps = [s for s in STEPS if any(r["step"] == s for r in recs)]
    by = {(r["dataset"], r["step"]): r for r in recs}
    lines = ["# Scale benchmark (bench/scale/scale.py)", "",
             f"Machine: {recs[0]['machine']['cpus'] if recs else '?'} CPUs. Command lines: the `command` field of "
             "each JSON. Budgets: " + (recs[0]["budget"] if recs else "?") + " (see BUDGETS in bench/scale/scale.py).", "",
             "## Peak memory (MB): largest process (ru_maxrss) / whole tree (PSS, loader workers included)", "",
             "| dataset | classes | train images | " + " | ".join(steps) + " |",
             "|---|---|---|" + "---|" * len(steps)]
    for classes, n, name in datasets:
        cells = []
        for s in steps:
            r = by.get((name, s))
            cells.append("–" if r is None else f"failed ({r['error'][:60]})" if r["rc"] else
                         f"{r['peak_rss_mb']:.0f} / {r['peak_tree_pss_mb']:.0f}")
        lines.append(f"| {name} | {classes} | {n} | " + " | ".join(cells) + " |")
    # flatness at fixed class count, the goal: within +-10 % from 10k to 100k training images
    lines += ["", "Spread of the largest process's peak RSS over the training-set sizes at a fixed class count "
              "((max - min) / min; goal: within 10 %):", ""]
    for classes in sorted({c for c, _, _ in datasets}):
        names = [nm for c, _, nm in datasets if c == classes]
        if len(names) < 2:
            continue
        spread = []
        for s in (s for s in steps if s != "throughput"):
            v = [by[(nm, s)]["peak_rss_mb"] for nm in names if (nm, s) in by and by[(nm, s)]["rc"] == 0]
            if len(v) == len(names):
                spread.append(f"{s} {100 * (max(v) - min(v)) / min(v):.0f} %")
        lines.append(f"- {classes} classes ({', '.join(names)}): " + (", ".join(spread) or "no complete step"))
    lines += ["", "## Time", "", "| dataset | step | wall s | s per class | s per image-iteration | images |",
              "|---|---|---|---|---|---|"]
    for r in sorted(ok, key=lambda r: (r["classes"], r["num_train"], STEPS.index(r["step"]))):
        run = r.get("run", {})
        per_it = (run["recover_wall_s"] / run["teacher_image_passes"]) if run.get("teacher_image_passes") else None
        lines.append(f"| {r['dataset']} | {r['step']} | {r['wall_s']:.1f} | {r['wall_s'] / r['classes']:.3f} | "
                     f"{_fmt(per_it, '{:.4f}')} | {run.get('num_images', '–')} |")
    tp = [r for r in ok if r["step"] == "throughput" and r.get("output")]
    if tp:
        lines += ["", "## Loader decode vs teacher (images/s)", "",
                  "| dataset | decode (workers) | teacher forward | forward + backward to pixels | GFLOP/img fwd |",
                  "|---|---|---|---|---|"]
        for r in tp:
            o = r["output"]
            lines.append(f"| {r['dataset']} | {o['decode_img_per_s']} ({o['workers']}) | {o['forward_img_per_s']} | "
                         f"{o['forward_backward_img_per_s']} | {o['gflop_per_image']['forward']} |")
    lines += ["", *projection(ok, gpu_tflops, gpu_util, gpu_out)]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    return text


def synthesis_gflop(size: int = 224) -> float:
    """GFLOP of one synthesis image-iteration: ResNet-18 forward + backward to the pixels (frozen weights),
    counted by torch's FLOP counter on the meta device (no compute, no memory)."""
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        model = torchvision.models.resnet18(num_classes=1000).eval().requires_grad_(False)
        x = torch.zeros(1, 3, size, size, requires_grad=True)
        with FlopCounterMode(display=False) as fc:
            model(x).sum().backward()
    return fc.get_total_flops() / 1e9


def projection(ok: list[dict], tflops: float, util: float, gpu_out: Path | None) -> list[str]:
    """ImageNet-1K IPC10 synthesis cost of e2d and sre2l from the measured cost per image-iteration."""
    budget = BUDGETS["full"]
    quick = all(r["budget"] == "quick" for r in ok)
    lines = ["## Projected ImageNet-1K IPC10 synthesis (ResNet-18, 224 px)", "",
             *(["Quick smoke runs (32 px, a few images): the CPU figures below only exercise the code.", ""]
               if quick else []),
             "| method | image-iterations | this CPU (h) | one GPU, derived (h) | one GPU, measured (h) |",
             "|---|---|---|---|---|"]
    fb = synthesis_gflop()
    for method, iters in (("e2d", budget["e2d_iters"]), ("sre2l", budget["sre2l_iters"])):
        runs = [r for r in ok if r["step"] == f"distill_{method}" and r.get("run", {}).get("teacher_image_passes")]
        if not runs:
            lines.append(f"| {method} | – | not measured | – | – |")
            continue
        r = max(runs, key=lambda r: r["num_train"])  # the largest dataset measured
        run = r["run"]
        per_it = run["recover_wall_s"] / run["teacher_image_passes"]
        per_class = (run["synthesis_wall_s"] - run["recover_wall_s"]) / r["classes"]  # inits, grouping, saving
        image_iters = 1000 * 10 * iters
        cpu_h = (image_iters * per_it + 1000 * per_class) / 3600
        gpu_h = image_iters * fb * 1e9 / (tflops * 1e12 * util) / 3600
        measured = None
        if gpu_out is not None and (gpu_out / "c1000_n100" / f"distill_{method}.json").is_file():
            g = json.loads((gpu_out / "c1000_n100" / f"distill_{method}.json").read_text())
            measured = g["run"]["synthesis_wall_s"] / 3600 if g.get("rc") == 0 and g.get("run") else None
        lines.append(f"| {method} ({iters} it.) | {image_iters:.2e} | {cpu_h:.0f} (from {r['dataset']}: "
                     f"{per_it:.3f} s per image-iteration) | {_fmt(gpu_h, '{:.2f}')} | {_fmt(measured, '{:.2f}')} |")
    lines += ["", "CPU: measured seconds per image-iteration of the engine (recover_wall_s / teacher_image_passes of "
              "the largest run) times 10,000 images x the paper's iterations (E2D 200, no early stop: an upper "
              "bound; SRe2L 1k), plus the measured per-class overhead (initialisation, saving) times 1,000.",
              f"GPU, derived (not measured): FLOPs of one forward+backward to the pixels, counted by "
              f"torch.utils.flop_counter on ResNet-18 at 224 px ({fb:.2f} GFLOP), times the image-iterations, "
              f"divided by {tflops:g} TFLOPS (`--gpu-tflops`; A100 dense bf16 peak) x {util:.0%} assumed "
              f"utilisation (`--gpu-util`; a ResNet-18 at batch 100 is memory-bound), i.e. "
              f"{tflops * 1e3 * util / fb:.0f} image-iterations/s. The engine's per-image work outside the network "
              "(crop boxes, E2D's box memory, BN hooks) is not in the FLOPs, so this is a lower bound. Published "
              "for comparison: E2D IPC10 ~3 GPU-h (methods.md). `bash bench/scale/scale_gpu.sh` on a GPU fills the "
              "measured column."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny same-size folders, memory backend")
    ap.add_argument("--budget", choices=list(BUDGETS), help="default: quick with --quick, else cpu")
    ap.add_argument("--root", type=Path, default=default_root(), help="cache folder for data, runs and logs")
    ap.add_argument("--out", type=Path, help="results folder (default bench/scale/results/scale; quick: under --root)")
    ap.add_argument("--ladder", nargs="+", metavar="CxN", help="datasets as CLASSESxPER_CLASS, e.g. 1000x100")
    ap.add_argument("--steps", nargs="+", help=f"steps to run (default all): {', '.join(STEPS)}")
    ap.add_argument("--backend-args", help="data arguments of every ddkit command (default: --data-backend stream "
                    "--image-size 224; quick: none)")
    ap.add_argument("--templates", help="JSON file {step: command template} replacing those of the same name")
    ap.add_argument("--test-per-class", type=int, default=5)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--show", action="store_true", help="print the command templates and exit")
    ap.add_argument("--table", action="store_true", help="only rewrite table.md from stored results")
    ap.add_argument("--gpu-tflops", type=float, default=312.0)
    ap.add_argument("--gpu-util", type=float, default=0.1)
    ap.add_argument("--gpu-results", type=Path, default=HERE / "results" / "scale_gpu")
    ap.add_argument("--throughput", metavar="FOLDER", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.throughput:
        return throughput(a)
    if a.show:
        return print(json.dumps(TEMPLATES, indent=1))
    a.budget = a.budget or ("quick" if a.quick else "cpu")
    a.out = a.out or (a.root / "quick" / "results" if a.quick else HERE / "results" / "scale")
    if a.quick:
        a.root = a.root / "quick"
    a.ladder = [tuple(int(v) for v in s.lower().split("x")) for s in a.ladder] if a.ladder else \
        (QUICK_LADDER if a.quick else LADDER)
    if a.backend_args is None:
        a.backend_args = "" if a.quick else "--data-backend stream --image-size 224"
    if not a.table:
        run_ladder(a)
    print(write_table(a.out, a.gpu_tflops, a.gpu_util, a.gpu_results if a.gpu_results.is_dir() else None))


if __name__ == "__main__":
    main()
