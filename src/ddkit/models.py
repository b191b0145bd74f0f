"""Model registry: every architecture is built by name for any class count and input size.

All models expose `model.head` (the final nn.Linear), so the penultimate features used by diversity
metrics, RDED scoring and DDOQ's teacher encoder are read the same way for every architecture.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torchvision

from .utils import DDKitError

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn
    return deco


def build_model(arch: str, num_classes: int, image_size: int = 32, in_channels: int = 3) -> nn.Module:
    if arch not in MODELS:
        raise DDKitError(f"unknown architecture {arch!r}; choose from {', '.join(sorted(MODELS))}")
    return MODELS[arch](num_classes=num_classes, image_size=image_size, in_channels=in_channels)


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


class _Penultimate:
    """Context manager capturing the input of `model.head` (penultimate features)."""

    def __init__(self, model: nn.Module):
        self.model, self.feats = model, None

    def __enter__(self):
        self.h = self.model.head.register_forward_hook(lambda m, i, o: setattr(self, "feats", i[0]))
        return self

    def __exit__(self, *exc):
        self.h.remove()


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, logits) of normalised images x, in eval mode, batched."""
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
