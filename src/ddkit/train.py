"""One training loop for teachers and students.

Images live on the device as one tensor (uint8 real data or float synthetic data in [0, 1]) and are
normalised and augmented per batch on the device: no DataLoader workers, no per-image Python. A stream
(ddkit.stream.StreamData, data larger than memory) instead hands over each batch decoded and augmented
by its DataLoader workers.
Label modes: `hard` (cross-entropy, optional label smoothing), `soft` (KL to a teacher on the same
augmented view, temperature tau; or EDC's MSE on the logits, optionally plus a weighted cross-entropy on
the set's labels), each optionally weighted per sample (DDOQ cell masses). Soft labels come
from an online teacher (one model or an ensemble) or are replayed, views included, from a stored label file
(`labels_from`, see ddkit.fkd). Optional per batch: CutMix, the teacher labelling the mixed view (with hard
labels the two classes' losses are mixed by area), torchvision's RandAugment on the stored images (per image:
the one Python loop over images). Optional per step: an EMA of the weights (EDC), which is what `on_epoch`
sees and what the model holds at the end.

Under torchrun, `fit` is data-parallel (DDP): every rank walks the same permutation and draws the same
augmentation numbers, takes its contiguous share of each global batch, and the loss is scaled so the
averaged gradient is the 1-process gradient of the global batch. Models without BatchNorm therefore train
the same as in one process (up to float summation order); BatchNorm becomes SyncBatchNorm on CUDA and
stays per-rank on CPU (gloo has no SyncBatchNorm).

On CUDA, steps run under mixed precision (`amp`, ddkit.accel: bf16, or fp16 with a GradScaler) and optionally
torch.compile'd (`compile`); on CPU the loop is the fp32 loop, unchanged.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from . import dist
from .accel import compiled, configure, mixed_precision
from .augment import Views, apply_views, draw_views, paste, rand_augment
from .progress import steps
from .utils import STOP, DDKitError, load_torch, save_torch


CHECKPOINT_S = 30.0  # at most one training checkpoint per this many seconds
clock = time.monotonic  # of checkpoint spacing and elapsed time; tests inject their own


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 256
    optimizer: str = "sgd"          # sgd (nesterov) | adamw
    lr: float = 0.05
    weight_decay: float = 5e-4
    schedule: str = "onecycle"      # onecycle (linear warm-up 20 %, linear decay) | cosine (to 0) |
    #                                 half_cosine (0.5 (1 + cos(pi t / 2)), ends at 0.5: RDED) |
    #                                 step (x0.5 at each of `milestones`: EDC's MultiStepLR) | cos2 (E2D)
    label_smoothing: float = 0.0
    aug: str = "translate"          # translate (pad-crop + flip) | rrc (random-resized-crop + flip) | none
    rrc_scale: tuple[float, float] = (0.5, 1.0)
    temperature: float = 4.0
    channels_last: bool = True
    amp: bool | str = True          # mixed precision: True (auto: CUDA only), False, "on" (CUDA, or bf16 on CPU)
    lr_by_epoch: bool = False       # LR set once per epoch (the peers' per-epoch LambdaLR), not per step
    cutmix: float = 0.0             # CutMix beta on every batch (0 = off)
    kl_t2: bool = True              # soft-label KL times tau^2 (Hinton); RDED/SRe2L leave it out
    bn_warm: bool = False           # RDED quirk: a no-grad train-mode forward of the (mixed) views first
    milestones: tuple[float, ...] = (0.8, 0.9, 0.95)  # fractions of training where `step` halves the LR
    soft_loss: str = "kl"           # kl (soft_kl) | mse (EDC: mean squared difference of the logits, no tau)
    ce_weight: float = 0.0          # + this times cross-entropy on the set's labels, with soft labels (EDC 0.025)
    ema: float = 0.0                # decay of an EMA of the weights, tested instead of them (0 = none; EDC 0.99)
    randaug_ops: int = 0            # torchvision RandAugment ops per view, before the crop (0 = off; EDC 2)
    randaug_magnitude: int = 9
    patch_shuffle: int = 0          # f > 1: RDED's ShufflePatches(f) on each stored image before the crop
    rrc_exact: bool = False         # RandomResizedCrop boxes as torchvision draws them (augment.torchvision_boxes)
    decay: str = "all"              # weight decay on all parameters | weights (RDED/SRe2L: see param_groups)
    compile: bool = False           # torch.compile the model trained and the online teacher


_ADDED = {"lr_by_epoch": False, "cutmix": 0.0, "kl_t2": True, "bn_warm": False, "milestones": (0.8, 0.9, 0.95),
          "soft_loss": "kl", "ce_weight": 0.0, "ema": 0.0, "randaug_ops": 0, "randaug_magnitude": 9,
          "patch_shuffle": 0, "rrc_exact": False, "decay": "all"}


def config_id(cfg: TrainConfig) -> dict:
    """The recipe as hashed into cache keys: fields added later are left out while at their defaults, so a
    teacher cached before they existed keeps its key. How it runs is not what it is: `compile` is left out,
    and `amp` (like the device, a matter of precision) keeps the value every key had before --amp existed."""
    return {k: True if k == "amp" else v for k, v in dataclasses.asdict(cfg).items()
            if k != "compile" and (k not in _ADDED or v != _ADDED[k])}


# Teacher recipes by name (`ddkit teacher --recipe`). `airnet`: a larger batch and peak LR for the
# airbench-style net, whose 1/9-scaled head and whitened, frozen first layer take them (see models.AirNet).
TEACHER_RECIPES = {
    "default": dict(batch_size=256, lr=0.1),
    "airnet": dict(batch_size=512, lr=0.4),
}


def teacher_recipe(epochs: int = 30, name: str = "default") -> TrainConfig:
    if name not in TEACHER_RECIPES:
        raise DDKitError(f"unknown teacher recipe {name!r}; choose from {', '.join(TEACHER_RECIPES)}")
    return TrainConfig(epochs=epochs, optimizer="sgd", weight_decay=5e-4, schedule="onecycle",
                       label_smoothing=0.2, aug="translate", **TEACHER_RECIPES[name])


def student_recipe(epochs: int = 300) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=0.01,
                       schedule="cosine", aug="rrc")


def lr_factor(cfg: TrainConfig, epoch: int, b: int, steps_per_epoch: int) -> float:
    """LR multiplier at step b of `epoch`."""
    t = epoch / cfg.epochs if cfg.lr_by_epoch else (epoch * steps_per_epoch + b) / max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "half_cosine":
        return 0.5 * (1 + math.cos(math.pi * t / 2))
    if cfg.schedule == "step":
        return 0.5 ** sum(t >= m for m in cfg.milestones)
    if cfg.schedule == "cos2":  # E2D's: half a cosine period over 2E to 5E/6, then its value there x (1 - t)
        return 0.5 * (1 + math.cos(math.pi * t / 2)) if t <= 5 / 6 else \
            0.5 * (1 + math.cos(math.pi * 5 / 12)) * (1 - t)
    return t / 0.2 if t < 0.2 else max(0.0, (1 - t) / 0.8)


def epoch_views(cfg: TrainConfig, n: int, bs: int, hw: tuple[int, int], gen: torch.Generator):
    """One epoch of online draws: (batch indices, Views, None) per batch (None: no stored logits)."""
    perm = torch.randperm(n, generator=gen)
    for b in range(0, n, bs):
        batch = perm[b:b + bs]
        # translate: 4 px at 32 px, as airbench
        yield batch, draw_views(cfg.aug, len(batch), *hw, gen, cfg.rrc_scale, max(1, hw[1] // 8), cfg.cutmix,
                                (cfg.randaug_ops, cfg.randaug_magnitude), cfg.patch_shuffle, cfg.rrc_exact), None


def render(images: torch.Tensor, normalize, batch: torch.Tensor, v: Views, sel) -> tuple[torch.Tensor, torch.Tensor]:
    """(views, un-mixed views) of rows `sel` of `batch`; a CutMix partner may be any row of the batch."""
    dev = images.device
    x = apply_views(normalize(rand_augment(images[batch[sel].to(dev)], v, sel)), v, sel)
    if v.mix_perm is None:
        return x, x
    src = v.mix_perm[sel]
    return paste(x, apply_views(normalize(rand_augment(images[batch[src].to(dev)], v, src)), v, src), v.mix_box), x


def soft_kl(out: torch.Tensor, target_logits: torch.Tensor, tau: float, t2: bool = True) -> torch.Tensor:
    """Per-sample KL(softmax(target / tau) || softmax(out / tau)), times tau^2 when `t2`."""
    per = F.kl_div(F.log_softmax(out.float() / tau, 1), F.log_softmax(target_logits.float() / tau, 1),
                   reduction="none", log_target=True).sum(1)
    return per * tau * tau if t2 else per


def soft_loss(out: torch.Tensor, target_logits: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Per-sample soft-label loss: soft_kl, or (mse) the mean over classes of the squared logit difference,
    whose batch mean is EDC's F.mse_loss(student logits, teacher logits)."""
    if cfg.soft_loss == "mse":
        return (out.float() - target_logits.float()).pow(2).mean(1)
    return soft_kl(out, target_logits, cfg.temperature, cfg.kl_t2)


def weight_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA of `model`'s parameters (torch's AveragedModel), starting at its current weights as EDC's does.
    Its buffers (BatchNorm running statistics) are copied from the live model at every update: EDC tests its
    EMA weights with the trained model's statistics (it swaps parameters only)."""
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
    ema.update_parameters(model)  # the first update copies
    return ema


def param_groups(model: nn.Module, decay: str) -> list[dict]:
    """The optimizer's parameter groups: one (`all`: weight decay on every parameter), or (`weights`) RDED's
    and SRe2L's `get_parameters`: decay on parameters named *weight* with two or more dimensions (conv and
    linear weights), none on biases and normalisation weights."""
    if decay == "all":
        return [{"params": list(model.parameters())}]
    if decay != "weights":
        raise DDKitError(f"unknown weight-decay rule {decay!r}; choose all or weights")
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if "weight" in n and p.dim() > 1]},
            {"params": [p for n, p in named if not ("weight" in n and p.dim() > 1)], "weight_decay": 0.0}]


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


@torch.no_grad()
def batched_logits(model: nn.Module, batches, normalize, device, flip_tta: bool = False):
    """Yield (start index, logits) over an iterable of image batches in eval mode, on `device`; with
    `flip_tta`, the mean of the image's and its mirror image's logits."""
    model.eval()
    i = 0
    for x in batches:
        x = normalize(x.to(device, non_blocking=True))
        out = model(x).float()
        yield i, (out + model(x.flip(-1)).float()) / 2 if flip_tta else out
        i += len(x)


def accuracy(model: nn.Module, batches, labels: torch.Tensor, normalize, device, flip_tta: bool = False) -> float:
    """Top-1 accuracy over an iterable of image batches (e.g. `data.batches(view="test")`) and their labels."""
    correct = sum((out.argmax(1).cpu() == labels[i:i + len(out)]).sum().item()
                  for i, out in batched_logits(model, batches, normalize, device, flip_tta))
    return correct / max(1, len(labels))


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalize, cfg: TrainConfig,
        device: torch.device, *, seed: int = 0, teacher: nn.Module | None = None,
        weights: torch.Tensor | None = None, checkpoint: str | None = None, desc: str = "train",
        progress: bool = True, loss_fn=None, on_batch=None, labels_from=None, on_epoch=None) -> dict:
    """Train `model` in place. `images` are uint8 or [0,1] floats; `normalize` maps them to model input.

    With `teacher`, the loss is the soft-label loss (cfg.soft_loss) on the same augmented view (labels then
    only enter through cfg.ce_weight). `loss_fn(out, labels) -> per-sample loss` replaces cross-entropy (e.g. an
    autoencoder's reconstruction); `on_batch(idx, per_sample_loss)` sees every step's losses (used to
    score samples during training at no extra cost; under DDP it sees this rank's rows). `labels_from` (an
    FKD label store) replays stored batches, views and teacher logits instead of drawing them; `on_epoch(
    epochs_done, model)` may return a number (e.g. test accuracy), kept in history["test"]. With cfg.ema the
    model `on_epoch` sees is the EMA, and `model` ends holding the EMA's weights. With `checkpoint`, state
    is saved (by rank 0) at the end of an epoch once CHECKPOINT_S seconds have passed since the last
    save (tiny distilled sets finish an epoch in a fraction of a second), and a rerun resumes from it.
    """
    if len(labels) == 0:
        raise DDKitError("no training images")
    rank, world = dist.rank_world()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device)
    mf = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=mf)
    if teacher is not None:
        teacher.to(device).eval().to(memory_format=mf)
    stream = not torch.is_tensor(images)  # a StreamData (ddkit.stream) decodes and augments its own views
    if stream and (cfg.patch_shuffle or labels_from is not None):
        raise DDKitError(f"{desc}: ShufflePatches and stored labels need the images in memory "
                         "(--data-backend memory)")
    hw = (images.image_size,) * 2 if stream else tuple(images.shape[-2:])
    images, labels = images if stream else images.to(device), labels.to(device)
    w = weights.to(device).float() if weights is not None else None
    n = len(labels)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    if n - (steps_per_epoch - 1) * bs < world:  # the last, smallest batch
        raise DDKitError(f"{desc}: a batch of {n - (steps_per_epoch - 1) * bs} images cannot be split over "
                         f"{world} processes; run with fewer")
    groups = param_groups(model, cfg.decay)
    opt = (torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True,
                           weight_decay=cfg.weight_decay) if cfg.optimizer == "sgd" else
           torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay))
    ema = weight_ema(model, cfg.ema) if cfg.ema else None
    prec = mixed_precision(device, cfg.amp)
    configure(device)
    scaler = prec.scaler()
    start, history, before = 0, {"loss": []}, 0.0
    if checkpoint:
        try:
            state = load_torch(checkpoint, "training checkpoint")
        except DDKitError:
            state = None
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            start, history, before = state["epoch"], state["history"], state.get("elapsed_s", 0.0)
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
    net = compiled(_data_parallel(model, device) if world > 1 else model, cfg.compile)
    teach = compiled(teacher, cfg.compile)
    saved = began = clock()
    bar = steps(start, cfg.epochs, desc, unit="epoch", enabled=progress)
    for epoch in bar:
        model.train()
        tot = 0.0
        batches = (labels_from.epoch(epoch) if labels_from is not None else images.epoch(cfg, bs, gen, rank, world)
                   if stream else epoch_views(cfg, n, bs, hw, gen))
        for b, (batch, views, stored) in enumerate(batches):
            if STOP["requested"]:
                raise DDKitError(f"{desc}: stopped in epoch {epoch}" + ("; its last checkpoint is kept, rerun "
                                                                        "to resume" if checkpoint else ""))
            m = len(batch)
            rows = slice(m * rank // world, m * (rank + 1) // world)
            idx = batch[rows].to(device)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(cfg, epoch, b, steps_per_epoch)
            if stream:  # `views` holds this rank's rows, decoded and augmented by the loader's workers
                x = normalize(views.to(device, non_blocking=True))
                views = Views()
                if cfg.cutmix:  # one box per batch, as in memory; partners among this rank's decoded rows
                    views = draw_views("none", m, *hw, gen, cutmix=cfg.cutmix)
                    local = views.mix_perm[rows].argsort()
                    views.mix_perm[rows] = local + rows.start
                    x = paste(x, x[local.to(device)], views.mix_box)
            else:
                x, _ = render(images, normalize, batch, views, rows)
            x = x.contiguous(memory_format=mf)
            with prec.autocast():
                if cfg.bn_warm:  # RDED: of the mixed batch, since its CutMix writes into the batch in place
                    with torch.no_grad():
                        net(x)
                out = net(x)
                if stored is not None or teacher is not None:
                    with torch.no_grad():
                        t = stored[rows].to(device) if stored is not None else teach(x)
                    per = soft_loss(out, t, cfg)
                    if cfg.ce_weight:
                        per = per + cfg.ce_weight * _cross_entropy(out.float(), labels, batch, views, rows, cfg, hw)
                elif loss_fn is not None:
                    per = loss_fn(out.float(), labels[idx])
                else:
                    per = _cross_entropy(out.float(), labels, batch, views, rows, cfg, hw)
                # sum / global batch size, times world because DDP averages the ranks' gradients
                loss = (per * w[idx] if w is not None else per).sum() * world / m
            step_loss = dist.all_sum(loss.detach().clone()).item() / world  # every rank sees a NaN together
            if not math.isfinite(step_loss):
                kept = " (last good checkpoint kept)" if checkpoint else ""
                raise DDKitError(f"{desc}: loss became {step_loss} at epoch {epoch}; lower the learning rate{kept}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update_parameters(model)
            tot += step_loss
            if on_batch is not None:
                on_batch(idx, per.detach())
        history["loss"].append(tot / steps_per_epoch)
        if on_epoch is not None and (value := on_epoch(epoch + 1, ema.module if ema else model)) is not None:
            history.setdefault("test", []).append([epoch + 1, value])
        bar.set_postfix(loss=f"{history['loss'][-1]:.4g}")
        if checkpoint and rank == 0 and (clock() - saved >= CHECKPOINT_S or epoch + 1 == cfg.epochs):
            saved = clock()
            save_torch({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                        "epoch": epoch + 1, "history": history, "scaler": scaler.state_dict(),
                        "elapsed_s": before + clock() - began, **({"ema": ema.state_dict()} if ema else {})},
                       checkpoint)
    bar.close()
    if ema is not None:  # what the protocol tests
        model.load_state_dict(ema.module.state_dict())
    model.eval()
    # resumed_s: training time spent by interrupted attempts, up to their checkpoint
    return {**history, "resumed_s": before, "precision": prec.name}


def _cross_entropy(out, labels, batch, v: Views, rows, cfg: TrainConfig, hw) -> torch.Tensor:
    """Per-sample CE; under CutMix, the two images' labels weighted by their areas in the view."""
    ce = F.cross_entropy(out, labels[batch[rows].to(out.device)], reduction="none",
                         label_smoothing=cfg.label_smoothing)
    if v.mix_perm is None:
        return ce
    lam = v.mix_lam(*hw)
    partner = labels[batch[v.mix_perm[rows]].to(out.device)]
    return lam * ce + (1 - lam) * F.cross_entropy(out, partner, reduction="none",
                                                  label_smoothing=cfg.label_smoothing)
