import sys

import numpy as np
import pytest
import torch

from ddkit.data import load_data
from ddkit.methods import Context, build_method
from ddkit.methods.quantize import AutoEncoder, kmeans, quantization_error
from ddkit.teacher import load_checkpoint
from ddkit.utils import DDKitError


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


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    """A randomly initialised 2-level AutoencoderKL (8x8 images -> 4 x 4x4 latents), saved as diffusers does."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                        norm_num_groups=8, sample_size=8)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(path)
    return path, vae.eval()


def test_vae_encoder_quantizes_latents_and_decodes_centres_without_a_teacher(dataset, tiny_vae):
    path, vae = tiny_vae
    train = load_data(str(dataset))
    ctx = Context(train, None, 3, torch.device("cpu"), torch.Generator().manual_seed(0), False)
    method = build_method("ddoq", {"encoder": "vae", "vae": str(path)})
    assert not method.needs_teacher
    out = method.run(ctx, [0, 2])
    assert out.x.shape == (6, 3, 8, 8) and out.weights.view(2, 3).sum(1).tolist() == [16.0, 16.0]
    assert out.info["quantization_error"] < out.info["random_quantization_error"]
    real = ctx.real(train.class_indices(0))
    assert not any(torch.equal(x, r) for x in out.x for r in real)     # decoded centres, not real images
    # the coder maps the teacher's normalised space to the VAE's [-1, 1] and back
    coder = method.coder(ctx)
    z = coder.encode(real[:2])
    m, s = torch.tensor(train.mean).view(1, 3, 1, 1), torch.tensor(train.std).view(1, 3, 1, 1)
    with torch.no_grad():
        mu = vae.encode((real[:2] * s + m) * 2 - 1).latent_dist.mean
        expect = ((vae.decode(mu).sample + 1) / 2 - m) / s
    assert z.shape == (2, 4 * 4 * 4) and torch.allclose(z, mu.flatten(1), atol=1e-5)
    assert torch.allclose(coder.decode(z, real, z), expect, atol=1e-5)


def test_vae_encoder_errors_are_one_line(monkeypatch, tmp_path):
    with pytest.raises(DDKitError, match="encoder=vae needs --set vae=FOLDER"):
        build_method("ddoq", {"encoder": "vae"})
    with pytest.raises(DDKitError, match="cannot load the VAE"):   # when the method is built: before any output
        build_method("ddoq", {"encoder": "vae", "vae": str(tmp_path / "missing")})
    monkeypatch.setitem(sys.modules, "diffusers", None)   # diffusers not installed
    with pytest.raises(DDKitError, match=r"pip install 'ddkit\[diffusers\]'"):
        build_method("ddoq", {"encoder": "vae", "vae": "stabilityai/sd-vae-ft-mse"})
