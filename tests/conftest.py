"""Tiny shared fixtures: a 3-class 8x8 ImageFolder with train/test splits, a small BN teacher, and
randomly initialised torchvision/timm classifiers saved as state dicts (tests never download weights)."""
import os
import tempfile

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("DDKIT_CACHE", tempfile.mkdtemp(prefix="ddkit-test-cache-"))
os.environ["DDKIT_OFFLINE"] = "1"   # a test that would download weights fails at once instead

# zoo teachers: torchvision's resnet18 (the seed papers' teacher) and timm's tiny BatchNorm ResNet
ZOO = ["torchvision:resnet18", "timm:test_resnet"]


def zoo_model(spec, num_classes):
    """The library's own randomly initialised model, built without ddkit."""
    import timm
    import torchvision
    zoo, name = spec.split(":")
    if zoo == "torchvision":
        return torchvision.models.get_model(name, num_classes=num_classes)
    return timm.create_model(name, num_classes=num_classes)

CLASSES = ["cat", "dog", "frog"]


def make_folder(root, classes=CLASSES, per_class=12, size=8, seed=0):
    """Class c images: a bright square in a class-specific corner on noise, so a model can learn them."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            r, q = divmod(c % 4, 2)
            h = size // 2
            img[r * h:(r + 1) * h, q * h:(q + 1) * h, c % 3] = 230
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_folder(root / "train", per_class=16, seed=0)
    make_folder(root / "test", per_class=6, seed=1)
    return root


@pytest.fixture(scope="session")
def teacher_path(dataset, tmp_path_factory):
    from ddkit.data import load_splits
    from ddkit.teacher import train_teacher
    from ddkit.train import teacher_recipe
    train, test = load_splits(str(dataset))
    out = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    train_teacher(train, test, "convnet3", teacher_recipe(6), device="cpu", out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def eval_inputs(dataset, teacher_path):
    """(test split normalised with the teacher's statistics, teacher), as `ddkit evaluate` loads them."""
    from ddkit.data import load_splits
    from ddkit.teacher import load_checkpoint
    _, test = load_splits(str(dataset))
    teacher, ck = load_checkpoint(teacher_path)
    test.mean, test.std = tuple(ck["mean"]), tuple(ck["std"])
    return test, teacher


@pytest.fixture(scope="session")
def zoo_weights(tmp_path_factory):
    """{spec: state-dict file} of randomly initialised 3-class zoo models."""
    import torch
    root = tmp_path_factory.mktemp("zoo")
    out = {}
    for i, spec in enumerate(ZOO):
        torch.manual_seed(i)
        out[spec] = root / f"{spec.split(':')[1]}.pth"
        torch.save(zoo_model(spec, len(CLASSES)).state_dict(), out[spec])
    return out
