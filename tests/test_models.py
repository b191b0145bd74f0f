import sys

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

from ddkit.models import MODELS, Residual, build_model, classifier, embed, has_batchnorm
from ddkit.utils import DDKitError


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("size", [8, 32])
def test_every_model_gives_logits_for_any_size_and_class_count(arch, size):
    m = build_model(arch, num_classes=7, image_size=size).eval()
    x = torch.randn(2, 3, size, size)
    feats, logits = embed(m, x)
    assert logits.shape == (2, 7) and feats.ndim == 2 and feats.shape[0] == 2


def test_teacher_archs_have_batchnorm():
    assert has_batchnorm(build_model("convnet3", 10)) and has_batchnorm(build_model("resnet18", 10))
    assert not has_batchnorm(build_model("convnet3_in", 10))


def test_airnet_whitening_layer_decorrelates_patches_and_is_frozen():
    m = build_model("airnet", 10, 16)
    x = torch.randn(40, 3, 16, 16) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 0.3
    x[:, 1] += x[:, 0]  # correlated channels, as in photos
    m.init_from_data(x)
    w = m.whiten.weight
    assert not w.requires_grad and torch.equal(w[:12], -w[12:])   # both signs of each direction
    patches = torch.nn.functional.unfold(x, 2).transpose(1, 2).reshape(-1, 12)
    cov = torch.cov((patches @ w[:12].reshape(12, 12).T).T)
    assert torch.allclose(cov, torch.eye(12), atol=0.02)
    assert build_model("airnet", 10, 16).whiten.weight.requires_grad  # a student trains it as a conv
    plain = build_model("airnet_nowhiten", 10, 16)
    before = plain.whiten.weight.clone()
    plain.init_from_data(x)  # the ablation keeps its random, trainable first layer
    assert torch.equal(plain.whiten.weight, before) and plain.whiten.weight.requires_grad


def test_airnet_avg_pools_the_same_features_by_their_mean():
    torch.manual_seed(0)
    mx, av = build_model("airnet", 10, 16).eval(), build_model("airnet_avg", 10, 16).eval()
    av.load_state_dict(mx.state_dict())  # same parameters: only the global pooling differs
    x = torch.randn(3, 3, 16, 16)
    f = mx.features(torch.nn.functional.gelu(mx.whiten(x)))
    assert torch.allclose(av(x), mx.head(f.mean((2, 3))) / 9, atol=1e-6)
    assert torch.allclose(mx(x), mx.head(f.amax((2, 3))) / 9, atol=1e-6)


def test_airnet_wide_adds_a_residual_conv_per_group():
    torch.manual_seed(0)
    m = build_model("airnet_wide", 10, 16).eval()
    blocks = [b for b in m.features if isinstance(b, Residual)]
    assert len(blocks) == 3 and [b.body[0].out_channels for b in blocks] == [128, 384, 512]
    x = torch.randn(2, 3, 16, 16)

    def features(skip=()):
        f = torch.nn.functional.gelu(m.whiten(x))
        for layer in m.features:
            f = f if layer in skip else layer(f)
        return f

    assert not torch.allclose(features(), features(blocks), rtol=0.01, atol=0)  # small activations: relative
    for b in blocks:  # a zeroed BN makes the branch output GELU(0) = 0: each block passes its input through
        nn.init.zeros_(b.body[1].weight)
        nn.init.zeros_(b.body[1].bias)
    assert torch.equal(features(), features(blocks))


def test_unknown_arch_is_clear():
    with pytest.raises(DDKitError, match="unknown architecture"):
        build_model("vgg99", 10)


def test_zoo_students_get_the_small_input_stem_by_resolution():
    small, large = build_model("torchvision:resnet50", 3, 16), build_model("torchvision:resnet50", 3, 224)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and isinstance(small.maxpool, nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and isinstance(large.maxpool, nn.MaxPool2d)
    native = build_model("timm:resnet18", 3, 16, native_stem=True)   # pretrained weights keep their layout
    assert native.conv1.kernel_size == (7, 7) and build_model("timm:resnet18", 3, 16).conv1.kernel_size == (3, 3)
    assert embed(small, torch.randn(2, 3, 16, 16))[1].shape == (2, 3)


def test_zoo_state_dicts_are_the_libraries_own():
    """No ddkit aliases (e.g. a `head` registered twice): a torchvision/timm state dict loads strictly."""
    assert build_model("torchvision:resnet18", 3, 224).state_dict().keys() == \
        torchvision.models.resnet18(num_classes=3).state_dict().keys()
    assert build_model("timm:test_resnet", 3, 8).state_dict().keys() == \
        timm.create_model("test_resnet", num_classes=3).state_dict().keys()


@pytest.mark.parametrize("arch, expect", [
    ("torchvision:mobilenet_v3_small", lambda m: m.classifier[-1]),
    ("torchvision:resnet18", lambda m: m.fc),
    ("timm:test_convnext", lambda m: m.head.fc),       # timm's ConvNeXt `head` is a block, not the Linear
    ("timm:test_vit", lambda m: m.head),
    ("convnet3", lambda m: m.head),
])
def test_classifier_finds_the_final_linear_of_any_architecture(arch, expect):
    m = build_model(arch, 5, 32)
    assert classifier(m) is expect(m)
    feats, logits = embed(m, torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5) and feats.shape == (2, classifier(m).in_features)


def test_zoo_errors_are_one_line(monkeypatch):
    with pytest.raises(DDKitError, match="not a torchvision classification model"):
        build_model("torchvision:nope", 3)
    with pytest.raises(DDKitError, match=r"timm: Unknown model"):
        build_model("timm:nope", 3)
    with pytest.raises(DDKitError, match="cannot load model builder"):
        build_model("no_such_module:net", 3)
    with pytest.raises(DDKitError, match="not a classifier"):
        classifier(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))
    monkeypatch.setitem(sys.modules, "timm", None)   # timm not installed
    with pytest.raises(DDKitError, match=r"pip install 'ddkit\[timm\]'"):
        build_model("timm:resnet18", 3)


def test_user_builder_gets_the_arguments_it_accepts(tmp_path, monkeypatch):
    (tmp_path / "builder_nets.py").write_text(
        "import torch.nn as nn\n"
        "def net(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))\n"
        "def not_a_model():\n"
        "    return 'model'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert build_model("builder_nets:net", 4, 8)(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    with pytest.raises(DDKitError, match="returned a str, not an nn.Module"):
        build_model("builder_nets:not_a_model", 4)
