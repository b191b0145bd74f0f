"""Data selection before distillation (BiLP, "Distill Gold from Massive Ores"), per class.

- `loss` (static): train a proxy ConvNet-3 on the data for a few epochs and average every sample's
  training loss over them (read off the training steps, so scoring costs nothing beyond the proxy);
  keep the low-loss (easy) end of each class, or the high-loss end with keep_end="high". A trained
  model can be given instead of the proxy (`--teacher`): one scoring pass, no training.
- `causal` (dynamic): the first-order individual treatment effect of each real sample on the gradient
  that the recover loss sends to the synthetic set. With the BN-matching loss ||mu_s - mu_r||_2 per class,
  removing x moves mu_r by (mu_r - f(x)) / (n - 1) and the gradient direction u = (mu_s - mu_r)/||.||
  by -(I - u u^T)(mu_r - f(x)) / ((n - 1) ||mu_s - mu_r||), so ||ITE(x)|| is proportional to the part of
  x's deviation from the class statistics orthogonal to the current mismatch (summed over BN layers,
  means and variances, first layer x10). The synthetic set D_s is a reference run or, by default, the
  random real IPC images every real-init method starts from. Both tails are dropped (smallest = no effect,
  largest = outliers), (1 - keep)/2 each.
- `random`: the control, same per-class counts.
Loss and causal scores do not depend on `keep`, so they are cached (`~/.cache/ddkit/scores`): a second
keep fraction costs only the selection (the summary says when scores came from the cache).
Indices always refer to the full dataset's canonical order, so selections chain (`--subset` in, index out).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from .data import Images, read_subset
from .engine import bn_layers
from .models import build_model, train_bytes
from .stream import open_data
from .teacher import load_teacher
from .train import batched_logits, fit, teacher_recipe
from .utils import (DDKitError, cache_dir, check_output, inference_batch, load_torch, memory_available,
                    resolve_device, save_json, save_torch, stable_hash, tensor_hash, to_json)


@dataclass
class SelectConfig:
    criterion: str = "loss"      # loss | causal | random
    keep: float = 0.5            # fraction of each class kept
    keep_end: str = "low"        # loss: keep the low-loss (easy) or high-loss end
    proxy_epochs: int = 5
    proxy_arch: str = "auto"     # loss without a teacher: the proxy (auto: convnet3 to 64 px, resnet18 above)
    proxy_batch: int = 0         # its training batch (0: the recipe's 256, lowered to what fits in memory)
    teacher: str | None = None   # loss: score with this model instead of a proxy; causal: the BN teacher
    teacher_weights: str | None = None  # state dict of a zoo-spec teacher (torchvision:NAME ...)
    reference: str | None = None  # causal: distilled run whose statistics are D_s
    ipc: int = 10                # causal without reference: size of the random real D_s per class
    seed: int = 0
    subset: str | None = None    # select within an earlier selection (indices stay global)
    on_bad_image: str = "error"  # error | skip: unreadable files stop the run, or are left out
    data_backend: str = "auto"   # auto | memory | stream (ddkit.stream.choose_backend)
    image_size: int | None = None  # working resolution (default: the images' own, or 224 for photos)


def keep_count(n: int, keep: float) -> int:
    return max(1, int(round(n * keep)))


def cached_scores(kind: str, key: list, compute) -> tuple[torch.Tensor, bool]:
    """(scores, whether they came from the cache) for a scoring keyed by `key` (data, model, seed...)."""
    path = cache_dir() / "scores" / f"{kind}_{stable_hash(key)}.pt"
    if path.is_file():
        return load_torch(path, f"{kind} scores")["scores"], True
    scores = compute()
    save_torch({"scores": scores}, path)
    return scores, False


MIN_PROXY_BATCH = 8  # below this, BatchNorm's batch statistics are too noisy to train the proxy on


def proxy_plan(cfg: SelectConfig, num_classes: int, image_size: int, device) -> tuple[str, int]:
    """The proxy's architecture and batch for the resolution and the memory there is (GPU: free memory; CPU:
    available RAM). The default batch, the recipe's 256, is lowered only where it cannot fit (the estimate errs
    high), so a run's scores do not depend on the machine's load; the summary records the batch used. A batch
    asked for that does not fit, or no batch of MIN_PROXY_BATCH, is refused before any work."""
    arch = cfg.proxy_arch if cfg.proxy_arch != "auto" else "convnet3" if image_size <= 64 else "resnet18"
    per_image, fixed = train_bytes(arch, num_classes, image_size) or (0, 0)
    device = torch.device(device)
    avail = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else memory_available() or 0
    fits = (avail - fixed) // per_image if avail and per_image else 2 ** 30  # unknown: trust the batch asked for
    batch = cfg.proxy_batch or min(teacher_recipe().batch_size, fits)
    if batch > fits or batch < MIN_PROXY_BATCH:
        asked = f"--proxy-batch {batch}" if cfg.proxy_batch else f"a batch of {MIN_PROXY_BATCH}"
        raise DDKitError(f"the {arch} proxy at {image_size} px needs ~{per_image / 1e6:,.0f} MB per image: "
                         f"{asked} needs {(fixed + per_image * max(batch, MIN_PROXY_BATCH)) / 1e9:,.1f} GB, more "
                         f"than the {avail / 1e9:.1f} GB of memory available; "
                         + (f"lower --proxy-batch (at most {fits} fits), " if fits >= MIN_PROXY_BATCH else "")
                         + "pick a smaller --proxy-arch or --image-size, or score with --teacher")
    return arch, int(batch)


def proxy_losses(data: Images, epochs: int, seed: int, device, progress: bool, arch: str = "convnet3",
                 batch: int = 256) -> torch.Tensor:
    """Mean training loss of every sample over `epochs` of a fresh proxy (the BiLP static score); the
    recipe's learning rate scales linearly with the batch."""
    total = torch.zeros(len(data), device=device)
    seen = torch.zeros(len(data), device=device)

    def record(idx, per):
        total.index_add_(0, idx, per.float())
        seen.index_add_(0, idx, torch.ones_like(per, dtype=torch.float))
    torch.manual_seed(seed)
    model = build_model(arch, data.num_classes, data.image_size)
    recipe = teacher_recipe(epochs)
    recipe = replace(recipe, batch_size=batch, lr=recipe.lr * batch / recipe.batch_size)
    fit(model, data.fit_images, data.labels, data.normalize, recipe, device, seed=seed,
        desc=f"proxy {arch}", progress=progress, on_batch=record)
    return (total / seen.clamp_min(1)).cpu()


def model_losses(model: nn.Module, data: Images, device) -> torch.Tensor:
    """Per-sample cross-entropy of `model` over all of `data`, written into one preallocated tensor rather
    than a small tensor per batch kept alive (among the batches' large buffers) through the whole pass."""
    labels, losses = data.labels.to(device), torch.empty(len(data))
    for i, out in batched_logits(model, data.batches(None, inference_batch(data.image_size, 1000)), data.normalize,
                                 device):
        losses[i:i + len(out)] = nn.functional.cross_entropy(out, labels[i:i + len(out)], reduction="none").cpu()
    return losses


@torch.no_grad()
def bn_features(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sample and BN layer: spatial mean and spatial mean of squares of the BN input, [n, C] each."""
    bns = bn_layers(model)
    store: list[list] = [[] for _ in bns]
    hooks = [bn.register_forward_hook(lambda m, i, o, k=k: store[k].append(
        (i[0].float().mean((2, 3)), i[0].float().pow(2).mean((2, 3))))) for k, bn in enumerate(bns)]
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return [(torch.cat([a for a, _ in s]), torch.cat([b for _, b in s])) for s in store]


def causal_scores(real: list, synth: list, first_mult: float = 10.0) -> torch.Tensor:
    """||ITE|| of each real sample of one class (see the module docstring), from bn_features outputs."""
    score = torch.zeros(len(real[0][0]), device=real[0][0].device)
    for layer, ((m_r, q_r), (m_s, q_s)) in enumerate(zip(real, synth)):
        mult = first_mult if layer == 0 else 1.0
        for stat_r, stat_s in ((m_r, m_s), (q_r, q_s)):     # means, then second moments (-> variances)
            mu_r, mu_s = stat_r.mean(0), stat_s.mean(0)
            gap = mu_s - mu_r
            norm = gap.norm().clamp_min(1e-8)
            u = gap / norm
            dev = stat_r - mu_r                                  # f(x) - mu_r for each sample
            ortho = dev - (dev @ u)[:, None] * u[None]
            score = score + (mult * ortho.norm(dim=1) / norm) ** 2
    return score.sqrt()


def causal_all(data: Images, teacher: nn.Module, ref, ipc: int, gen: torch.Generator, dev) -> torch.Tensor:
    """Causal score of every sample, class by class, against the reference run's images of the class
    or `ipc` random real images of it."""
    scores = torch.zeros(len(data))
    if ref is not None:
        from .evaluate import align_classes
        ref_labels = align_classes(ref, data.classes)
    for c in range(data.num_classes):
        idx = data.class_indices(c)
        if ref is not None:
            xs = data.normalize(ref.images[ref_labels == c].to(dev))
        else:
            pick = idx[torch.randperm(len(idx), generator=gen)[:ipc]]
            xs = data.normalize(data.load(pick).to(dev))
        if len(xs) == 0:
            raise DDKitError(f"reference run has no images of class {data.classes[c]!r}")
        real = bn_features(teacher, data.normalize(data.load(idx).to(dev)))
        scores[idx] = causal_scores(real, bn_features(teacher, xs)).cpu()
    return scores


def select(data_spec: str, cfg: SelectConfig, out: str | Path, device: str = "auto",
           progress: bool = True) -> dict:
    """Write the index file `out` (+ `out`.json summary and `out`.png score histogram); return the summary."""
    if not 0 < cfg.keep <= 1:
        raise DDKitError(f"--keep must be in (0, 1], got {cfg.keep}")
    if cfg.criterion not in ("loss", "causal", "random"):
        raise DDKitError(f"unknown criterion {cfg.criterion!r}; choose loss, causal or random")
    if cfg.keep_end not in ("low", "high"):
        raise DDKitError(f"--keep-end must be low or high, got {cfg.keep_end!r}")
    dev = resolve_device(device)
    out = check_output(out)
    full = open_data(data_spec, "train", cfg.image_size, cfg.data_backend, on_bad_image=cfg.on_bad_image)
    base = torch.arange(len(full))
    if cfg.subset:
        base = read_subset(cfg.subset, len(full))
    data = full.subset(base)
    plan = proxy_plan(cfg, data.num_classes, data.image_size, dev) if cfg.criterion == "loss" and not cfg.teacher \
        else None
    t0 = time.time()
    gen = torch.Generator().manual_seed(cfg.seed)
    teacher = None
    if cfg.teacher:
        teacher, ck = load_teacher(cfg.teacher, cfg.teacher_weights, data.classes, data.image_size, dev)
        data.mean, data.std = tuple(ck["mean"]), tuple(ck["std"])
    key = [data.content_hash(), list(data.mean), list(data.std), cfg.seed]
    if teacher is not None:
        key.append(stable_hash([tensor_hash(v) for v in teacher.state_dict().values()]))
    cached = False
    if cfg.criterion == "random":
        scores = torch.rand(len(data), generator=gen)
    elif cfg.criterion == "loss" and teacher is not None:
        scores = model_losses(teacher, data, dev)      # one pass: not worth caching
    elif cfg.criterion == "loss":
        proxy = (cfg.proxy_epochs,) + plan if plan != ("convnet3", 256) else (cfg.proxy_epochs,)  # keys of old
        scores, cached = cached_scores("proxy", key + list(proxy),                                # scores stay
                                       lambda: proxy_losses(data, cfg.proxy_epochs, cfg.seed, dev, progress, *plan))
    else:
        if teacher is None:
            raise DDKitError("--criterion causal needs --teacher (the BN teacher the distiller matches)")
        ref = None
        if cfg.reference:
            from .rundir import read_run
            ref = read_run(cfg.reference)
        key += [tensor_hash(ref.images) if ref is not None else cfg.ipc]
        scores, cached = cached_scores("causal", key, lambda: causal_all(data, teacher, ref, cfg.ipc, gen, dev))
    kept, counts = [], {}
    for c in range(data.num_classes):
        idx = data.class_indices(c)
        k = keep_count(len(idx), cfg.keep)
        order = idx[scores[idx].argsort(stable=True)]
        if cfg.criterion == "causal":
            lo = (len(idx) - k) // 2
            chosen = order[lo:lo + k]                  # drop both tails
        elif cfg.criterion == "loss" and cfg.keep_end == "high":
            chosen = order[len(order) - k:]
        else:
            chosen = order[:k]                         # low loss, or random order
        kept.append(chosen)
        counts[data.classes[c]] = int(k)
    local = torch.cat(kept).sort().values
    indices = base[local]
    wall = round(time.time() - t0, 2)
    summary = {"config": asdict(cfg), **({"proxy": dict(zip(("arch", "batch"), plan))} if plan else {}),
               "data": data_spec, "num_samples": len(full), "num_kept": len(indices),
               "per_class": counts, "selection_wall_s": wall, "scores_from_cache": cached, "device": str(dev),
               "skipped_images": full.skipped}
    save_torch({"indices": indices, "num_samples": len(full), "scores": scores, "scored_indices": base,
                "summary": to_json(summary)}, out)
    save_json(summary, out.with_suffix(".json"))
    _histogram(scores, scores[local], cfg.criterion, out.with_suffix(".png"))
    return summary


def _histogram(all_scores: torch.Tensor, kept: torch.Tensor, criterion: str, path: Path) -> None:
    from .report import png_figure
    with png_figure(path, figsize=(5, 3)) as (_, ax):
        bins = max(10, int(math.sqrt(len(all_scores))))
        rng = (all_scores.min().item(), all_scores.max().item())
        ax.hist(all_scores.numpy(), bins=bins, range=rng, color="lightgray", label="all")
        ax.hist(kept.numpy(), bins=bins, range=rng, color="tab:blue", alpha=0.7, label="kept")
        ax.set(xlabel=f"{criterion} score", ylabel="samples")
        ax.legend()
