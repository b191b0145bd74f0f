"""The protocol study's own tools (bench/protocol_study/study.py): its variants and its summary."""
import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "protocol_study"))
import study  # noqa: E402

from ddkit.protocols import PRESETS  # noqa: E402


@pytest.mark.parametrize("variant", list(study.VARIANTS))
def test_each_variant_changes_only_the_fields_it_names_from_its_base(variant):
    base, overrides = study.VARIANTS[variant]
    p, ref = study.protocol(variant), PRESETS[base]
    differ = {f.name for f in dataclasses.fields(p) if getattr(p, f.name) != getattr(ref, f.name)}
    assert differ <= set(overrides) | {"name"} and p.name == variant
    if base == "edc":   # tested at the final epoch only, like every other variant
        assert p.eval_every == 0
    # one ingredient at a time: at most one knob besides the edc300 baseline's own eval_every
    # (a loss swap moves its coupled fields together: soft_loss, ce_weight, temperature, kl_t2)
    assert len(set(overrides) - {"eval_every", "ce_weight", "temperature", "kl_t2", "lr_by_epoch"}) <= 1 \
        or variant in study.COMBINED


def test_the_default_preset_trains_as_the_studys_winner_at_cifar10_ipc10():
    assert PRESETS["ddkit"].train_config(300, 10, 10) == study.protocol("edc300+bs10+cutmix").train_config(300, 10, 10)


def _student(variant, method, draw, seed, acc):
    return {"variant": variant, "method": method, "draw": draw, "seed": seed, "acc": acc, "wall_s": 10.0,
            "steps": 600, "batch_size": 64, "set": f"{method}_ipc10_d{draw}", "set_fingerprint": "f"}


def test_the_margin_is_taken_per_draw_then_averaged_and_n_counts_every_student():
    students = [_student("ddkit-v1", "random", 0, 0, 0.40), _student("ddkit-v1", "random", 0, 1, 0.42),
                _student("ddkit-v1", "e2d", 0, 0, 0.45),
                _student("ddkit-v1", "random", 1, 0, 0.50), _student("ddkit-v1", "e2d", 1, 0, 0.49),
                _student("edc300", "random", 0, 0, 0.60)]   # no e2d yet: no margin
    rows = {r["variant"]: r for r in study.summary(students)}
    d = rows["ddkit-v1"]
    assert d["random"]["n"] == 3 and d["e2d"]["n"] == 2 and d["margin_draws"] == 2
    assert d["margin"] == pytest.approx(((45 - 41) + (49 - 50)) / 2)
    assert rows["edc300"]["margin"] is None and rows["edc300"]["e2d"] is None
    table = study.markdown(list(rows.values()), students, [])
    assert "| ddkit-v1 | ddkit-v1 | – | 44.00 ± 5.29 (n=3) | 47.00 ± 2.83 (n=2) | +1.50 | 2 |" in table
