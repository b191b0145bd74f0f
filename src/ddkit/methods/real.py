"""Methods that take real pixels without gradient steps: `random` and `rded`."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..augment import crop_resize, sample_boxes
from ..utils import AT_LEAST_1, NON_NEGATIVE, UNIT, inference_batch
from . import Context, Method, Output, need_images, register


@register
class Random(Method):
    """IPC seeded real images per class: the floor every method is judged against."""
    name = "random"
    needs_teacher = False

    def run(self, ctx: Context, classes: list[int]) -> Output:
        xs, ys = [], []
        for c in classes:
            idx = need_images(ctx, c, ctx.ipc)
            pick = idx[torch.randperm(len(idx), generator=ctx.gen)[:ctx.ipc]]
            xs.append(ctx.real(pick).cpu())
            ys += [c] * ctx.ipc
        return Output(torch.cat(xs), torch.tensor(ys))


@register
class RDED(Method):
    """Score many real crops with the teacher, keep the most confident, stitch factor x factor per image."""
    name = "rded"

    @dataclass
    class Config:
        candidates: int = 300        # real images sampled per class
        crops: int = 5               # RandomResizedCrops scored per candidate
        min_scale: float = 0.5
        factor: int = 0              # patches per side; 0 = 1 at <= 64 px, else 2
        batch_size: int = 500
        RANGES = {"candidates": AT_LEAST_1, "crops": AT_LEAST_1, "min_scale": UNIT, "factor": NON_NEGATIVE,
                  "batch_size": AT_LEAST_1}

    def factor(self, size: int) -> int:
        """Patches per side of a stitched image."""
        return self.cfg.factor or (1 if size <= 64 else 2)

    def images_needed(self, ipc: int, image_size: int) -> int:
        return ipc * self.factor(image_size) ** 2  # each patch is the best crop of a different real image

    @torch.no_grad()
    def run(self, ctx: Context, classes: list[int]) -> Output:
        cfg, T = self.cfg, ctx.teacher
        size = ctx.train.image_size
        f = self.factor(size)
        psize = size // f
        xs, ys = [], []
        for c in classes:
            idx = need_images(ctx, c, ctx.ipc * f * f)
            cand = idx[torch.randperm(len(idx), generator=ctx.gen)[:max(cfg.candidates, ctx.ipc * f * f)]]
            imgs = ctx.real(cand)
            boxes = sample_boxes(len(cand) * cfg.crops, size, size, (cfg.min_scale, 1.0), generator=ctx.gen)
            owner = torch.arange(len(cand)).repeat_interleave(cfg.crops)   # candidate of each box
            step, losses = inference_batch(size, cfg.batch_size), []
            for i in range(0, len(boxes), step):
                full = crop_resize(imgs[owner[i:i + step]], boxes[i:i + step], size)
                with ctx.autocast():
                    logits = T(full).float()
                losses.append(F.cross_entropy(logits, torch.full((len(full),), c, device=ctx.device),
                                              reduction="none"))
            losses = torch.cat(losses).view(-1, cfg.crops)
            best = losses.argmin(1)                      # best crop of each candidate image
            best_loss = losses.gather(1, best[:, None]).squeeze(1)
            chosen, best = best_loss.argsort()[:ctx.ipc * f * f].cpu(), best.cpu()   # boxes live on CPU
            # crop the winners again rather than keep every scored crop (1,500 x 224 px = 0.9 GB per class)
            p = crop_resize(imgs[chosen], boxes[chosen * cfg.crops + best[chosen]], size)
            if f > 1:
                p = F.interpolate(p, size=psize, mode="area")
            # stitch f x f patches into each image (identity when f == 1)
            p = p.view(ctx.ipc, f, f, 3, psize, psize).permute(0, 3, 1, 4, 2, 5).reshape(ctx.ipc, 3, f * psize,
                                                                                         f * psize)
            if p.shape[-1] != size:
                p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            xs.append(p.cpu())
            ys += [c] * ctx.ipc
        return Output(torch.cat(xs), torch.tensor(ys))
