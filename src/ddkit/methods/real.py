"""Methods that take real pixels without gradient steps: `random` and `rded`."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..augment import crop_resize, default_stitch_factor, sample_boxes
from ..utils import AT_LEAST_1, NON_NEGATIVE, UNIT, Range, inference_batch
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
    """RDED (its synthesize/ code): crops of many real images scored by the teacher's cross-entropy, the most
    class-like kept, stitched factor x factor per image.

    As RDED's code: candidate crops are square RandomResizedCrops at torchvision's default scale (0.08, 1)
    straight to size // factor (its MultiRandomCrop), scored zero-padded (in normalised space) to the full size,
    the best crop of each candidate image kept, then the IPC * factor^2 lowest-loss crops, grid cell k of
    image i taking crop k * IPC + i of that ranking (its mix_images). Its CIFAR-10 script's 300 candidates x 5
    crops at factor 1 are the defaults. Where ddkit differs: continuous boxes resampled bilinearly (area-
    averaged when downsizing) instead of torchvision's integer boxes with antialiasing."""
    name = "rded"

    @dataclass
    class Config:
        candidates: int = 300        # real images sampled per class (RDED's --mipc)
        crops: int = 5               # RandomResizedCrops scored per candidate (--num-crop)
        min_scale: float = 0.08      # crop area fraction, lower bound (torchvision's default, as RDED)
        ratio: tuple[float, float] = (1.0, 1.0)   # crop aspect-ratio range (RDED: square)
        factor: int = 0              # patches per side; 0 = 1 at <= 64 px, else 2 (RDED's scripts)
        batch_size: int = 500
        RANGES = {"candidates": AT_LEAST_1, "crops": AT_LEAST_1, "min_scale": UNIT, "factor": NON_NEGATIVE,
                  "batch_size": AT_LEAST_1, "ratio": Range(0, open_lo=True, size=2, ordered=True)}

    def factor(self, size: int) -> int:
        """Patches per side of a stitched image."""
        return self.cfg.factor or default_stitch_factor(size)

    def images_needed(self, ipc: int, image_size: int) -> int:
        return ipc * self.factor(image_size) ** 2  # each patch is the best crop of a different real image

    @torch.no_grad()
    def run(self, ctx: Context, classes: list[int]) -> Output:
        cfg, T = self.cfg, ctx.teacher
        size = ctx.train.image_size
        f = self.factor(size)
        psize = size // f
        edge = size - psize          # zero padding around a patch for scoring (RDED's pad: extra at the end)
        pad = (edge // 2, edge - edge // 2) * 2
        xs, ys = [], []
        for c in classes:
            idx = need_images(ctx, c, ctx.ipc * f * f)
            cand = idx[torch.randperm(len(idx), generator=ctx.gen)[:max(cfg.candidates, ctx.ipc * f * f)]]
            imgs = ctx.real(cand)
            boxes = sample_boxes(len(cand) * cfg.crops, size, size, (cfg.min_scale, 1.0), tuple(cfg.ratio),
                                 generator=ctx.gen)
            owner = torch.arange(len(cand)).repeat_interleave(cfg.crops)   # candidate of each box
            step, losses = inference_batch(size, cfg.batch_size), []
            for i in range(0, len(boxes), step):
                patch = F.pad(crop_resize(imgs[owner[i:i + step]], boxes[i:i + step], psize), pad)
                with ctx.autocast():
                    logits = T(patch).float()
                losses.append(F.cross_entropy(logits, torch.full((len(patch),), c, device=ctx.device),
                                              reduction="none"))
            losses = torch.cat(losses).view(-1, cfg.crops)
            best = losses.argmin(1)                      # best crop of each candidate image
            best_loss = losses.gather(1, best[:, None]).squeeze(1)
            chosen, best = best_loss.argsort()[:ctx.ipc * f * f].cpu(), best.cpu()   # boxes live on CPU
            # crop the winners again rather than keep every scored crop (1,500 x 224 px = 0.9 GB per class)
            p = crop_resize(imgs[chosen], boxes[chosen * cfg.crops + best[chosen]], psize)
            # grid cell (r, q) of image i holds ranked crop (r f + q) IPC + i (identity when f == 1)
            p = p.view(f, f, ctx.ipc, 3, psize, psize).permute(2, 3, 0, 4, 1, 5).reshape(ctx.ipc, 3, f * psize,
                                                                                         f * psize)
            if p.shape[-1] != size:
                p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            xs.append(p.cpu())
            ys += [c] * ctx.ipc
        return Output(torch.cat(xs), torch.tensor(ys))
