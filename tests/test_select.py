import json

import pytest
import torch

from ddkit.data import load_data, read_subset
from ddkit.distill import DistillConfig, distill
from ddkit.rundir import read_run
from ddkit.select import SelectConfig, causal_scores, select
from ddkit.utils import DDKitError


@pytest.mark.parametrize("criterion", ["loss", "random", "causal"])
def test_selection_is_per_class_deterministic_and_respects_keep(criterion, dataset, teacher_path, tmp_path):
    cfg = SelectConfig(criterion=criterion, keep=0.25, proxy_epochs=2,
                       teacher=str(teacher_path) if criterion == "causal" else None, ipc=2)
    info = select(str(dataset), cfg, tmp_path / "a.pt", "cpu", progress=False)
    again = select(str(dataset), cfg, tmp_path / "b.pt", "cpu", progress=False)
    assert again["scores_from_cache"] == (criterion != "random")   # scores do not depend on keep: cached
    a, b = read_subset(tmp_path / "a.pt", 48), read_subset(tmp_path / "b.pt", 48)
    assert torch.equal(a, b) and len(a) == 12 and info["per_class"] == {"cat": 4, "dog": 4, "frog": 4}
    labels = load_data(str(dataset)).labels[a]
    assert torch.bincount(labels).tolist() == [4, 4, 4]
    assert (tmp_path / "a.png").is_file() and json.loads((tmp_path / "a.json").read_text())["num_kept"] == 12


def test_loss_criterion_keeps_the_low_loss_end(dataset, teacher_path, tmp_path):
    select(str(dataset), SelectConfig(keep=0.5, teacher=str(teacher_path)), tmp_path / "s.pt", "cpu")
    blob = torch.load(tmp_path / "s.pt", weights_only=True)
    labels = load_data(str(dataset)).labels
    for c in range(3):
        cls = (labels == c).nonzero().flatten()
        kept = [i for i in blob["indices"].tolist() if labels[i] == c]
        dropped = [i for i in cls.tolist() if i not in kept]
        assert blob["scores"][kept].max() <= blob["scores"][dropped].min()


def test_bad_keep_is_refused(dataset, tmp_path):
    for keep in (0.0, -1.0, 1.5):
        with pytest.raises(DDKitError, match="--keep must be in"):
            select(str(dataset), SelectConfig(keep=keep), tmp_path / "s.pt", "cpu")
    assert not (tmp_path / "s.pt").exists()


def test_selections_chain_and_round_trip_through_distill(dataset, teacher_path, tmp_path):
    select(str(dataset), SelectConfig(criterion="random", keep=0.5), tmp_path / "half.pt", "cpu")
    select(str(dataset), SelectConfig(criterion="causal", keep=0.5, teacher=str(teacher_path), subset=str(
        tmp_path / "half.pt")), tmp_path / "quarter.pt", "cpu")
    half, quarter = read_subset(tmp_path / "half.pt", 48), read_subset(tmp_path / "quarter.pt", 48)
    assert len(quarter) == 12 and set(quarter.tolist()) <= set(half.tolist())
    run = distill(DistillConfig(method="random", ipc=4, data=str(dataset), subset=str(tmp_path / "quarter.pt")),
                  tmp_path / "run", "cpu", progress=False)
    full = load_data(str(dataset))
    kept = full.images[quarter]
    got = (read_run(run).images * 255).round().to(torch.uint8)
    assert all(any(torch.equal(g, k) for k in kept) for g in got)   # only kept samples were used


def test_causal_score_ignores_the_direction_of_the_current_mismatch():
    """A sample whose deviation lies along the synthetic-real gap does not change the gradient direction."""
    mu = torch.zeros(1, 2)
    real_m = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    synth_m = torch.tensor([[3.0, 0.0]])  # gap along x
    s = causal_scores([(real_m, real_m ** 2 * 0 + mu)], [(synth_m, synth_m * 0 + torch.tensor([[1.0, 1.0]]))])
    assert s[0] == pytest.approx(0.0, abs=1e-5) and s[1] == pytest.approx(0.0, abs=1e-5)
    assert s[2] > 0 and s[3] > 0
