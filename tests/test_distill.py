import json

import pytest
import torch
from conftest import ZOO

from ddkit.cli import main
from ddkit.data import load_data
from ddkit.distill import DistillConfig, class_groups, distill, diversity
from ddkit.evaluate import EvalConfig, evaluate_set
from ddkit.rundir import read_run
from ddkit.methods import METHODS
from ddkit.teacher import load_teacher
from ddkit.utils import DDKitError, save_torch
from ddkit.zoo import IMAGENET_STATS


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


def test_several_teachers_distil_and_label_as_their_ensemble(dataset, teacher_path, tmp_path, capsys):
    """--teacher A B: the run records both; its evaluation takes the pair's mean logits as soft labels."""
    other = tmp_path / "other.pt"
    ck = torch.load(teacher_path, weights_only=True)
    ck["state_dict"] = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                        for k, v in ck["state_dict"].items()}
    save_torch(ck, other)
    assert main(["distill", "--method", "sre2l", "--ipc", "1", "--data", str(dataset), "--teacher",
                 str(teacher_path), str(other), "--set", "iterations=4", "--out", str(tmp_path / "run"), "--quiet",
                 "--evaluate", "--seeds", "1", "--epochs", "1"]) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["distill"]["teacher"] == [str(teacher_path), str(other)]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["groups"][0]["teacher_image_passes"] == 4 * 3   # one member per step, not both
    assert [k.split("/")[1] for k in m["evaluation"]] == ["soft"] and "e1-" in next(iter(m["evaluation"]))
    assert len(m["evaluation"][next(iter(m["evaluation"]))]["config"]["teachers"]) == 2


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


FAST = {"sre2l": {"iterations": "2"}, "e2d": {"iterations": "2"}, "delt": {"iterations": "2", "round_iters": "1"},
        "rded": {"candidates": "8", "crops": "2"}, "ddoq": {"restarts": "1"}, "random": {}, "edc": {"iterations": "2"}}
CROSS = {"torchvision:resnet18": "timm:test_resnet", "timm:test_resnet": "torchvision:resnet18"}


@pytest.mark.parametrize("spec", ZOO)
def test_every_method_distils_with_an_imported_teacher_and_evaluates(spec, zoo_weights, dataset, tmp_path, capsys):
    """torchvision:/timm: teacher from a state-dict file -> every method -> students from the other zoo."""
    weights = str(zoo_weights[spec])
    test = load_data(str(dataset), "test")
    teacher, ck = load_teacher(spec, weights, test.classes, test.image_size)
    test.mean, test.std = tuple(ck["mean"]), tuple(ck["std"])
    student = EvalConfig(archs=(CROSS[spec],), seeds=1, epochs=1)
    for method in sorted(set(METHODS) - {"random"}):
        cfg = DistillConfig(method=method, ipc=2, data=str(dataset), teacher=spec, teacher_weights=weights,
                            settings=FAST[method])
        run = distill(cfg, tmp_path / method, "cpu", progress=False)
        m = json.loads((run / "metrics.json").read_text())
        assert m["num_images"] == 6 and m["teacher"] == {"arch": spec, "test_acc": None, "path": spec,
                                                         "weights": weights, "stats_from": ck["stats_from"]}
        res = evaluate_set(read_run(run), test, teacher, student, torch.device("cpu"), progress=False)
        assert res[student.key(CROSS[spec])]["n"] == 1   # a student of the other zoo trained and tested
    cfg = json.loads((tmp_path / "ddoq" / "config.json").read_text())
    assert cfg["data"]["mean"] == list(IMAGENET_STATS[0] if spec.startswith("torchvision") else (0.5, 0.5, 0.5))
    # the command line: --teacher SPEC --teacher-weights PATH, evaluated with the run's own teacher
    assert main(["distill", "--method", "random", "--ipc", "2", "--data", str(dataset), "--teacher", spec,
                 "--teacher-weights", weights, "--out", str(tmp_path / "cli"), "--quiet", "--evaluate",
                 "--seeds", "1", "--epochs", "1", "--arch", CROSS[spec]]) == 0
    assert f"{CROSS[spec]}/soft" in capsys.readouterr().out


def test_assemble_concatenates_the_groups_in_order(tmp_path):
    from ddkit.distill import assemble
    xs = [torch.randn(n, 3, 4, 4) for n in (2, 3, 1)]
    paths = []
    for i, x in enumerate(xs):
        save_torch({"x": x, "labels": torch.full((len(x),), i), "info": {"i": i}}, tmp_path / f"g{i}.pt")
        paths.append(tmp_path / f"g{i}.pt")
    x, parts = assemble(paths)
    assert torch.equal(x, torch.cat(xs))
    assert [p["info"]["i"] for p in parts] == [0, 1, 2] and all("x" not in p for p in parts)
