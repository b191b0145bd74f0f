"""Datasets as compact uint8 tensors (the memory backend): ImageFolder trees (decoded once, cached),
torchvision sets by name, and scikit-learn's bundled digits for offline demos and tests.

Downstream code uses the `Images` interface, which this module's `ImageData` (images uint8 [N, 3, H, W]
in memory) and ddkit.stream's `StreamData` (files decoded lazily) both have: labels, classes, normalisation
statistics, per-class indices, subsets, decoded batches of given samples (`batches`, `load`) and what
`ddkit.train.fit` trains on (`fit_images`). Keeping the whole set as one tensor makes per-class indexing,
subsetting and on-device augmentation trivial and fast at CIFAR scale.
"""
from __future__ import annotations

import errno
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .augment import resize_center_crop
from .utils import DDKitError, cache_dir, class_name, load_torch, save_torch, stable_hash, tensor_hash

IMG_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
# Standard statistics for named datasets; ImageFolder trees get theirs computed from the training split.
KNOWN_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CACHE_VERSION = 1
BAD_IMAGE_POLICIES = ("error", "skip")  # an unreadable file stops the load, or is left out with a warning
# how `batches` renders a sample at the working resolution S (the stream backend, from the original photo):
# center Resize(S) + CenterCrop(S); whole: the whole image resized to S x S; test: Resize(S // 7 * 8) +
# CenterCrop(S). In memory, images are stored at S: center and whole are the stored image.
VIEWS = ("center", "whole", "test")


class Images:
    """The data interface shared by the backends (fields labels, classes, mean, std, name, skipped)."""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_indices(self, c: int) -> torch.Tensor:
        """Indices (into this dataset) of the samples of class c, in canonical order."""
        if self._by_class is None:
            order = torch.argsort(self.labels, stable=True)
            counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
            self._by_class = list(torch.split(order, counts))
        return self._by_class[c]

    def load(self, indices: torch.Tensor, view: str = "center") -> torch.Tensor:
        """Decoded images of `indices` at the working resolution, one tensor (uint8 [n, 3, S, S])."""
        return torch.cat(list(self.batches(indices, 256, view)))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0,1] float images -> normalised float, on the images' device."""
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s

    def denormalize(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.mul_(s).add_(m) if inplace else x * s + m


@dataclass
class ImageData(Images):
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = "data"
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (on_bad_image="skip")
    _by_class: list[torch.Tensor] | None = field(default=None, repr=False)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def fit_images(self) -> torch.Tensor:
        """What ddkit.train.fit trains on: the tensor itself (augmented on the device)."""
        return self.images

    def subset(self, indices: torch.Tensor) -> "ImageData":
        indices = torch.as_tensor(indices, dtype=torch.long)
        return ImageData(self.images[indices], self.labels[indices], self.classes, self.mean, self.std, self.name)

    def batches(self, indices: torch.Tensor | None = None, batch_size: int = 500, view: str = "center"):
        """uint8 batches of `indices` (all samples when None), in order; the test view as [0, 1] floats
        where it resizes (it is the identity when S // 7 * 8 == S, e.g. 32 px)."""
        x = self.images if indices is None else self.images[indices]
        for b in x.split(batch_size):
            yield resize_center_crop(b.float() / 255, self.image_size) if view == "test" and \
                self.image_size // 7 * 8 != self.image_size else b

    def content_hash(self) -> str:
        """Names the samples (cache keys of teachers, scores, autoencoders)."""
        return stable_hash([tensor_hash(self.images), tensor_hash(self.labels), self.classes])


def _fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256(str(CACHE_VERSION).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _images_in(folder: Path) -> tuple[list[Path], list[str]]:
    """The image files of a class folder, sorted, and the reasons of the entries that cannot be read at all
    (a symlink loop, a link to nothing), which the bad-image policy then refuses or skips."""
    imgs, bad = [], []
    for p in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTS):
        try:
            p.stat()
            imgs.append(p)
        except OSError as e:
            what = "a symlink loop" if e.errno == errno.ELOOP else \
                "a symlink to nothing" if p.is_symlink() else (e.strerror or str(e)).lower()
            bad.append(f"cannot read image {p}: {what}")
    return imgs, bad


def _scan_folder(root: Path) -> tuple[list[str], list[Path], list[int], list[str]]:
    """(class names, image files, labels, reasons of unreadable entries) of root/<class>/<image>. Folder names
    are read back into class names (ddkit.utils.class_name). A hidden folder holding images is a class, as in
    torchvision's ImageFolder, and said so on stderr; hidden folders without images (.git, .ipynb_checkpoints)
    are not classes."""
    if not root.exists():
        raise DDKitError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DDKitError(f"data path is not a folder: {root}")
    dirs = sorted(d.name for d in root.iterdir() if d.is_dir())
    found = {d: _images_in(root / d) for d in dirs}
    hidden = [d for d in dirs if d.startswith(".")]
    dirs = [d for d in dirs if not d.startswith(".") or any(found[d])]
    for d in hidden:
        if d in dirs:
            print(f"ddkit: warning: hidden folder {root / d} holds images: it is class {class_name(d)!r} "
                  f"(move it out of {root} to leave it out)", file=sys.stderr)
    if not dirs:
        raise DDKitError(f"no class folders in {root} (expected {root}/<class>/<image>)")
    if len(dirs) == 1:
        raise DDKitError(f"{root} has one class folder ({dirs[0]!r}): a classifier needs at least two classes")
    files, labels, bad = [], [], []
    for i, d in enumerate(dirs):
        imgs, unreadable = found[d]
        if not imgs:
            raise DDKitError(f"class {class_name(d)!r} in {root} has no images" +
                             (f" ({unreadable[0]})" if unreadable else ""))
        files += imgs
        labels += [i] * len(imgs)
        bad += unreadable
    return [class_name(d) for d in dirs], files, labels, bad


def _decode(path: Path, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # grayscale, palette and RGBA all become RGB
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DDKitError(f"cannot decode image {path}: {e}") from e


def _decode_all(files: list[Path], size: int | None) -> tuple[list, list[str]]:
    """Decoded arrays (None where a file is unreadable) and the one-line reasons of the unreadable files."""
    def one(path):
        try:
            return _decode(path, size)
        except DDKitError as e:
            return str(e)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        out = list(pool.map(one, files, chunksize=256))
    return [None if isinstance(a, str) else a for a in out], [a for a in out if isinstance(a, str)]


def _apply_bad_image_policy(bad: list[str], on_bad_image: str) -> None:
    """Refuse unreadable files (also those a skipping load left out of the cache), or warn once per file."""
    if bad and on_bad_image == "error":
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DDKitError(f"{bad[0]}{more}; pass --on-bad-image skip to leave unreadable images out")
    for reason in bad:
        print(f"ddkit: warning: skipped: {reason}", file=sys.stderr)


def load_image_folder(root: str | os.PathLike, image_size: int | None = None, cache: bool = True,
                      stats: tuple | None = None, on_bad_image: str = "error") -> ImageData:
    """Load root/<class>/<image> into uint8 tensors; decoded once, then served from the cache.

    on_bad_image="skip" leaves unreadable files out (a multi-hour job should not die on one file); they are
    listed in `ImageData.skipped` and warned about on stderr.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise DDKitError(f"unknown bad-image policy {on_bad_image!r}; choose {' or '.join(BAD_IMAGE_POLICIES)}")
    root = Path(root).resolve()
    classes, files, labels, unreadable = _scan_folder(root)
    key = f"{_fingerprint(files)}_{image_size or 0}"
    cpath = cache_dir() / "folders" / f"{key}.pt"
    if cache and cpath.is_file():
        blob = load_torch(cpath, "dataset cache")
        skipped = unreadable + blob.get("skipped", [])
        _apply_bad_image_policy(skipped, on_bad_image)
        return ImageData(blob["images"], blob["labels"], blob["classes"], tuple(blob["mean"]),
                         tuple(blob["std"]), root.name, skipped)
    arrays, undecodable = _decode_all(files, image_size)
    skipped = unreadable + undecodable
    _apply_bad_image_policy(skipped, on_bad_image)
    keep = [i for i, a in enumerate(arrays) if a is not None]
    arrays, files, labels = [arrays[i] for i in keep], [files[i] for i in keep], [labels[i] for i in keep]
    emptied = sorted(set(range(len(classes))) - set(labels))
    if emptied:
        raise DDKitError(f"class {classes[emptied[0]]!r} in {root} has no readable images")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        i = next(i for i, a in enumerate(arrays) if a.shape != arrays[0].shape)
        (h0, w0), (h, w) = arrays[0].shape[:2], arrays[i].shape[:2]
        raise DDKitError(f"mixed image sizes in {root}: {files[i]} is {w}x{h}, {files[0]} is {w0}x{h0}; "
                         f"the memory backend needs one size: pass --image-size N to resize them all, or read "
                         f"the photos with --data-backend stream")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels_t = torch.tensor(labels, dtype=torch.long)
    mean, std = stats if stats is not None else channel_stats(images)
    if cache:
        save_torch({"images": images, "labels": labels_t, "classes": classes, "mean": list(mean),
                    "std": list(std), "skipped": undecodable}, cpath)
    return ImageData(images, labels_t, classes, tuple(mean), tuple(std), root.name, skipped)


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
    for split in ("train", "test", "val"):
        if (root / split).exists() and not (root / split).is_dir():
            raise DDKitError(f"{root / split} is a file: a split is a folder of class folders")
    if (root / "train").is_dir():
        test = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
        return root / "train", test
    return root, None


def load_data(spec: str, split: str = "train", image_size: int | None = None,
              stats: tuple | None = None, on_bad_image: str = "error") -> ImageData:
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
        data = load_image_folder(train_dir, image_size, stats=stats, on_bad_image=on_bad_image)
    if stats is not None:
        data.mean, data.std = tuple(stats[0]), tuple(stats[1])
    return data


def load_splits(spec: str, test_spec: str | None = None, image_size: int | None = None,
                on_bad_image: str = "error") -> tuple[ImageData, ImageData]:
    """Train and test splits; test images are normalised with the *training* statistics."""
    train = load_data(spec, "train", image_size, on_bad_image=on_bad_image)
    stats = (train.mean, train.std)
    test = load_data(test_spec, "train", image_size, stats, on_bad_image) if test_spec \
        else load_data(spec, "test", image_size, stats, on_bad_image)
    check_classes("test split", test.classes, "training split", train.classes)
    if test.images.shape[1:] != train.images.shape[1:]:
        raise DDKitError(f"test image shape {tuple(test.images.shape[1:])} differs from train "
                         f"{tuple(train.images.shape[1:])}")
    return train, test


def check_classes(what: str, classes: list[str], reference: str, expected: list[str]) -> None:
    """One line naming the difference when two class lists disagree (missing, extra, or order)."""
    if list(classes) == list(expected):
        return
    missing = [c for c in expected if c not in classes]
    extra = [c for c in classes if c not in expected]

    def few(names):
        return ", ".join(map(repr, names[:5])) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    if missing or extra:
        parts = ([f"lacks {few(missing)}"] if missing else []) + ([f"has {few(extra)} not in it"] if extra else [])
        raise DDKitError(f"{what} ({len(classes)} classes) differs from the {reference} ({len(expected)}): "
                         + "; ".join(parts))
    raise DDKitError(f"{what} lists the {reference}'s classes in another order")


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
