"""Methods that optimise pixels on the shared engine: `sre2l`, `delt`, `e2d`."""
from __future__ import annotations

import time
from dataclasses import dataclass, fields

import torch

from ..augment import random_flip, sample_boxes
from ..engine import RecoverConfig, UniformSampler, data_bn_stats, recover
from ..models import embed
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


def _recover(method, ctx: Context, x0: torch.Tensor, y: torch.Tensor, classes: list[int], **kw):
    """Run the engine on one group of classes with the method's knobs; returns the result and its
    per-group metrics (cost counters, curve, time spent on pool BN targets)."""
    lo, hi = ctx.bounds()
    targets, stats_s = _bn_targets(method, ctx)
    res = recover(ctx.teacher, x0, y, _recover_cfg(method.cfg), lo, hi, ctx.gen, progress=ctx.progress,
                  desc=f"{method.name} {classes[0]}..{classes[-1]}", checkpoint=ctx.checkpoint,
                  bn_targets=targets, amp=ctx.amp, compile=ctx.compile, **kw)
    return res, {"iterations_run": res.iterations_run, "teacher_image_passes": res.teacher_passes,
                 "image_updates": int(res.updates.sum()), "recover_wall_s": round(res.wall_s, 2),
                 "resumed_wall_s": round(res.resumed_s, 2), "resumed_from_iteration": res.resumed_from,
                 "bn_targets_wall_s": stats_s,
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


@register
class E2D(Method):
    """Exploration-Exploitation Distillation (with the SRe2L BN loss): full real images, per-image
    random crops that map high-loss boxes, then crops drawn from those boxes, early stop when none is left."""
    name = "e2d"

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
        CHOICES = {**RecoverConfig.CHOICES, "init": ("real", "noise")}
        RANGES = {**RecoverConfig.RANGES, "explore_frac": Range(0, 1), "eps": NON_NEGATIVE}

    def images_needed(self, ipc: int, image_size: int) -> int:
        return 0 if self.cfg.init == "noise" else ipc

    def run(self, ctx: Context, classes: list[int]) -> Output:
        cfg, size = self.cfg, ctx.train.image_size
        if cfg.init == "noise":
            x0 = torch.randn(len(classes) * ctx.ipc, 3, size, size, generator=ctx.gen).to(ctx.device)
        else:
            picks = [need_images(ctx, c, ctx.ipc) for c in classes]
            picks = torch.cat([p[torch.randperm(len(p), generator=ctx.gen)[:ctx.ipc]] for p in picks])
            x0 = random_flip(ctx.real(picks, "whole"), ctx.gen)  # the whole photo at the distilled size
        y = torch.tensor(classes).repeat_interleave(ctx.ipc)
        sampler = E2DSampler(cfg, size, len(y))
        res, info = _recover(self, ctx, x0, y, classes, sampler=sampler)
        return Output(res.x.cpu(), y, info={**info, "exploit_steps": sampler.exploit_steps,
                                            "hard_after_explore": sampler.hard_after_explore,
                                            "memory_left": sum(len(m) for m in sampler.memory)})
