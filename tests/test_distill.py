import json

import pytest
import torch

from ddkit.distill import DistillConfig, class_groups, distill, diversity
from ddkit.rundir import read_run
from ddkit.utils import DDKitError, save_torch


def _cfg(dataset, teacher_path, method="e2d", **kw):
    settings = {"iterations": "4"} if method in ("e2d", "sre2l", "delt") else {}
    if method == "delt":
        settings["round_iters"] = "2"
    return DistillConfig(method=method, ipc=2, data=str(dataset), teacher=str(teacher_path), settings=settings, **kw)


def test_distill_writes_a_complete_run(dataset, teacher_path, tmp_path):
    run = distill(_cfg(dataset, teacher_path), tmp_path / "run", "cpu", progress=False)
    ds = read_run(run)
    assert ds.images.shape == (6, 3, 8, 8) and ds.classes == ["cat", "dog", "frog"]
    assert all(len(list((run / "images" / c).iterdir())) == 2 for c in ds.classes)
    m = json.loads((run / "metrics.json").read_text())
    assert m["teacher_image_passes"] > 0 and 0 < m["diversity_cos"] <= 1
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["distill"]["method"] == "e2d" and cfg["method_config"]["iterations"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["run"]    # work folder cleaned up


def test_groups_are_independent_of_grouping(dataset, teacher_path, tmp_path):
    """Per-group seeding: one class per group gives the same images whatever the number of groups."""
    a = distill(_cfg(dataset, teacher_path, "random", classes_per_group=1), tmp_path / "a", "cpu", progress=False)
    b = distill(_cfg(dataset, teacher_path, "random", classes_per_group=2, seed=0), tmp_path / "b", "cpu",
                progress=False)
    assert class_groups(3, 2) == [[0, 1], [2]]
    assert torch.equal(read_run(a).images[:2], read_run(b).images[:2])  # class 0 starts a group in both


def test_finished_groups_are_not_redone(dataset, teacher_path, tmp_path, monkeypatch):
    cfg = _cfg(dataset, teacher_path, classes_per_group=1)
    calls = []
    from ddkit.methods.optimize import E2D
    real_run = E2D.run

    def flaky(self, ctx, classes):
        calls.append(classes[0])
        if classes[0] == 2 and calls.count(2) == 1:
            raise KeyboardInterrupt  # pre-empted while on the last group
        return real_run(self, ctx, classes)
    monkeypatch.setattr(E2D, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, tmp_path / "run", "cpu", progress=False)
    assert not (tmp_path / "run").exists()
    distill(cfg, tmp_path / "run", "cpu", progress=False)
    assert calls == [0, 1, 2, 2]
    fresh = distill(cfg, tmp_path / "fresh", "cpu", progress=False)
    assert torch.equal(read_run(tmp_path / "run").images, read_run(fresh).images)


def test_bad_inputs(dataset, teacher_path, tmp_path):
    with pytest.raises(DDKitError, match="needs a teacher"):
        distill(DistillConfig(method="sre2l", ipc=1, data=str(dataset)), tmp_path / "r", "cpu")
    with pytest.raises(DDKitError, match="fewer than IPC=50"):
        distill(DistillConfig(method="random", ipc=50, data=str(dataset)), tmp_path / "r", "cpu")
    with pytest.raises(DDKitError, match="trained on 3 classes"):
        distill(DistillConfig(method="sre2l", ipc=1, data="digits", teacher=str(teacher_path)), tmp_path / "r", "cpu")
    save_torch({"format": "ddkit-model-v1", "arch": "convnet3"}, tmp_path / "broken.pt")
    with pytest.raises(DDKitError):
        distill(DistillConfig(method="rded", ipc=1, data=str(dataset), teacher=str(tmp_path / "broken.pt")),
                tmp_path / "r", "cpu")
    assert not (tmp_path / "r").exists()


def test_diversity_is_one_for_identical_images_and_lower_for_different(teacher_path):
    from ddkit.teacher import load_checkpoint
    teacher, _ = load_checkpoint(teacher_path)
    same = torch.randn(1, 3, 8, 8).repeat(4, 1, 1, 1)
    labels = torch.zeros(4, dtype=torch.long)
    assert diversity(teacher, same, labels) == pytest.approx(1.0, abs=1e-3)
    assert diversity(teacher, torch.randn(4, 3, 8, 8), labels) < 0.999
