"""ImageNet-shaped ImageFolders for the scale benchmark (bench/scale/scale.py): JPEG photos of varying sizes around
300x400, class-dependent content at random places, 10 to 1,000 classes.

Class c draws a shape (circle, square, triangle, diamond: c % 4) in a hue ((c // 4) % 10) filled with stripes
whose angle and frequency come from c // 40 (25 kinds), at a random position and scale, on a smooth random
background with a distractor blob of random colour: 1,000 distinguishable classes a teacher can learn, and
pictures that cost what a photo costs to decode. Every image is a function of (seed, split, class, index)
only, so any subset of classes and indices is the same pictures whatever else was generated.

Images are made once into a pool (`<root>/pool/{train,test}/cNNNN/IIIII.jpg`, atomically, existing files
skipped: rerun to resume) by worker processes, and each dataset (`<root>/c{C}_n{N}`: C classes, N training
images per class) is a folder of hard links into the pool, so the ladder 10k -> 100k costs the disk of its
largest member. The root is a cache directory ($DDKIT_CACHE/bench_scale by default), never the repository.

    python bench/scale/scale_data.py --classes 1000 --per-class 100 [--test-per-class 5] [--workers 2] [--root DIR]
"""
from __future__ import annotations

import argparse
import colorsys
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = {"train": 0, "test": 1}


def default_root() -> Path:
    return Path(os.environ.get("DDKIT_CACHE", Path.home() / ".cache" / "ddkit")) / "bench_scale"


def class_style(c: int) -> tuple[int, tuple[float, float, float], float, float]:
    """(shape, RGB colour in [0, 1], stripe angle in radians, stripes across the object) of class c."""
    tex = (c // 40) % 25
    rgb = colorsys.hsv_to_rgb(((c // 4) % 10) / 10, 0.85, 0.95)
    return c % 4, rgb, (tex % 5) * np.pi / 5, 3.0 + 2.5 * (tex // 5)


def _mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == 0:
        return u * u + v * v < 1
    if shape == 1:
        return (np.abs(u) < 0.8) & (np.abs(v) < 0.8)
    if shape == 2:
        return (v > -0.8) & (v < 0.9) & (np.abs(u) < (0.9 - v) / 1.7 * 0.95)
    return np.abs(u) + np.abs(v) < 1


def render(c: int, rng: np.random.Generator, size: tuple[int, int] | None = None) -> Image.Image:
    """One picture of class c; `size` (height, width) fixed, else drawn around 300x400 (a fifth portrait)."""
    if size is None:
        h, w = int(rng.integers(250, 351)), int(rng.integers(340, 461))
        if rng.random() < 0.2:
            h, w = w, h
    else:
        h, w = size
    grid = rng.integers(30, 226, (3, 4, 3), dtype=np.uint8)  # smooth background: a tiny random image, upsized
    img = np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR), dtype=np.float32)
    img += rng.normal(0, 6, (h, w, 1)).astype(np.float32)     # grain, shared by the channels
    shape, rgb, angle, freq = class_style(c)
    for k in range(2):  # the class object, then a distractor (random colour, plain, smaller)
        s = int(min(h, w) * (rng.uniform(0.35, 0.7) if k == 0 else rng.uniform(0.15, 0.3)))
        s = max(s, 2)
        y0, x0 = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        v, u = np.mgrid[-1:1:s * 1j, -1:1:s * 1j]
        if k == 0:
            m = _mask(shape, u, v)
            stripes = np.sin((u * np.cos(angle) + v * np.sin(angle)) * freq * np.pi) > 0
            col = np.asarray(rgb, np.float32) * 255 * (0.55 + 0.45 * stripes[..., None]) * rng.uniform(0.85, 1.1)
        else:
            m = u * u + v * v < rng.uniform(0.3, 1.0)
            col = np.broadcast_to(rng.integers(0, 256, 3).astype(np.float32), (s, s, 3))
        patch = img[y0:y0 + s, x0:x0 + s]
        patch[m] = col[m]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def image_path(root: Path, split: str, c: int, i: int) -> Path:
    return root / "pool" / split / f"c{c:04d}" / f"{i:05d}.jpg"


def _make(task: tuple) -> int:
    """Write the missing pictures of one (split, class, index range); returns how many were written."""
    root, split, c, lo, hi, seed, size = task
    made = 0
    for i in range(lo, hi):
        path = image_path(root, split, c, i)
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        img = render(c, np.random.default_rng([seed, SPLITS[split], c, i]), size)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        img.save(tmp, format="JPEG", quality=85)
        os.replace(tmp, path)  # a killed run leaves no truncated JPEG under the final name
        made += 1
    return made


def dataset_name(classes: int, per_class: int) -> str:
    return f"c{classes}_n{per_class}"


def generate(root: Path, classes: int, per_class: int, test_per_class: int = 5, seed: int = 0, workers: int = 2,
             size: tuple[int, int] | None = None, chunk: int = 50) -> Path:
    """The ImageFolder `<root>/c{classes}_n{per_class}` (train/ and test/), made or completed."""
    root = Path(root)
    counts = {"train": per_class, "test": test_per_class}
    tasks = [(root, split, c, lo, min(lo + chunk, n), seed, size)
             for split, n in counts.items() for c in range(classes) for lo in range(0, n, chunk)]
    if workers > 1:
        with Pool(workers) as pool:
            made = sum(pool.imap_unordered(_make, tasks))
    else:
        made = sum(map(_make, tasks))
    out = root / dataset_name(classes, per_class)
    for split, n in counts.items():
        for c in range(classes):
            d = out / split / f"c{c:04d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                link = d / f"{i:05d}.jpg"
                if not link.exists():
                    try:
                        os.link(image_path(root, split, c, i), link)
                    except OSError:  # a file system without hard links: a symlink
                        link.symlink_to(image_path(root, split, c, i))
    print(f"{out}: {classes} classes x {per_class} train + {test_per_class} test images ({made} new)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, required=True)
    ap.add_argument("--per-class", type=int, required=True, help="training images per class")
    ap.add_argument("--test-per-class", type=int, default=5)
    ap.add_argument("--root", type=Path, default=default_root())
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="one size for all (default: varying)")
    a = ap.parse_args()
    generate(a.root, a.classes, a.per_class, a.test_per_class, a.seed, a.workers, tuple(a.size) if a.size else None)


if __name__ == "__main__":
    main()
