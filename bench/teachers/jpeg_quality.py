"""How much does JPEG quality cost a CIFAR-10 teacher? The only CIFAR-10 copy here is JPEG (quality 75, 4:2:0
chroma), train and test alike, and no lossless copy exists to compare with. So measure the slope instead: re-encode
the whole copy (train and test) at lower qualities, train the same teacher on each, and see how fast test accuracy
falls as the images lose detail. It bounds nothing about the lossless data; it says how sensitive this recipe is.

    python bench/teachers/jpeg_quality.py [--qualities 50 25] [--epochs 10] [--arch airnet] [--out bench/teachers/results/cifar10_strong/jpeg_quality]

Copies go to the cache (DDKIT_CACHE, default ~/.cache/ddkit/NAME_jpeg_qQ; ~1 min each, written to a temporary folder
and renamed when whole), teachers there too (`ddkit teacher`, resumable); OUT/results.json is rewritten after
every teacher, with the copy's mean file size per training image (headers included). `--qualities source` trains
on the copy itself, as a same-settings baseline. Budget on 2 CPU cores: airnet in bf16 (`--amp on`) ~95 s per
epoch at 2 threads, ~3.1 min at 1 thread beside another job.
"""
import argparse
import shutil
import subprocess
from pathlib import Path

import torch
from PIL import Image

from ddkit.rundir import read_json
from ddkit.utils import cache_dir, save_json

RECIPES = {"airnet": ["--recipe", "airnet"], "convnet3": []}


def reencode(src: Path, quality: int) -> Path:
    """SRC's tree (split/class/*.jpg) re-encoded as JPEG at `quality` (PIL's default 4:2:0 chroma), in the cache."""
    dst = cache_dir() / f"{src.name}_jpeg_q{quality}"
    if dst.is_dir():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for f in sorted(src.glob("*/*/*")):
        out = tmp / f.relative_to(src).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            im.convert("RGB").save(out, quality=quality)
    tmp.rename(dst)
    return dst


def mean_bytes(root: Path) -> float:
    sizes = [f.stat().st_size for f in (root / "train").glob("*/*")]
    return round(sum(sizes) / len(sizes), 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/cifar10")
    ap.add_argument("--qualities", nargs="+", default=["50", "25"], help="JPEG qualities, or `source` (the copy)")
    ap.add_argument("--arch", default="airnet", choices=sorted(RECIPES))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--amp", default="on", help="ddkit teacher --amp (on: bf16 on the CPU)")
    ap.add_argument("--out", type=Path, default=Path("bench/teachers/results/cifar10_strong/jpeg_quality"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for q in a.qualities:
        data = Path(a.data) if q == "source" else reencode(Path(a.data), int(q))
        ckpt = cache_dir() / "jpeg_quality" / f"{Path(a.data).name}_{a.arch}_e{a.epochs}_q{q}.pt"
        cmd = ["ddkit", "teacher", "--data", str(data), "--arch", a.arch, *RECIPES[a.arch], "--epochs",
               str(a.epochs), "--amp", a.amp, "--out", str(ckpt)]
        if not ckpt.exists():
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        ck = torch.load(ckpt, weights_only=True)
        results_path = a.out / "results.json"
        results = read_json(results_path)
        results[f"{a.arch}_e{a.epochs}/q{q}"] = {
            "quality": q, "source": a.data, "bytes_per_train_image": mean_bytes(data),
            "test_acc": ck["test_acc"], "test_acc_flip_tta": ck.get("test_acc_flip_tta"),
            "train_time_s": ck.get("train_time_s"), "command": " ".join(cmd)}
        save_json(results, results_path)
        print(f"q{q}: {100 * ck['test_acc']:.2f} % test", flush=True)


if __name__ == "__main__":
    main()
