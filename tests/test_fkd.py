import json

import pytest
import torch
import torch.nn as nn

from ddkit.distill import DistillConfig, distill
from ddkit.evaluate import EvalConfig, evaluate_set
from ddkit.fkd import label_store
from ddkit.models import build_model
from ddkit.protocols import preset
from ddkit.rundir import read_run
from ddkit.teacher import load_checkpoint
from ddkit.train import TrainConfig, epoch_views, fit, render

CFG = TrainConfig(epochs=3, batch_size=4, optimizer="adamw", lr=1e-2, schedule="cosine", aug="rrc",
                  rrc_scale=(0.08, 1.0), cutmix=1.0, temperature=20.0, kl_t2=False)


class Fp16Logits(nn.Module):
    """A teacher whose logits are exactly what an fp16 store keeps, so online and replay can be compared."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).half().float()


def _tiny():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return torch.rand(10, 3, 8, 8, generator=g), torch.arange(10) % 3, Fp16Logits(build_model("convnet3", 3, 8)).eval()


def test_replayed_views_and_logits_equal_a_recomputation_of_the_stored_draws(tmp_path):
    x, _, teacher = _tiny()
    store = label_store(tmp_path, x, lambda t: t, teacher, CFG, torch.device("cpu"), progress=False)
    gen = torch.Generator().manual_seed(0)
    for e in range(CFG.epochs):
        fresh = list(epoch_views(CFG, 10, 4, (8, 8), gen))
        stored = list(store.epoch(e))
        assert [len(b) for b, _, _ in stored] == [4, 4, 2]
        for (b, v, logits), (b2, v2, _) in zip(stored, fresh):
            assert torch.equal(b, b2) and torch.equal(v.boxes, v2.boxes) and torch.equal(v.flips, v2.flips)
            assert torch.equal(v.mix_perm, v2.mix_perm) and torch.equal(v.mix_box, v2.mix_box)
            view, _ = render(x, lambda t: t, b, v, slice(None))
            assert torch.equal(view, render(x, lambda t: t, b2, v2, slice(None))[0])
            with torch.no_grad():
                assert torch.equal(logits, teacher(view.contiguous(memory_format=torch.channels_last)).half())
    assert store.size_bytes() == sum(f.stat().st_size for f in store.folder.iterdir())


def test_a_student_trained_by_replay_equals_one_trained_online_on_the_same_draws(tmp_path):
    x, y, teacher = _tiny()
    store = label_store(tmp_path, x, lambda t: t, teacher, CFG, torch.device("cpu"), progress=False)
    students = []
    for kw in ({"teacher": teacher}, {"labels_from": store}):
        torch.manual_seed(1)
        m = build_model("convnet3", 3, 8)
        fit(m, x, y, lambda t: t, CFG, torch.device("cpu"), seed=0, progress=False, **kw)
        students.append(m.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(students[0].values(), students[1].values()))


def test_relabel_resumes_from_the_last_complete_epoch(tmp_path):
    x, _, teacher = _tiny()
    store = label_store(tmp_path, x, lambda t: t, teacher, CFG, torch.device("cpu"), progress=False)
    last = store.folder / "epoch_0002.pt"
    before = torch.load(last, weights_only=True)
    last.unlink()
    calls = []
    h = teacher.register_forward_hook(lambda *a: calls.append(1))
    label_store(tmp_path, x, lambda t: t, teacher, CFG, torch.device("cpu"), progress=False)
    h.remove()
    after = torch.load(last, weights_only=True)
    assert len(calls) == 3   # the three batches of epoch 2 only
    assert all(torch.equal(before[k], after[k]) for k in ("order", "boxes", "flips", "mix_perm", "logits"))


def test_sre2l_protocol_students_need_no_teacher_and_the_store_size_is_recorded(eval_inputs, dataset, teacher_path,
                                                                              tmp_path):
    test, _ = eval_inputs
    teacher, _ = load_checkpoint(teacher_path)   # its own copy: this test makes it refuse to run
    run = distill(DistillConfig(method="random", ipc=4, data=str(dataset)), tmp_path / "run", "cpu", progress=False)
    cfg = EvalConfig(seeds=1, epochs=3, protocol=preset("sre2l"))
    (key, r), = evaluate_set(read_run(run), test, teacher, cfg, torch.device("cpu"), run=run, progress=False).items()
    folder, = run.glob("fkd-*")
    assert key.startswith("convnet3/soft/sre2l/") and r["label_store_bytes"] == \
        sum(f.stat().st_size for f in folder.iterdir())
    assert len(list(folder.glob("epoch_*.pt"))) == 3

    def refuse(*a):
        raise AssertionError("a replaying student called the teacher")
    teacher.register_forward_pre_hook(refuse)   # the same weights (same store), but it may not run
    more = evaluate_set(read_run(run), test, teacher, EvalConfig(seeds=2, epochs=3, protocol=preset("sre2l")),
                        torch.device("cpu"), run=run, progress=False)
    assert more[key]["n"] == 2
    assert json.loads((run / "metrics.json").read_text())["evaluation"][key]["config"]["protocol"]["soft_labels"] \
        == "fkd"


def test_replay_under_torchrun_two_processes_equals_one(dataset, teacher_path, tmp_path):
    """CutMix partners live on other ranks' rows and the store is written by rank 0 only: without
    BatchNorm (convnet3_in) the students still match one process."""
    import shutil
    import subprocess
    import sys

    from test_resume import _torchrun
    one = distill(DistillConfig(method="random", ipc=4, data=str(dataset), teacher=str(teacher_path)),
                  tmp_path / "one", "cpu", progress=False)
    two = shutil.copytree(one, tmp_path / "two")
    args = ["--protocol", "sre2l", "--arch", "convnet3_in", "--epochs", "2", "--seeds", "1", "--quiet",
            "--device", "cpu"]
    subprocess.run([sys.executable, "-m", "ddkit", "evaluate", str(one), *args], check=True, capture_output=True)
    _torchrun(["evaluate", str(two), *args])
    (a,), (b,) = ([e["seeds"]["0"] for e in json.loads((r / "metrics.json").read_text())["evaluation"].values()]
                  for r in (one, two))
    assert a["acc"] == b["acc"] and a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-4, abs=1e-4)
