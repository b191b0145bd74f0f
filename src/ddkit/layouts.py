"""Distilled sets in the peers' layouts, read (`ddkit evaluate`) and written (`ddkit export`).

    rded       ROOT/00000/class00000_id00000.jpg      RDED: one folder per class index, 5 digits
    sre2l      ROOT/new000/class000_id000.jpg         SRe2L, CDA, E2D: "new" + class index, 3 digits
    ddranking  ROOT/images.pt [N, 3, H, W], labels.pt DD-Ranking's tensors (ddkit's export adds hard_labels.pt)
    folder     ROOT/<class name>/<image>              any ImageFolder; a ddkit run folder is read as a run

Classes named by index carry no names, and a wrong index-to-class mapping is the commonest cause of failed
reproductions: they map onto the dataset's class order (index c = the dataset's c-th class) only when asked
(`by_index`) and only when the counts agree, unless the dataset's own class folders carry those names; any other correspondence is a class-map file, JSON
{"folder name or index": "class name"}, which also renames the classes of a name-labelled folder.
Written images are lossless PNG (the peers write JPEG; their loaders read either).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from .rundir import DistilledSet, read_run
from .utils import DDKitError, load_torch

# layout -> (class folder pattern, folder name of class c, file name of image i of class c)
INDEXED = {"rded": (r"\d{5}", "{c:05d}", "class{c:05d}_id{i:05d}.png"),
           "sre2l": (r"new(\d{3})", "new{c:03d}", "class{c:03d}_id{i:03d}.png")}
LAYOUTS = ("auto", "ddkit", "folder", "ddranking", *INDEXED)


def detect(path: Path) -> str:
    """The layout of `path`: ddkit (a run), ddranking (images.pt), rded or sre2l (every class folder named
    by its pattern), else folder."""
    if (path / "data.pt").is_file():
        return "ddkit"
    if (path / "images.pt").is_file():
        return "ddranking"
    root = path / "images" if (path / "images").is_dir() else path
    names = [d.name for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    for layout, (pattern, _, _) in INDEXED.items():
        if names and all(re.fullmatch(pattern, n) for n in names):
            return layout
    return "folder"


def read_set(path: str | os.PathLike, classes: list[str], layout: str = "auto", by_index: bool = False,
             class_map: str | os.PathLike | None = None, mean=None, std=None) -> DistilledSet:
    """A distilled set in any layout, its classes named as the dataset's `classes` where it names them by
    index. `mean`/`std`: the statistics DD-Ranking tensors outside [0, 1] were normalised with."""
    path = Path(path)
    if not path.exists():
        raise DDKitError(f"distilled set not found: {path}")
    if layout not in LAYOUTS:
        raise DDKitError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    layout = detect(path) if layout == "auto" else layout
    mapping = _read_class_map(class_map) if class_map else None
    if layout == "ddranking":
        ds = _read_tensors(path, len(classes), mean, std)
    else:
        ds = read_run(path)
    if layout in ("ddkit", "folder"):
        return _rename(ds, mapping) if mapping else ds
    if layout in INDEXED:
        pattern = INDEXED[layout][0]
        bad = [c for c in ds.classes if not re.fullmatch(pattern, c)]
        if bad:
            raise DDKitError(f"{path}: class folder {bad[0]!r} is not named as the {layout} layout's "
                             f"({INDEXED[layout][1].format(c=0)}, ...)")
    if mapping:
        return _rename(ds, mapping)
    if not by_index and set(ds.classes) <= set(classes):   # the dataset's own folders are named so
        return ds
    if not by_index:
        raise DDKitError(f"{path} names its classes by index ({layout} layout: {ds.classes[:2]}...); pass "
                         "--classes-by-index to map index c onto the dataset's c-th class, or --class-map FILE")
    index = [int(re.sub(r"\D", "", c)) for c in ds.classes]
    if len(ds.classes) != len(classes) or sorted(index) != list(range(len(classes))):
        raise DDKitError(f"{path} has {len(ds.classes)} classes (indices {min(index)}-{max(index)}), the dataset "
                         f"{len(classes)}: --classes-by-index needs one per class; map them with --class-map FILE")
    return DistilledSet(ds.images, ds.labels, [classes[i] for i in index], ds.weights)


def _read_class_map(path) -> dict[str, str]:
    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DDKitError(f"cannot read class map {path}: {e}") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise DDKitError(f"class map {path} must be a JSON object {{\"folder or index\": \"class name\"}}")
    return {str(k): v for k, v in mapping.items()}


def _rename(ds: DistilledSet, mapping: dict[str, str]) -> DistilledSet:
    missing = [c for c in ds.classes if c not in mapping]
    if missing:
        raise DDKitError(f"the class map has no entry for {missing[:3]} ({len(missing)} of {len(ds.classes)} "
                         "classes)")
    names = [mapping[c] for c in ds.classes]
    if len(set(names)) != len(names):
        raise DDKitError("the class map sends two classes of the set to one class")
    return DistilledSet(ds.images, ds.labels, names, ds.weights)


def _read_tensors(path: Path, num_classes: int, mean, std) -> DistilledSet:
    """DD-Ranking's tensors: hard_labels.pt, else integer labels.pt, else (soft labels) DD-Ranking's own rule,
    IPC copies of each class in class order. Class names are the indices, as strings."""
    x = load_torch(path / "images.pt", "DD-Ranking images")
    if not torch.is_tensor(x) or x.dim() != 4:
        raise DDKitError(f"{path / 'images.pt'} is not an image tensor [N, C, H, W]")
    x = x.float()
    labels = None
    for name in ("hard_labels.pt", "labels.pt"):   # labels.pt may hold soft labels (logits [N, classes])
        t = load_torch(path / name, "DD-Ranking labels") if (path / name).is_file() else None
        if labels is None and torch.is_tensor(t) and t.dim() == 1:
            labels = t
    if labels is None:
        if len(x) % num_classes:
            raise DDKitError(f"{path}: {len(x)} images without class labels are not IPC images for each of "
                             f"{num_classes} classes")
        labels = torch.arange(num_classes).repeat_interleave(len(x) // num_classes)
    if len(labels) != len(x):
        raise DDKitError(f"{path}: {len(labels)} labels for {len(x)} images")
    if x.min() < -1e-3 or x.max() > 1 + 1e-3:   # normalised, as DD-Ranking's tensors and ddkit's export are
        if mean is None:
            raise DDKitError(f"{path / 'images.pt'} is normalised (values outside [0, 1]); give a teacher, whose "
                             "training mean and std undo it")
        print(f"ddkit: note: {path / 'images.pt'} is normalised; undone with the teacher's mean {tuple(mean)} and "
              f"std {tuple(std)}", file=sys.stderr)
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    present = sorted(set(labels.long().tolist()))
    lut = {c: i for i, c in enumerate(present)}
    return DistilledSet(x.clamp(0, 1), torch.tensor([lut[c] for c in labels.long().tolist()]),
                        [str(c) for c in present])


def write_indexed(ds: DistilledSet, out: str | os.PathLike, layout: str) -> Path:
    """Write `ds` in the rded or sre2l layout, class c being ds.classes[c] (a ddkit run's classes are the
    dataset's, in its order), atomically: a temporary sibling folder renamed into place."""
    if layout not in INDEXED:
        raise DDKitError(f"unknown image layout {layout!r}; choose from {', '.join(INDEXED)}")
    out = Path(out)
    if out.exists():
        raise DDKitError(f"output folder {out} already exists; choose another --out")
    _, folder, name = INDEXED[layout]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        pix = (ds.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        count = [0] * len(ds.classes)
        for arr, c in zip(pix, ds.labels.tolist()):
            (tmp / folder.format(c=c)).mkdir(exist_ok=True)
            Image.fromarray(arr).save(tmp / folder.format(c=c) / name.format(c=c, i=count[c]))
            count[c] += 1
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
