import pytest
import torch

from ddkit import accel
from ddkit.accel import Precision, amp_setting, configure, mixed_precision
from ddkit.utils import DDKitError


@pytest.mark.parametrize("device, amp, bf16, name", [
    ("cpu", True, None, "fp32"),      # CPU never autocasts (and asks CUDA nothing)
    ("cpu", False, None, "fp32"),
    ("cpu", "on", None, "bf16"),      # opt-in: --amp on
    ("cuda", True, True, "bf16"),     # Ampere and later
    ("cuda", True, False, "fp16"),    # V100, T4: bf16 would be emulated
    ("cuda", False, True, "fp32"),    # --amp off
])
def test_precision_is_chosen_from_the_device_facts(device, amp, bf16, name):
    p = mixed_precision(device, amp, bf16=bf16)
    assert p.name == name and p.device_type == device.split(":")[0]
    assert p.scaled == (name == "fp16")  # a GradScaler only where gradients would underflow


@pytest.mark.parametrize("native", [True, False])
def test_amp_on_warns_where_the_cpu_emulates_bf16(monkeypatch, capsys, native):
    monkeypatch.setattr(accel, "cpu_bf16_native", lambda: native)
    assert amp_setting("on", "cpu") == "on"  # still the user's choice
    assert ("no native bf16" in capsys.readouterr().err) is not native
    amp_setting("auto", "cpu")
    amp_setting("off", "cpu")
    assert capsys.readouterr().err == ""  # fp32 either way: nothing to warn about


def test_amp_modes_auto_on_off():
    cpu, cuda = torch.device("cpu"), torch.device("cuda:1")
    assert amp_setting("auto", cpu) and mixed_precision(cpu, amp_setting("auto", cpu)).name == "fp32"
    assert amp_setting("on", cuda) and amp_setting("auto", cuda) and not amp_setting("off", cuda)
    assert amp_setting("on", cpu) == "on" and mixed_precision(cpu, "on").name == "bf16"  # opt-in CPU bf16
    assert not amp_setting("off", cpu) and mixed_precision(cuda, "on", bf16=True).name == "bf16"
    with pytest.raises(DDKitError, match="--amp on needs a CUDA device or the CPU"):
        amp_setting("on", "mps")
    with pytest.raises(DDKitError, match="unknown --amp"):
        amp_setting("fast", cuda)


def test_fp32_scaler_passes_the_step_through_and_fp16_scales_the_loss():
    loss = torch.tensor(2.0)
    assert Precision("cpu").scaler().scale(loss) is loss
    assert Precision("cpu", torch.float16).scaler().scale(loss).item() == 2.0 * 2 ** 16


def test_cudnn_autotuning_is_set_for_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    configure(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True
