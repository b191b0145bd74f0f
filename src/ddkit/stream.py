"""The stream backend (data larger than memory, photos of any size), and the choice between backends.

`StreamData` has the `ddkit.data.Images` interface of the in-memory `ImageData`, but holds only a file
index and decodes samples when asked, through a `torch.utils.data.DataLoader` with workers (pinned memory
on CUDA): per-class access (`load`, `batches`) opens only the files asked for, so a torchrun rank reads
only its own classes' files, and nothing holds a whole split.

Index: an ImageFolder's scan (class folders, sorted files, fingerprinted by path, size and mtime as the
memory cache is), or WebDataset tar shards (the `webdataset` extra): one pass records every sample's
(shard, member, label) once, cached under the shards' fingerprint; a sample is then read by seeking its
member in its local shard (tarfile), so per-class access reads only that class's members.

Views at the working resolution S (`image_size`), torchvision transforms on the original photo:
- training (`fit`): RandomResizedCrop(S, scale) + horizontal flip, seeded per (epoch, sample), so the views
  are the same with any number of workers or torchrun ranks;
- center: Resize(S) + CenterCrop(S), the real images methods, scoring, features and BN statistics see (the
  identity on S x S photos: a same-size folder at its native size decodes to the memory backend's tensors);
- whole: the whole photo resized to S x S (E2D's initialisation); test: Resize(S // 7 * 8) + CenterCrop(S).
Normalisation: the statistics given (a teacher's), else ImageNet's, which imported ImageNet teachers expect
and a teacher trained here records in its checkpoint; no pass over the files is needed.
Bad files: with on_bad_image="error" the first unreadable file stops the command (one line naming it);
with "skip" it is warned about once, listed in `skipped` (metrics.json) and its rows are served by the
next readable image of its class, so every consumer gets the rows it asked for.
"""
from __future__ import annotations

import io
import os
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader
from torchvision import transforms as T

from .data import (BAD_IMAGE_POLICIES, NAMED, VIEWS, Images, _fingerprint, _scan_folder, check_classes, load_data,
                   load_splits, split_dirs)
from .models import import_extra
from .utils import DDKitError, cache_dir, load_torch, save_torch, stable_hash, tensor_hash, trim_malloc

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BACKENDS = ("auto", "memory", "stream")
STREAM_GB = float(os.environ.get("DDKIT_STREAM_GB", "8"))  # auto: decoded splits above this many GB stream
PHOTO_SIZE = 224      # default working resolution of photos of mixed size (torchvision's ImageNet views)
SAMPLED = 64          # image headers read by the auto rule
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")  # WebDataset members holding the image
WORKERS = int(os.environ.get("DDKIT_WORKERS", str(min(8, os.cpu_count() or 1))))


class FolderIndex:
    """root/<class>/<image>: relative paths as one bytes array (workers share it without refcount churn)."""

    def __init__(self, root: Path):
        self.root = root
        self.classes, files, labels, self.unreadable = _scan_folder(root)
        self.key = _fingerprint(files)
        self.items = np.array([str(f.relative_to(root)).encode() for f in files])
        self.labels = torch.tensor(labels, dtype=torch.long)

    def name(self, i: int) -> str:
        return str(self.root / self.items[i].decode())

    def read(self, i: int):
        return self.name(i)


class ShardIndex:
    """WebDataset tar shards (root/*.tar): samples with an image member and a `.cls` integer label;
    class names from root/classes.txt (one per line, in label order), else the label numbers."""

    def __init__(self, root: Path, shards: list[Path]):
        self.root, self.shards = root, [str(s) for s in shards]
        self.key = _fingerprint(shards)
        path = cache_dir() / "shard_index" / f"{self.key}.pt"
        blob = load_torch(path, "shard index") if path.is_file() else None
        if blob is None:
            blob = self._scan()
            save_torch(blob, path)
        self.shard_of, self.items, self.labels = blob["shard"], np.array(blob["members"]), blob["labels"]
        names, n = root / "classes.txt", int(self.labels.max()) + 1
        self.classes = ([c for c in names.read_text().splitlines() if c.strip()] if names.is_file()
                        else [str(c) for c in range(n)])
        if len(self.classes) < n:
            raise DDKitError(f"{names} names {len(self.classes)} classes, the shards have labels up to {n - 1}")
        self._tars: dict = {}

    def _scan(self) -> dict:
        wds = import_extra("webdataset", "webdataset")
        shard, members, labels, number = [], [], [], {url: k for k, url in enumerate(self.shards)}
        for s in wds.WebDataset(self.shards, shardshuffle=False, empty_check=False):
            ext = next((e for e in IMAGE_EXTS if e in s), None)
            if ext is None or "cls" not in s:
                raise DDKitError(f"sample {s['__key__']} in {s['__url__']} lacks an image or a .cls label")
            shard.append(number[s["__url__"]])
            members.append(f"{s['__key__']}.{ext}".encode())
            labels.append(int(s["cls"]))
        return {"shard": torch.tensor(shard, dtype=torch.int32), "members": members,
                "labels": torch.tensor(labels, dtype=torch.long)}

    def name(self, i: int) -> str:
        return f"{self.shards[int(self.shard_of[i])]}:{self.items[i].decode()}"

    def read(self, i: int):
        key = (os.getpid(), int(self.shard_of[i]))  # a worker opens its own handles (a forked one is shared)
        if key not in self._tars:
            self._tars[key] = tarfile.open(self.shards[key[1]])
        return io.BytesIO(self._tars[key].extractfile(self.items[i].decode()).read())


def open_index(root: Path) -> FolderIndex | ShardIndex:
    shards = sorted(root.glob("*.tar")) if root.is_dir() else []
    return ShardIndex(root, shards) if shards else FolderIndex(root)


@dataclass
class StreamData(Images):
    index: FolderIndex | ShardIndex
    rows: torch.Tensor                 # this dataset's samples as positions in the index (subsets keep them)
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    name: str = "data"
    on_bad_image: str = "error"
    skipped: list[str] = field(default_factory=list)  # shared with subsets: one warning per file
    _by_class: list[torch.Tensor] | None = field(default=None, repr=False)

    @property
    def fit_images(self) -> "StreamData":
        """What ddkit.train.fit trains on: the stream itself, which decodes and augments its views."""
        return self

    def subset(self, indices: torch.Tensor) -> "StreamData":
        indices = torch.as_tensor(indices, dtype=torch.long)
        return StreamData(self.index, self.rows[indices], self.labels[indices], self.classes, self.mean,
                          self.std, self.image_size, self.name, self.on_bad_image, self.skipped)

    def content_hash(self) -> str:
        return stable_hash([self.index.key, tensor_hash(self.rows), tensor_hash(self.labels), self.classes,
                            self.image_size])

    def batches(self, indices: torch.Tensor | None = None, batch_size: int = 256, view: str = "center"):
        """uint8 [b, 3, S, S] batches of `indices` (all samples when None), in order, in `view` (see VIEWS)."""
        if view not in VIEWS:
            raise DDKitError(f"unknown view {view!r}; choose {', '.join(VIEWS)}")
        idx = torch.arange(len(self)) if indices is None else torch.as_tensor(indices).flatten()
        yield from self._decoded([[(int(p), 0) for p in idx[i:i + batch_size]]
                                  for i in range(0, len(idx), batch_size)], (view,))

    def epoch(self, cfg, batch_size: int, gen: torch.Generator, rank: int, world: int):
        """One epoch of fit: (global batch, this rank's rows of it as uint8 views, None) per batch. The order
        comes from `gen` as in memory; aug `none` gives the center view, `rrc` RandomResizedCrop(scale
        cfg.rrc_scale) + flip, `translate` (a CIFAR pad-crop) torchvision's photo default, RRC(0.08-1) + flip;
        RandAugment first where cfg.randaug_ops > 0 (CutMix is applied by fit, on the decoded batch)."""
        perm = torch.randperm(len(self), generator=gen)
        base = int(torch.randint(2 ** 62, (1,), generator=gen))   # per-sample seeds: base + sample
        batches = [perm[b:b + batch_size] for b in range(0, len(perm), batch_size)]
        mine = [b[len(b) * rank // world:len(b) * (rank + 1) // world] for b in batches]
        view = ("center",) if cfg.aug == "none" else ("train", tuple(cfg.rrc_scale) if cfg.aug == "rrc"
                                                      else (0.08, 1.0), (cfg.randaug_ops, cfg.randaug_magnitude))
        for b, x in zip(batches, self._decoded([[(int(p), base + int(p)) for p in m] for m in mine], view)):
            yield b, x, None

    def _decoded(self, batches: list[list[tuple[int, int]]], view: tuple):
        workers = WORKERS if len(batches) > 1 else 0  # one small batch: not worth starting processes
        loader = DataLoader(_Decode(self, view), batch_sampler=batches, num_workers=workers,
                            collate_fn=_collate, pin_memory=torch.cuda.is_available())
        for x, bad, fatal in loader:
            for reason in bad:
                self._bad(reason)
            if fatal:  # raised here, not in the worker: a worker's exception reaches us with its traceback
                raise DDKitError(fatal[0])
            yield x
            trim_malloc()  # photos of every size, pass after pass: keep the heap from creeping up

    def _bad(self, reason: str) -> None:
        if self.on_bad_image == "error":
            raise DDKitError(f"{reason}; pass --on-bad-image skip to leave unreadable images out")
        if reason not in self.skipped:
            self.skipped.append(reason)
            print(f"ddkit: warning: skipped: {reason}", file=sys.stderr)


class _Decode:
    """Map-style dataset of (position, seed) -> (uint8 view, reasons of unreadable files on the way, the
    reason it has no view at all, or None)."""

    def __init__(self, data: StreamData, view: tuple):
        self.data, s, kind = data, data.image_size, view[0]
        # RandAugment (EDC's order: on the photo, before the crop) where the protocol asks for it
        ra = [T.RandAugment(*view[2])] if kind == "train" and len(view) > 2 and view[2][0] > 0 else []
        self.tf = (T.Compose([*ra, T.RandomResizedCrop(s, scale=view[1], antialias=True), T.RandomHorizontalFlip()])
                   if kind == "train" else T.Resize((s, s), antialias=True) if kind == "whole" else
                   T.Compose([T.Resize(s // 7 * 8 if kind == "test" else s, antialias=True), T.CenterCrop(s)]))

    def __getitem__(self, item: tuple[int, int]):
        pos, seed = item
        d, bad = self.data, []
        for p in self._candidates(pos):
            i = int(d.rows[p])
            try:
                with Image.open(d.index.read(i)) as im:
                    im = im.convert("RGB")
                break
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError, KeyError) as e:
                bad.append(f"cannot decode image {d.index.name(i)}: {e}")
                if d.on_bad_image == "error":
                    return torch.zeros(3, d.image_size, d.image_size, dtype=torch.uint8), bad, None
        else:
            return (torch.zeros(3, d.image_size, d.image_size, dtype=torch.uint8), bad,
                    f"class {d.classes[int(d.labels[pos])]!r} has no readable images")
        with torch.random.fork_rng(devices=[]):  # the view's randomness from the seed, not the worker
            torch.manual_seed(seed)
            im = self.tf(im)
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1), bad, None

    def _candidates(self, pos: int):
        """The sample, then (an unreadable one skipped) the next samples of its class, wrapping around."""
        yield pos
        same = self.data.class_indices(int(self.data.labels[pos]))
        start = int((same == pos).nonzero()[0])
        for k in range(1, len(same)):
            yield int(same[(start + k) % len(same)])


def _collate(items):
    return (torch.stack([x for x, _, _ in items]), [r for _, bad, _ in items for r in bad],
            [f for _, _, f in items if f])


def _sampled_sizes(index) -> set[tuple[int, int]]:
    """(width, height) of up to SAMPLED evenly spaced images (headers only)."""
    n = len(index.labels)
    sizes = set()
    for i in sorted({int(k * n / SAMPLED) for k in range(min(n, SAMPLED))}):
        try:
            with Image.open(index.read(i)) as im:
                sizes.add(im.size)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, KeyError):
            pass  # the bad-image policy decides when the file is decoded
    return sizes


def choose_backend(index, image_size: int | None) -> tuple[str, int]:
    """(backend, working resolution) of backend=auto: stream for WebDataset shards, for photos of mixed or
    non-square size (the headers of up to 64 evenly spaced files), or when the decoded split, N x 3 x S x S
    bytes, would exceed DDKIT_STREAM_GB (default 8) GB; memory otherwise. S: --image-size, else the images'
    own size when they are square and of one size, else 224."""
    sizes = _sampled_sizes(index)
    photos = len(sizes) != 1 or len({*next(iter(sizes))}) != 1
    s = image_size or (PHOTO_SIZE if photos else next(iter(sizes))[0])
    big = len(index.labels) * 3 * s * s > STREAM_GB * 1e9
    return ("stream" if isinstance(index, ShardIndex) or photos or big else "memory"), s


def _resolve(spec: str, split: str, image_size: int | None, backend: str):
    """(index, working resolution) of a split read by the stream backend, None for the memory backend."""
    if backend not in BACKENDS:
        raise DDKitError(f"unknown data backend {backend!r}; choose {', '.join(BACKENDS)}")
    if image_size is not None and image_size < 8:
        raise DDKitError(f"--image-size must be at least 8, got {image_size}")
    if spec in NAMED and not Path(spec).exists():
        if backend == "stream":
            raise DDKitError(f"{spec} is loaded in memory; the stream backend reads ImageFolder trees or "
                             f"WebDataset shards")
        return None
    train_dir, test_dir = split_dirs(spec)
    if split == "test" and test_dir is None:
        raise DDKitError(f"no test/ or val/ split beside {train_dir}; pass --test-data")
    root = (train_dir if split == "train" else test_dir).resolve()
    index = open_index(root)
    if backend == "memory":
        if isinstance(index, ShardIndex):
            raise DDKitError(f"{root} holds WebDataset shards: they are read with --data-backend stream or auto")
        return None
    if backend == "stream" and image_size:
        return index, image_size  # no file opened (auto samples headers) until a class is read
    chosen, size = choose_backend(index, image_size)
    return (index, size) if backend == "stream" or chosen == "stream" else None


def _stream(index, size: int, stats: tuple | None, on_bad_image: str) -> StreamData:
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise DDKitError(f"unknown bad-image policy {on_bad_image!r}; choose {' or '.join(BAD_IMAGE_POLICIES)}")
    mean, std = stats if stats is not None else IMAGENET_STATS
    data = StreamData(index, torch.arange(len(index.labels)), index.labels, index.classes, tuple(mean),
                      tuple(std), size, index.root.name, on_bad_image)
    for reason in getattr(index, "unreadable", []):  # entries the scan could not read (a symlink loop)
        data._bad(reason)
    return data


def split_classes(spec: str, split: str = "train") -> list[str] | None:
    """The class names of a split, from its folders (or shards' classes.txt) without decoding an image; None
    for a dataset loaded by name."""
    if spec in NAMED and not Path(spec).exists():
        return None
    train_dir, test_dir = split_dirs(spec)
    if split == "test" and test_dir is None:
        raise DDKitError(f"no test/ or val/ split beside {train_dir}; pass --test-data")
    return open_index((train_dir if split == "train" else test_dir).resolve()).classes


def open_data(spec: str, split: str = "train", image_size: int | None = None, backend: str = "auto",
              stats: tuple | None = None, on_bad_image: str = "error") -> Images:
    """A split by dataset name or folder (ImageFolder or WebDataset shards) on the backend asked for (auto:
    see choose_backend); `stats` = (mean, std) to normalise with instead of the split's own."""
    found = _resolve(spec, split, image_size, backend)
    if found is None:
        return load_data(spec, split, image_size, stats, on_bad_image)
    return _stream(*found, stats, on_bad_image)


def open_splits(spec: str, test_spec: str | None = None, image_size: int | None = None, backend: str = "auto",
                on_bad_image: str = "error") -> tuple[Images, Images]:
    """Train and test splits on the training split's backend and resolution, the test split normalised with
    the training statistics."""
    found = _resolve(spec, "train", image_size, backend)
    if found is None:
        return load_splits(spec, test_spec, image_size, on_bad_image)
    train = _stream(*found, None, on_bad_image)
    stats = (train.mean, train.std)
    test = open_data(test_spec, "train", train.image_size, "stream", stats, on_bad_image) if test_spec \
        else open_data(spec, "test", train.image_size, "stream", stats, on_bad_image)
    check_classes("test split", test.classes, "training split", train.classes)
    return train, test
