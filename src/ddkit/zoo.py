"""Pretrained weights and metadata of model-zoo architectures (`torchvision:`, `timm:`, `module:function`).

Weights come from, in order: a file the user names (a state dict, .pth/.pt/.bin or .safetensors), the
library's own cache (torch hub's checkpoints folder, the Hugging Face cache for timm), or a download by the
library when its host answers (a probe with a short timeout, so an offline machine fails at once instead
of hanging; DDKIT_OFFLINE=1 skips it). The metadata is what the pretrained weights expect: normalisation,
input resolution and, where the library knows them, the class names.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch

from .models import import_extra
from .utils import DDKitError, load_torch

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class Pretrained:
    """Where a zoo model's weights may be found, and what they expect."""
    mean: tuple[float, ...] = IMAGENET_STATS[0]
    std: tuple[float, ...] = IMAGENET_STATS[1]
    input_size: int | None = None
    stats_from: str = "ImageNet's (default: the library gives none)"
    categories: list[str] | None = None
    cached: list[Path] = field(default_factory=list)   # files in the library's cache, first found wins
    cache_dir: str | None = None                       # where those are looked for (for the error)
    host: str | None = None                            # where the library downloads from
    download: Callable[[], Path] | None = None         # fetch into the library's cache, return the file


def pretrained(arch: str) -> Pretrained:
    zoo, name = arch.split(":", 1)
    if zoo == "torchvision":
        return _torchvision(name)
    if zoo == "timm":
        return _timm(name)
    return Pretrained()  # a user's builder: no metadata, weights only from --teacher-weights


def _torchvision(name: str) -> Pretrained:
    """`resnet50` (its DEFAULT weights) or `resnet50.IMAGENET1K_V1` (a weights tag, like timm's)."""
    import torchvision
    name, _, tag = name.partition(".")
    try:
        weights = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):  # a model torchvision ships without weights
        return Pretrained()
    if tag and tag not in weights.__members__:
        raise DDKitError(f"torchvision has no {name} weights {tag!r}; choose {', '.join(weights.__members__)}")
    w = weights[tag] if tag else weights.DEFAULT
    t = w.transforms()
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(w.url).path).name

    def download():
        torch.hub.load_state_dict_from_url(w.url, progress=False, check_hash=True, weights_only=True)
        return file
    return Pretrained(tuple(t.mean), tuple(t.std), t.crop_size[0], "torchvision weights' transforms",
                      list(w.meta["categories"]), [file], str(file), urlparse(w.url).hostname, download)


def _timm(name: str) -> Pretrained:
    timm = import_extra("timm", "timm")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return Pretrained()
    subset = timm.data.infer_imagenet_subset(cfg.to_dict())
    categories = list(cfg.label_names or (timm.data.ImageNetInfo(subset).label_names() if subset else [])) or None
    info = Pretrained(tuple(cfg.mean), tuple(cfg.std), cfg.input_size[-1], "timm pretrained_cfg", categories)
    if cfg.hf_hub_id:
        import huggingface_hub as hf
        from huggingface_hub import constants
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        found = (hf.try_to_load_from_cache(cfg.hf_hub_id, f) for f in files)
        info.cached = [Path(p) for p in found if isinstance(p, str)]
        info.cache_dir = str(Path(constants.HF_HUB_CACHE) / f"models--{cfg.hf_hub_id.replace('/', '--')}")
        info.host = "huggingface.co"
        info.download = lambda: Path(hf.hf_hub_download(cfg.hf_hub_id, files[0]))
    return info


def reachable(host: str | None, timeout: float = 3.0) -> bool:
    if not host or os.environ.get("DDKIT_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def find_weights(arch: str, weights: str | None, info: Pretrained) -> tuple[dict, str]:
    """(state dict, where it came from): the named file, else the library's cache, else a download."""
    if weights:
        return read_state_dict(weights), str(weights)
    for f in info.cached:
        if f.is_file():
            return read_state_dict(f), str(f)
    if info.download and reachable(info.host):
        try:
            f = info.download()
        except Exception as e:  # HTTP errors, a hash mismatch, HF_HUB_OFFLINE=1 ...
            raise DDKitError(f"downloading weights for {arch} failed: {str(e).strip().splitlines()[0][:200]}") from e
        return read_state_dict(f), str(f)
    looked = ["--teacher-weights (not given)"] + ([info.cache_dir] if info.cache_dir else [])
    if info.host:
        looked.append(f"{info.host} ({'offline' if os.environ.get('DDKIT_OFFLINE') == '1' else 'unreachable'})")
    raise DDKitError(f"no weights for {arch}: looked in {', '.join(looked)}; pass --teacher-weights PATH")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (weights_only), unwrapping {"state_dict": ...} /
    {"model": ...} and DDP's "module." prefix."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise DDKitError(f"weights file not found: {path}")
        sd = import_extra("safetensors.torch", "timm").load_file(str(path))
    else:
        sd = load_torch(path, "weights file")
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DDKitError(f"{path} is not a state dict (a dict of tensors)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd
