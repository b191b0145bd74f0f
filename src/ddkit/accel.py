"""How a device computes: mixed precision, cuDNN autotuning and torch.compile (one place for all loops).

Mixed precision is one switch (TrainConfig.amp, `--amp auto|on|off`). On CUDA it autocasts to bf16 where the
GPU computes it natively (compute capability 8.0+) and else to fp16 with a GradScaler, since fp16 gradients
underflow without loss scaling. On CPU `auto` stays fp32, so CPU results are the fp32 results bit for bit;
`on` autocasts to bf16 there too (1.6-1.8x the training throughput on a CPU with AVX-512 BF16, measured by
bench/train_throughput.py; 0.09x on an AVX2-only CPU, which emulates it, so `on` warns there). Under autocast,
parameters, optimiser state, the pixels a synthesis optimises and every loss stay fp32 (callers cast logits
with .float(); BN-statistic losses run with autocast off).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from .utils import DDKitError

AMP_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Precision:
    device_type: str
    dtype: torch.dtype | None = None    # the autocast dtype; None: fp32

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")

    @property
    def scaled(self) -> bool:
        """fp16 needs loss scaling: its gradients underflow (bf16 has fp32's exponent range)."""
        return self.dtype == torch.float16

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def scaler(self) -> torch.amp.GradScaler:
        """Enabled for fp16; otherwise scale, step and update pass straight through (the fp32 step, exactly)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scaled)


def bf16_native(device: torch.device) -> bool:
    """Whether the GPU computes bf16 natively (Ampere and later; ROCm). Not torch.cuda.is_bf16_supported()'s
    default answer: that also says yes where bf16 is only emulated (V100, T4), slower than fp32 there."""
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8


def cpu_bf16_native() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 or AMX on x86, BF16 on Arm); True if unknown."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without this check: do not warn
        return True


def mixed_precision(device: torch.device | str, amp: bool | str = True, bf16: bool | None = None) -> Precision:
    """The precision a loop on `device` runs in, for amp = True (auto), False (off) or "on" (amp_setting);
    `bf16` (whether the GPU has native bf16) is looked up unless given."""
    device = torch.device(device)
    if amp == "on" and device.type == "cpu":
        return Precision("cpu", torch.bfloat16)
    if not amp or device.type != "cuda":
        return Precision(device.type)
    if bf16 is None:
        bf16 = bf16_native(device)
    return Precision("cuda", torch.bfloat16 if bf16 else torch.float16)


def amp_setting(mode: str, device: torch.device | str) -> bool | str:
    """TrainConfig.amp from `--amp`: auto -> True (CUDA only), off -> False, on -> "on" (CUDA or CPU)."""
    if mode not in AMP_MODES:
        raise DDKitError(f"unknown --amp {mode!r}; choose from {', '.join(AMP_MODES)}")
    kind = torch.device(device).type
    if mode == "on" and kind not in ("cuda", "cpu"):
        raise DDKitError(f"--amp on needs a CUDA device or the CPU, got {device} (use --amp auto or off)")
    if mode == "on" and kind == "cpu" and not cpu_bf16_native():
        print("ddkit: warning: --amp on: this CPU has no native bf16 kernels, so bf16 is emulated and runs ~10x "
              "slower than fp32 (--amp off)", file=sys.stderr)
    return {"auto": True, "off": False}.get(mode, mode)


def configure(device: torch.device) -> None:
    """Process-wide settings for a loop on `device`: cuDNN picks the fastest kernels for each input shape
    (every loop here runs one shape, or a few, thousands of times)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


COMPILE_OPTIONS: dict = {}  # passed to torch.compile (tests use backend="eager": tracing without a C compiler)


def compiled(model: nn.Module | None, enabled: bool) -> nn.Module | None:
    """`model` through torch.compile when enabled; the module itself (whose state_dict is saved) is unchanged."""
    return torch.compile(model, **COMPILE_OPTIONS) if enabled and model is not None else model
