"""Batched, differentiable augmentation on the images' own device.

Crops are batched: one call crops every image with its own box and resizes it to the output size
(bilinear `grid_sample`, or torchvision's `roi_align` when downsizing), and it is differentiable, so
the same code serves student training (real or synthetic images) and synthesis (gradients flow back
to the pixels). RandAugment (torchvision's, per image, seeded from the batch's draws) runs on the stored
images before normalisation, as the peers apply it to their PIL images.

`shard=(batch, rows)`: x holds only `rows` of a batch of `batch` images. The random numbers are drawn for
the whole batch and then sliced, so data-parallel ranks keep their generators in step and together
see exactly the views one process would, while each augments only its own rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms.v2 import RandAugment


def sample_boxes(n: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomResizedCrop boxes [n, 4] as (x1, y1, x2, y2) in pixels (CPU, from `generator`)."""
    u = torch.rand(n, 4, generator=generator)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    w = torch.sqrt(area * torch.exp(logr)).clamp(1.0, width)
    h = torch.sqrt(area / torch.exp(logr)).clamp(1.0, height)
    x1 = (width - w) * u[:, 2]
    y1 = (height - h) * u[:, 3]
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def torchvision_boxes(n: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                      generator: torch.Generator | None = None, tries: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop boxes for n images, as its get_params draws them: integer sides, the
    first of `tries` (area, ratio) draws that fits, else the largest centred box within the ratio bounds.
    Unlike sample_boxes (which clamps a side that does not fit) a box never changes its aspect ratio, and
    at scale (1, 1) every box is the whole image: RDED's training views at stitching factor 1 (no crop)."""
    u = torch.rand(n, tries, 2, generator=generator)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    r = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1])
    w, h = torch.sqrt(area * r).round(), torch.sqrt(area / r).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(1, keepdim=True)   # the first try that fits
    ok = fits.any(1)
    in_ratio = width / height
    fw, fh = ((width, round(width / min(ratio))) if in_ratio < min(ratio) else
              (round(height * max(ratio)), height) if in_ratio > max(ratio) else (width, height))
    w = torch.where(ok, w.gather(1, first).squeeze(1), torch.tensor(float(fw)))
    h = torch.where(ok, h.gather(1, first).squeeze(1), torch.tensor(float(fh)))
    pos = torch.rand(n, 2, generator=generator)
    x1 = torch.where(ok, (pos[:, 0] * (width - w + 1)).floor(), ((width - w) / 2).floor())
    y1 = torch.where(ok, (pos[:, 1] * (height - h + 1)).floor(), ((height - h) / 2).floor())
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def default_stitch_factor(size: int) -> int:
    """RDED's patches per side by resolution: 1 up to 64 px (its CIFAR and Tiny-ImageNet scripts), else 2."""
    return 1 if size <= 64 else 2


def shuffle_patches(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """RDED's ShufflePatches: image i's f column strips put in the order order[i, 0] and its f row strips
    in the order order[i, 1] (order: [n, 2, f]; the last strip takes what f leaves of a side)."""
    h, w = x.shape[-2:]
    cols = torch.stack([_strips(w, o) for o in order[:, 0]]).to(x.device)
    rows = torch.stack([_strips(h, o) for o in order[:, 1]]).to(x.device)
    x = x.gather(3, cols[:, None, None, :].expand_as(x))
    return x.gather(2, rows[:, None, :, None].expand_as(x))


def _strips(size: int, order: torch.Tensor) -> torch.Tensor:
    """Pixel indices of a side of `size` cut into len(order) strips, put in `order`."""
    f = len(order)
    bounds = [k * (size // f) for k in range(f)] + [size]
    return torch.cat([torch.arange(bounds[k], bounds[k + 1]) for k in order.tolist()])


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Crop box i out of image i (or one box for all when boxes is [1, 4]) and resize to `size`.

    Boxes no larger than the output (every augmentation crop) are one bilinear sample per output pixel,
    done with `grid_sample` (2.5x faster than roi_align on CPU, same values to 1e-5). Boxes larger than
    the output are area-averaged by roi_align (several samples per output pixel), so downsizing does
    not alias.
    """
    if isinstance(size, int):
        size = (size, size)
    # decided on the boxes as given (CPU from the samplers), so a GPU step does not sync on it
    upsampling = bool(((boxes[:, 2] - boxes[:, 0]) <= size[1] + 1e-4).all()
                      and ((boxes[:, 3] - boxes[:, 1]) <= size[0] + 1e-4).all())
    boxes = boxes.to(device=x.device, dtype=x.dtype)
    if boxes.shape[0] == 1:
        boxes = boxes.expand(x.shape[0], 4)
    if upsampling:
        return _bilinear_crop(x, boxes, size)
    idx = torch.arange(x.shape[0], device=x.device, dtype=x.dtype).unsqueeze(1)
    # aligned=True: a box (0, 0, W, H) at the input size samples every pixel centre exactly (identity).
    return roi_align(x, torch.cat([idx, boxes], 1), size, spatial_scale=1.0, sampling_ratio=0, aligned=True)


def _bilinear_crop(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    theta = torch.zeros(len(boxes), 2, 3, device=x.device, dtype=x.dtype)  # output [-1, 1] -> the box
    theta[:, 0, 0] = (boxes[:, 2] - boxes[:, 0]) / w
    theta[:, 0, 2] = (boxes[:, 0] + boxes[:, 2]) / w - 1
    theta[:, 1, 1] = (boxes[:, 3] - boxes[:, 1]) / h
    theta[:, 1, 2] = (boxes[:, 1] + boxes[:, 3]) / h - 1
    grid = F.affine_grid(theta, [len(boxes), x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


Shard = tuple[int, slice] | None


def _draw(t: torch.Tensor, shard: Shard) -> torch.Tensor:
    return t[shard[1]] if shard else t


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5,
                shard: Shard = None) -> torch.Tensor:
    n = shard[0] if shard else x.shape[0]
    mask = _draw(torch.rand(n, generator=generator) < p, shard).to(x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


def random_resized_crop(x: torch.Tensor, generator: torch.Generator | None = None, scale=(0.5, 1.0),
                        shared_box: bool = False, shard: Shard = None) -> torch.Tensor:
    """Per-image (or one shared) RandomResizedCrop back to the input size, then random flip."""
    _, _, h, w = x.shape
    n = shard[0] if shard else x.shape[0]
    if shared_box:
        boxes = sample_boxes(1, h, w, scale, generator=generator)
        return random_flip(crop_resize(x, boxes, (h, w)), generator, shard=shard)
    return apply_views(x, draw_views("rrc", n, h, w, generator, scale), rows(shard, n))


def random_translate(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None,
                     shard: Shard = None) -> torch.Tensor:
    """airbench-style pad (reflect) + random crop to the input size, then random flip."""
    _, _, h, w = x.shape
    n = shard[0] if shard else x.shape[0]
    return apply_views(x, draw_views("translate", n, h, w, generator, pad=pad), rows(shard, n))


def rows(shard: Shard, n: int) -> slice:
    return shard[1] if shard else slice(0, n)


@dataclass
class Views:
    """The random draws behind one batch of training views, enough to recompute them exactly (and to
    store them: FKD label files). Drawn for the whole batch, so data-parallel ranks slice their rows."""
    boxes: torch.Tensor | None = None     # [m, 4] crop boxes (x1, y1, x2, y2) in pixels of the padded image
    flips: torch.Tensor | None = None     # [m] bool
    pad: int = 0                          # reflect padding before cropping (translate)
    mix_perm: torch.Tensor | None = None  # [m] CutMix: view i takes its patch from view mix_perm[i]
    mix_box: torch.Tensor | None = None   # [4] int64 (x1, y1, x2, y2) of the pasted patch
    ra_seeds: torch.Tensor | None = None  # [m] int64: the seed of each view's RandAugment ops and signs
    ra: tuple[int, int] = (0, 9)          # RandAugment (num_ops, magnitude)
    patches: torch.Tensor | None = None   # [m, 2, f] RDED's ShufflePatches: column and row strip orders

    def mix_lam(self, h: int, w: int) -> float:
        """Fraction of each mixed view that is still its own image (CutMix's lambda)."""
        x1, y1, x2, y2 = self.mix_box.tolist()
        return 1 - (x2 - x1) * (y2 - y1) / (h * w)


def draw_views(aug: str, n: int, h: int, w: int, generator: torch.Generator | None = None,
               scale=(0.5, 1.0), pad: int = 4, cutmix: float = 0.0, randaug: tuple[int, int] = (0, 9),
               patches: int = 0, exact: bool = False) -> Views:
    """Draw a batch's augmentation: `rrc` (RandomResizedCrop + flip; `exact`: torchvision's boxes, see
    torchvision_boxes), `translate` (pad-crop + flip) or `none`, then CutMix (beta `cutmix` > 0: one box and
    one pairing for the batch, as RDED/SRe2L do), then RandAugment (`randaug` = (num_ops > 0, magnitude): one
    seed per view, see rand_augment), then (`patches` = f > 1) RDED's ShufflePatches(f) before the crop."""
    if aug == "rrc":
        v = Views((torchvision_boxes if exact else sample_boxes)(n, h, w, scale, generator=generator))
    elif aug == "translate":
        off = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).float()
        v = Views(torch.cat([off, off + torch.tensor([w, h])], 1), pad=pad)
    else:
        v = Views()
    if aug != "none":
        v.flips = torch.rand(n, generator=generator) < 0.5
    if cutmix > 0:
        seed = int(torch.randint(2 ** 62, (1,), generator=generator))  # torch has no seeded Beta sampler
        lam = float(np.random.default_rng(seed).beta(cutmix, cutmix))
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cx, cy = (int(torch.randint(0, d, (1,), generator=generator)) for d in (w, h))
        v.mix_box = torch.tensor([max(cx - cut_w // 2, 0), max(cy - cut_h // 2, 0),
                                  min(cx + cut_w // 2, w), min(cy + cut_h // 2, h)])
        v.mix_perm = torch.randperm(n, generator=generator)
    if randaug[0] > 0:  # drawn last: the other draws stay where they were without it
        v.ra_seeds, v.ra = torch.randint(2 ** 62, (n,), generator=generator), tuple(randaug)
    if patches > 1:
        v.patches = torch.rand(n, 2, patches, generator=generator).argsort(-1)
    return v


def rand_augment(x: torch.Tensor, v: Views, sel) -> torch.Tensor:
    """torchvision's RandAugment(num_ops, magnitude) on each stored image of rows `sel` (uint8, or floats in
    [0, 1]; before normalisation). It draws from torch's global generator, so each image runs under a fork
    of it seeded with its view's seed: the same view on every rank and rerun, whatever else ran before."""
    if v.ra_seeds is None:
        return x
    op, out = RandAugment(*v.ra), []
    for img, seed in zip(x, v.ra_seeds[sel].tolist()):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            out.append(op(img))
    return torch.stack(out)


def apply_views(x: torch.Tensor, v: Views, sel) -> torch.Tensor:
    """The un-mixed views of rows `sel` (slice or index tensor) of the batch; x holds exactly those rows."""
    h, w = x.shape[-2:]
    if v.patches is not None:
        x = shuffle_patches(x, v.patches[sel])
    if v.pad:
        x = F.pad(x, (v.pad,) * 4, mode="reflect")
    if v.boxes is not None:
        x = crop_resize(x, v.boxes[sel], (h, w))
    if v.flips is not None:
        x = torch.where(v.flips[sel].to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
    return x


def paste(x: torch.Tensor, partner: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """CutMix: `partner`'s pixels inside `box` replace x's (out of place)."""
    x1, y1, x2, y2 = box.tolist()
    x = x.clone()
    x[..., y1:y2, x1:x2] = partner[..., y1:y2, x1:x2]
    return x


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The peers' test view, Resize(size // 7 * 8) + CenterCrop(size), with their integer arithmetic:
    224 -> 256 -> 224 and 64 -> 72 -> 64, but 32 -> 32 (identity at CIFAR scale, as their CIFAR runs)."""
    big = size // 7 * 8
    h, w = x.shape[-2:]
    if min(h, w) != big:
        s = big / min(h, w)
        x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True,
                          align_corners=False)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]
