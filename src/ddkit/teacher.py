"""Teacher ("squeeze"): train on the real data, cache by (data, arch, recipe, seed), load safely; or import
a pretrained model-zoo classifier (`torchvision:NAME`, `timm:NAME`, `module:function` + its weights).

A checkpoint is a plain dict of tensors and JSON-able values, so it loads with weights_only=True:
{format, arch, num_classes, image_size, classes, mean, std, state_dict, recipe, test_acc, data_hash}.
An imported teacher frozen into one has the spec as its arch, `native_stem: True` (its pretrained layout,
whatever the resolution it is used at, `image_size`), its pretrained `input_size` and `imported_from`.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn as nn

from . import dist
from .data import Images
from .models import build_model, classifier, train_bytes
from .train import TrainConfig, accuracy, config_id, fit, teacher_recipe
from .utils import (DDKitError, cache_dir, check_output, inference_batch, load_torch, memory_available, save_torch,
                    stable_hash)
from .zoo import Pretrained, find_weights, pretrained

FORMAT = "ddkit-model-v1"
WHITEN_SAMPLE = 1000  # training images whose patch statistics initialise a whitening layer


def checkpoint(model: nn.Module, arch: str, classes: list[str], image_size: int, mean, std, **extra) -> dict:
    return {"format": FORMAT, "arch": arch, "num_classes": len(classes), "image_size": image_size,
            "classes": list(classes), "mean": list(mean), "std": list(std),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}


def save_checkpoint(path, model: nn.Module, arch: str, data: Images, recipe: TrainConfig | None = None,
                    **extra) -> None:
    save_torch(checkpoint(model, arch, data.classes, data.image_size, data.mean, data.std,
                          recipe=dataclasses.asdict(recipe) if recipe else {}, **extra), path)


def load_checkpoint(path, classes: list[str] | None = None, arch: str | None = None,
                    device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Load a ddkit model checkpoint; refuse foreign files and mismatched arch/classes with one line."""
    ck = load_torch(path, "model checkpoint")
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise DDKitError(f"{path} is not a ddkit model checkpoint")
    missing = [k for k in ("arch", "num_classes", "image_size", "classes", "mean", "std", "state_dict")
               if k not in ck]
    if missing:
        raise DDKitError(f"checkpoint {path} is incomplete (no {', '.join(missing)})")
    if arch is not None and ck["arch"] != arch:
        raise DDKitError(f"checkpoint {path} is a {ck['arch']}, expected {arch}")
    if classes is not None and list(classes) != list(ck["classes"]):
        raise DDKitError(f"checkpoint {path} was trained on {ck['num_classes']} classes "
                         f"({', '.join(ck['classes'][:4])}...), data has {len(classes)} "
                         f"({', '.join(list(classes)[:4])}...)")
    model = build_model(ck["arch"], ck["num_classes"], ck["image_size"], native_stem=ck.get("native_stem", False))
    try:
        model.load_state_dict(ck["state_dict"])
    except RuntimeError as e:
        raise DDKitError(f"checkpoint {path} does not fit a {ck['arch']}: {str(e).splitlines()[0]}") from e
    return model.to(device).eval(), ck


def is_spec(teacher: str) -> bool:
    """A model-zoo spec (torchvision:NAME, timm:NAME, module:function) rather than a checkpoint file."""
    return ":" in str(teacher) and not Path(teacher).exists()


def load_teacher(teacher: str, weights: str | None = None, classes: list[str] | None = None,
                 image_size: int | None = None, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """One teacher, from a ddkit checkpoint or imported from a zoo spec: (model in eval mode, checkpoint
    dict). `classes` (the data's) must match; `image_size` is the resolution an import is used at."""
    if is_spec(teacher):
        return import_teacher(teacher, weights, classes, image_size, device=device)
    if weights:
        raise DDKitError(f"--teacher-weights is for torchvision:/timm:/module:function teachers; "
                         f"{teacher} is a ddkit checkpoint and holds its own weights")
    return load_checkpoint(teacher, classes, device=device)


def import_teacher(spec: str, weights: str | None = None, classes: list[str] | None = None,
                   image_size: int | None = None, stats: tuple | None = None,
                   device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A pretrained zoo classifier as a ddkit teacher: (model in eval mode, checkpoint dict).

    Weights: the file `weights`, else the library's cache, else its download (see ddkit.zoo). Classes: the
    data's (their count must equal the model's outputs), else the weights' own categories. Normalisation:
    `stats`, else what the weights were trained with (ImageNet's when the library does not say).
    """
    info = pretrained(spec)
    guess = len(classes or info.categories or []) or 1000  # outputs; rebuilt if the weights say otherwise
    model = build_model(spec, guess, native_stem=True)
    classifier(model)  # a bad name or a module without a classifier fails here, before any weights lookup
    sd, source = find_weights(spec, weights, info)
    model = _load_weights(model, spec, sd, source)
    n = classifier(model).out_features
    size = image_size or info.input_size
    if not size:
        raise DDKitError(f"no known input size for {spec}: give --image-size or --data")
    _check_logits(model, spec, size, n)
    mean, std = stats or (info.mean, info.std)
    ck = checkpoint(model, spec, _import_classes(spec, n, classes, info), size, mean, std, recipe={},
                    native_stem=True, input_size=info.input_size, imported_from=source,
                    stats_from="data" if stats else info.stats_from)
    return model.to(device).eval(), ck


def _load_weights(model: nn.Module, spec: str, sd: dict, source: str) -> nn.Module:
    """`model`, rebuilt with as many outputs as the state dict's classifier, with its weights loaded strictly."""
    head = classifier(model)
    name = next(n for n, m in model.named_modules() if m is head)
    out = sd.get(f"{name}.weight")
    if out is not None and out.shape[0] != head.out_features:
        model = build_model(spec, out.shape[0], native_stem=True)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:  # the first line only names the class; the second says what differs
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise DDKitError(f"weights {source} do not fit {spec}: {lines[min(1, len(lines) - 1)][:200]}") from e
    return model


@torch.no_grad()
def _check_logits(model: nn.Module, spec: str, size: int, n: int) -> None:
    """One forward pass at the resolution used: a module that does not return [batch, classes] logits is
    not a classifier."""
    try:
        out = model.eval()(torch.zeros(2, 3, size, size))
    except Exception as e:
        raise DDKitError(f"{spec} fails on {size} px input: {str(e).strip().splitlines()[0][:200]}") from e
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DDKitError(f"{spec} is not a classifier: it returns {shape}, not logits [batch, {n}]")


def _import_classes(spec: str, n: int, classes: list[str] | None, info: Pretrained) -> list[str]:
    if classes is not None:
        if len(classes) != n:
            raise DDKitError(f"{spec} has {n} outputs but the data has {len(classes)} classes "
                             f"({', '.join(list(classes)[:4])}...)")
        return list(classes)
    if info.categories and len(info.categories) == n:
        return list(info.categories)
    raise DDKitError(f"{spec} has {n} outputs and no known class names: give --data (its class folders name them)")


def train_teacher(train: Images, test: Images | None, arch: str = "convnet3",
                  recipe: TrainConfig | None = None, seed: int = 0, device: torch.device | str = "cpu",
                  out: str | Path | None = None, use_cache: bool = True, progress: bool = True
                  ) -> tuple[nn.Module, dict]:
    """Train (or fetch from cache) a teacher. Returns (model in eval mode, checkpoint dict)."""
    recipe = recipe or teacher_recipe()
    if out:
        check_output(out)  # before hours of training, not after
    key = stable_hash({"data": train.content_hash(), "arch": arch, "recipe": config_id(recipe),
                       "seed": seed})
    cached = cache_dir() / "teachers" / f"{arch.replace(':', '-')}_{key}.pt"  # no ':' in file names
    if use_cache and cached.is_file():
        model, ck = load_checkpoint(cached, train.classes, arch, device)
        if test is not None:  # the test split given now (the cached numbers are those of the first one)
            ck.update(zip(("test_acc", "test_acc_flip_tta"), _test_accs(model, test, train, device)))
        if out and dist.is_main():
            save_torch({**load_torch(cached), **{k: ck.get(k) for k in ("test_acc", "test_acc_flip_tta")}}, out)
        return model, {**ck, "cached": True, "path": str(out or cached)}
    device = torch.device(device)
    _check_fits(arch, train, device)
    torch.manual_seed(seed)  # the initial weights are part of what the seed reproduces
    model = build_model(arch, train.num_classes, train.image_size)
    if hasattr(model, "init_from_data"):  # a data-dependent first layer (AirNet's whitening), seeded too
        sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:WHITEN_SAMPLE]
        model.init_from_data(train.normalize(train.load(sample)))
    t0 = time.time()
    hist = fit(model, train.fit_images, train.labels, train.normalize, recipe, device, seed=seed,
               checkpoint=str(cached.with_suffix(".partial")), desc=f"teacher {arch}", progress=progress)
    train_time = time.time() - t0 + hist["resumed_s"]  # a resumed teacher counts its earlier attempts too
    acc, tta = _test_accs(model, test, train, device) if test is not None else (None, None)
    extra = {"test_acc": acc, "test_acc_flip_tta": tta, "train_time_s": round(train_time, 1), "seed": seed,
             "data_hash": key, "loss": hist["loss"], "num_train": len(train), "precision": hist["precision"],
             "skipped_images": train.skipped + (test.skipped if test is not None else [])}
    if dist.is_main():  # under torchrun every rank holds the same weights; one writes
        save_checkpoint(cached, model, arch, train, recipe, **extra)
        cached.with_suffix(".partial").unlink(missing_ok=True)
        if out:
            save_torch(load_torch(cached), out)
    dist.barrier()
    model, ck = load_checkpoint(cached, device=device)  # plain BatchNorm again if DDP made it SyncBatchNorm
    return model, {**ck, "cached": False, "path": str(out or cached)}


def _check_fits(arch: str, train: Images, device: torch.device) -> None:
    """Refuse, before building it, a model whose weights (with their gradients and momentum) and one
    image's activations exceed the memory there is (a huge --image-size grows a ConvNet's classifier)."""
    need = train_bytes(arch, train.num_classes, train.image_size)
    avail = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else memory_available()
    if need is not None and avail is not None and sum(need) > avail:
        raise DDKitError(f"a {arch} at {train.image_size} px needs {sum(need) / 1e9:,.1f} GB to train on "
                         f"even one image, more than the {avail / 1e9:.1f} GB of memory available: lower "
                         f"--image-size or choose a smaller --arch")


def _test_accs(model: nn.Module, test: Images, train: Images, device) -> tuple[float, float]:
    """Test accuracy, and with flip test-time augmentation, normalised with the training statistics."""
    batch = inference_batch(test.image_size, 1000)
    return tuple(accuracy(model, test.batches(None, batch), test.labels, train.normalize, device, flip)
                 for flip in (False, True))


def _weights_per(paths: list[str], weights: list[str] | None) -> list[str | None]:
    """--teacher-weights in order, one per zoo-spec teacher (a checkpoint holds its own)."""
    weights = list(weights or [])
    specs = sum(is_spec(p) for p in paths)
    if weights and len(weights) != specs:
        raise DDKitError(f"{len(weights)} --teacher-weights for {specs} torchvision:/timm:/module:function "
                         f"teachers: give one per such teacher, in order")
    it = iter(weights)
    return [next(it, None) if is_spec(p) else None for p in paths]


class Ensemble(nn.Module):
    """Several teachers as one: the mean of their logits (G-VBSM/EDC multi-teacher relabelling). Pixel
    optimisation uses the members in turn (ddkit.engine.recover); penultimate features (models.embed) are
    the last member's."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float() for m in self.members]).mean(0)


def load_teachers(paths: list[str], weights: list[str] | None = None, classes: list[str] | None = None,
                  image_size: int | None = None, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """One teacher, or the Ensemble of several that agree on classes, image size and normalisation; each a
    checkpoint or a zoo spec (see load_teacher), `weights` going in order to the zoo specs.
    Returns (model, the first checkpoint's info with "teachers": every path)."""
    loaded = [load_teacher(p, w, classes, image_size, device) for p, w in zip(paths, _weights_per(paths, weights))]
    first = loaded[0][1]
    for p, (_, ck) in zip(paths[1:], loaded[1:]):
        for k in ("classes", "image_size", "mean", "std"):
            if ck[k] != first[k]:
                raise DDKitError(f"teachers {paths[0]} and {p} differ in {k} ({str(first[k])[:40]} vs "
                                 f"{str(ck[k])[:40]}); an ensemble needs one class list and one normalisation")
    model = loaded[0][0] if len(loaded) == 1 else Ensemble([m for m, _ in loaded]).to(device).eval()
    return model, {**first, "teachers": [str(p) for p in paths]}
