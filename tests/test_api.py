"""The Python API (ddkit.api, reached as ddkit.distill(...) etc.): the CLI's work and checks, in a few calls."""
import subprocess
import sys

import pytest
import torch

import ddkit
from ddkit import DDKitError


def test_import_ddkit_stays_light_and_the_modules_stay_modules():
    code = "import sys, ddkit; assert 'torch' not in sys.modules; print(callable(ddkit.distill))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "True\n"
    from ddkit.distill import DistillConfig   # the library module of the same name is still there
    assert ddkit.distill.DistillConfig is DistillConfig and callable(ddkit.evaluate) and callable(ddkit.select)


def test_distill_evaluate_load_run_in_a_few_calls(dataset, teacher_path, tmp_path):
    run = ddkit.distill(method="e2d", data=dataset, teacher=teacher_path, ipc=2, iterations=3, progress=False,
                        out=tmp_path / "run", device="cpu")
    assert run.images.shape == (6, 3, 8, 8) and run.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert run.config["method_config"]["iterations"] == 3 and (tmp_path / "run" / "report.md").is_file()
    res = ddkit.evaluate(run, seeds=1, epochs=2, device="cpu", progress=False)
    (key, r), = res.items()
    assert key.startswith("convnet3/soft/") and r["n"] == 1 and 0 <= r["mean"] <= 100
    again = ddkit.load_run(tmp_path / "run")   # the result was stored in the run and is reused
    assert key in again.metrics["evaluation"] and torch.equal(again.images, run.images)
    mem = ddkit.distill(method="random", data=str(dataset), ipc=1, progress=False, device="cpu")
    assert mem.path is None and len(mem.labels) == 3   # without out: the set, no folder left
    hard = ddkit.evaluate(mem, data=str(dataset), labels="hard", seeds=1, epochs=1, device="cpu", progress=False)
    assert next(iter(hard)).startswith("convnet3/hard/")


def test_bad_arguments_get_the_commands_one_line_errors(dataset, teacher_path, tmp_path):
    with pytest.raises(DDKitError, match="unknown method 'nope'"):
        ddkit.distill(method="nope", data=dataset, teacher=teacher_path)
    with pytest.raises(DDKitError, match="unknown setting 'iters'"):
        ddkit.distill(method="e2d", data=dataset, teacher=teacher_path, iters=3)
    with pytest.raises(DDKitError, match="labels='fuzzy' is not one of soft, hard"):
        ddkit.evaluate(tmp_path, labels="fuzzy")
    with pytest.raises(DDKitError, match="store='fp8'"):
        ddkit.distill(method="random", data=dataset, store="fp8")
    with pytest.raises(DDKitError, match="fewer than IPC=99"):
        ddkit.distill(method="random", data=dataset, ipc=99, device="cpu", progress=False)
    assert not list(tmp_path.iterdir())


def test_teacher_and_select(dataset, tmp_path):
    t = ddkit.teacher(data=str(dataset), epochs=1, out=str(tmp_path / "t.pt"), device="cpu", progress=False)
    assert t.arch == "convnet3" and 0 <= t.test_acc <= 100 and t.model is not None
    info = ddkit.select(str(dataset), criterion="random", keep=0.5, out=tmp_path / "keep.pt", device="cpu",
                        progress=False)
    assert info["num_kept"] == 24
    run = ddkit.distill(method="random", data=dataset, teacher=t, ipc=2, subset=tmp_path / "keep.pt",
                        device="cpu", progress=False)
    assert len(run.labels) == 6 and run.metrics["num_real"] == 24
