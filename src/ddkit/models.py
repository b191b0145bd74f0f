"""Model registry: every architecture is built by name for any class count and input size.

Names are ddkit's own (`convnet3`, `resnet18`, ...) or come from a model zoo: `torchvision:NAME` (any
torchvision classification model), `timm:NAME` (timm, an optional extra) or `module:function` (a user's
builder returning an nn.Module). `classifier(model)` finds the final nn.Linear of any of them, so the
penultimate features used by diversity metrics, RDED scoring and DDOQ's teacher encoder are read the same
way for every architecture.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .utils import DDKitError, inference_batch

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn
    return deco


def build_model(arch: str, num_classes: int, image_size: int = 32, in_channels: int = 3,
                native_stem: bool = False) -> nn.Module:
    """A randomly initialised `arch`. Zoo models get the small-input stem at <= 64 px (as ddkit's resnet18)
    unless `native_stem`: pretrained weights need the layout they were trained with."""
    if ":" in arch:
        model = _build_zoo(arch, num_classes, in_channels)
        if image_size <= 64 and not native_stem and _has_resnet_stem(model):
            _small_stem(model, in_channels, model.conv1.out_channels)
        return model
    check_arch(arch)
    return MODELS[arch](num_classes=num_classes, image_size=image_size, in_channels=in_channels)


def check_arch(arch: str) -> None:
    """Refuse an unknown ddkit architecture name (zoo specs are checked when built)."""
    if ":" not in arch and arch not in MODELS:
        raise DDKitError(f"unknown architecture {arch!r}; choose from {', '.join(sorted(MODELS))}, "
                         f"or torchvision:NAME, timm:NAME, module:function")


def train_bytes(arch: str, num_classes: int, image_size: int) -> tuple[int, int] | None:
    """(bytes per image of a training step, bytes of the weights, their gradients and momentum) of `arch`
    at `image_size`: every layer's output, kept for the backward pass, and a gradient of its size, an upper
    bound (bench/throughput/train_memory.py, CPU: 203, 35 and 3.8 MB per image measured for convnet3 at 224 px, resnet18
    at 224 px and convnet3 at 32 px; 219, 60 and 4.5 estimated). Shapes only (the meta device): nothing is
    computed or allocated. None where a model cannot run on the meta device (a zoo model's own op): unknown."""
    with torch.device("meta"):
        model = build_model(arch, num_classes, image_size).eval()
    outs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o.numel() if torch.is_tensor(o) else 0))
             for m in model.modules() if not list(m.children())]
    try:
        model(torch.empty(1, 3, image_size, image_size, device="meta"))
    except (NotImplementedError, RuntimeError):
        return None
    finally:
        for h in hooks:
            h.remove()
    return 4 * 2 * sum(outs), 4 * 3 * sum(p.numel() for p in model.parameters())


def _build_zoo(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    zoo, name = arch.split(":", 1)
    if zoo == "torchvision":
        name = name.split(".")[0]  # a weights tag (resnet50.IMAGENET1K_V2) does not change the architecture
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise DDKitError(f"{name!r} is not a torchvision classification model "
                             f"(see torchvision.models.list_models())")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if zoo == "timm":
        timm = import_extra("timm", "timm")
        try:
            return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
        except RuntimeError as e:  # timm's "Unknown model (...)"
            raise DDKitError(f"timm: {str(e).splitlines()[0]}") from e
    return _build_user(arch, num_classes=num_classes, in_channels=in_channels)


def _build_user(arch: str, **kwargs) -> nn.Module:
    """`module:function`, called with whichever of num_classes, in_channels it accepts."""
    mod_name, fn_name = arch.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise DDKitError(f"cannot load model builder {arch!r}: {e}") from e
    params = inspect.signature(fn).parameters
    try:
        model = fn(**{k: v for k, v in kwargs.items() if k in params})
    except TypeError as e:  # e.g. required arguments ddkit cannot know
        raise DDKitError(f"model builder {arch} cannot be called with {', '.join(kwargs)}: {e}") from e
    if not isinstance(model, nn.Module):
        raise DDKitError(f"{arch} returned a {type(model).__name__}, not an nn.Module")
    return model


def import_extra(module: str, extra: str):
    """Import an optional dependency, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DDKitError(f"{module} is not installed: pip install 'ddkit[{extra}]'") from e


def _norm(kind: str, ch: int) -> nn.Module:
    return {"batch": lambda: nn.BatchNorm2d(ch), "instance": lambda: nn.GroupNorm(ch, ch, affine=True),
            "none": nn.Identity}[kind]()


class ConvNet(nn.Module):
    """The dataset-distillation ConvNet: depth x [conv3x3(width) -> norm -> ReLU -> avgpool2] -> linear."""

    def __init__(self, num_classes: int, image_size: int = 32, in_channels: int = 3, width: int = 128,
                 depth: int = 3, norm: str = "batch"):
        super().__init__()
        layers, ch, size = [], in_channels, image_size
        for _ in range(depth):
            layers += [nn.Conv2d(ch, width, 3, padding=1, bias=norm == "none"), _norm(norm, width),
                       nn.ReLU(inplace=True)]
            if size >= 2:  # tiny inputs (tests, 8x8 digits) stop pooling at 1x1
                layers.append(nn.AvgPool2d(2))
                size //= 2
            ch = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * size * size, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


@register("convnet3")
def convnet3(num_classes, image_size=32, in_channels=3):
    return ConvNet(num_classes, image_size, in_channels, depth=3, norm="batch")


@register("convnet3_in")
def convnet3_in(num_classes, image_size=32, in_channels=3):
    """Instance-norm variant of the classic DC benchmark (students only: it has no BN statistics)."""
    return ConvNet(num_classes, image_size, in_channels, depth=3, norm="instance")


@register("convnet4")
def convnet4(num_classes, image_size=64, in_channels=3):
    return ConvNet(num_classes, image_size, in_channels, depth=4, norm="batch")


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class AirNet(nn.Module):
    """A fast CIFAR teacher in the style of airbench94: a 2x2 patch-whitening conv, three groups of
    [conv3x3 -> max-pool2 -> BN -> GELU -> conv3x3 -> BN -> GELU] (widths 64/256/256; `airnet_wide`, in the
    style of airbench96: 128/384/512 and a third, residual [conv3x3 -> BN -> GELU] per group), global max-pool
    (`airnet_avg`: average-pool, as ConvNet-3 and ResNets end), a linear head scaled by 1/9 (keeps early
    logits small, which label smoothing and high SGD learning rates need). `init_from_data` sets the first
    layer to whiten the data's 2x2 patches and freezes it; without it (students, and `airnet_nowhiten`
    teachers) that layer trains as an ordinary conv."""

    def __init__(self, num_classes: int, image_size: int = 32, in_channels: int = 3,
                 widths: tuple[int, ...] = (64, 256, 256), pool: str = "max", whiten: bool = True,
                 residual: bool = False):
        super().__init__()
        self.whitened = whiten
        self.pool = torch.amax if pool == "max" else torch.mean
        self.whiten = nn.Conv2d(in_channels, 2 * in_channels * 4, 2)
        layers, ch, size = [], self.whiten.out_channels, image_size - 1
        for w in widths:
            pool = size >= 2  # tiny inputs (tests) stop pooling at 1x1
            layers += [nn.Conv2d(ch, w, 3, padding=1, bias=False), nn.MaxPool2d(2) if pool else nn.Identity(),
                       nn.BatchNorm2d(w), nn.GELU(), nn.Conv2d(w, w, 3, padding=1, bias=False),
                       nn.BatchNorm2d(w), nn.GELU()]
            if residual:  # appended, so the plain nets' parameter names (and checkpoints) stay as they were
                layers.append(Residual(nn.Sequential(nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                                                     nn.GELU())))
            ch, size = w, size // 2 if pool else size
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch, num_classes, bias=False)

    def forward(self, x):
        x = self.features(F.gelu(self.whiten(x)))
        return self.head(self.pool(x, dim=(2, 3))) / 9

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening filters from normalised images x: the eigenvectors of the 2x2 patch covariance, each
        scaled by 1/sqrt(eigenvalue) and used with both signs (so GELU keeps both halves of each direction).
        A no-op for a net built with whiten=False."""
        if not self.whitened:
            return
        k, d = self.whiten.kernel_size[0], x.shape[1] * self.whiten.kernel_size[0] ** 2
        total, outer, count = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64), 0
        for chunk in x.split(64):  # bounded memory at any resolution
            p = F.unfold(chunk.double(), k).transpose(1, 2).reshape(-1, d)
            total, outer, count = total + p.sum(0), outer + p.T @ p, count + len(p)
        mean = total / count
        evals, evecs = torch.linalg.eigh(((outer - count * torch.outer(mean, mean)) / (count - 1)).float())
        w = (evecs / (evals + eps).sqrt()).T.reshape(-1, x.shape[1], k, k)
        self.whiten.weight.copy_(torch.cat([w, -w]))
        self.whiten.bias.zero_()
        self.whiten.weight.requires_grad_(False)


@register("airnet")
def airnet(num_classes, image_size=32, in_channels=3):
    return AirNet(num_classes, image_size, in_channels)


@register("airnet_avg")
def airnet_avg(num_classes, image_size=32, in_channels=3):
    return AirNet(num_classes, image_size, in_channels, pool="avg")


@register("airnet_wide")
def airnet_wide(num_classes, image_size=32, in_channels=3):
    """About 4x airnet's compute per image (airbench96's widths, a third residual conv per group)."""
    return AirNet(num_classes, image_size, in_channels, widths=(128, 384, 512), residual=True)


@register("airnet_nowhiten")
def airnet_nowhiten(num_classes, image_size=32, in_channels=3):
    """An ablation: airnet whose first layer is never set to whiten (it trains from its random init)."""
    return AirNet(num_classes, image_size, in_channels, whiten=False)


def _has_resnet_stem(model: nn.Module) -> bool:
    """torchvision's ResNet family and timm's ResNets with the default stem: conv1 then a max-pool."""
    return isinstance(getattr(model, "conv1", None), nn.Conv2d) and isinstance(getattr(model, "maxpool", None),
                                                                               nn.MaxPool2d)


def _small_stem(model: nn.Module, in_channels: int, out_ch: int) -> None:
    model.conv1 = nn.Conv2d(in_channels, out_ch, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()


@register("resnet18")
def resnet18(num_classes, image_size=32, in_channels=3):
    """torchvision ResNet-18; for inputs <= 64 px the CIFAR stem (3x3 conv1, stride 1, no max-pool)."""
    m = torchvision.models.resnet18(num_classes=num_classes)
    if image_size <= 64:
        _small_stem(m, in_channels, 64)
    elif in_channels != 3:
        m.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    m.head = m.fc
    return m


@register("mobilenet_v2")
def mobilenet_v2(num_classes, image_size=32, in_channels=3):
    """torchvision MobileNetV2; for inputs <= 64 px the first conv keeps full resolution (stride 1)."""
    m = torchvision.models.mobilenet_v2(num_classes=num_classes)
    stride = 1 if image_size <= 64 else 2
    m.features[0][0] = nn.Conv2d(in_channels, 32, 3, stride, 1, bias=False)
    m.head = m.classifier[-1]
    return m


def classifier(model: nn.Module) -> nn.Linear:
    """The final nn.Linear: ddkit's `head`, timm's get_classifier(), else the last Linear registered
    (torchvision's fc, classifier[-1], heads.head ...)."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
    else:
        head = next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
    if not isinstance(head, nn.Linear):
        raise DDKitError(f"{type(model).__name__} is not a classifier: it has no final nn.Linear layer")
    return head


class _Penultimate:
    """Context manager capturing the input of the model's classifier (penultimate features)."""

    def __init__(self, model: nn.Module):
        self.model, self.feats = model, None

    def __enter__(self):
        self.h = classifier(self.model).register_forward_hook(lambda m, i, o: setattr(self, "feats", i[0]))
        return self

    def __exit__(self, *exc):
        self.h.remove()


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, logits) of normalised images x, in eval mode, batched (default: 512 images, fewer
    above 90 px: utils.inference_batch)."""
    batch_size = batch_size or inference_batch(x.shape[-1], 512)
    was = model.training
    model.eval()
    feats, logits = [], []
    with _Penultimate(model) as cap:
        for i in range(0, len(x), batch_size):
            logits.append(model(x[i:i + batch_size]).float())
            feats.append(cap.feats.flatten(1).float())
    model.train(was)
    return torch.cat(feats), torch.cat(logits)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
