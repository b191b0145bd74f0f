"""Method registry. A method is a small class with a `Config` dataclass (its knobs, set from the CLI with
`--set key=value`) and `run(ctx, classes)`, which returns normalised images for those classes.

The driver (`ddkit.distill`) calls `run` once per group of classes with a generator seeded by the group,
so groups are independent: finished groups are never redone on resume, and ranks can split them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..accel import mixed_precision
from ..data import Images
from ..utils import DDKitError, parse_overrides  # noqa: F401  (parse_overrides: the methods' API)

METHODS: dict[str, type["Method"]] = {}


def register(cls):
    METHODS[cls.name] = cls
    return cls


@dataclass
class Context:
    train: Images
    teacher: nn.Module | None
    ipc: int
    device: torch.device
    gen: torch.Generator
    progress: bool = True
    checkpoint: str | None = None   # where an optimising method keeps its resumable state
    amp: bool | str = True          # mixed precision: True (auto), False, "on" (ddkit.accel.amp_setting)
    compile: bool = False           # torch.compile the teacher's forward in the engine
    stats_root: str | None = None   # where squeeze statistics are cached by hash (None: the cache folder)

    def autocast(self):
        """The run's mixed precision, for a method's own teacher forwards (scoring, ranking)."""
        return mixed_precision(self.device, self.amp).autocast()

    def real(self, idx: torch.Tensor, view: str = "center") -> torch.Tensor:
        """Normalised real images at `idx` (decoded in `view`, see ddkit.data.VIEWS), on the device."""
        return self.train.normalize(self.train.load(idx, view).to(self.device, non_blocking=True))

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = torch.tensor(self.train.mean), torch.tensor(self.train.std)
        return (0 - m) / s, (1 - m) / s


@dataclass
class Output:
    x: torch.Tensor                      # normalised images [n, 3, H, W] (cpu)
    labels: torch.Tensor                 # [n]
    weights: torch.Tensor | None = None  # per-image loss weights (DDOQ)
    info: dict[str, Any] = field(default_factory=dict)  # per-group metrics, merged by the driver


class Method:
    name = ""
    needs_teacher = True

    @dataclass
    class Config:
        pass

    def __init__(self, cfg=None):
        self.cfg = cfg if cfg is not None else self.Config()

    def prepare(self, ctx: Context) -> None:
        """Work shared by every group, done by every rank before any group (e.g. the squeeze statistics)."""

    def run(self, ctx: Context, classes: list[int]) -> Output:
        raise NotImplementedError

    def images_needed(self, ipc: int, image_size: int) -> int:
        """Real images each class must have (checked by the driver before any work): IPC for a method that
        starts from (or picks) real images, 0 for one that starts from noise."""
        return ipc


def build_method(name: str, overrides: dict[str, str] | None = None) -> Method:
    """A method from --set overrides. A `recipe` (a method's RECIPES: named sets of values) is applied first,
    so the other overrides, in any order, change what it set."""
    if name not in METHODS:
        raise DDKitError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    overrides, base = dict(overrides or {}), None
    if "recipe" in overrides and hasattr(cls, "RECIPES"):
        base = parse_overrides(cls.Config, {"recipe": overrides.pop("recipe")}, what=f"method {name}")
        base = dataclasses.replace(base, **cls.RECIPES[base.recipe])
    return cls(parse_overrides(cls.Config, overrides, base=base, what=f"method {name}"))


def need_images(ctx: Context, c: int, k: int) -> torch.Tensor:
    """Indices of class c, refusing (one line) when the class has fewer than k images."""
    idx = ctx.train.class_indices(c)
    if len(idx) < k:
        raise DDKitError(f"class {ctx.train.classes[c]!r} has {len(idx)} images, fewer than IPC={k}")
    return idx


from . import real, optimize, quantize  # noqa: E402,F401  (register the built-in methods)
