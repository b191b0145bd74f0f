"""DDOQ's latent-diffusion decoders (decode=sd | dit) with tiny random-weight models built from configs."""
import os
import sys

import pytest
import torch

from ddkit.data import load_data
from ddkit.distill import DistillConfig, distill
from ddkit.methods import Context, build_method, diffusion
from ddkit.rundir import read_run
from ddkit.utils import DDKitError

os.environ["HF_HUB_OFFLINE"] = "1"   # a model not found locally must never be fetched


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny_diffusion import make_dit, make_sd
    root = tmp_path_factory.mktemp("diffusion")
    dit_map = root / "dit_classes.txt"   # the tiny DiT's 5 classes, in its order (LOC_synset_mapping format)
    dit_map.write_text("n00000004 ant\nn00000001 frog, toad\nn00000002 cat\nn00000003 bee\nn00000000 dog\n")
    return {"sd": str(make_sd(root / "sd")), "dit": str(make_dit(root / "dit")), "dit_map": str(dit_map)}


def _settings(models, decode, **kw):
    s = {"decode": decode, "steps": "3", "sd_model": models["sd"], "dit_model": models["dit"]}
    if decode == "dit":
        s["class_map"] = models["dit_map"]
    return {**s, **{k: str(v) for k, v in kw.items()}}


def _run(dataset, settings, seed=0, classes=(0, 2)):
    train = load_data(str(dataset))
    ctx = Context(train, None, 3, torch.device("cpu"), torch.Generator().manual_seed(seed), False)
    return build_method("ddoq", settings).run(ctx, list(classes)), ctx


@pytest.mark.parametrize("decode,extra", [("sd", {}), ("dit", {}), ("dit", {"dit_start": "inverted"})])
def test_generated_images_carry_labels_and_cell_masses_and_repeat_under_a_seed(decode, extra, dataset, models):
    settings = _settings(models, decode, **extra)
    method = build_method("ddoq", settings)
    assert not method.needs_teacher                      # the latent space is the diffusion model's own
    out, ctx = _run(dataset, settings)
    assert out.x.shape == (6, 3, 8, 8) and out.labels.tolist() == [0, 0, 0, 2, 2, 2]
    assert out.weights.view(2, 3).sum(1).tolist() == [16.0, 16.0] and (out.weights >= 0).all()
    assert out.info["quantization_error"] < out.info["random_quantization_error"]
    assert out.info["decode"] == decode and out.info["resolution"] == 16   # the model's native px
    lo, hi = ctx.bounds()
    assert (out.x >= lo.view(1, 3, 1, 1) - 1e-5).all() and (out.x <= hi.view(1, 3, 1, 1) + 1e-5).all()
    again, _ = _run(dataset, settings)
    assert torch.equal(again.x, out.x) and torch.equal(again.weights, out.weights)
    other, _ = _run(dataset, settings, seed=1)
    assert not torch.equal(other.x, out.x)


def test_dit_starts_differ_and_unweighted_prototypes_have_unit_weights(dataset, models):
    noised, _ = _run(dataset, _settings(models, "dit"), classes=[1])
    inverted, _ = _run(dataset, _settings(models, "dit", dit_start="inverted", weighted="false"), classes=[1])
    assert not torch.equal(noised.x, inverted.x) and inverted.weights.tolist() == [1.0, 1.0, 1.0]


def test_sd_prompts_come_from_the_class_names_and_template(dataset, models, tmp_path, monkeypatch):
    seen = []
    dec = diffusion.decoder(build_method("ddoq", _settings(models, "sd", prompt="a photo of a {name}")).cfg)
    real_call = type(dec.pipe).__call__
    monkeypatch.setattr(type(dec.pipe), "__call__", lambda self, **kw: seen.append(kw) or real_call(self, **kw))
    _run(dataset, _settings(models, "sd", prompt="a photo of a {name}"), classes=[1])
    assert seen[0]["prompt"] == ["a photo of a dog"] * 3 and seen[0]["guidance_scale"] == 8.0
    assert seen[0]["image"].shape == (3, 4, 8, 8)         # the centres go in as latents (16 px / 2)
    assert seen[0]["negative_prompt"] == ["cartoon, anime, painting"] * 3 and seen[0]["strength"] == 0.7


def test_class_names_and_dit_ids_from_maps(tmp_path):
    loc = tmp_path / "LOC_synset_mapping.txt"
    loc.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn01484850 great white shark\n")
    assert diffusion.prompt_names(["n01443537", "great_white_shark"], str(loc)) == ["goldfish", "great white shark"]
    assert diffusion.prompt_names(["dog"]) == ["dog"]
    with pytest.raises(DDKitError, match="WordNet id, not a prompt: pass --set class_map"):
        diffusion.prompt_names(["n01443537"])
    assert diffusion.class_ids(["n01484850", "n01440764"], str(loc), None, 1000) == [2, 0]
    wnids = [f"n{i:08d}" for i in range(5)]
    assert diffusion.class_ids(wnids, "", None, 5) == [0, 1, 2, 3, 4]        # all of the model's classes
    assert diffusion.class_ids(["Dog", "frog"], "", {"0": "frog, toad", "1": "dog"}, 5) == [1, 0]
    for classes in (wnids[:3], ["cat"]):   # a subset of WordNet ids, or names the model does not have
        with pytest.raises(DDKitError, match="the DiT knows 5 classes and class .* is not one of them"):
            diffusion.class_ids(classes, "", None, 5)


def test_errors_are_one_line_before_any_output(dataset, models, tmp_path, monkeypatch):
    with pytest.raises(DDKitError, match=r"no Stable Diffusion model .*not a local folder, and not in the Hugging "
                                         r"Face cache .*hf download acme/missing-sd"):
        build_method("ddoq", {"decode": "sd", "sd_model": "acme/missing-sd"})
    with pytest.raises(DDKitError, match="DiT model folder .*missing not found"):
        build_method("ddoq", {"decode": "dit", "dit_model": str(tmp_path / "missing")})
    with pytest.raises(DDKitError, match="dtype=fp16 needs a CUDA device"):   # CUDA-only precision on CPU
        _run(dataset, _settings(models, "dit", dtype="fp16"))
    with pytest.raises(DDKitError, match="runs no denoising step"):
        build_method("ddoq", _settings(models, "dit", strength=0.2))
    with pytest.raises(DDKitError, match="the DiT generates 16 px images only"):
        build_method("ddoq", _settings(models, "dit", resolution=32))
    with pytest.raises(DDKitError, match="the DiT knows 5 classes and class 'cat'"):   # no class map
        _run(dataset, {**_settings(models, "dit"), "class_map": ""})
    monkeypatch.setitem(sys.modules, "transformers", None)   # the extra's text encoder not installed
    with pytest.raises(DDKitError, match=r"pip install 'ddkit\[diffusers\]'"):
        build_method("ddoq", _settings(models, "sd", steps=2))
    out = tmp_path / "run"
    cfg = DistillConfig(method="ddoq", ipc=2, data=str(dataset), settings=_settings(models, "dit", dtype="bf16"))
    with pytest.raises(DDKitError):
        distill(cfg, out, device="cpu", progress=False)
    assert not out.exists() and not list(tmp_path.glob(".run.work-*"))   # nothing half-written


def test_distill_resumes_after_an_interrupted_class_group(dataset, models, tmp_path, monkeypatch):
    cfg = DistillConfig(method="ddoq", ipc=2, data=str(dataset), classes_per_group=1,
                        settings=_settings(models, "dit"))
    ref = distill(cfg, tmp_path / "ref", device="cpu", progress=False)
    dec = diffusion.decoder(build_method("ddoq", cfg.settings).cfg)
    real, calls = type(dec).generate, []

    def fail_on_third_class(self, centres, c, gen):
        calls.append(c)
        if c == 2:
            raise KeyboardInterrupt   # stopped in the third group, after two groups were saved
        return real(self, centres, c, gen)
    monkeypatch.setattr(type(dec), "generate", fail_on_third_class)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run").exists() and len(list(tmp_path.glob(".run.work-*/group*.pt"))) == 2
    calls.clear()
    monkeypatch.setattr(type(dec), "generate", lambda self, *a: calls.append(a[1]) or real(self, *a))
    run = distill(cfg, tmp_path / "run", device="cpu", progress=False)
    assert calls == [2]                                   # finished groups were not redone
    a, b = read_run(run), read_run(ref)
    assert torch.equal(a.images, b.images) and torch.equal(a.weights, b.weights)
    assert a.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_torchrun_two_ranks_generate_the_images_of_one(dataset, models, tmp_path):
    """Ranks take class groups round-robin; a group's images depend only on its seed, not on the rank."""
    import subprocess
    s = [x for k, v in _settings(models, "dit").items() for x in ("--set", f"{k}={v}")]
    args = ["distill", "--method", "ddoq", "--ipc", "2", "--data", str(dataset), "--classes-per-group", "1",
            "--quiet", "--device", "cpu", *s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}   # equal thread counts: the same float reductions
    one = subprocess.run([sys.executable, "-m", "ddkit", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "ddkit", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = read_run(tmp_path / "one"), read_run(tmp_path / "two")
    assert torch.equal(a.images, b.images) and torch.equal(a.weights, b.weights)
