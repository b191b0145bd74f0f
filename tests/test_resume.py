"""Long runs survive: SIGKILL/SIGTERM mid-distill and rerun == uninterrupted; torchrun 2 procs == 1 proc."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ddkit.rundir import read_json, read_run


def _cmd(dataset, teacher_path, out, method="e2d", iters=100):
    return [sys.executable, "-m", "ddkit", "distill", "--method", method, "--ipc", "2", "--data", str(dataset),
            "--teacher", str(teacher_path), "--out", str(out), "--classes-per-group", "1", "--quiet",
            "--set", f"iterations={iters}", "--set", "checkpoint_every=7"]


def _interrupt_after_checkpoint(cmd, work_parent, sig):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if any(f.suffix == ".ckpt" for d in work_parent.glob(".*.work-*") for f in d.iterdir()):
            p.send_signal(sig)
            break
        time.sleep(0.005)
    _, err = p.communicate(timeout=120)
    return p.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_distill_resumes_to_the_same_images(sig, dataset, teacher_path, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_cmd(dataset, teacher_path, ref), check=True, capture_output=True)
    run = tmp_path / "run"
    code, err = _interrupt_after_checkpoint(_cmd(dataset, teacher_path, run), tmp_path, sig)
    assert code != 0, "the run finished before it could be interrupted; make it longer"
    if sig == signal.SIGTERM:
        assert code == 2 and "rerun the same command to resume" in err
    assert not run.exists()                       # nothing half-written
    subprocess.run(_cmd(dataset, teacher_path, run), check=True, capture_output=True)
    assert torch.equal(read_run(run).images, read_run(ref).images)
    assert not list(tmp_path.glob(".*.work-*"))   # work state cleaned up once complete
    groups = read_json(run / "metrics.json")["groups"]
    resumed = [g for g in groups if g["resumed_from_iteration"] > 0]
    assert len(resumed) == 1  # one group was cut short and went on from its checkpoint
    # its time before the kill is still counted (not compared with zero: a tiny run may round to 0.0 s)
    assert resumed[0]["wall_s"] >= resumed[0]["resumed_wall_s"] >= 0


def test_torchrun_two_processes_equal_one(dataset, teacher_path, tmp_path):
    one = tmp_path / "one"
    subprocess.run(_cmd(dataset, teacher_path, one, iters=20), check=True, capture_output=True)
    two = tmp_path / "two"
    cmd = _cmd(dataset, teacher_path, two, iters=20)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        *cmd[1:]], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert torch.equal(read_run(two).images, read_run(one).images)


def _torchrun(args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "ddkit", *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def test_ddp_teacher_two_processes_equal_one(dataset, tmp_path):
    """DDP splits each global batch over ranks with the same views; without BatchNorm the weights match."""
    from ddkit.utils import load_torch
    args = ["teacher", "--data", str(dataset), "--arch", "convnet3_in", "--epochs", "2", "--no-cache", "--quiet",
            "--device", "cpu"]
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    env = {**os.environ, "DDKIT_CACHE": str(tmp_path / "c1")}
    subprocess.run([sys.executable, "-m", "ddkit", *args, "--out", str(one)], check=True, capture_output=True, env=env)
    os.environ["DDKIT_CACHE"], old = str(tmp_path / "c2"), os.environ["DDKIT_CACHE"]
    try:
        _torchrun([*args, "--out", str(two)])
    finally:
        os.environ["DDKIT_CACHE"] = old
    a, b = load_torch(one)["state_dict"], load_torch(two)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_ddp_distill_and_evaluate_under_torchrun(dataset, teacher_path, tmp_path):
    """`torchrun ... distill --evaluate`: every rank trains the students, rank 0 writes one metrics.json."""
    from ddkit.rundir import read_json
    run = tmp_path / "run"
    p = _torchrun(["distill", "--method", "random", "--ipc", "4", "--data", str(dataset), "--teacher",
                   str(teacher_path), "--out", str(run), "--evaluate", "--epochs", "3", "--seeds", "2",
                   "--arch", "convnet3", "--quiet", "--device", "cpu"])
    evals = read_json(run / "metrics.json")["evaluation"]
    (entry,) = evals.values()
    assert set(entry["seeds"]) == {"0", "1"}
    assert p.stdout.count('"run"') == 1  # one rank reports
