import pytest
import torch

from ddkit.models import MODELS, build_model, embed, has_batchnorm
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


def test_unknown_arch_is_clear():
    with pytest.raises(DDKitError, match="unknown architecture"):
        build_model("vgg99", 10)
