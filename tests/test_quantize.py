import numpy as np
import pytest
import torch

from ddkit.data import load_data
from ddkit.methods import Context, build_method
from ddkit.methods.quantize import AutoEncoder, kmeans, quantization_error
from ddkit.teacher import load_checkpoint


def _ctx(dataset, teacher_path, ipc=3):
    train = load_data(str(dataset))
    teacher, ck = load_checkpoint(teacher_path)
    train.mean, train.std = tuple(ck["mean"]), tuple(ck["std"])
    return Context(train, teacher, ipc, torch.device("cpu"), torch.Generator().manual_seed(0), False)


def test_kmeans_beats_random_selection_on_a_mixture():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(m, 0.3, (100, 2)) for m in ([0, 0], [5, 5], [0, 5], [5, 0])]).astype(np.float32)
    centres, assign = kmeans(z, 4, restarts=3, seed=0)
    assert np.bincount(assign, minlength=4).sum() == len(z)
    random_err = np.mean([quantization_error(z, z[rng.choice(len(z), 4, replace=False)]) for _ in range(20)])
    assert quantization_error(z, centres) < 0.5 * random_err


@pytest.mark.parametrize("encoder", ["pixel", "teacher", "autoencoder"])
def test_ddoq_weights_are_cell_masses_summing_to_the_class_size(encoder, dataset, teacher_path):
    ctx = _ctx(dataset, teacher_path)
    out = build_method("ddoq", {"encoder": encoder, "ae_epochs": "2"}).run(ctx, [0, 2])
    assert out.x.shape == (6, 3, 8, 8) and out.labels.tolist() == [0, 0, 0, 2, 2, 2]
    assert out.weights.view(2, 3).sum(1).tolist() == [16.0, 16.0] and (out.weights >= 0).all()
    assert out.info["quantization_error"] < out.info["random_quantization_error"]
    if encoder == "teacher":  # medoid decoding returns real images
        real = ctx.real(ctx.train.class_indices(0))
        assert all(any(torch.equal(x, r) for r in real) for x in out.x[:3])


def test_unweighted_prototypes_have_unit_weights(dataset, teacher_path):
    out = build_method("ddoq", {"encoder": "pixel", "weighted": "false"}).run(_ctx(dataset, teacher_path), [1])
    assert out.weights.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("encoder", ["pixel", "autoencoder"])
def test_medoid_decoding_returns_real_images_of_the_class(encoder, dataset, teacher_path):
    ctx = _ctx(dataset, teacher_path)
    out = build_method("ddoq", {"encoder": encoder, "ae_epochs": "2", "decode": "medoid"}).run(ctx, [1])
    real = ctx.real(ctx.train.class_indices(1))
    assert all(any(torch.equal(x, r) for r in real) for x in out.x)
    own = build_method("ddoq", {"encoder": encoder, "ae_epochs": "2"}).run(ctx, [1])
    assert not any(torch.equal(x, r) for x in own.x for r in real)   # the encoder's decoder makes new images


def test_autoencoder_round_trips_shapes():
    ae = AutoEncoder(latent_ch=4)
    x = torch.randn(2, 3, 16, 16)
    assert ae.enc(x).shape == (2, 4, 4, 4) and ae(x).shape == x.shape
