import copy

import pytest
import torch

from ddkit.engine import BNStatLoss, RecoverConfig, recover
from ddkit.teacher import load_checkpoint
from ddkit.utils import DDKitError


def _setup(teacher_path, n=6):
    teacher, ck = load_checkpoint(teacher_path)
    m, s = torch.tensor(ck["mean"]), torch.tensor(ck["std"])
    lo, hi = (0 - m) / s, (1 - m) / s
    x0 = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % 3
    return teacher, x0, y, lo, hi


def test_bn_loss_falls_and_images_stay_in_range(teacher_path):
    teacher, x0, y, lo, hi = _setup(teacher_path)
    cfg = RecoverConfig(iterations=60, lr=0.1, crop="none", log_every=1)
    res = recover(teacher, x0, y, cfg, lo, hi, torch.Generator().manual_seed(0), progress=False)
    assert res.curve["bn"][-1] < 0.6 * res.curve["bn"][0]
    assert res.curve["ce"][-1] < res.curve["ce"][0]
    assert not torch.equal(res.x, x0)
    assert (res.x >= lo.view(1, 3, 1, 1) - 1e-6).all() and (res.x <= hi.view(1, 3, 1, 1) + 1e-6).all()
    assert res.updates.tolist() == [60] * 6 and res.teacher_passes == 360


def test_recover_is_deterministic_per_seed(teacher_path):
    teacher, x0, y, lo, hi = _setup(teacher_path)
    cfg = RecoverConfig(iterations=5, crop="shared")
    a = recover(teacher, x0, y, cfg, lo, hi, torch.Generator().manual_seed(1), progress=False).x
    b = recover(teacher, x0, y, cfg, lo, hi, torch.Generator().manual_seed(1), progress=False).x
    c = recover(teacher, x0, y, cfg, lo, hi, torch.Generator().manual_seed(2), progress=False).x
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bn_hooks_read_batch_statistics_and_are_removed(teacher_path):
    teacher, *_ = _setup(teacher_path)
    bn = BNStatLoss(teacher)
    bn0 = bn.bns[0]
    x = torch.randn(16, 3, 8, 8)
    teacher(x)
    assert len(bn.terms) == len(bn.bns) == 3
    assert bn.pop().item() > 0 and bn.terms == []
    bn.close()
    teacher(x)
    assert bn.terms == [] and not bn0._forward_hooks


def test_start_iter_limits_updates(teacher_path):
    teacher, x0, y, lo, hi = _setup(teacher_path)
    cfg = RecoverConfig(iterations=10, crop="none")
    start = torch.tensor([0, 0, 3, 3, 7, 7])
    res = recover(teacher, x0, y, cfg, lo, hi, torch.Generator().manual_seed(0), start_iter=start, progress=False)
    assert res.updates.tolist() == [10, 10, 7, 7, 3, 3]
    assert not torch.equal(res.x[4:], x0[4:])


def test_batch_stats_match_var_mean_values_and_gradients():
    from ddkit.engine import BatchStats
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last) * 2 + 1
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(BatchStats.apply, (x,))
    v, m = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    m2, v2 = BatchStats.apply(x)
    assert torch.allclose(m, m2) and torch.allclose(v, v2)


def test_data_bn_stats_are_the_statistics_of_the_whole_pool(teacher_path, dataset):
    """Accumulated over batches they equal one-batch statistics; the pool then matches its own targets
    (BN loss ~0), which it does not against the teacher's running buffers."""
    from ddkit.data import load_data
    from ddkit.engine import data_bn_stats
    teacher, ck = load_checkpoint(teacher_path)
    pool = load_data(str(dataset), "train", stats=(tuple(ck["mean"]), tuple(ck["std"])))
    stats = data_bn_stats(teacher, pool.batches(None, 7), pool.normalize, "cpu")
    assert len(stats) == len(BNStatLoss(teacher).bns)
    whole = BNStatLoss(teacher, targets=stats)
    with torch.no_grad():
        teacher(pool.normalize(pool.images))
    assert whole.pop().item() < 1e-4
    whole.close()
    running = BNStatLoss(teacher)
    with torch.no_grad():
        teacher(pool.normalize(pool.images))
    assert running.pop().item() > 0.1
    running.close()


def test_bn_statistics_stay_fp32_under_mixed_precision(teacher_path):
    teacher, *_ = _setup(teacher_path)
    seen = []
    bn = BNStatLoss(teacher)
    bn.bns[1].register_forward_hook(lambda m, i, o: seen.append(i[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        teacher(torch.randn(4, 3, 8, 8))
    bn.close()
    assert seen == [torch.bfloat16]                                   # the layer's input is low precision ...
    assert [t.dtype for t in bn.terms] == [torch.float32] * 3         # ... its statistics' distances are not


def test_recover_under_fp16_loss_scaling_keeps_fp32_pixels(teacher_path, monkeypatch):
    import ddkit.engine
    from ddkit.accel import Precision
    monkeypatch.setattr(ddkit.engine, "mixed_precision", lambda device, amp: Precision("cpu", torch.float16))
    teacher, x0, y, lo, hi = _setup(teacher_path)
    res = recover(teacher, x0, y, RecoverConfig(iterations=8, crop="per_image", log_every=1), lo, hi,
                  torch.Generator().manual_seed(0), progress=False)
    assert res.x.dtype == torch.float32 and not torch.equal(res.x, x0) and torch.isfinite(res.x).all()
    assert res.curve["bn"][-1] < res.curve["bn"][0]


def test_compiled_teacher_forward_gives_the_same_images(teacher_path, monkeypatch):
    import ddkit.accel
    graphs = []

    def backend(gm, example_inputs):  # dynamo's tracing (BN hooks included) without inductor's C compiler
        graphs.append(gm)
        return gm.forward
    monkeypatch.setattr(ddkit.accel, "COMPILE_OPTIONS", {"backend": backend})
    teacher, x0, y, lo, hi = _setup(teacher_path)
    cfg = RecoverConfig(iterations=4, crop="per_image", log_every=1)
    ref = recover(teacher, x0, y, cfg, lo, hi, torch.Generator().manual_seed(0), progress=False)
    comp = recover(teacher, x0, y, cfg, lo, hi, torch.Generator().manual_seed(0), progress=False, compile=True)
    assert graphs and torch.equal(comp.x, ref.x) and comp.curve == ref.curve
def test_an_ensemble_is_recovered_against_one_member_per_step_in_turn(teacher_path):
    from ddkit.teacher import Ensemble
    teacher, x0, y, lo, hi = _setup(teacher_path)
    other, _ = load_checkpoint(teacher_path)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1 * torch.randn_like(p))
    cfg = RecoverConfig(iterations=5, crop="shared")
    single = recover(teacher, x0, y, cfg, lo, hi, torch.Generator().manual_seed(1), progress=False).x
    alone = recover(Ensemble([teacher]), x0, y, cfg, lo, hi, torch.Generator().manual_seed(1), progress=False).x
    assert torch.equal(single, alone)  # an ensemble of one is that teacher
    calls = []
    for i, m in enumerate((teacher, other)):
        m.register_forward_hook(lambda mod, inp, out, i=i: calls.append(i))
    both = Ensemble([teacher, other])
    assert sorted(BNStatLoss(both).mults.values()) == [1.0] * 4 + [10.0] * 2  # each member's first BN layer
    recover(both, x0, y, cfg, lo, hi, torch.Generator().manual_seed(1), progress=False)
    assert calls == [0, 1, 0, 1, 0]


def _tiny_conv_bn(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    return net.eval()


def test_edc_stat_loss_equals_a_hand_computation_with_its_straight_through_ema():
    from ddkit.engine import EDCStatLoss, StatTargets
    from ddkit.stats import Layout
    net = _tiny_conv_bn()
    # conv output: 4 channels + 4 patch positions (32 px = 2 x 2 patches of 16); BN input: 4 channels
    layout = Layout([[{"kind": "conv", "dims": [4, 4]}, {"kind": "bn", "dims": [4]}]])
    g = torch.Generator().manual_seed(1)
    glob, per_class = torch.rand(2, 12, generator=g), torch.rand(2, 2, 12, generator=g)
    labels = torch.tensor([0, 0, 1])
    conv = copy.deepcopy(net[0])   # the reference features, from a copy without the hooks
    loss = EDCStatLoss(net, StatTargets(layout, glob, per_class, labels), first_mult=10.0, momentum=0.8)
    cls = (2 * per_class[0] + per_class[1]) / 3           # the targets of the classes in the batch, averaged

    def parts(a):  # the batch's statistics, written out: channel mean/var over (N, H, W), per 16x16 patch over rest
        chan = (a.mean((0, 2, 3)), a.var((0, 2, 3), unbiased=False))
        blocks = [a[:, :, 16 * i:16 * i + 16, 16 * j:16 * j + 16] for i in range(2) for j in range(2)]
        return chan, (torch.stack([b.mean() for b in blocks]), torch.stack([b.var(unbiased=False) for b in blocks]))

    def term(stats, targets_g, targets_c):
        n = torch.linalg.vector_norm
        return sum(0.5 * (n(tg[1] - v) + n(tg[0] - m)) + 0.5 * (n(tc[1] - v) + n(tc[0] - m))
                   for (m, v), tg, tc in zip(stats, targets_g, targets_c))

    def expected(a, ema=None):
        (cm, cv), (pm, pv) = parts(a)
        now = [cm, cv, pm, pv] if ema is None else [0.8 * e + 0.2 * s for e, s in zip(ema, (cm, cv, pm, pv))]
        sl = [slice(0, 4), slice(4, 8), slice(8, 12)]
        conv = term([(now[0], now[1]), (now[2], now[3])], [glob[:, sl[0]], glob[:, sl[1]]],
                    [cls[:, sl[0]], cls[:, sl[1]]])
        bn = term([(now[0], now[1])], [torch.stack([net[1].running_mean, net[1].running_var])], [cls[:, sl[2]]])
        return 10 * conv + bn, now

    try:
        x1, x2 = torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 3, 32, 32, generator=g)
        loss.set_images(torch.arange(3))
        net(x1)
        value1, ema = expected(conv(x1).detach())
        assert torch.allclose(loss.pop(), value1, rtol=1e-5)
        # second step: the value is the EMA's (momentum 0.8), the gradient the batch statistic's alone
        x2.requires_grad_(True)
        net(x2)
        got = loss.pop()
        value2, _ = expected(conv(x2).detach(), ema)
        assert torch.allclose(got, value2, rtol=1e-5)
        (grad,) = torch.autograd.grad(got, x2)
        x3 = x2.detach().clone().requires_grad_(True)
        (cm, cv), (pm, pv) = parts(conv(x3))
        st = [0.8 * e + 0.2 * s.detach() + s - s.detach() for e, s in zip(ema, (cm, cv, pm, pv))]
        sl = [slice(0, 4), slice(4, 8), slice(8, 12)]
        ref = 10 * term([(st[0], st[1]), (st[2], st[3])], [glob[:, sl[0]], glob[:, sl[1]]],
                        [cls[:, sl[0]], cls[:, sl[1]]]) + \
            term([(st[0], st[1])], [torch.stack([net[1].running_mean, net[1].running_var])], [cls[:, sl[2]]])
        (want,) = torch.autograd.grad(ref, x3)
        assert torch.allclose(grad, want, rtol=1e-4, atol=1e-7)
    finally:
        loss.close()
    assert not net[0]._forward_hooks and not net[1]._forward_hooks


def test_stat_loss_refuses_unknown_values_teachers_without_layers_and_missing_statistics(teacher_path):
    model, _ = load_checkpoint(teacher_path)
    x, y = torch.zeros(2, 3, 8, 8), torch.tensor([0, 1])
    lo, hi = -torch.ones(3) * 3, torch.ones(3) * 3
    for cfg, net, msg in ((RecoverConfig(iterations=1, stat_loss="kl"), model, "unknown stat_loss 'kl'"),
                          (RecoverConfig(iterations=1, stat_loss="edc"), model, "needs the squeeze statistics"),
                          (RecoverConfig(iterations=1), torch.nn.Sequential(torch.nn.Flatten(),
                                                                            torch.nn.Linear(192, 2)), "no BatchNorm")):
        with pytest.raises(DDKitError, match=msg):
            recover(net, x, y, cfg, lo, hi, torch.Generator(), progress=False)
    from ddkit.stats import checked_layers
    with pytest.raises(DDKitError, match="no BatchNorm2d or Conv2d layer"):
        checked_layers(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2)))


def test_edc_stat_loss_survives_in_place_activations_after_a_conv():
    """AlexNet's ReLU(inplace) and EfficientNet's SE SiLU(inplace) overwrite a Conv's output after its hook."""
    from ddkit.engine import EDCStatLoss, StatTargets
    from ddkit.stats import Layout
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(inplace=True),
                              torch.nn.Conv2d(4, 4, 1), torch.nn.SiLU(inplace=True))
    layout = Layout([[{"kind": "conv", "dims": [4, 1]}, {"kind": "conv", "dims": [4, 1]}]])
    loss = EDCStatLoss(net, StatTargets(layout, torch.rand(2, 10), torch.rand(1, 2, 10), torch.zeros(2, dtype=int)))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss.set_images(torch.arange(2))
    net(x)
    loss.pop().backward()
    loss.close()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
