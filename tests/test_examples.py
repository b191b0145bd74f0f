"""examples/ run end to end at tiny budgets on the generated 3-class data (and a random-weight torchvision
model saved as a state dict: tests never download weights)."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import zoo_model

ROOT = Path(__file__).resolve().parents[1]


def run_example(name, *args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "DDKIT_PROGRESS_S": "1000"}
    p = subprocess.run([sys.executable, str(ROOT / "examples" / name), *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_distill_cifar10_example(dataset, tmp_path):
    out = run_example("distill_cifar10.py", "--data", dataset, "--ipc", 2, "--teacher-epochs", 1,
                      "--iterations", 2, "--epochs", 1, "--out", tmp_path / "run", cwd=tmp_path)
    assert "teacher:" in out and "convnet3/soft/" in out and (tmp_path / "run" / "grid.png").is_file()


def test_torchvision_teacher_example(dataset, tmp_path):
    torch.save(zoo_model("torchvision:resnet18", 3).state_dict(), tmp_path / "r18.pth")
    out = run_example("torchvision_teacher.py", "--data", dataset, "--weights", tmp_path / "r18.pth",
                      "--image-size", 8, "--ipc", 1, "--epochs", 1, "--out", tmp_path / "run", cwd=tmp_path)
    assert "convnet3/soft/rded/" in out


def test_evaluate_folder_example(dataset, teacher_path, tmp_path):
    import shutil
    theirs = tmp_path / "theirs"   # "another tool's" set: two training images per class, as a plain folder
    for c in ("cat", "dog", "frog"):
        (theirs / c).mkdir(parents=True)
        for f in sorted((dataset / "train" / c).iterdir())[:2]:
            shutil.copy(f, theirs / c / f.name)
    out = run_example("evaluate_folder.py", theirs, "--data", dataset, "--teacher", teacher_path, "--epochs", 1,
                      "--seeds", 1, cwd=tmp_path)
    assert "their set: convnet3/soft/" in out and "random real, IPC 2: convnet3/soft/" in out
