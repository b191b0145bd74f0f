"""Stored soft labels, FKD style (SRe2L's relabel step): every view a student will see, and its label.

A relabel pass walks the student's whole schedule once with the teacher: for every epoch and batch it
draws the batch, the crop boxes, flips and CutMix pairing/box exactly as online training would
(ddkit.train.epoch_views), and stores them with the teacher's logits on the mixed views in fp16:

    <root>/fkd-<key>/manifest.json       what the store was made from (set, schedule, teacher, seed)
    <root>/fkd-<key>/epoch_0000.pt ...   order [n], boxes [n, 4] fp32, flips [n], mix_perm [n] (within each
                                         batch), mix_boxes [batches, 4], logits [n, C] fp16, generator state

Students then replay those files (`fit(labels_from=store)`) and need no teacher. Each epoch file is written
atomically and the pass resumes from the last complete epoch. <key> hashes the images, the schedule fields
that shape the views, the teacher's weights and the seed, so a different set or teacher gets its own store.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from . import dist
from .accel import compiled, mixed_precision
from .augment import Views
from .progress import steps
from .train import TrainConfig, epoch_views, render
from .utils import DDKitError, load_torch, model_hash, save_json, save_torch, stable_hash, tensor_hash

FORMAT = "ddkit-fkd-v1"
VIEW_FIELDS = ("epochs", "batch_size", "aug", "rrc_scale", "cutmix")  # what decides the stored views


class LabelStore:
    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest

    def epoch(self, e: int):
        """(batch indices, Views, teacher logits) per batch of epoch e, as stored."""
        blob = load_torch(self.folder / f"epoch_{e:04d}.pt", "FKD label file")
        bs, pad = self.manifest["batch_size"], self.manifest["pad"]
        for b, s in enumerate(range(0, len(blob["order"]), bs)):
            rows = slice(s, s + bs)
            mixed = blob["mix_perm"] is not None
            v = Views(blob["boxes"][rows] if blob["boxes"] is not None else None, blob["flips"][rows]
                      if blob["flips"] is not None else None, pad, blob["mix_perm"][rows] if mixed else None,
                      blob["mix_boxes"][b] if mixed else None)
            yield blob["order"][rows], v, blob["logits"][rows]

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.iterdir() if f.is_file())


def label_store(root: str | Path, images: torch.Tensor, normalize, teacher: nn.Module, cfg: TrainConfig,
                device: torch.device, seed: int = 0, progress: bool = True) -> LabelStore:
    """The FKD store of (images, cfg's schedule, teacher, seed) under `root`, made or completed first."""
    if cfg.randaug_ops or cfg.patch_shuffle:
        raise DDKitError("FKD label stores do not record RandAugment or ShufflePatches draws; use soft_labels=online "
                         "with them")
    n, hw = len(images), tuple(images.shape[-2:])
    bs = min(cfg.batch_size, n)
    manifest = {"format": FORMAT, "n": n, "batch_size": bs, "pad": max(1, hw[1] // 8) if cfg.aug == "translate"
                else 0, "seed": seed, "images": tensor_hash(images), "teacher": model_hash(teacher),
                **{k: getattr(cfg, k) for k in VIEW_FIELDS}, **({"rrc_exact": True} if cfg.rrc_exact else {})}
    folder = Path(root) / f"fkd-{stable_hash(manifest, 12)}"
    if dist.is_main():
        _relabel(folder, manifest, images, normalize, teacher, cfg, device, hw, progress)
    dist.barrier()
    return LabelStore(folder, manifest)


@torch.no_grad()
def _relabel(folder: Path, manifest: dict, images, normalize, teacher, cfg: TrainConfig, device, hw, progress):
    folder.mkdir(parents=True, exist_ok=True)
    save_json(manifest, folder / "manifest.json")
    done = next((e for e in range(cfg.epochs) if not (folder / f"epoch_{e:04d}.pt").is_file()), cfg.epochs)
    gen = torch.Generator().manual_seed(manifest["seed"])
    if done:
        gen.set_state(load_torch(folder / f"epoch_{done - 1:04d}.pt", "FKD label file")["gen"])
    mf = torch.channels_last if cfg.channels_last else torch.contiguous_format
    teacher.to(device).eval().to(memory_format=mf)  # as fit runs an online teacher: the same logits
    images = images.to(device)
    prec, forward = mixed_precision(device, cfg.amp), compiled(teacher, cfg.compile)
    bar = steps(done, cfg.epochs, "relabel (FKD)", unit="epoch", enabled=progress)
    for e in bar:
        parts = []
        for batch, v, _ in epoch_views(cfg, manifest["n"], manifest["batch_size"], hw, gen):
            x, _ = render(images, normalize, batch, v, slice(None))
            with prec.autocast():
                logits = forward(x.contiguous(memory_format=mf)).half().cpu()
            if not torch.isfinite(logits).all():
                raise DDKitError("relabel: the teacher's logits overflow fp16 (or are NaN); check the teacher")
            parts.append((batch, v, logits))
        save_torch(_epoch_blob(parts, gen), folder / f"epoch_{e:04d}.pt")
    bar.close()


def _epoch_blob(parts: list, gen: torch.Generator) -> dict:
    def cat(get):
        vals = [get(v) for _, v, _ in parts]
        return None if vals[0] is None else torch.cat(vals)
    mixed = parts[0][1].mix_perm is not None
    return {"order": torch.cat([b for b, _, _ in parts]), "boxes": cat(lambda v: v.boxes),
            "flips": cat(lambda v: v.flips), "mix_perm": cat(lambda v: v.mix_perm),
            "mix_boxes": torch.stack([v.mix_box for _, v, _ in parts]) if mixed else None,
            "logits": torch.cat([t for _, _, t in parts]), "gen": gen.get_state()}
