import json
import math

import pytest
import torch
import torch.nn.functional as F

from ddkit.augment import apply_views, draw_views, resize_center_crop
from ddkit.distill import DistillConfig, distill
from ddkit.evaluate import EvalConfig, evaluate_set
from ddkit.models import build_model
from ddkit.protocols import DEFAULT_EPOCHS, PRESETS, Protocol, ipc_batch_size, label_robustness, preset
from ddkit.rundir import read_run
from ddkit.train import (TrainConfig, config_id, fit, lr_factor, render, soft_kl, soft_loss, student_recipe,
                         teacher_recipe)
from ddkit.utils import DDKitError


def test_the_earlier_default_is_the_student_recipe_and_keeps_its_result_keys():
    v1 = preset("ddkit-v1")
    assert v1.train_config(300, 10, 10) == student_recipe(300) and v1 == Protocol()
    # the keys of the committed CIFAR-10 benchmark results (bench/results/cifar10/random_ipc10.json)
    assert EvalConfig(protocol=v1).key("convnet3") == "convnet3/soft/e300-d94676"
    assert EvalConfig(protocol=v1, label_mode="hard").key("convnet3") == "convnet3/hard/e300-b0fc26"
    assert EvalConfig(protocol=Protocol(batch_size=16)).key("convnet3").startswith("convnet3/soft/e300-")
    # stored under the name it had as the default
    assert EvalConfig(protocol=preset("ddkit-v1", {"weight_decay": "0"})).key("c").startswith("c/soft/ddkit/e300-")
    keys = {EvalConfig(protocol=preset(n)).key("c") for n in PRESETS}
    assert len(keys) == len(PRESETS) and "c/soft/rded/e300-" in "".join(keys)
    assert EvalConfig(teachers=("a", "b")).key("c") != EvalConfig().key("c")   # an ensemble is another labeler
    # the default is the `ddkit` preset, under a key of its own
    assert EvalConfig().protocol == PRESETS["ddkit"] and EvalConfig().key("c").startswith("c/soft/ddkit/e300-")


def test_the_default_cuts_the_batch_to_ten_steps_per_epoch():
    ddk = PRESETS["ddkit"]
    # (ipc, classes) -> batch: IPC 10 on CIFAR-10 -> 10 (the study's), never below 10 (a 10-image set is one
    # batch), never above the IPC table's (ImageNet-1K IPC 10 -> 100)
    for ipc, classes, batch in ((10, 10, 10), (1, 10, 10), (50, 10, 50), (10, 1000, 100), (50, 100, 200)):
        assert ddk.train_config(300, ipc, classes).batch_size == batch, (ipc, classes)
    assert preset("ddkit", {"batch_size": "25"}).train_config(300, 10, 10).batch_size == 25   # as given
    assert preset("ddkit", {"min_steps": "0"}).train_config(300, 10, 10).batch_size == 50


_PEER = {"lr": 1e-3, "weight_decay": 0.01, "batch_size": 0, "rrc_scale": (0.08, 1.0), "cutmix": 1.0,
         "temperature": 20.0, "kl_t2": False, "test_resize": True}
PINNED = {   # each preset's fields beyond ddkit's own defaults (docs/protocols/audit.md gives each one's source)
    "ddkit-v1": {},
    "ddkit": {"batch_size": 0, "min_steps": 10, "schedule": "step", "lr_by_epoch": True, "rrc_scale": (0.08, 1.0),
              "randaug_ops": 2, "cutmix": 1.0, "soft_loss": "mse", "ce_weight": 0.025, "ema": 0.99,
              "test_resize": True},
    "rded": {**_PEER, "schedule": "half_cosine", "lr_by_epoch": True, "bn_warm": True, "eval_every": 10,
             "best_after": 0.8, "patch_factor": -1, "decay": "weights"},
    "sre2l": {**_PEER, "lr_by_epoch": True, "soft_labels": "fkd"},
    "ddranking": {**_PEER, "lr": 0.01, "batch_size": 256, "aug": "none", "test_resize": False, "eval_every": 20,
                  "schedule": "half_cosine", "lr_by_epoch": True},
    "edc": {"batch_size": 25, "schedule": "step", "lr_by_epoch": True, "rrc_scale": (0.08, 1.0), "randaug_ops": 2,
            "soft_loss": "mse", "ce_weight": 0.025, "ema": 0.99, "test_resize": True, "eval_every": 10,
            "best_after": 0.8},
    "e2d": {"schedule": "cos2", "lr_by_epoch": True, "batch_size": 100, "cutmix": 1.0, "soft_labels": "fkd",
            "test_resize": True, "soft_loss": "mse", "ce_weight": 0.025, "ema": 0.99},
}


def test_each_preset_pins_every_field():
    import dataclasses
    assert set(PINNED) == set(PRESETS)
    for name, fields in PINNED.items():
        assert dataclasses.asdict(PRESETS[name]) == {**dataclasses.asdict(Protocol()), **fields, "name": name}, name
    # ddkit's earlier protocol keeps the trainer's defaults for the fields added for the peers
    t = PRESETS["ddkit-v1"].train_config(300, 10, 10)
    assert (t.patch_shuffle, t.rrc_exact, t.decay, t.bn_warm, t.rrc_scale) == (0, False, "all", False, (0.5, 1.0))


def test_rded_views_follow_the_sets_stitching_factor():
    # RDED's CIFAR-10 script: factor 1, RandomResizedCrop scale (1, 1): the whole image, flips only
    f1 = preset("rded").train_config(300, 10, 10, set_factor=1)
    assert (f1.rrc_scale, f1.patch_shuffle, f1.rrc_exact, f1.decay, f1.bn_warm) == ((1.0, 1.0), 0, True, "weights", True)
    v = draw_views(f1.aug, 50, 32, 32, torch.Generator().manual_seed(0), f1.rrc_scale, cutmix=f1.cutmix,
                   patches=f1.patch_shuffle, exact=f1.rrc_exact)
    assert v.patches is None and torch.equal(v.boxes, torch.tensor([[0.0, 0, 32, 32]]).expand(50, 4))
    x = torch.rand(50, 3, 32, 32)
    torch.testing.assert_close(apply_views(x, v, slice(None)), torch.where(v.flips.view(-1, 1, 1, 1), x.flip(3), x))
    # ImageNet's factor 2: ShufflePatches(2), then crops of at least half the area
    f2 = preset("rded").train_config(300, 10, 10, set_factor=2)
    assert (f2.rrc_scale, f2.patch_shuffle) == ((0.5, 1.0), 2)
    assert preset("rded", {"patch_factor": "4"}).train_config(300, 10, 10, set_factor=2).rrc_scale == (0.25, 1.0)
    assert preset("ddkit-v1", {"patch_factor": "-1"}).train_config(300, 10, 10, set_factor=2).patch_shuffle == 2
    with pytest.raises(DDKitError, match="'patch_factor' of protocol rded: expected at least -1"):
        preset("rded", {"patch_factor": "-2"})


def test_the_set_factor_is_the_rded_runs_own_else_by_resolution(tmp_path):
    from ddkit.evaluate import stitch_factor
    from ddkit.utils import save_json
    assert (stitch_factor(None, 32), stitch_factor(None, 64), stitch_factor(None, 224)) == (1, 1, 2)
    for method, factor, expect in (("rded", 3, 3), ("rded", 0, 2), ("random", 3, 2)):
        save_json({"distill": {"method": method}, "method_config": {"factor": factor}}, tmp_path / "config.json")
        assert stitch_factor(tmp_path, 224) == expect


def test_rded_decays_conv_and_linear_weights_only():
    from ddkit.train import param_groups
    m = build_model("convnet3", 3, 8)
    decayed, rest = param_groups(m, "weights")
    assert decayed.keys() == {"params"} and rest["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(p) for n, p in m.named_parameters() if p.dim() > 1}
    assert len(rest["params"]) > 0 and all(p.dim() == 1 for p in rest["params"])   # biases and BN weights
    assert [g["params"] for g in param_groups(m, "all")] == [list(m.parameters())]
    # AdamW on a zero loss: only the decay moves a parameter, by the factor 1 - lr * wd
    for rule in ("weights", "all"):
        torch.manual_seed(0)
        m = build_model("convnet3", 3, 8)
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        fit(m, torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), lambda t: t,
            TrainConfig(epochs=1, batch_size=4, aug="none", optimizer="adamw", lr=0.1, weight_decay=0.5, decay=rule,
                        schedule="cosine"),
            torch.device("cpu"), progress=False, loss_fn=lambda out, y: 0 * out.sum(1))
        for n, p in m.named_parameters():
            shrunk = rule == "all" or p.dim() > 1
            torch.testing.assert_close(p.detach(), before[n] * (0.95 if shrunk else 1.0), msg=f"{rule} {n}")


def test_presets_pin_their_schedules():
    rded = preset("rded").train_config(8, 10, 10)
    assert (rded.optimizer, rded.lr, rded.weight_decay, rded.temperature, rded.kl_t2, rded.cutmix) == \
        ("adamw", 1e-3, 0.01, 20.0, False, 1.0)
    # RDED: 0.5 (1 + cos(pi e / 2E)), set per epoch: 1 at the start, constant within an epoch, ends above 0.5
    assert lr_factor(rded, 0, 0, 5) == lr_factor(rded, 0, 4, 5) == 1.0
    assert lr_factor(rded, 4, 3, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    last = lr_factor(rded, 7, 4, 5)
    assert last == pytest.approx(0.5 * (1 + math.cos(7 * math.pi / 16))) and last > 0.5
    sre2l = preset("sre2l").train_config(8, 10, 10)
    assert lr_factor(sre2l, 4, 2, 5) == pytest.approx(0.5) and sre2l.temperature == 20 and not sre2l.kl_t2
    ddk = preset("ddkit-v1").train_config(8, 10, 10)   # per step, to 0
    assert lr_factor(ddk, 4, 0, 5) == pytest.approx(0.5) and lr_factor(ddk, 4, 1, 5) < 0.5
    ddr = preset("ddranking").train_config(8, 10, 10)
    assert (ddr.lr, ddr.weight_decay, ddr.temperature, ddr.cutmix, ddr.schedule, ddr.aug, ddr.batch_size) == \
        (0.01, 0.01, 20.0, 1.0, "half_cosine", "none", 256)
    assert PRESETS["sre2l"].soft_labels == "fkd" and PRESETS["rded"].eval_every == 10
    assert PRESETS["ddranking"].eval_every == 20


def test_the_ddranking_schedule_is_its_half_cosine_stepped_per_epoch():
    # DD-Ranking's `cosine` (a LambdaLR stepped after every epoch): epoch e of E trains at 0.5 (1 + cos(pi e / 2E))
    # for all of that epoch's steps, so the last epoch runs just above half the peak, never near 0
    for epochs, steps in ((300, 1), (300, 4), (7, 3)):
        ddr = preset("ddranking").train_config(epochs, 10, 10)
        for e in range(epochs):
            want = 0.5 * (1 + math.cos(math.pi * e / epochs / 2))
            assert [lr_factor(ddr, e, b, steps) for b in range(steps)] == [pytest.approx(want, abs=1e-12)] * steps
    assert 0.5 < lr_factor(preset("ddranking").train_config(300, 10, 10), 299, 0, 1) < 0.51


def test_the_edc_preset_pins_its_schedule():
    edc = preset("edc").train_config(100, 10, 10)
    assert (edc.optimizer, edc.lr, edc.weight_decay, edc.batch_size, edc.aug, edc.rrc_scale, edc.cutmix) == \
        ("adamw", 1e-3, 0.01, 25, "rrc", (0.08, 1.0), 0.0)
    assert (edc.soft_loss, edc.ce_weight, edc.ema, edc.randaug_ops, edc.randaug_magnitude) == ("mse", 0.025, 0.99, 2, 9)
    # x0.5 at 80, 90 and 95 % of training, set per epoch (EDC's MultiStepLR at 800/900/950 of 1000 epochs)
    assert [lr_factor(edc, e, b, 4) for e, b in ((0, 0), (79, 3), (81, 0), (91, 2), (96, 1), (99, 3))] == \
        [1.0, 1.0, 0.5, 0.25, 0.125, 0.125]
    e1000 = preset("edc").train_config(1000, 10, 10)
    assert [lr_factor(e1000, e, 0, 4) for e in (799, 800, 899, 900, 949, 950)] == [1, 0.5, 0.5, 0.25, 0.25, 0.125]
    p = PRESETS["edc"]
    assert (p.eval_every, p.best_after, p.test_resize, DEFAULT_EPOCHS) == (10, 0.8, True, {"edc": 1000})
    # the other presets keep their loss, augmentation and weights: the new fields' defaults are ddkit's
    assert all(not {"soft_loss", "ce_weight", "ema", "randaug_ops", "milestones"} & set(q.changes())
               for n, q in PRESETS.items() if n not in ("edc", "e2d", "ddkit"))


def test_the_e2d_preset_is_e2ds_imagenet_student():
    p = PRESETS["e2d"]
    assert (p.soft_labels, p.soft_loss, p.ce_weight, p.ema, p.test_resize, p.eval_every) == \
        ("fkd", "mse", 0.025, 0.99, True, 0)
    cfg = preset("e2d").train_config(300, 10, 1000)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.aug, cfg.rrc_scale, cfg.cutmix) == \
        ("adamw", 1e-3, 0.01, 100, "rrc", (0.5, 1.0), 1.0)
    assert (cfg.schedule, cfg.lr_by_epoch, cfg.randaug_ops, DEFAULT_EPOCHS.get("e2d", 300)) == ("cos2", True, 0, 300)
    # E2D's LambdaLR: 0.5 (1 + cos(pi e / 600)) to epoch 250, then 0.5 (1 + cos(5 pi / 12)) (300 - e) / 300
    assert [lr_factor(cfg, e, 3, 10) for e in (0, 150)] == [1.0, pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))]
    at250 = 0.5 * (1 + math.cos(math.pi * 250 / 600))
    assert lr_factor(cfg, 250, 0, 10) == pytest.approx(at250)
    assert lr_factor(cfg, 251, 0, 10) == pytest.approx(at250 * 49 / 300)     # the code's drop, kept
    assert lr_factor(cfg, 299, 9, 10) == pytest.approx(at250 / 300) and lr_factor(cfg, 300, 0, 10) == 0


def test_the_edc_loss_is_mse_on_the_logits_plus_0025_ce_on_the_sets_labels():
    class Fixed(torch.nn.Module):   # logits independent of the image, so the loss can be worked out by hand
        def __init__(self, logits):
            super().__init__()
            self.b = torch.nn.Parameter(torch.tensor(logits))

        def forward(self, x):
            return self.b.expand(len(x), -1) + 0 * x.mean()
    losses = []
    cfg = TrainConfig(epochs=1, batch_size=2, aug="none", optimizer="adamw", lr=0.0, soft_loss="mse", ce_weight=0.025)
    fit(Fixed([2.0, 0.0]), torch.rand(2, 3, 4, 4), torch.tensor([0, 1]), lambda t: t, cfg, torch.device("cpu"),
        teacher=Fixed([1.0, 1.0]), progress=False, on_batch=lambda idx, per: losses.append((idx, per)))
    (idx, per), = losses
    # MSE: ((2 - 1)^2 + (0 - 1)^2) / 2 = 1; CE of logits (2, 0): log(1 + e^-2) = 0.126928 for class 0, 2.126928 for 1
    expect = {0: 1 + 0.025 * 0.1269280110, 1: 1 + 0.025 * 2.1269280110}
    torch.testing.assert_close(per, torch.tensor([expect[int(i)] for i in idx]))
    out, t = torch.randn(5, 4), torch.randn(5, 4)   # its batch mean is EDC's F.mse_loss of the logits
    torch.testing.assert_close(soft_loss(out, t, cfg).mean(), F.mse_loss(out, t))
    assert soft_loss(out, t, TrainConfig(temperature=4.0)).allclose(soft_kl(out, t, 4.0))


def test_students_under_edc_augmentation_are_reproducible_from_their_seed(tmp_path):
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    cfg = preset("edc").train_config(1, 2, 3)

    def train(seed):
        torch.manual_seed(0)
        m = build_model("convnet3", 3, 8)
        fit(m, x, y, lambda t: t, cfg, torch.device("cpu"), seed=seed, progress=False)
        return torch.cat([v.flatten() for v in m.state_dict().values() if v.is_floating_point()])
    assert torch.equal(train(0), train(0)) and not torch.equal(train(0), train(1))


def test_fkd_label_stores_refuse_randaugment_views(tmp_path, eval_inputs):
    from ddkit.fkd import label_store
    test, teacher = eval_inputs
    cfg = preset("edc", {"soft_labels": "fkd"}).train_config(2, 2, 3)
    with pytest.raises(DDKitError, match="do not record RandAugment or ShufflePatches"):
        label_store(tmp_path, test.images, test.normalize, teacher, cfg, torch.device("cpu"), progress=False)


def test_batch_size_by_ipc_follows_rded():
    assert [ipc_batch_size(i, 10) for i in (1, 5, 10, 20, 50, 100)] == [10, 10, 50, 50, 100, 100]
    assert [ipc_batch_size(i, 100) for i in (1, 10, 50)] == [20, 100, 200]
    assert preset("rded").train_config(300, 50, 10).batch_size == 100
    assert preset("rded", {"batch_size": "25"}).train_config(300, 50, 10).batch_size == 25


def test_protocol_overrides_are_typed_and_bad_ones_are_one_line_errors():
    p = preset("rded", {"lr": "0.002", "rrc_scale": "0.2,1", "cutmix": "0", "bn_warm": "false"})
    assert (p.lr, p.rrc_scale, p.cutmix, p.bn_warm, p.name) == (0.002, (0.2, 1.0), 0.0, False, "rded")
    assert PRESETS["rded"].lr == 1e-3                      # the preset itself is untouched
    for bad, msg in [({"nope": "1"}, "unknown setting 'nope' for protocol rded"),
                     ({"schedule": "linear"}, "choose from"), ({"lr": "fast"}, "bad value")]:
        with pytest.raises(DDKitError, match=msg):
            preset("rded", bad)
    with pytest.raises(DDKitError, match="unknown protocol"):
        preset("nope")
    for bad, msg in [({"ema": "1"}, r"'ema' of protocol edc: expected in \[0, 1\)"),
                     ({"milestones": "0.8,1.5"}, r"'milestones' of protocol edc: expected .* in \(0, 1\]"),
                     ({"temperature": "0"}, "expected above 0"), ({"batch_size": "-1"}, "expected at least 0"),
                     ({"rrc_scale": "2,1"}, "2 values each in \\(0, 1\\], in increasing order")]:
        with pytest.raises(DDKitError, match=msg):
            preset("edc", bad)


def test_a_training_option_added_later_leaves_teacher_cache_keys_alone():
    assert set(config_id(teacher_recipe())) == {"epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
                                                "label_smoothing", "aug", "rrc_scale", "temperature",
                                                "channels_last", "amp"}
    assert config_id(TrainConfig(cutmix=1.0))["cutmix"] == 1.0


def test_cutmix_pastes_one_box_of_a_partner_view():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 16, 16)
    v = draw_views("rrc", 6, 16, 16, g, (0.5, 1.0), cutmix=1.0)
    x, plain = render(images, lambda t: t, torch.arange(6), v, slice(None))
    x1, y1, x2, y2 = v.mix_box.tolist()
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[y1:y2, x1:x2] = True
    partner = apply_views(images[v.mix_perm], v, v.mix_perm)
    assert torch.equal(x[..., inside], partner[..., inside]) and torch.equal(x[..., ~inside], plain[..., ~inside])
    assert v.mix_lam(16, 16) == pytest.approx(1 - inside.float().mean().item())
    assert sorted(v.mix_perm.tolist()) == list(range(6))


def test_soft_kl_with_and_without_the_t2_factor():
    out, t = torch.randn(4, 3), torch.randn(4, 3)
    ref = (F.softmax(t / 20, 1) * (F.log_softmax(t / 20, 1) - F.log_softmax(out / 20, 1))).sum(1)
    torch.testing.assert_close(soft_kl(out, t, 20.0, t2=False), ref)
    torch.testing.assert_close(soft_kl(out, t, 20.0, t2=True), ref * 400)


def test_hard_labels_under_cutmix_mix_the_two_classes_by_area():
    torch.manual_seed(0)
    m = build_model("convnet3", 2, 8)
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    losses = []
    cfg = TrainConfig(epochs=1, batch_size=2, aug="none", cutmix=1.0, lr=0.0, optimizer="adamw")
    fit(m, x, y, lambda t: t, cfg, torch.device("cpu"), progress=False, on_batch=lambda idx, per: losses.append(per))
    gen = torch.Generator().manual_seed(0)   # fit's draws: the epoch's order, then the batch's views
    order = torch.randperm(2, generator=gen)
    v = draw_views("none", 2, 8, 8, gen, cutmix=1.0)
    xm, _ = render(x, lambda t: t, order, v, slice(None))
    m.train()
    with torch.no_grad():
        out = m(xm)
    lam = v.mix_lam(8, 8)
    ref = lam * F.cross_entropy(out, y[order], reduction="none") + \
        (1 - lam) * F.cross_entropy(out, y[order][v.mix_perm], reduction="none")
    torch.testing.assert_close(losses[0], ref, atol=1e-5, rtol=1e-5)


def test_bn_warm_adds_a_no_grad_forward_of_the_mixed_batch():
    calls = []
    m = build_model("convnet3", 2, 8)
    m.register_forward_hook(lambda mod, inp, out: calls.append((torch.is_grad_enabled(), inp[0].detach().clone())))
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    fit(m, x, y, lambda t: t, TrainConfig(epochs=1, batch_size=2, aug="rrc", cutmix=1.0, bn_warm=True),
        torch.device("cpu"), progress=False)
    assert [grad for grad, _ in calls] == [False, True, False, True]
    # RDED's cutmix writes into the batch in place before that forward: it sees what the step trains on
    assert all(torch.equal(calls[i][1], calls[i + 1][1]) for i in (0, 2))


def test_test_views_resize_then_centre_crop_and_are_identity_at_cifar_scale():
    from torchvision.transforms.v2 import functional as TF
    x32 = torch.rand(2, 3, 32, 32)
    assert torch.equal(resize_center_crop(x32, 32), x32)      # 32 // 7 * 8 = 32, as RDED's CIFAR runs
    x64 = torch.rand(2, 3, 64, 64)
    ref = TF.center_crop(TF.resize(x64, [72], antialias=True), [64, 64])
    torch.testing.assert_close(resize_center_crop(x64, 64), ref, atol=1e-5, rtol=0)


def test_label_robustness_uses_fractions():
    r = label_robustness(syn_soft=0.5, syn_hard=0.3, random_soft=0.45, real_hard=0.8)
    assert r["hlr"] == pytest.approx(0.5) and r["ior"] == pytest.approx(0.05)
    alpha = 0.5 * 0.05 - 0.5 * 0.5
    assert r["lrs"] == pytest.approx((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert label_robustness(0.8, 0.8, 0.8, 0.8)["lrs"] == pytest.approx((1 - math.exp(-1)) / (math.e - math.exp(-1)))
    with pytest.raises(DDKitError, match="fractions in .0, 1. here, got syn_soft=50.0, syn_hard=30.0"):
        label_robustness(50.0, 30.0, 45.0, 80.0)


def test_rded_protocol_records_final_and_best_epoch_and_saves_itself(eval_inputs, dataset, tmp_path):
    test, teacher = eval_inputs
    run = distill(DistillConfig(method="random", ipc=4, data=str(dataset)), tmp_path / "run", "cpu", progress=False)
    cfg = EvalConfig(seeds=1, epochs=4, protocol=preset("rded", {"eval_every": "2"}))
    (key, r), = evaluate_set(read_run(run), test, teacher, cfg, torch.device("cpu"), run=run, progress=False).items()
    assert key.startswith("convnet3/soft/rded/e4-") and r["best_selected_on_test"]["mean"] >= r["mean"]
    entry = json.loads((run / "metrics.json").read_text())["evaluation"][key]
    seed = entry["seeds"]["0"]
    assert seed["best_epoch"] in (2, 4) and seed["tested_every"] == 2
    assert entry["config"]["protocol"]["name"] == "rded" and entry["train"]["batch_size"] == 10  # IPC 4
