"""The recover engine shared by every optimisation-based method (SRe2L family, DELT, E2D).

x (normalised pixels) is the parameter. Each step: augment the active images (one shared
RandomResizedCrop box, per-image boxes, or a method's own boxes), forward the frozen teacher, and
minimise  CE(T(xa), y) + r_bn * sum_l m_l (||mu_l - mu_l^run||_2 + ||var_l - var_l^run||_2)  with Adam
(cosine LR per iteration), then clamp x to the valid pixel range. Methods say how x is initialised,
when each image joins (`start_iter`) and which boxes are used (`sampler`); the engine owns the rest.
On CUDA the teacher's forward runs under mixed precision (ddkit.accel); x, Adam's state, the CE and the BN
statistics and their distances stay fp32. `stat_loss=edc` replaces the BN term with EDC's category-aware
statistic matching (EDCStatLoss, against the squeeze statistics of ddkit.stats).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from .accel import compiled, configure, mixed_precision
from .augment import crop_resize, random_flip, sample_boxes
from .progress import steps
from .stats import Layout, checked_layers, members, patches
from .utils import AT_LEAST_1, NON_NEGATIVE, POSITIVE, STOP, UNIT, DDKitError, Range, load_torch, save_torch


@dataclass
class RecoverConfig:
    iterations: int = 1000
    lr: float = 0.1
    r_bn: float = 0.01
    first_bn_mult: float = 10.0
    betas: tuple[float, float] = (0.5, 0.9)
    crop: str = "shared"            # shared (one box per batch) | per_image | none
    min_scale: float = 0.08
    max_scale: float = 1.0
    curriculum: bool = False        # CDA: min scale goes 1 -> min_scale along a cosine
    jitter: int = 0                 # random roll (px) shared by the batch, SRe2L's 32x32 augmentation
    flip: bool = True
    bn_targets: str = "running"     # running: the teacher's BN buffers | data: recomputed on the real pool
    log_every: int = 10
    checkpoint_every: int = 50      # steps between checkpoints (when the driver gives a path)
    stat_loss: str = "bn"           # bn: SRe2L's BN loss | edc: EDC's category-aware statistic matching
    stat_momentum: float = 0.8      # edc: EMA momentum of the batch statistics (straight-through)
    squeeze_scale: tuple[float, float] = (0.08, 1.0)  # edc: RandomResizedCrop scale of the squeeze's views
    stats_dir: str = ""             # edc: folder of the squeeze statistics ("" = beside the teacher, by hash)
    # allowed values of string knobs, checked when a config is built from --set (methods extend it)
    CHOICES = {"crop": ("shared", "per_image", "none"), "bn_targets": ("running", "data"),
               "stat_loss": ("bn", "edc")}
    # valid values of numeric knobs, checked in the same place (methods extend it too)
    RANGES = {"iterations": AT_LEAST_1, "lr": POSITIVE, "r_bn": NON_NEGATIVE, "first_bn_mult": NON_NEGATIVE,
              "betas": Range(0, 1, open_hi=True, size=2), "min_scale": UNIT, "max_scale": UNIT,
              "jitter": NON_NEGATIVE, "log_every": AT_LEAST_1, "checkpoint_every": AT_LEAST_1,
              "stat_momentum": Range(0, 1), "squeeze_scale": Range(0, 1, open_lo=True, size=2, ordered=True)}


class BatchStats(torch.autograd.Function):
    """Per-channel mean and biased variance over (N, H, W), with a fused backward.

    Autograd through var_mean spends more CPU time than the convolutions of a ConvNet-3 (profiled:
    ~40 % of a recover step in elementwise mul/div/fill). Here the forward is two reductions over the
    [N*H*W, C] view (free for channels_last) and the backward is one addcmul over x:
    d/dx = g_mean / n + 2 g_var (x - mean) / n.
    """

    @staticmethod
    def forward(ctx, x):
        flat = x.detach().permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        n = flat.shape[0]
        mean = flat.sum(0) / n
        if x.is_cuda:
            sq = (flat * flat).sum(0)
        else:  # squares in cache-sized chunks: a fresh [n, C] temporary costs page faults, 4x the math here
            sq = sum((c * c).sum(0) for c in flat.split(max(1, 2 ** 18 // flat.shape[1])))
        var = (sq / n - mean.square()).clamp_min(0)  # a column vector_norm is 10x slower
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx, g_mean, g_var):
        x, mean = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        g_mean = torch.zeros_like(mean) if g_mean is None else g_mean
        a = torch.zeros_like(mean) if g_var is None else g_var * (2.0 / n)
        c = g_mean / n - a * mean
        return torch.addcmul(c.view(1, -1, 1, 1), x, a.view(1, -1, 1, 1))


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        raise DDKitError("the teacher has no BatchNorm layers: BN-statistics matching needs a BN teacher")
    return bns


@torch.no_grad()
def data_bn_stats(model: nn.Module, batches, normalize, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Mean and variance of every BatchNorm2d's input over an image pool given as an iterable of uint8
    batches (e.g. `data.batches()`), in eval mode (the mode
    the synthetic batch is measured in). BiLP uses it to match the statistics of a pruned pool rather
    than the teacher's running buffers, which describe the full, augmented training data."""
    bns, acc = bn_layers(model), {}

    def hook(module, inputs, output):  # merge each batch's (n, mean, var) into the running totals (Chan et al.)
        var, mean = torch.var_mean(inputs[0].float(), dim=(0, 2, 3), correction=0)
        nb = inputs[0].numel() // inputs[0].shape[1]
        n, m, m2 = acc.get(module, (0, 0.0, 0.0))
        delta, tot = mean.double() - m, n + nb
        acc[module] = (tot, m + delta * nb / tot, m2 + var.double() * nb + delta.square() * n * nb / tot)

    handles = [bn.register_forward_hook(hook) for bn in bns]
    try:
        model.eval()
        for x in batches:
            model(normalize(x.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last))
    finally:
        for h in handles:
            h.remove()
    return [(acc[bn][1].float(), (acc[bn][2] / acc[bn][0]).float()) for bn in bns]


class BNStatLoss:
    """Forward hooks on every BatchNorm2d: distance of batch statistics of its input to the targets
    (the layer's running stats unless `targets` gives one (mean, var) per layer). The first BN layer of
    each model (each ensemble member) weighs `first_mult`; layers not run in a step add nothing."""

    def __init__(self, model: nn.Module, first_mult: float = 10.0,
                 targets: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.bns = bn_layers(model)
        self.targets = {bn: t for bn, t in zip(self.bns, targets)} if targets else {}
        self.mults = {bn: first_mult if i == 0 else 1.0 for m in members(model) for i, bn in enumerate(bn_layers(m))}
        self.terms: list[torch.Tensor] = []
        self.handles = [bn.register_forward_hook(self._hook) for bn in self.bns]

    def _hook(self, module, inputs, output):
        with torch.autocast(inputs[0].device.type, enabled=False):  # fp32 statistics under mixed precision
            mean, var = BatchStats.apply(inputs[0].float())
            tm, tv = self.targets.get(module, (module.running_mean, module.running_var))
            self.terms.append(self.mults[module] * (torch.linalg.vector_norm(mean - tm) +
                                                    torch.linalg.vector_norm(var - tv)))

    def set_images(self, active: torch.Tensor) -> None:
        pass

    def pop(self) -> torch.Tensor:
        loss = sum(self.terms)
        self.terms = []
        return loss

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def close(self):
        for h in self.handles:
            h.remove()


@dataclass
class StatTargets:
    """What EDC's statistic matching compares with (ddkit.stats): global [2, D] and per-class [K, 2, D] mean and
    variance rows, and each synthetic image's row in `per_class`."""
    layout: Layout
    glob: torch.Tensor
    per_class: torch.Tensor
    rows: torch.Tensor

    def to(self, device) -> "StatTargets":
        return StatTargets(self.layout, self.glob.to(device), self.per_class.to(device), self.rows.to(device))


class EDCStatLoss:
    """EDC's category-aware statistic matching (E2D's recovery loss), as forward hooks on every BatchNorm2d input
    and Conv2d output of each member. Per layer, with m, v the batch's channel mean and variance (and, for Conv,
    the per-16x16-patch-position mean and variance over (N, C, 16, 16)), each passed through an EMA of momentum
    `momentum` that is straight-through (value ema, gradient of the batch statistic):

        R = 0.5 (|gv - v| + |gm - m|) + 0.5 (|cv - v| + |cm - m|)      (summed over channel and patch parts)

    g: global targets (a BN layer's channel part: its running buffers with `bn_running`, else the squeeze's
    pooled pool statistics); c: the per-class targets averaged over the labels of the images in the step. The
    first stat layer of each member weighs `first_mult`. The EMA state is per layer, starts at the first batch
    statistic, and is part of the engine's checkpoint."""

    def __init__(self, model: nn.Module, targets: StatTargets, first_mult: float = 10.0, momentum: float = 0.8,
                 bn_running: bool = True):
        layers = checked_layers(model)
        if [[k for _, k in f] for f in layers] != [[l["kind"] for l in m] for m in targets.layout.layers]:
            raise DDKitError("the statistics do not fit this teacher's BatchNorm2d/Conv2d layers; they were "
                             "computed for another architecture")
        self.t, self.momentum, self.bn_running = targets, momentum, bn_running
        self.info = {}
        for found, spans in zip(layers, targets.layout.slices()):
            for i, ((m, k), parts) in enumerate(zip(found, spans)):
                self.info[m] = (len(self.info), k, parts, first_mult if i == 0 else 1.0)
        self.ema: dict[str, list[torch.Tensor]] = {}
        self.terms: list[torch.Tensor] = []
        self.cls = None
        self.handles = [m.register_forward_hook(self._hook) for m in self.info]

    def set_images(self, active: torch.Tensor) -> None:
        """The images of the coming forward: their classes' targets, averaged (EDC's `[targets].mean(0)`)."""
        self.cls = self.t.per_class[self.t.rows[active]].mean(0)

    def _straight_through(self, key: str, stat: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        prev = self.ema.get(key)
        now = [s.detach() for s in stat] if prev is None else \
            [self.momentum * p + (1 - self.momentum) * s.detach() for p, s in zip(prev, stat)]
        self.ema[key] = now
        return [e + s - s.detach() for e, s in zip(now, stat)]

    def _hook(self, module, inputs, output):
        lid, kind, parts, mult = self.info[module]
        with torch.autocast(inputs[0].device.type, enabled=False):  # fp32 statistics under mixed precision
            # a Conv output may be overwritten next by an in-place activation (AlexNet's ReLU, EfficientNet's SE
            # SiLU) before the backward needs it: statistics are taken of a copy
            a = inputs[0].float() if kind == "bn" else output.to(torch.float32, copy=True)
            stats = [BatchStats.apply(a)]
            if kind == "conv":
                v, m = torch.var_mean(patches(a), dim=(0, 1, 3, 5), correction=0)
                stats.append((m.flatten(), v.flatten()))
            term = 0.0
            for j, (stat, sl) in enumerate(zip(stats, parts)):
                m, v = self._straight_through(f"{lid}.{j}", stat)
                gm, gv = ((module.running_mean, module.running_var) if kind == "bn" and self.bn_running
                          else (self.t.glob[0, sl], self.t.glob[1, sl]))
                cm, cv = self.cls[0, sl], self.cls[1, sl]
                term = term + 0.5 * (torch.linalg.vector_norm(gv - v) + torch.linalg.vector_norm(gm - m)) \
                    + 0.5 * (torch.linalg.vector_norm(cv - v) + torch.linalg.vector_norm(cm - m))
            self.terms.append(mult * term)

    pop = BNStatLoss.pop
    close = BNStatLoss.close

    def state_dict(self) -> dict:
        return {k: torch.stack(v).cpu() for k, v in self.ema.items()}

    def load_state_dict(self, state: dict) -> None:
        dev = self.t.glob.device
        self.ema = {k: list(v.to(dev).unbind(0)) for k, v in state.items()}


class UniformSampler:
    """Random boxes: one RandomResizedCrop box for the whole batch, or one per image."""

    def __init__(self, cfg: RecoverConfig, size: int):
        self.cfg, self.size = cfg, size

    def min_scale(self, it: int) -> float:
        c = self.cfg
        if not c.curriculum:
            return c.min_scale
        return c.min_scale + (1 - c.min_scale) * (1 + math.cos(math.pi * it / c.iterations)) / 2

    def boxes(self, it: int, active: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        if self.cfg.crop == "none":
            return None
        n = 1 if self.cfg.crop == "shared" else len(active)
        lo = min(self.min_scale(it), self.cfg.max_scale)
        return sample_boxes(n, self.size, self.size, (lo, self.cfg.max_scale), generator=gen)

    def update(self, it: int, active: torch.Tensor, boxes, ce: torch.Tensor) -> None:
        pass

    def done(self, it: int) -> bool:
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class RecoverResult:
    x: torch.Tensor
    updates: torch.Tensor            # per-image number of gradient steps received
    curve: dict = field(default_factory=dict)
    iterations_run: int = 0
    teacher_passes: int = 0           # forward+backward passes of the teacher, in images
    wall_s: float = 0.0               # including the time before an interruption, up to its checkpoint
    resumed_s: float = 0.0            # of which spent by earlier, interrupted attempts
    resumed_from: int = 0             # iteration this call resumed at (0: started afresh)


def recover(teacher: nn.Module, x0: torch.Tensor, y: torch.Tensor, cfg: RecoverConfig, lo: torch.Tensor,
            hi: torch.Tensor, gen: torch.Generator, start_iter: torch.Tensor | None = None,
            sampler=None, progress: bool = True, desc: str = "recover", checkpoint: str | None = None,
            bn_targets: list[tuple[torch.Tensor, torch.Tensor]] | None = None, amp: bool = True,
            compile: bool = False, stat_targets: StatTargets | None = None) -> RecoverResult:
    """Optimise x0 (normalised, on the teacher's device) against the frozen teacher. An ensemble teacher is
    used one member per step, in turn (CE and BN statistics of that member: E2D's multi-teacher recovery),
    which costs one model's forward per step rather than all of them.

    `amp`: mixed precision where the device has it (TrainConfig.amp); `compile`: torch.compile the
    teacher's forward (its BN hooks included). cfg.stat_loss="edc" replaces the BN loss with EDCStatLoss
    against `stat_targets` (ddkit.stats), weighted by cfg.r_bn.

    With `checkpoint`, the whole state (pixels, Adam, generator, sampler, step, curve) is saved every
    cfg.checkpoint_every steps and on a stop request (SIGTERM); a later call with the same arguments
    continues from it and ends bit-identical to an uninterrupted run.
    """
    device = x0.device
    teacher.eval().to(memory_format=torch.channels_last)  # as its inputs: no layout change per conv
    for p in teacher.parameters():
        p.requires_grad_(False)
    x = nn.Parameter(x0.clone())
    y = y.to(device)
    try:
        opt = torch.optim.Adam([x], lr=cfg.lr, betas=cfg.betas)
    except ValueError as e:  # torch's own check of lr / betas, e.g. "Invalid learning rate: -1.0"
        raise DDKitError(f"{desc}: {e}; check --set lr and betas") from None
    if cfg.stat_loss not in RecoverConfig.CHOICES["stat_loss"]:
        raise DDKitError(f"unknown stat_loss {cfg.stat_loss!r}; choose from bn, edc")
    if cfg.stat_loss == "edc":
        if stat_targets is None:
            raise DDKitError(f"{desc}: stat_loss=edc needs the squeeze statistics (ddkit.stats.squeeze)")
        bn = EDCStatLoss(teacher, stat_targets.to(device), cfg.first_bn_mult, cfg.stat_momentum,
                         cfg.bn_targets == "running")
    else:
        bn = BNStatLoss(teacher, cfg.first_bn_mult, bn_targets)
    nets = [compiled(m, compile) for m in members(teacher)]  # after the hooks are in place: traced with them
    sampler = sampler or UniformSampler(cfg, x0.shape[-1])
    start = start_iter.to(device) if start_iter is not None else torch.zeros(len(x0), dtype=torch.long, device=device)
    updates = torch.zeros(len(x0), dtype=torch.long)
    curve = {"iteration": [], "ce": [], "bn": [], "loss": []}
    lo, hi = lo.to(device).view(1, -1, 1, 1), hi.to(device).view(1, -1, 1, 1)
    prec = mixed_precision(device, amp)
    configure(device)
    scaler = prec.scaler()
    t0, passes, it, first, before = time.time(), 0, 0, 0, 0.0
    if checkpoint:
        try:
            st = load_torch(checkpoint, "recover checkpoint")
        except DDKitError:
            st = None  # none yet (or unreadable: start over rather than trust it)
        if st is not None:
            with torch.no_grad():
                x.copy_(st["x"].to(device))
            opt.load_state_dict(st["opt"])
            gen.set_state(st["gen"])
            sampler.load_state_dict(st["sampler"])
            updates, curve, passes, first = st["updates"], st["curve"], st["passes"], st["it"]
            before = st.get("elapsed_s", 0.0)
            if st.get("scaler"):
                scaler.load_state_dict(st["scaler"])
            bn.load_state_dict(st.get("stat_state", {}))

    def save(next_it: int):
        save_torch({"x": x.detach().cpu(), "opt": opt.state_dict(), "gen": gen.get_state(), "it": next_it,
                    "sampler": sampler.state_dict(), "updates": updates, "curve": curve, "passes": passes,
                    "scaler": scaler.state_dict(), "elapsed_s": before + time.time() - t0,
                    "stat_state": bn.state_dict()},
                   checkpoint)

    bar = steps(first, cfg.iterations, desc, enabled=progress)
    try:
        for it in bar:
            if checkpoint and it > first and (it % cfg.checkpoint_every == 0 or STOP["requested"]):
                save(it)
                if STOP["requested"]:
                    raise DDKitError(f"{desc}: stopped at iteration {it}, state saved; rerun the same "
                                     f"command to resume")
            active = torch.nonzero(start <= it).flatten()
            if len(active) == 0:
                continue
            for g in opt.param_groups:
                g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * it / cfg.iterations))
            xa = x[active] if len(active) < len(x) else x
            boxes = sampler.boxes(it, active, gen)
            if boxes is not None:
                xa = crop_resize(xa, boxes, xa.shape[-1])
            if cfg.jitter:
                dx, dy = torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=gen).tolist()
                xa = torch.roll(xa, shifts=(dy, dx), dims=(2, 3))
            if cfg.flip:
                xa = random_flip(xa, gen)
            bn.set_images(active)
            with prec.autocast():
                logits = nets[it % len(nets)](xa.contiguous(memory_format=torch.channels_last))
            ce = F.cross_entropy(logits.float(), y[active], reduction="none")
            bn_loss = bn.pop()
            loss = ce.mean() + cfg.r_bn * bn_loss
            if not torch.isfinite(loss):
                raise DDKitError(f"{desc}: loss became {loss.item()} at iteration {it}; lower --set lr")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            with torch.no_grad():
                x.clamp_(min=lo, max=hi)
            updates[active.cpu()] += 1
            passes += len(active)
            sampler.update(it, active, boxes, ce.detach())
            if it % cfg.log_every == 0 or it == cfg.iterations - 1:
                curve["iteration"].append(it)
                curve["ce"].append(round(ce.mean().item(), 5))
                curve["bn"].append(round(bn_loss.item(), 5))
                curve["loss"].append(round(loss.item(), 5))
                bar.set_postfix(ce=curve["ce"][-1], bn=curve["bn"][-1])
            if sampler.done(it):
                break
        bar.close()
    finally:
        bn.close()
    return RecoverResult(x.detach(), updates, curve, it + 1, passes, before + time.time() - t0, before, first)
