import json

import pytest
import torch

from ddkit.distill import DistillConfig, distill
from ddkit.evaluate import EvalConfig, align_classes, evaluate_set
from ddkit.protocols import Protocol
from ddkit.rundir import DistilledSet, read_run
from ddkit.utils import DDKitError

FAST = EvalConfig(seeds=2, epochs=20, protocol=Protocol(batch_size=16))


def test_students_learn_from_a_tiny_set_and_results_are_stored(eval_inputs, dataset, teacher_path, tmp_path,
                                                                 monkeypatch):
    test, teacher = eval_inputs
    run = distill(DistillConfig(method="random", ipc=4, data=str(dataset)), tmp_path / "run", "cpu", progress=False)
    res = evaluate_set(read_run(run), test, teacher, FAST, torch.device("cpu"), run=run, progress=False)
    (key, r), = res.items()
    assert key.startswith("convnet3/soft/e20") and r["n"] == 2 and r["mean"] > 50   # chance is 33 %
    stored = json.loads((run / "metrics.json").read_text())["evaluation"][key]
    assert set(stored["seeds"]) == {"0", "1"}
    monkeypatch.setattr("ddkit.evaluate.fit", lambda *a, **k: pytest.fail("re-trained a finished seed"))
    assert evaluate_set(read_run(run), test, teacher, FAST, torch.device("cpu"), run=run, progress=False) == res


def test_results_of_another_teacher_are_not_reused_under_the_same_key(eval_inputs, dataset, tmp_path):
    import copy
    test, teacher = eval_inputs
    run = distill(DistillConfig(method="random", ipc=2, data=str(dataset)), tmp_path / "run", "cpu", progress=False)
    one = EvalConfig(seeds=1, epochs=1, protocol=Protocol(batch_size=16))
    evaluate_set(read_run(run), test, teacher, one, torch.device("cpu"), run=run, progress=False)
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(DDKitError, match="another teacher"):
        evaluate_set(read_run(run), test, other, one, torch.device("cpu"), run=run, progress=False)


def test_interrupted_seed_resumes_from_its_epoch_checkpoint(eval_inputs, dataset, tmp_path, monkeypatch):
    import ddkit.train
    from ddkit.utils import STOP
    test, teacher = eval_inputs
    cfg = EvalConfig(seeds=1, epochs=6, protocol=Protocol(batch_size=16))
    run = distill(DistillConfig(method="random", ipc=4, data=str(dataset)), tmp_path / "run", "cpu", progress=False)
    ref = evaluate_set(read_run(run), test, teacher, cfg, torch.device("cpu"), progress=False)
    saves, real_save = [], ddkit.train.save_torch
    monkeypatch.setattr(ddkit.train, "CHECKPOINT_S", 0.0)  # save every epoch

    def save_then_stop(obj, path):  # pre-empted right after the 3rd epoch's checkpoint
        real_save(obj, path)
        saves.append(obj["epoch"])
        STOP["requested"] = len(saves) == 3
    monkeypatch.setattr(ddkit.train, "save_torch", save_then_stop)
    try:
        with pytest.raises(DDKitError, match="stopped in epoch 3"):
            evaluate_set(read_run(run), test, teacher, cfg, torch.device("cpu"), run=run, progress=False)
    finally:
        STOP["requested"] = False
    assert len(list(run.glob(".student-*.ckpt"))) == 1
    res = evaluate_set(read_run(run), test, teacher, cfg, torch.device("cpu"), run=run, progress=False)
    assert saves == [1, 2, 3, 4, 5, 6]               # epochs 1-3 were not trained again
    assert res == {k: {**v, "wall_s_per_seed": res[k]["wall_s_per_seed"]} for k, v in ref.items()}
    assert not list(run.glob(".student-*.ckpt"))     # removed once the seed is stored


def test_hard_labels_need_no_teacher_and_soft_labels_do(eval_inputs):
    test, _ = eval_inputs
    ds = DistilledSet(test.images.float() / 255, test.labels, test.classes)
    cfg = EvalConfig(seeds=1, epochs=2, label_mode="hard")
    assert evaluate_set(ds, test, None, cfg, torch.device("cpu"), progress=False)
    with pytest.raises(DDKitError, match="needs a teacher"):
        evaluate_set(ds, test, None, EvalConfig(seeds=1, epochs=1), torch.device("cpu"))


def test_classes_are_matched_by_name_not_position(eval_inputs):
    test, _ = eval_inputs
    ds = DistilledSet(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]), ["frog", "cat"])
    assert align_classes(ds, test.classes).tolist() == [2, 0]
    with pytest.raises(DDKitError, match="not among"):
        align_classes(DistilledSet(torch.zeros(1, 3, 8, 8), torch.tensor([0]), ["zebra"]), test.classes)


def test_weights_reach_the_loss(eval_inputs, monkeypatch):
    test, teacher = eval_inputs
    seen = {}

    def spy(*a, weights=None, **k):
        seen["w"] = weights
        return {"loss": [0.0], "resumed_s": 0.0, "precision": "fp32"}
    monkeypatch.setattr("ddkit.evaluate.fit", spy)
    ds = DistilledSet(torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 2]), test.classes, torch.tensor([1.0, 2.0, 3.0]))
    evaluate_set(ds, test, teacher, EvalConfig(seeds=1, epochs=1), torch.device("cpu"), progress=False)
    assert seen["w"].tolist() == pytest.approx([0.5, 1.0, 1.5])     # normalised to mean 1
    evaluate_set(ds, test, teacher, EvalConfig(seeds=1, epochs=1, use_weights=False), torch.device("cpu"),
                 progress=False)
    assert seen["w"] is None


def test_weighted_loss_in_fit_scales_each_sample():
    """A zero weight removes a sample from training: the model then never sees its label."""
    from ddkit.models import build_model
    from ddkit.train import TrainConfig, fit
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([0, 0, 1, 1])
    cfg = TrainConfig(epochs=30, batch_size=4, optimizer="adamw", lr=1e-2, aug="none", schedule="cosine")
    m = build_model("convnet3", 2, 8)
    fit(m, x, y, lambda t: t, cfg, torch.device("cpu"), weights=torch.tensor([1.0, 1.0, 0.0, 0.0]), progress=False)
    assert (m(x).argmax(1) == 0).all()


def test_edc_records_the_final_ema_accuracy_and_the_best_after_80_percent(eval_inputs, dataset, tmp_path,
                                                                          monkeypatch):
    import ddkit.evaluate
    from ddkit.protocols import preset
    test, teacher = eval_inputs
    run = distill(DistillConfig(method="random", ipc=2, data=str(dataset)), tmp_path / "run", "cpu", progress=False)
    tested, real = [], ddkit.evaluate.accuracy
    monkeypatch.setattr(ddkit.evaluate, "accuracy", lambda model, *a: tested.append(model) or real(model, *a))
    cfg = EvalConfig(seeds=1, epochs=5, protocol=preset("edc", {"eval_every": "1", "best_after": "0.6"}))
    (key, r), = evaluate_set(read_run(run), test, teacher, cfg, torch.device("cpu"), run=run, progress=False).items()
    assert key.startswith("convnet3/soft/edc/e5-") and r["best_selected_on_test"]["mean"] >= r["mean"]
    assert len(tested) == 2    # after epoch 4 (the only test past 60 % of 5) and at the end
    entry = json.loads((run / "metrics.json").read_text())["evaluation"][key]
    seed = entry["seeds"]["0"]
    assert seed["best_epoch"] in (4, 5) and seed["tested_after_epoch"] == 3 and seed["tested_every"] == 1
    assert (entry["train"]["ema"], entry["train"]["soft_loss"], entry["train"]["batch_size"]) == (0.99, "mse", 25)
