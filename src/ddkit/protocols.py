"""The field's student-training (evaluation) protocols as named presets, and DD-Ranking's label metrics.

A protocol is how students are trained on a distilled set and tested; a set's accuracy depends on it as
much as on the images (docs/results/protocols.md). Presets, each overridable field by field (`--pset key=value`):

- `ddkit` (the default): EDC's CIFAR-10 student at 300 epochs with a smaller batch and CutMix, the strongest
  measured at that budget on CIFAR-10 IPC 10 (docs/results/protocol-study.md): AdamW 1e-3 wd 0.01, LR x0.5 at
  80, 90 and 95 % of training set per epoch, loss MSE(student logits, teacher logits) + 0.025 CE, RandAugment(2,
  9) per image before RRC(0.08-1)+flip, CutMix (beta 1) with the teacher labelling the mixed views, an EMA
  (0.99) of the weights tested, test Resize(s // 7 * 8) + CenterCrop(s), final epoch; batch by IPC but cut so
  an epoch has at least 10 steps (`min_steps`: CIFAR-10 IPC 10 -> 10, ImageNet-1K IPC 10 -> 100).
- `ddkit-v1`: ddkit's earlier default (AdamW 1e-3 cosine to 0 per step, batch 64, RRC(0.5-1)+flip, online KL
  at tau=4 with the tau^2 factor, final epoch): the field defaults of Protocol, so results stored under it
  keep their keys.
- `rded`: RDED/DELT online (its `validation/main.py`): views ToTensor -> ShufflePatches(f) -> torchvision's
  RandomResizedCrop scale (1/f, 1) -> flip, with f the set's stitching factor (an `rded` run's own; any other
  set 1 at <= 64 px, 2 above; `--pset patch_factor=N`): at CIFAR's f = 1 no crop at all, flips only. CutMix
  (beta 1) on every batch, the teacher labelling the mixed views, KL at T=20 without T^2, AdamW 1e-3 wd
  0.01 on conv/linear weights only (its get_parameters: no decay on biases and BN weights), LR 0.5 (1 +
  cos(pi e / 2E)) set per epoch (ends at 0.5), batch by IPC (`batch_size=0`: IPC1 -> 10, IPC10 -> 50,
  IPC50 -> 100, x2 from 100 classes), test Resize(s // 7 * 8) + CenterCrop(s), a no-grad train-mode
  forward of the mixed batch before each step (its BN-statistics quirk: its `cutmix` writes into the batch
  in place), best test accuracy every 10 epochs after 80 % of training (recorded beside the final one,
  labelled as selected on test).
- `sre2l`: SRe2L's FKD: a relabel pass stores every epoch's batches, crops, flips, CutMix boxes and the
  teacher's fp16 logits in the run folder (ddkit.fkd); students replay them without a teacher. KL at T=20
  without T^2, AdamW 1e-3 wd 0.01, cosine set per epoch, RRC(0.08-1)+flip, CutMix beta 1.
- `ddranking`: DD-Ranking's evaluation settings for tensors: AdamW lr 0.01 wd 0.01, its `cosine` LR
  0.5 (1 + cos(pi e / 2E)) set per epoch (ends at 0.5), KL at T=20 without T^2,
  CutMix (beta 1) as the only augmentation, batch 256 (its `syn_batch_size`), teacher online on every
  augmented batch (logits averaged over an ensemble: `--teacher A B`); it reports the best of every 20
  epochs (its `test_interval`), recorded beside the final one. Its flaws are left out: one lr for hard and
  soft labels (no search on test accuracy), final epoch reported, seeded students.
- `edc`: EDC's CIFAR-10 student (NeurIPS 2024): AdamW 1e-3 wd 0.01, batch 25, LR x0.5 at 80, 90 and 95 % of
  training, set per epoch (its MultiStepLR at epochs 800/900/950 of 1000), loss MSE(student logits, teacher
  logits) + 0.025 CE(student logits, the set's labels) with no temperature, torchvision RandAugment(2, 9)
  per image before RRC(0.08-1)+flip, an EMA (decay 0.99, every step, from the initial weights) of the
  student's parameters that is what gets tested, with the trained model's BatchNorm statistics; 1000
  epochs (DEFAULT_EPOCHS); the best EMA test accuracy every 10 epochs after 80 % of training is recorded
  beside the final one (labelled as selected on test).

- `e2d`: E2D's ImageNet-1K student (ncsu-dk-lab/E2D `Branch_ImageNet_1K`): FKD-stored soft labels (a relabel
  pass over all 300 epochs; the teacher passed, e.g. an ensemble of four whose logits are averaged), RRC(0.5-1)
  + flip, CutMix (beta 1), AdamW 1e-3 wd 0.01, batch 100, loss MSE(student logits, teacher logits) + 0.025 CE,
  LR `cos2` set per epoch (0.5 (1 + cos(pi e / 2E)) up to e = 5E/6, then that value at 5E/6 times (1 - e/E):
  its code's drop from 0.63 to 0.10 at epoch 250 of 300 included), an EMA (0.99, every step) of the weights
  tested, test Resize(s // 7 * 8) + CenterCrop(s), final epoch.

Not given by the peers' descriptions and chosen by ddkit (state them with results): RRC scale (0.08, 1)
(torchvision's default, which SRe2L's code uses) for sre2l; the IPC batch rule for sre2l
(SRe2L's ImageNet batch of 1024 would be one step per epoch at CIFAR IPC10); T=20 and lr 0.01 for
ddranking (ddkit's method spec of DD-Ranking's per-method settings; the package's own defaults are T 1.2
and an lr searched on test accuracy); IPC values between the table's rows take the next row down
(IPC 5 -> 10). For edc: batch 25
(ddkit's spec of EDC's CIFAR-10 runs; at IPC1 it is the whole 10-image set, as its CIFAR-10 script's batch
10), RandAugment drawn per image and seeded from the student's seed, CutMix off (its CIFAR-10 script passes
a CutMix flag, its paper's protocol does not list it: `--pset cutmix=1`), test views as rded (identity at
32 px).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from .train import TrainConfig
from .utils import FRACTION, NON_NEGATIVE, POSITIVE, DDKitError, Range, parse_overrides


@dataclass
class Protocol:
    """How students are trained and tested. A new protocol's knobs (e.g. EDC's weight EMA, MSE + CE loss,
    RandAugment, step LR) are fields whose defaults are ddkit's behaviour, so existing presets and the
    keys of stored results (see changes) stay as they are."""
    name: str = "ddkit-v1"          # the field defaults are ddkit's earlier default protocol (see changes)
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "cosine"        # cosine (to 0) | half_cosine (ends at 0.5) | onecycle | step (see milestones)
    #                                 | cos2 (E2D, see ddkit.train.lr_factor)
    lr_by_epoch: bool = False       # LR set once per epoch (the peers' LambdaLR) instead of per step
    batch_size: int = 64            # 0: by IPC (RDED's table, see ipc_batch_size)
    aug: str = "rrc"                # rrc (RandomResizedCrop + flip) | none
    rrc_scale: tuple[float, float] = (0.5, 1.0)
    cutmix: float = 0.0             # CutMix beta on every batch; 0 = off
    temperature: float = 4.0
    kl_t2: bool = True              # multiply the soft-label KL by T^2
    bn_warm: bool = False           # RDED: no-grad train-mode forward of the (mixed) batch before each step
    soft_labels: str = "online"     # online (teacher on every view) | fkd (stored views and logits, replayed)
    test_resize: bool = False       # test views Resize(s // 7 * 8) + CenterCrop(s) instead of as stored
    eval_every: int = 0             # > 0: also test every N epochs; the best is reported as selected on test
    best_after: float = 0.0         # ... only after this fraction of training (EDC: 0.8)
    milestones: tuple[float, ...] = (0.8, 0.9, 0.95)  # `step`: LR x0.5 at each of these fractions of training
    soft_loss: str = "kl"           # kl (at temperature) | mse (on the logits: EDC)
    ce_weight: float = 0.0          # + this times CE on the set's labels, with soft labels (EDC: 0.025)
    ema: float = 0.0                # > 0: an EMA of the weights with this decay is trained along and tested
    randaug_ops: int = 0            # torchvision RandAugment(ops, magnitude) per image before the crop; 0 = off
    randaug_magnitude: int = 9
    patch_factor: int = 0           # RDED's views: ShufflePatches(f), then RRC scale (1/f, rrc_scale[1]) drawn as
    #                                 torchvision does; 0 = off, -1 = the set's stitching factor (see train_config)
    decay: str = "all"              # weight decay on all parameters | weights (conv/linear weights only: RDED)
    min_steps: int = 0              # > 0 with batch_size 0: the IPC table's batch is cut so an epoch has at least
    #                                 this many steps (never below 10)

    CHOICES: ClassVar[dict] = {"schedule": ("cosine", "half_cosine", "onecycle", "step", "cos2"),
                               "aug": ("rrc", "none"),
                               "soft_labels": ("online", "fkd"), "optimizer": ("adamw", "sgd"),
                               "soft_loss": ("kl", "mse"), "decay": ("all", "weights")}
    # valid values of the numeric fields, checked when a protocol is built from --pset (and the flags that set them)
    RANGES: ClassVar[dict] = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "batch_size": NON_NEGATIVE,
                              "rrc_scale": Range(0, 1, open_lo=True, size=2, ordered=True), "cutmix": NON_NEGATIVE,
                              "temperature": POSITIVE, "eval_every": NON_NEGATIVE, "best_after": FRACTION,
                              "milestones": Range(0, 1, open_lo=True, ordered=True), "ce_weight": NON_NEGATIVE,
                              "ema": FRACTION, "randaug_ops": NON_NEGATIVE, "randaug_magnitude": Range(0, 30),
                              "patch_factor": Range(-1),   # -1: the set's stitching factor, 0: off, f: f x f patches
                              "min_steps": NON_NEGATIVE}
    # ddkit's EvalConfig had these three as its own fields: keys of results made with only them changed
    # stay what they were (see EvalConfig.key)
    LEGACY: ClassVar[tuple] = ("batch_size", "lr", "temperature")

    def changes(self) -> dict:
        """Fields that differ from the field defaults, i.e. from `ddkit-v1` (what a result key hashes: adding
        a field later, or changing which preset is the default, leaves every existing key as it was)."""
        base = Protocol()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "name" and getattr(self, f.name) != getattr(base, f.name)}

    def train_config(self, epochs: int, ipc: int, num_classes: int, set_factor: int = 1) -> TrainConfig:
        """The trainer's config; `set_factor`: the distilled set's stitching factor, which patch_factor=-1 takes
        (evaluate.stitch_factor: an rded run's own, else by resolution)."""
        f = set_factor if self.patch_factor == -1 else self.patch_factor
        scale = (1 / f, self.rrc_scale[1]) if f else tuple(self.rrc_scale)
        batch = self.batch_size or ipc_batch_size(ipc, num_classes)
        if self.min_steps and not self.batch_size:   # small sets: a few large steps per epoch train far less
            #                                          than many small ones; 10 is EDC's batch for a 10-image set
            batch = min(batch, max(10, math.ceil(ipc * num_classes / self.min_steps)))
        return TrainConfig(epochs=epochs, batch_size=batch,
                           optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
                           schedule=self.schedule, aug=self.aug, rrc_scale=scale, patch_shuffle=f if f > 1 else 0,
                           rrc_exact=f > 0, decay=self.decay,
                           temperature=self.temperature, lr_by_epoch=self.lr_by_epoch, cutmix=self.cutmix,
                           kl_t2=self.kl_t2, bn_warm=self.bn_warm, milestones=tuple(self.milestones),
                           soft_loss=self.soft_loss, ce_weight=self.ce_weight, ema=self.ema,
                           randaug_ops=self.randaug_ops, randaug_magnitude=self.randaug_magnitude)


_PEER = dict(lr=1e-3, weight_decay=0.01, batch_size=0, rrc_scale=(0.08, 1.0), cutmix=1.0, temperature=20.0,
             kl_t2=False, test_resize=True)
PRESETS: dict[str, Protocol] = {
    "ddkit": Protocol(name="ddkit", batch_size=0, min_steps=10, schedule="step", lr_by_epoch=True,
                      rrc_scale=(0.08, 1.0), randaug_ops=2, randaug_magnitude=9, cutmix=1.0, soft_loss="mse",
                      ce_weight=0.025, ema=0.99, test_resize=True),
    "ddkit-v1": Protocol(),
    "rded": Protocol(name="rded", schedule="half_cosine", lr_by_epoch=True, bn_warm=True, eval_every=10,
                     best_after=0.8, patch_factor=-1, decay="weights", **_PEER),
    "sre2l": Protocol(name="sre2l", schedule="cosine", lr_by_epoch=True, soft_labels="fkd", **_PEER),
    "ddranking": Protocol(name="ddranking", schedule="half_cosine", lr_by_epoch=True, eval_every=20,
                          **{**_PEER, "lr": 0.01, "batch_size": 256, "aug": "none", "test_resize": False}),
    "edc": Protocol(name="edc", batch_size=25, schedule="step", lr_by_epoch=True, rrc_scale=(0.08, 1.0),
                    randaug_ops=2, randaug_magnitude=9, soft_loss="mse", ce_weight=0.025, ema=0.99,
                    test_resize=True, eval_every=10, best_after=0.8),
    "e2d": Protocol(name="e2d", batch_size=100, schedule="cos2", lr_by_epoch=True, rrc_scale=(0.5, 1.0), cutmix=1.0,
                    soft_labels="fkd", soft_loss="mse", ce_weight=0.025, ema=0.99, test_resize=True),
}
# student epochs where a preset's paper trains longer than ddkit's 300 (`ddkit evaluate --epochs` overrides)
DEFAULT_EPOCHS = {"edc": 1000}


def preset(name: str, overrides: dict | None = None) -> Protocol:
    """A named protocol with `key=value` overrides (strings converted by each field's type)."""
    if name not in PRESETS:
        raise DDKitError(f"unknown protocol {name!r}; choose from {', '.join(PRESETS)}")
    return parse_overrides(Protocol, overrides or {}, base=PRESETS[name], what=f"protocol {name}")


def ipc_batch_size(ipc: int, num_classes: int) -> int:
    """RDED/DELT's student batch: IPC1 -> 10, IPC10 -> 50, IPC50 -> 100, doubled from 100 classes."""
    bs = 100 if ipc >= 50 else 50 if ipc >= 10 else 10
    return bs * 2 if num_classes >= 100 else bs


def label_robustness(syn_soft: float, syn_hard: float, random_soft: float, real_hard: float,
                     w: float = 0.5) -> dict:
    """DD-Ranking's metrics from accuracies as fractions (not percentages: the LRS formula assumes them):
    HLR = Acc(full real data, hard) - Acc(set, hard): how far hard labels on the set are from real data;
    IOR = Acc(set, soft) - Acc(random real at the same IPC, soft): the gain over random images under the
    same protocol; alpha = w IOR - (1 - w) HLR; LRS = (e^alpha - e^-1) / (e - e^-1)."""
    accs = {"syn_soft": syn_soft, "syn_hard": syn_hard, "random_soft": random_soft, "real_hard": real_hard}
    bad = [f"{k}={v}" for k, v in accs.items() if not 0 <= v <= 1]
    if bad:
        raise DDKitError(f"accuracies are fractions in [0, 1] here, got {', '.join(bad)}")
    hlr, ior = real_hard - syn_hard, syn_soft - random_soft
    alpha = w * ior - (1 - w) * hlr
    return {"hlr": hlr, "ior": ior, "lrs": (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))}
