"""Methods that optimise pixels on the shared engine: `sre2l`, `delt`, `e2d`, `edc`."""
from __future__ import annotations

import time
from dataclasses import dataclass, fields

import torch

from ..augment import random_flip, sample_boxes
from ..engine import RecoverConfig, StatTargets, UniformSampler, data_bn_stats, recover
from ..models import embed
from ..stats import squeeze
from ..utils import AT_LEAST_1, NON_NEGATIVE, Range, inference_batch
from . import Context, Method, Output, need_images, register


def _recover_cfg(cfg) -> RecoverConfig:
    """Copy the engine's knobs out of a method config (methods extend RecoverConfig)."""
    return RecoverConfig(**{f.name: getattr(cfg, f.name) for f in fields(RecoverConfig)})


def _bn_targets(method, ctx: Context) -> tuple[list | None, float]:
    """(targets, seconds spent on them here): None for the teacher's running stats or, with
    bn_targets=data, the BN-input statistics of the real pool (e.g. a BiLP-pruned subset), computed by the
    first group and shared by the others, like running stats."""
    if method.cfg.bn_targets == "running" or getattr(method, "_pool_stats", None) is not None:
        return getattr(method, "_pool_stats", None), 0.0
    t0 = time.time()
    batches = ctx.train.batches(None, inference_batch(ctx.train.image_size, 256))
    method._pool_stats = data_bn_stats(ctx.teacher, batches, ctx.train.normalize, ctx.device)
    return method._pool_stats, round(time.time() - t0, 2)


def prepare_stats(method, ctx: Context) -> None:
    """With stat_loss=edc, the squeeze statistics of (teacher, real pool), computed once before any group
    (every rank calls it: the pass is class-sharded) in cfg.stats_dir, or by hash under the driver's
    ctx.stats_root."""
    cfg = method.cfg
    if cfg.stat_loss != "edc" or getattr(method, "_stats", None) is not None:
        return
    t0 = time.time()
    method._stats = squeeze(ctx.teacher, ctx.train, cfg.stats_dir or None, ctx.stats_root, tuple(cfg.squeeze_scale),
                            device=ctx.device, progress=ctx.progress)
    method._stats_s = round(time.time() - t0, 2)


def _stat_targets(method, ctx: Context, classes: list[int], y: torch.Tensor) -> StatTargets | None:
    """EDC's targets for one group: global rows and the rows of these classes only."""
    if method.cfg.stat_loss != "edc":
        return None
    prepare_stats(method, ctx)
    st = method._stats
    rows = torch.searchsorted(torch.tensor(classes), y)
    return StatTargets(st.layout, st.global_targets(), st.class_targets(classes), rows)


def _recover(method, ctx: Context, x0: torch.Tensor, y: torch.Tensor, classes: list[int], **kw):
    """Run the engine on one group of classes with the method's knobs; returns the result and its
    per-group metrics (cost counters, curve, time spent on pool BN targets)."""
    lo, hi = ctx.bounds()
    edc = method.cfg.stat_loss == "edc"
    targets, stats_s = _bn_targets(method, ctx) if not edc else (None, 0.0)
    res = recover(ctx.teacher, x0, y, _recover_cfg(method.cfg), lo, hi, ctx.gen, progress=ctx.progress,
                  desc=f"{method.name} {classes[0]}..{classes[-1]}", checkpoint=ctx.checkpoint,
                  bn_targets=targets, amp=ctx.amp, compile=ctx.compile,
                  stat_targets=_stat_targets(method, ctx, classes, y), **kw)
    return res, {"iterations_run": res.iterations_run, "teacher_image_passes": res.teacher_passes,
                 "image_updates": int(res.updates.sum()), "recover_wall_s": round(res.wall_s, 2),
                 "resumed_wall_s": round(res.resumed_s, 2), "resumed_from_iteration": res.resumed_from,
                 "bn_targets_wall_s": stats_s, **({"squeeze_wall_s": method._stats_s} if edc else {}),
                 "curve": res.curve, "updates_per_image": res.updates.tolist()}


@register
class SRe2L(Method):
    """Gaussian-noise init, BN-statistics matching + CE for all iterations (jitter + flip at 32 px)."""
    name = "sre2l"

    @dataclass
    class Config(RecoverConfig):
        iterations: int = 1000
        lr: float = 0.1
        crop: str = "none"
        jitter: int = 4

    prepare = prepare_stats

    def run(self, ctx: Context, classes: list[int]) -> Output:
        y = torch.tensor(classes).repeat_interleave(ctx.ipc)
        size = ctx.train.image_size
        x0 = torch.randn(len(y), 3, size, size, generator=ctx.gen).to(ctx.device)
        res, info = _recover(self, ctx, x0, y, classes)
        return Output(res.x.cpu(), y, info=info)

    def images_needed(self, ipc: int, image_size: int) -> int:
        return 0  # noise init


def delt_rounds(ipc: int, iterations: int, round_iters: int) -> list[int]:
    """Round index of each of a class's IPC images: ipc // R per round, remainder to the earliest rounds."""
    n_rounds = max(1, iterations // round_iters)
    if ipc <= 1 or n_rounds == 1:
        return [0] * ipc
    base, extra = divmod(ipc, n_rounds)
    counts = [base + (1 if r < extra else 0) for r in range(n_rounds)]
    return [r for r, k in enumerate(counts) for _ in range(k)]


def medium_order(n: int) -> list[int]:
    """Positions outward from the median of a sorted list: mid, mid+1, mid-1, mid+2, ..."""
    mid, out = n // 2, []
    for k in range(n):
        pos = mid + (k + 1) // 2 if k % 2 else mid - k // 2
        if 0 <= pos < n:
            out.append(pos)
    out += [p for p in range(n) if p not in out]  # both ends reached unevenly for even n
    return out[:n]


@register
class DELT(Method):
    """Diversity-driven Early-Late Training: images join in rounds, teacher-ordered real init."""
    name = "delt"

    @dataclass
    class Config(RecoverConfig):
        iterations: int = 500
        round_iters: int = 100       # RI; rounds R = iterations // round_iters
        lr: float = 0.05
        crop: str = "shared"
        min_scale: float = 0.08
        curriculum: bool = True
        early_late: bool = True      # False: every image gets the full budget (ablation)
        init: str = "medium"         # medium | lowest | highest | random | noise
        candidates: int = 0          # real images ranked per class (0 = the whole class)
        CHOICES = {**RecoverConfig.CHOICES, "init": ("medium", "lowest", "highest", "random", "noise")}
        RANGES = {**RecoverConfig.RANGES, "round_iters": AT_LEAST_1, "candidates": NON_NEGATIVE}

    def images_needed(self, ipc: int, image_size: int) -> int:
        return 0 if self.cfg.init == "noise" else ipc

    prepare = prepare_stats

    @torch.no_grad()
    def _init(self, ctx: Context, c: int) -> torch.Tensor:
        cfg, size = self.cfg, ctx.train.image_size
        if cfg.init == "noise":
            return torch.randn(ctx.ipc, 3, size, size, generator=ctx.gen).to(ctx.device)
        idx = need_images(ctx, c, ctx.ipc)
        if cfg.candidates:
            idx = idx[torch.randperm(len(idx), generator=ctx.gen)[:max(cfg.candidates, ctx.ipc)]]
        if cfg.init == "random":
            return ctx.real(idx[torch.randperm(len(idx), generator=ctx.gen)[:ctx.ipc]])
        with ctx.autocast():
            _, logits = embed(ctx.teacher, ctx.real(idx))
        prob = logits.softmax(1)[:, c]
        ranked = idx[prob.argsort().cpu()]        # ascending: hardest first
        if cfg.init == "medium":
            pos = medium_order(len(ranked))[:ctx.ipc]
        elif cfg.init == "lowest":
            pos = list(range(ctx.ipc))
        else:  # highest (the choices are checked when the config is built)
            pos = list(range(len(ranked) - 1, len(ranked) - 1 - ctx.ipc, -1))
        return ctx.real(ranked[pos])

    def run(self, ctx: Context, classes: list[int]) -> Output:
        cfg = self.cfg
        rounds = delt_rounds(ctx.ipc, cfg.iterations, cfg.round_iters) if cfg.early_late else [0] * ctx.ipc
        x0 = torch.cat([self._init(ctx, c) for c in classes])
        y = torch.tensor(classes).repeat_interleave(ctx.ipc)
        start = torch.tensor(rounds * len(classes)) * cfg.round_iters
        res, info = _recover(self, ctx, x0, y, classes, start_iter=start)
        return Output(res.x.cpu(), y, info={**info, "start_iter": start.tolist()})


class E2DSampler(UniformSampler):
    """Per-image boxes. Exploration (it < K): random boxes; those whose CE > eps enter the image's
    memory. Exploitation (it >= K): draw a stored box with probability softmax(stored losses), refresh
    its loss after the step and drop it once CE <= eps; images with an empty memory get random boxes.
    """

    def __init__(self, cfg, size: int, n: int):
        super().__init__(cfg, size)
        # at least one exploration step: exploitation without exploration still needs a seeded memory
        self.k = max(1, int(cfg.explore_frac * cfg.iterations))
        self.memory: list[dict[tuple, float]] = [dict() for _ in range(n)]
        self.drawn: list[tuple | None] = [None] * n   # stored box used this step, per image
        self.exploit_steps = 0
        self.hard_after_explore = 0  # boxes in memory at the end of exploration (what exploitation may revisit)

    def exploring(self, it: int) -> bool:
        return it < self.k

    def boxes(self, it, active, gen):
        boxes = sample_boxes(len(active), self.size, self.size, (self.cfg.min_scale, self.cfg.max_scale),
                             generator=gen)
        self.drawn = [None] * len(self.memory)
        if not self.exploring(it):
            self.exploit_steps += 1
            for row, i in enumerate(active.tolist()):
                mem = self.memory[i]
                if mem:
                    keys = list(mem)
                    p = torch.tensor([mem[k] for k in keys]).softmax(0)
                    key = keys[torch.multinomial(p, 1, generator=gen).item()]
                    boxes[row] = torch.tensor(key)
                    self.drawn[i] = key
        return boxes

    def update(self, it, active, boxes, ce):
        ce = ce.cpu().tolist()
        for row, i in enumerate(active.tolist()):
            if self.exploring(it):
                if ce[row] > self.cfg.eps:
                    self.memory[i][tuple(boxes[row].tolist())] = ce[row]
            elif self.drawn[i] is not None:
                if ce[row] > self.cfg.eps:
                    self.memory[i][self.drawn[i]] = ce[row]
                else:
                    del self.memory[i][self.drawn[i]]
        if it == self.k - 1:  # also set when exploration is all there is (explore_frac=1)
            self.hard_after_explore = sum(len(m) for m in self.memory)

    def done(self, it):
        return self.cfg.early_stop and not self.exploring(it) and not any(self.memory)

    def state_dict(self):
        return {"memory": [[list(k) + [v] for k, v in m.items()] for m in self.memory],
                "exploit_steps": self.exploit_steps, "hard_after_explore": self.hard_after_explore}

    def load_state_dict(self, state):
        self.memory = [{tuple(r[:4]): r[4] for r in m} for m in state["memory"]]
        self.exploit_steps = state["exploit_steps"]
        self.hard_after_explore = state.get("hard_after_explore", 0)  # checkpoints written before it existed


def real_init(ctx: Context, classes: list[int]) -> torch.Tensor:
    """IPC uniformly random real images per class (without repetition), whole (resized to the distilled size),
    randomly flipped: E2D's and EDC's initialisation."""
    picks = [need_images(ctx, c, ctx.ipc) for c in classes]
    picks = torch.cat([p[torch.randperm(len(p), generator=ctx.gen)[:ctx.ipc]] for p in picks])
    return random_flip(ctx.real(picks, "whole"), ctx.gen)


# E2D's ImageNet-1K recovery (ncsu-dk-lab/E2D Branch_ImageNet_1K/run.sh): EDC's loss at r 0.1, momentum 0.8,
# 200 iterations, K = 140, eps 0.5, lr 0.05, per-image crops (0.5, 1), squeeze views RandomResizedCrop(0.08, 1)
E2D_PAPER = dict(stat_loss="edc", r_bn=0.1, stat_momentum=0.8, first_bn_mult=10.0, iterations=200, lr=0.05,
                 explore_frac=0.7, eps=0.5, crop="per_image", min_scale=0.5, max_scale=1.0, jitter=0, flip=True,
                 squeeze_scale=(0.08, 1.0), betas=(0.5, 0.9))


@register
class E2D(Method):
    """Exploration-Exploitation Distillation: full real images, per-image random crops that map high-loss
    boxes, then crops drawn from those boxes, early stop when none is left.

    recipe=cifar (the defaults): SRe2L's BN loss (r_bn 0.01), 200 iterations, K = 0.7 x 200, eps 0.5, lr 0.05,
    crops (0.5, 1). recipe=paper: what E2D's ImageNet-1K code runs (E2D_PAPER): EDC's category-aware statistic
    matching (stat_loss=edc, r_bn 0.1, EMA momentum 0.8, squeeze views RandomResizedCrop(0.08, 1)) with the same
    schedule; its five torchvision teachers in turn are the teacher the user passes. Other --set knobs
    override the recipe's values, in any order."""
    name = "e2d"
    RECIPES = {"cifar": {}, "paper": E2D_PAPER}

    @dataclass
    class Config(RecoverConfig):
        iterations: int = 200
        lr: float = 0.05
        crop: str = "per_image"
        min_scale: float = 0.5
        explore_frac: float = 0.7    # K = explore_frac * iterations; 1.0 = exploration only, 0 = one step
        eps: float = 0.5             # a box is "hard" while its CE exceeds eps
        early_stop: bool = True
        init: str = "real"           # real (uniform random whole image, random flip) | noise
        recipe: str = "cifar"        # cifar (these defaults) | paper (E2D's ImageNet-1K values, E2D_PAPER)
        CHOICES = {**RecoverConfig.CHOICES, "init": ("real", "noise"), "recipe": ("cifar", "paper")}
        RANGES = {**RecoverConfig.RANGES, "explore_frac": Range(0, 1), "eps": NON_NEGATIVE}

    prepare = prepare_stats

    def images_needed(self, ipc: int, image_size: int) -> int:
        return 0 if self.cfg.init == "noise" else ipc

    def run(self, ctx: Context, classes: list[int]) -> Output:
        cfg, size = self.cfg, ctx.train.image_size
        if cfg.init == "noise":
            x0 = torch.randn(len(classes) * ctx.ipc, 3, size, size, generator=ctx.gen).to(ctx.device)
        else:
            x0 = real_init(ctx, classes)
        y = torch.tensor(classes).repeat_interleave(ctx.ipc)
        sampler = E2DSampler(cfg, size, len(y))
        res, info = _recover(self, ctx, x0, y, classes, sampler=sampler)
        return Output(res.x.cpu(), y, info={**info, "exploit_steps": sampler.exploit_steps,
                                            "hard_after_explore": sampler.hard_after_explore,
                                            "memory_left": sum(len(m) for m in sampler.memory)})


# EDC's recover scripts (shaoshitong/EDC): CIFAR-10 `Branch_CIFAR_10/recover/recover.sh`, ImageNet-1K
# `Branch_full_ImageNet_1k/recover/recover.sh` (crop scale from its recover.py)
EDC_IMAGENET = dict(iterations=1000, lr=0.05, r_bn=0.1, min_scale=0.5)


@register
class EDC(Method):
    """Elucidating Dataset Condensation's synthesis on the shared engine: uniformly random whole real images
    (random flip), EDC's category-aware statistic matching (stat_loss=edc: BN inputs and Conv outputs, global
    and per-class targets, EMA 0.8 straight-through, first layer x10) + CE, Adam (0.5, 0.9) with a cosine LR,
    one RandomResizedCrop box + flip shared by the batch each step, teachers (an ensemble) in turn.

    recipe=cifar (the defaults, its CIFAR-10 script): 75 iterations, lr 0.05, r_bn 0.01, crop scale (0.08, 1).
    recipe=imagenet (its ImageNet-1K script): 1000 iterations, lr 0.05, r_bn 0.1, crop scale (0.5, 1). EDC
    initialises ImageNet from RDED's stitched images; ddkit starts from whole real images (`init=real`)."""
    name = "edc"
    RECIPES = {"cifar": {}, "imagenet": EDC_IMAGENET}

    @dataclass
    class Config(RecoverConfig):
        stat_loss: str = "edc"
        iterations: int = 75
        lr: float = 0.05
        r_bn: float = 0.01
        crop: str = "shared"
        min_scale: float = 0.08
        recipe: str = "cifar"        # cifar (these defaults) | imagenet (EDC_IMAGENET)
        CHOICES = {**RecoverConfig.CHOICES, "recipe": ("cifar", "imagenet")}

    prepare = prepare_stats

    def run(self, ctx: Context, classes: list[int]) -> Output:
        x0 = real_init(ctx, classes)
        y = torch.tensor(classes).repeat_interleave(ctx.ipc)
        res, info = _recover(self, ctx, x0, y, classes)
        return Output(res.x.cpu(), y, info=info)
