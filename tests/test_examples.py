"""examples/ run end to end at tiny budgets on the generated 3-class data (and a random-weight torchvision
model saved as a state dict: tests never download weights). All three in one process: one torch import."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from conftest import zoo_model

ROOT = Path(__file__).resolve().parents[1]
RUNNER = """
import runpy, sys
for argv in ARGS:
    print("=== " + argv[0], flush=True)
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")
"""


def test_the_examples_run(dataset, teacher_path, tmp_path):
    torch.save(zoo_model("torchvision:resnet18", 3).state_dict(), tmp_path / "r18.pth")
    theirs = tmp_path / "theirs"   # "another tool's" set: two training images per class, as a plain folder
    for c in ("cat", "dog", "frog"):
        (theirs / c).mkdir(parents=True)
        for f in sorted((dataset / "train" / c).iterdir())[:2]:
            shutil.copy(f, theirs / c / f.name)
    ex = ROOT / "examples"
    args = [[ex / "distill_cifar10.py", "--data", dataset, "--ipc", 2, "--teacher-epochs", 1, "--iterations", 2,
             "--epochs", 1, "--out", tmp_path / "e2d"],
            [ex / "torchvision_teacher.py", "--data", dataset, "--weights", tmp_path / "r18.pth", "--image-size", 8,
             "--ipc", 1, "--epochs", 1, "--out", tmp_path / "rded"],
            [ex / "evaluate_folder.py", theirs, "--data", dataset, "--teacher", teacher_path, "--epochs", 1,
             "--seeds", 1]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "DDKIT_PROGRESS_S": "1000"}
    code = f"ARGS = {[[str(a) for a in argv] for argv in args]!r}\n" + RUNNER
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-1000:] + p.stderr[-2000:]
    out = p.stdout.split("=== ")
    assert "teacher:" in out[1] and "convnet3/soft/" in out[1] and (tmp_path / "e2d" / "grid.png").is_file()
    assert "convnet3/soft/rded/" in out[2] and (tmp_path / "rded_teacher.pt").is_file()
    assert "their set: convnet3/soft/" in out[3] and "random real, IPC 2: convnet3/soft/" in out[3]
