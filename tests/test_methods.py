import json
import types

import pytest
import torch

from ddkit.data import load_data
from ddkit.methods import METHODS, Context, build_method
from ddkit.methods.optimize import E2DSampler, delt_rounds, medium_order
from ddkit.teacher import load_checkpoint
from ddkit.utils import DDKitError

FAST = {"sre2l": {"iterations": "6"}, "delt": {"iterations": "6", "round_iters": "2"},
        "e2d": {"iterations": "6"}, "rded": {"candidates": "8", "crops": "2"}, "edc": {"iterations": "4"}}


def _ctx(dataset, teacher_path, ipc=2, seed=0):
    train = load_data(str(dataset))
    teacher, ck = load_checkpoint(teacher_path)
    train.mean, train.std = tuple(ck["mean"]), tuple(ck["std"])
    return Context(train, teacher, ipc, torch.device("cpu"), torch.Generator().manual_seed(seed), False)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_returns_ipc_images_per_class_in_range(name, dataset, teacher_path):
    ctx = _ctx(dataset, teacher_path)
    out = build_method(name, FAST.get(name)).run(ctx, [0, 1, 2])
    assert out.x.shape == (6, 3, 8, 8) and out.labels.tolist() == [0, 0, 1, 1, 2, 2]
    lo, hi = ctx.bounds()
    assert (out.x >= lo.view(1, 3, 1, 1) - 1e-5).all() and (out.x <= hi.view(1, 3, 1, 1) + 1e-5).all()
    again = build_method(name, FAST.get(name)).run(_ctx(dataset, teacher_path), [0, 1, 2])
    assert torch.equal(out.x, again.x)  # same seed, same images


def test_unknown_method_setting_and_ipc_too_large(dataset, teacher_path):
    with pytest.raises(DDKitError, match="unknown method 'magic'"):
        build_method("magic")
    with pytest.raises(DDKitError, match="unknown setting 'speed'"):
        build_method("sre2l", {"speed": "3"})
    with pytest.raises(DDKitError, match="bad value"):
        build_method("sre2l", {"iterations": "many"})
    for name, key in (("sre2l", "crop"), ("delt", "init"), ("e2d", "init"), ("e2d", "bn_targets")):
        with pytest.raises(DDKitError, match=f"bad value 'bogus' for setting '{key}'; choose from"):
            build_method(name, {key: "bogus"})
    with pytest.raises(DDKitError, match="unknown ddoq encoder 'bogus'"):
        build_method("ddoq", {"encoder": "bogus"})
    with pytest.raises(DDKitError, match="fewer than IPC=99"):
        build_method("random").run(_ctx(dataset, teacher_path, ipc=99), [0])


def test_rded_keeps_the_lowest_loss_crops(dataset, teacher_path, monkeypatch):
    # with whole-image 'crops' the chosen images are the 3 real images the teacher finds most class-like
    monkeypatch.setattr("ddkit.methods.real.sample_boxes",
                        lambda n, h, w, *a, **k: torch.tensor([[0.0, 0.0, w, h]]).expand(n, 4))
    ctx = _ctx(dataset, teacher_path, ipc=3)
    out = build_method("rded", {"candidates": "16", "crops": "1"}).run(ctx, [1])
    idx = ctx.train.class_indices(1)
    x = ctx.real(idx)
    ce = torch.nn.functional.cross_entropy(ctx.teacher(x), torch.ones(len(idx), dtype=torch.long), reduction="none")
    best = x[ce.argsort()[:3]]
    assert torch.allclose(out.x.sort(0).values, best.sort(0).values, atol=1e-4)


def test_rded_crops_scores_and_stitches_as_rdeds_code(dataset, teacher_path, monkeypatch):
    import torch.nn.functional as F
    from ddkit.augment import crop_resize, sample_boxes
    cfg = build_method("rded").cfg   # RDED's CIFAR-10 script and MultiRandomCrop
    assert (cfg.candidates, cfg.crops, cfg.min_scale, cfg.ratio, cfg.factor) == (300, 5, 0.08, (1.0, 1.0), 0)
    seen = []

    def spy(n, h, w, scale, ratio, **k):
        seen.append((scale, ratio))
        return sample_boxes(n, h, w, scale, ratio, **k)
    monkeypatch.setattr("ddkit.methods.real.sample_boxes", spy)
    build_method("rded", {"candidates": "4", "crops": "2"}).run(_ctx(dataset, teacher_path, ipc=1), [0])
    assert seen == [((0.08, 1.0), (1.0, 1.0))]
    # factor 2 with whole-image crops: each candidate scored at half size, zero-padded to the full size; grid
    # cell k of image i is ranked crop k * IPC + i
    monkeypatch.setattr("ddkit.methods.real.sample_boxes",
                        lambda n, h, w, *a, **k: torch.tensor([[0.0, 0.0, w, h]]).expand(n, 4))
    ctx = _ctx(dataset, teacher_path, ipc=2)
    out = build_method("rded", {"candidates": "16", "crops": "1", "factor": "2"}).run(ctx, [1])
    idx = ctx.train.class_indices(1)
    x = ctx.real(idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))[:16]])
    small = crop_resize(x, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), 4)
    ce = torch.nn.functional.cross_entropy(ctx.teacher(F.pad(small, (2, 2, 2, 2))), torch.ones(16, dtype=torch.long),
                                           reduction="none")
    ranked = small[ce.argsort()]
    for i in range(2):
        cells = [out.x[i, :, :4, :4], out.x[i, :, :4, 4:], out.x[i, :, 4:, :4], out.x[i, :, 4:, 4:]]
        for k, cell in enumerate(cells):
            torch.testing.assert_close(cell, ranked[k * 2 + i], atol=1e-5, rtol=0)


def test_delt_schedule_and_medium_order():
    assert delt_rounds(10, 500, 100) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert delt_rounds(7, 300, 100) == [0, 0, 0, 1, 1, 2, 2]
    assert delt_rounds(3, 100, 100) == [0, 0, 0]
    assert medium_order(5) == [2, 3, 1, 4, 0]
    assert sorted(medium_order(6)) == list(range(6))


def test_delt_early_images_get_exactly_their_scheduled_updates(dataset, teacher_path):
    ctx = _ctx(dataset, teacher_path, ipc=4)
    out = build_method("delt", {"iterations": "8", "round_iters": "2"}).run(ctx, [0, 1])
    # 4 rounds of 2 iterations: image k joins at round k -> 8, 6, 4, 2 updates
    assert out.info["updates_per_image"] == [8, 6, 4, 2] * 2
    flat = build_method("delt", {"iterations": "8", "round_iters": "2", "early_late": "false"}).run(
        _ctx(dataset, teacher_path, ipc=4), [0, 1])
    assert flat.info["updates_per_image"] == [8] * 8
    assert out.info["image_updates"] == 40 and flat.info["image_updates"] == 64


def test_delt_init_is_ordered_by_teacher_confidence(dataset, teacher_path):
    ctx = _ctx(dataset, teacher_path, ipc=3)
    idx = ctx.train.class_indices(2)
    with torch.no_grad():
        p = ctx.teacher(ctx.real(idx)).softmax(1)[:, 2]
    ranked = idx[p.argsort()]
    m = build_method("delt", {"init": "lowest"})
    assert torch.equal(m._init(ctx, 2), ctx.real(ranked[:3]))
    m = build_method("delt", {"init": "highest"})
    assert torch.equal(m._init(ctx, 2), ctx.real(ranked.flip(0)[:3]))


class _Cfg:
    iterations, explore_frac, eps, min_scale, max_scale, early_stop, crop, curriculum = 10, 0.5, 0.5, 0.5, 1.0, True, \
        "per_image", False


def test_e2d_memory_holds_the_high_loss_boxes_and_exploitation_draws_from_them():
    s = E2DSampler(_Cfg(), 8, n=2)
    gen = torch.Generator().manual_seed(0)
    active = torch.arange(2)
    seen = []
    for it in range(5):  # exploration: K = 5
        b = s.boxes(it, active, gen)
        ce = torch.tensor([0.1 + it, 0.2])          # image 0: rising loss; image 1: always easy
        s.update(it, active, b, ce)
        seen.append((tuple(b[0].tolist()), 0.1 + it))
    assert set(s.memory[0]) == {k for k, v in seen if v > 0.5} and not s.memory[1]
    assert max(s.memory[0], key=s.memory[0].get) == max(seen, key=lambda t: t[1])[0]
    hard = len(s.memory[0])
    for it in range(5, 8):  # exploitation: image 0's boxes come from its memory
        b = s.boxes(it, active, gen)
        assert tuple(b[0].tolist()) in s.memory[0]
        s.update(it, active, b, torch.tensor([0.0, 0.0]))   # solved: the drawn box leaves the memory
    assert len(s.memory[0]) == 1 and not s.done(7)
    assert s.hard_after_explore == hard == 4   # counted when exploration ended, not shrinking after
    resumed = E2DSampler(_Cfg(), 8, n=2)
    resumed.load_state_dict(s.state_dict())
    assert resumed.hard_after_explore == hard and resumed.memory == s.memory
    b = s.boxes(8, active, gen)
    s.update(8, active, b, torch.tensor([0.0, 0.0]))
    assert not s.memory[0] and s.done(8)


def test_e2d_exploitation_only_still_explores_one_step():
    cfg = _Cfg()
    cfg.explore_frac = 0.0
    s = E2DSampler(cfg, 8, n=1)
    gen = torch.Generator().manual_seed(0)
    b = s.boxes(0, torch.arange(1), gen)
    s.update(0, torch.arange(1), b, torch.tensor([2.0]))
    assert s.memory[0] == {tuple(b[0].tolist()): 2.0} and not s.done(0)
    assert tuple(s.boxes(1, torch.arange(1), gen)[0].tolist()) in s.memory[0]


def test_e2d_exploration_only_still_counts_its_hard_boxes():
    cfg = _Cfg()
    cfg.explore_frac = 1.0
    s = E2DSampler(cfg, 8, n=1)
    gen = torch.Generator().manual_seed(0)
    for it in range(cfg.iterations):
        s.update(it, torch.arange(1), s.boxes(it, torch.arange(1), gen), torch.tensor([2.0]))
    assert s.exploit_steps == 0 and s.hard_after_explore == len(s.memory[0]) > 0


def test_bn_targets_data_are_computed_once_on_the_pruned_pool(dataset, teacher_path, tmp_path, monkeypatch):
    """BiLP for a distiller that reads no real image: sre2l matches the statistics of the kept subset."""
    import ddkit.methods.optimize as opt
    from ddkit.distill import DistillConfig, distill
    from ddkit.select import SelectConfig, select
    seen, real = [], opt.data_bn_stats
    readings = iter(range(100))  # an injected clock: every reading one second after the last
    monkeypatch.setattr(opt, "time", types.SimpleNamespace(time=lambda: float(next(readings))))
    def counted(model, batches, *a):
        batches = list(batches)
        seen.append(sum(map(len, batches)))
        return real(model, batches, *a)
    monkeypatch.setattr(opt, "data_bn_stats", counted)
    select(str(dataset), SelectConfig(criterion="random", keep=0.5), tmp_path / "half.pt", "cpu")
    distill(DistillConfig(method="sre2l", ipc=2, data=str(dataset), teacher=str(teacher_path),
                          subset=str(tmp_path / "half.pt"), classes_per_group=1,
                          settings={"iterations": "3", "bn_targets": "data"}), tmp_path / "run", "cpu",
            progress=False)
    assert seen == [24]            # 3 groups, one pass over the 24 kept images
    groups = json.loads((tmp_path / "run" / "metrics.json").read_text())["groups"]
    assert [g["bn_targets_wall_s"] for g in groups] == [1.0, 0, 0]  # timed once, by the first group


def test_recipes_set_the_papers_values_and_later_settings_override_them():
    cifar, paper = build_method("e2d").cfg, build_method("e2d", {"iterations": "7", "recipe": "paper"}).cfg
    assert (cifar.recipe, cifar.stat_loss, cifar.r_bn, cifar.iterations) == ("cifar", "bn", 0.01, 200)
    assert (paper.stat_loss, paper.r_bn, paper.stat_momentum, paper.lr, paper.explore_frac, paper.eps,
            paper.min_scale, paper.crop, paper.squeeze_scale) == ("edc", 0.1, 0.8, 0.05, 0.7, 0.5, 0.5, "per_image",
                                                                  (0.08, 1.0))
    assert paper.iterations == 7   # given beside the recipe, in any order: the user's value wins
    edc, imnet = build_method("edc").cfg, build_method("edc", {"recipe": "imagenet"}).cfg
    assert (edc.stat_loss, edc.iterations, edc.lr, edc.r_bn, edc.crop, edc.min_scale) == \
        ("edc", 75, 0.05, 0.01, "shared", 0.08)
    assert (imnet.iterations, imnet.lr, imnet.r_bn, imnet.min_scale) == (1000, 0.05, 0.1, 0.5)
    for name, key in (("e2d", "recipe"), ("edc", "recipe"), ("sre2l", "stat_loss")):
        with pytest.raises(DDKitError, match=f"bad value 'bogus' for setting '{key}'; choose from"):
            build_method(name, {key: "bogus"})


def test_edc_distills_with_statistics_beside_the_teacher_and_refuses_others(dataset, teacher_path, tmp_path):
    from ddkit.distill import DistillConfig, distill
    from ddkit.rundir import read_json
    cfg = DistillConfig(method="edc", ipc=2, data=str(dataset), teacher=str(teacher_path), settings={"iterations": "3"})
    out = distill(cfg, tmp_path / "run", device="cpu", progress=False)
    folders = list(teacher_path.parent.glob("teacher.pt.stats/*/global.pt"))
    assert len(folders) == 1    # one folder per (data, teacher, views) hash, beside the teacher
    metrics = read_json(out / "metrics.json")
    assert metrics["num_images"] == 6 and metrics["groups"][0]["curve"]["bn"][0] > 0
    # statistics of other data named as this run's: one line, and neither the run nor its work folder appears
    other = DistillConfig(**{**cfg.__dict__, "subset": None, "settings": {"iterations": "3",
                                                                          "stats_dir": str(folders[0].parent)}})
    other.data = str(dataset / "test")
    with pytest.raises(DDKitError, match="were computed on other data"):
        distill(other, tmp_path / "bad", device="cpu", progress=False)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.work-*"))
