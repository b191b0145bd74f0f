import math
import pytest
import torch

import ddkit.accel
import ddkit.train
from ddkit.models import build_model
from ddkit.train import TrainConfig, fit, weight_ema
from ddkit.utils import STOP, DDKitError, load_torch


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 8, 8, generator=g), torch.arange(8) % 2


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = _data()
    ck = tmp_path / "ck.pt"
    m = build_model("convnet3", 2, 8)
    fit(m, x, y, lambda t: t, TrainConfig(epochs=1, batch_size=8, aug="none"), torch.device("cpu"), checkpoint=str(ck),
        progress=False)
    good = load_torch(ck)["model"]
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DDKitError, match="loss became nan.*last good checkpoint kept"):
        fit(m, bad, y, lambda t: t, TrainConfig(epochs=2, batch_size=8, aug="none"), torch.device("cpu"),
            checkpoint=str(ck), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(good.values(), load_torch(ck)["model"].values()))


class Clock:
    """An injected clock: every reading is `step` seconds after the previous one."""

    def __init__(self, step: float):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


@pytest.mark.parametrize("extra", [{}, {"ema": 0.9, "randaug_ops": 2}])  # the EMA is resumed too
def test_training_resumes_from_its_checkpoint_to_the_same_weights(extra, tmp_path, monkeypatch):
    monkeypatch.setattr(ddkit.train, "CHECKPOINT_S", 0.0)  # save every epoch
    monkeypatch.setattr(ddkit.train, "clock", Clock(1.0))
    x, y = _data()
    cfg = TrainConfig(epochs=4, batch_size=4, aug="rrc", **extra)
    torch.manual_seed(0)
    ref = build_model("convnet3", 2, 8)
    fit(ref, x, y, lambda t: t, cfg, torch.device("cpu"), progress=False)
    ck, steps = str(tmp_path / "ck.pt"), []

    def preempt(idx, per):
        steps.append(1)
        if len(steps) == 5:  # first step of epoch 3: epochs 1-2 are checkpointed
            raise KeyboardInterrupt
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(build_model("convnet3", 2, 8), x, y, lambda t: t, cfg, torch.device("cpu"), checkpoint=ck,
            progress=False, on_batch=preempt)
    state = load_torch(ck)
    assert state["epoch"] == 2 and state["elapsed_s"] > 0
    m = build_model("convnet3", 2, 8)  # fresh weights: everything must come from the checkpoint
    hist = fit(m, x, y, lambda t: t, cfg, torch.device("cpu"), checkpoint=ck, progress=False)
    assert hist["resumed_s"] == state["elapsed_s"] and len(hist["loss"]) == 4  # earlier time still counted
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), m.state_dict().values()))


def test_stop_request_interrupts_training(tmp_path):
    x, y = _data()
    STOP["requested"] = True
    try:
        with pytest.raises(DDKitError, match="stopped"):
            fit(build_model("convnet3", 2, 8), x, y, lambda t: t, TrainConfig(epochs=1), torch.device("cpu"),
                progress=False)
    finally:
        STOP["requested"] = False


@pytest.mark.parametrize("seconds_per_reading, expected", [(0.0, [5]), (ddkit.train.CHECKPOINT_S, [1, 2, 3, 4, 5])])
def test_checkpoints_are_rate_limited_but_the_last_epoch_is_saved(seconds_per_reading, expected, tmp_path,
                                                                  monkeypatch):
    saves = []
    monkeypatch.setattr(ddkit.train, "save_torch", lambda obj, path: saves.append(obj["epoch"]))
    monkeypatch.setattr(ddkit.train, "clock", Clock(seconds_per_reading))
    x, y = _data()
    fit(build_model("convnet3", 2, 8), x, y, lambda t: t, TrainConfig(epochs=5, batch_size=8), torch.device("cpu"),
        checkpoint=str(tmp_path / "ck.pt"), progress=False)
    assert saves == expected  # instant epochs: one save, at the end; slow ones: one per epoch


def _bn_net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))


def test_an_ema_with_decay_0_is_the_raw_model_and_keeps_its_bn_statistics():
    x, y = _data()
    torch.manual_seed(0)
    m = _bn_net()
    fresh = {k: v.clone() for k, v in m.state_dict().items()}
    ema0, ema9 = weight_ema(m, 0.0), weight_ema(m, 0.9)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        ema0.update_parameters(m)
        ema9.update_parameters(m)
    live = m.state_dict()
    assert all(torch.equal(v, live[k]) for k, v in ema0.module.state_dict().items())
    for k, v in ema9.module.state_dict().items():   # buffers follow the live model, weights lag behind
        assert torch.equal(v, live[k]) == (k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert not torch.equal(live["1.running_mean"], fresh["1.running_mean"])


def test_fit_with_ema_ends_with_the_step_by_step_ema_of_the_weights():
    x, y = _data()
    torch.manual_seed(0)
    m = _bn_net()
    names = [k for k, _ in m.named_parameters()]
    ema = {k: v.detach().clone() for k, v in m.named_parameters()}   # EDC's EMA starts at the initial weights
    seen = []

    def step(idx, per):   # after each optimiser step: fold the new weights in by hand
        for k, v in m.named_parameters():
            ema[k] = 0.75 * ema[k] + 0.25 * v.detach()
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
    tested = []
    cfg = TrainConfig(epochs=3, batch_size=4, aug="none", optimizer="adamw", lr=0.05, ema=0.75)
    fit(m, x, y, lambda t: t, cfg, torch.device("cpu"), progress=False, on_batch=step,
        on_epoch=lambda e, model: tested.append(model))
    assert len(seen) == 6 and all(t is tested[0] and t is not m for t in tested)   # the EMA is what gets tested
    final = m.state_dict()
    for k in names:
        torch.testing.assert_close(final[k], ema[k])
        assert not torch.equal(final[k], seen[-1][k])
    assert torch.equal(final["1.running_var"], seen[-1]["1.running_var"])   # the trained model's BN statistics


def _train(cfg, seed=0, **kw):
    x, y = _data()
    torch.manual_seed(seed)
    m = build_model("convnet3", 2, 8)
    hist = fit(m, x, y, lambda t: t, cfg, torch.device("cpu"), seed=seed, progress=False, **kw)
    return m, hist


def test_cpu_training_does_not_depend_on_the_amp_switch():
    on, h_on = _train(TrainConfig(epochs=2, batch_size=4, aug="rrc", amp=True))
    off, h_off = _train(TrainConfig(epochs=2, batch_size=4, aug="rrc", amp=False))
    assert h_on["precision"] == h_off["precision"] == "fp32"
    assert all(torch.equal(a, b) for a, b in zip(on.state_dict().values(), off.state_dict().values()))


def test_cpu_bf16_is_opt_in_and_keeps_fp32_master_weights():
    m, hist = _train(TrainConfig(epochs=2, batch_size=4, aug="rrc", amp="on"))
    _, h32 = _train(TrainConfig(epochs=2, batch_size=4, aug="rrc", amp=False))
    assert hist["precision"] == "bf16" and all(math.isfinite(v) for v in hist["loss"])
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert hist["loss"] != h32["loss"]  # the forward really ran in bf16


def test_fp16_with_loss_scaling_trains_and_checkpoints_its_scaler(tmp_path, monkeypatch):
    # the CUDA fp16 path (GPUs without native bf16), run on CPU by injecting the precision
    from ddkit.accel import Precision
    monkeypatch.setattr(ddkit.train, "mixed_precision", lambda device, amp: Precision("cpu", torch.float16))
    ck = tmp_path / "ck.pt"
    m, hist = _train(TrainConfig(epochs=2, batch_size=4, aug="none"), checkpoint=str(ck))
    state = load_torch(ck)
    assert hist["precision"] == "fp16" and all(v == v and abs(v) < 1e3 for v in hist["loss"])
    assert all(p.dtype == torch.float32 for p in m.parameters())         # master weights stay fp32
    assert 0 < state["scaler"]["scale"] <= 2.0 ** 16                       # the scale resumes with the run
    fresh = build_model("convnet3", 2, 8)
    x, y = _data()
    hist2 = fit(fresh, x, y, lambda t: t, TrainConfig(epochs=2, batch_size=4, aug="none"), torch.device("cpu"),
                checkpoint=str(ck), progress=False)
    assert hist2["loss"] == hist["loss"]                                   # finished: nothing retrained


def test_compiled_training_matches_eager(monkeypatch):
    graphs = []

    def backend(gm, example_inputs):  # dynamo's tracing without inductor's C compiler: run the traced graph
        graphs.append(gm)
        return gm.forward
    monkeypatch.setattr(ddkit.accel, "COMPILE_OPTIONS", {"backend": backend})
    ref, _ = _train(TrainConfig(epochs=1, batch_size=4, aug="rrc"))
    assert graphs == []
    comp, _ = _train(TrainConfig(epochs=1, batch_size=4, aug="rrc", compile=True))
    assert graphs and all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), comp.state_dict().values()))


def test_flip_tta_averages_the_logits_of_an_image_and_its_mirror():
    m = build_model("convnet3", 2, 8).eval()
    x = torch.rand(4, 3, 8, 8)
    (_, out), = ddkit.train.batched_logits(m, [x], lambda t: t, "cpu", flip_tta=True)
    with torch.no_grad():
        assert torch.allclose(out, (m(x) + m(x.flip(-1))) / 2)
