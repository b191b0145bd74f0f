"""Datasets as compact uint8 tensors: ImageFolder trees (decoded once, cached), torchvision sets by name,
and scikit-learn's bundled digits for offline demos and tests.

Everything downstream works on `ImageData`: images uint8 [N, 3, H, W], labels int64 [N], class names,
and the per-dataset normalisation statistics. Keeping the whole set as one tensor makes per-class
indexing, subsetting and on-device augmentation trivial and fast at CIFAR scale.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .utils import DDKitError, cache_dir, load_torch, save_torch

IMG_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
# Standard statistics for named datasets; ImageFolder trees get theirs computed from the training split.
KNOWN_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CACHE_VERSION = 1


@dataclass
class ImageData:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = "data"
    _by_class: list[torch.Tensor] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def class_indices(self, c: int) -> torch.Tensor:
        """Indices (into this dataset) of the samples of class c, in canonical order."""
        if self._by_class is None:
            order = torch.argsort(self.labels, stable=True)
            counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
            self._by_class = list(torch.split(order, counts))
        return self._by_class[c]

    def subset(self, indices: torch.Tensor) -> "ImageData":
        indices = torch.as_tensor(indices, dtype=torch.long)
        return ImageData(self.images[indices], self.labels[indices], self.classes, self.mean, self.std, self.name)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0,1] float images -> normalised float, on the images' device."""
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x * s + m


def _fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256(str(CACHE_VERSION).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _scan_folder(root: Path) -> tuple[list[str], list[Path], list[int]]:
    if not root.exists():
        raise DDKitError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DDKitError(f"data path is not a folder: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DDKitError(f"no class folders in {root} (expected {root}/<class>/<image>)")
    files, labels = [], []
    for i, c in enumerate(classes):
        imgs = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in IMG_EXTS)
        if not imgs:
            raise DDKitError(f"class {c!r} in {root} has no images")
        files += imgs
        labels += [i] * len(imgs)
    return classes, files, labels


def _decode(path: Path, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # grayscale, palette and RGBA all become RGB
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DDKitError(f"cannot decode image {path}: {e}") from e


def load_image_folder(root: str | os.PathLike, image_size: int | None = None, cache: bool = True,
                      stats: tuple | None = None) -> ImageData:
    """Load root/<class>/<image> into uint8 tensors; decoded once, then served from the cache."""
    root = Path(root).resolve()
    classes, files, labels = _scan_folder(root)
    key = f"{_fingerprint(files)}_{image_size or 0}"
    cpath = cache_dir() / "folders" / f"{key}.pt"
    if cache and cpath.is_file():
        blob = load_torch(cpath, "dataset cache")
        return ImageData(blob["images"], blob["labels"], blob["classes"], tuple(blob["mean"]),
                         tuple(blob["std"]), root.name)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        arrays = list(pool.map(lambda p: _decode(p, image_size), files, chunksize=256))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        i = next(i for i, a in enumerate(arrays) if a.shape != arrays[0].shape)
        (h0, w0), (h, w) = arrays[0].shape[:2], arrays[i].shape[:2]
        raise DDKitError(f"mixed image sizes in {root}: {files[i]} is {w}x{h}, {files[0]} is {w0}x{h0}; "
                         f"this loader needs every image at one size: resize them first")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels_t = torch.tensor(labels, dtype=torch.long)
    mean, std = stats if stats is not None else channel_stats(images)
    if cache:
        save_torch({"images": images, "labels": labels_t, "classes": classes, "mean": list(mean),
                    "std": list(std)}, cpath)
    return ImageData(images, labels_t, classes, tuple(mean), tuple(std), root.name)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def load_digits(split: str) -> ImageData:
    """scikit-learn's bundled 8x8 digits (1,797 images, offline), as RGB, with a fixed stratified split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    imgs = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    tr, te = train_test_split(np.arange(len(imgs)), test_size=0.25, random_state=0, stratify=d.target)
    idx = tr if split == "train" else te
    images = torch.from_numpy(imgs[idx]).unsqueeze(1).repeat(1, 3, 1, 1).contiguous()
    labels = torch.from_numpy(d.target[idx]).long()
    mean, std = channel_stats(torch.from_numpy(imgs[tr]).unsqueeze(1).repeat(1, 3, 1, 1))
    return ImageData(images, labels, [str(i) for i in range(10)], mean, std, "digits")


def load_torchvision(name: str, split: str, root: str | os.PathLike | None = None) -> ImageData:
    """CIFAR-10/100 through torchvision; downloads on first use where the internet is reachable."""
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    root = Path(root) if root else cache_dir() / "torchvision"
    try:
        ds = cls(str(root), train=(split == "train"), download=True)
    except Exception as e:
        raise DDKitError(f"could not load {name} via torchvision into {root}: {e}") from e
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    mean, std = KNOWN_STATS[name]
    return ImageData(images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes), mean, std, name)


NAMED = {"digits", "cifar10", "cifar100"}


def split_dirs(spec: str) -> tuple[Path, Path | None]:
    """A folder holding train/ (and test/ or val/) splits, or a folder that is itself the training split."""
    root = Path(spec)
    if (root / "train").is_dir():
        test = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
        return root / "train", test
    return root, None


def load_data(spec: str, split: str = "train", image_size: int | None = None,
              stats: tuple | None = None) -> ImageData:
    """Load a split by dataset name ('digits', 'cifar10', 'cifar100') or ImageFolder path.

    `stats` = (mean, std) to normalise with (e.g. a teacher's training statistics) instead of the split's own.
    """
    if split not in ("train", "test"):
        raise DDKitError(f"unknown split {split!r}")
    if spec in NAMED and not Path(spec).exists():
        data = load_digits(split) if spec == "digits" else load_torchvision(spec, split)
    else:
        train_dir, test_dir = split_dirs(spec)
        if split == "test":
            if test_dir is None:
                raise DDKitError(f"no test/ or val/ split beside {train_dir}; pass --test-data")
            train_dir = test_dir
        data = load_image_folder(train_dir, image_size, stats=stats)
    if stats is not None:
        data.mean, data.std = tuple(stats[0]), tuple(stats[1])
    return data


def load_splits(spec: str, test_spec: str | None = None, image_size: int | None = None) -> tuple[ImageData, ImageData]:
    """Train and test splits; test images are normalised with the *training* statistics."""
    train = load_data(spec, "train", image_size)
    test = load_data(test_spec, "train", image_size, stats=(train.mean, train.std)) if test_spec \
        else load_data(spec, "test", image_size, stats=(train.mean, train.std))
    if test.classes != train.classes:
        raise DDKitError(f"test classes {test.classes[:5]}... differ from train classes {train.classes[:5]}...")
    if test.images.shape[1:] != train.images.shape[1:]:
        raise DDKitError(f"test image shape {tuple(test.images.shape[1:])} differs from train "
                         f"{tuple(train.images.shape[1:])}")
    return train, test


def read_subset(path: str | os.PathLike, num_samples: int) -> torch.Tensor:
    """Indices (into the canonical training order) of a `ddkit select` file made for this dataset."""
    blob = load_torch(path, "subset file")
    if not isinstance(blob, dict) or "indices" not in blob or "num_samples" not in blob:
        raise DDKitError(f"{path} is not a ddkit subset file")
    if blob["num_samples"] != num_samples:
        raise DDKitError(f"subset file {path} was made for {blob['num_samples']} samples, data has {num_samples}")
    return blob["indices"]


def load_subset_file(path: str | os.PathLike, data: ImageData) -> ImageData:
    """The samples of `data` kept by a `ddkit select` index file."""
    sub = data.subset(read_subset(path, len(data)))
    sub.name = f"{data.name}[{Path(path).stem}]"
    return sub
