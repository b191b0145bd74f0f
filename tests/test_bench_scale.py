"""The scale benchmark's own tools (bench/scale_data.py, bench/scale.py): what they generate and measure."""
import json
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "scale"))
import scale  # noqa: E402
import scale_data  # noqa: E402


def test_generated_folders_are_decodable_jpegs_of_varying_sizes_and_resume(tmp_path):
    out = scale_data.generate(tmp_path, classes=2, per_class=4, test_per_class=1, workers=1)
    files = sorted((out / "train").glob("*/*.jpg"))
    assert [f.parent.name for f in files] == ["c0000"] * 4 + ["c0001"] * 4 and len(list((out / "test").glob("*/*")))
    sizes = set()
    for f in files:
        with Image.open(f) as im:
            assert im.format == "JPEG"
            im.load()                                   # decodes
            sizes.add(im.size)
            assert 250 <= min(im.size) and max(im.size) <= 460
    assert len(sizes) > 1                               # photos of varying sizes
    first = files[0].read_bytes()
    scale_data.image_path(tmp_path, "train", 0, 0).unlink()
    files[0].unlink()
    scale_data.generate(tmp_path, classes=2, per_class=4, test_per_class=1, workers=1)  # resumes the missing one
    assert files[0].read_bytes() == first               # a picture depends only on (seed, split, class, index)
    bigger = scale_data.generate(tmp_path, classes=2, per_class=6, test_per_class=1, workers=1)
    assert (bigger / "train/c0000/00000.jpg").read_bytes() == first   # the ladder shares its pictures


def test_measure_reports_the_peak_memory_of_the_command_and_its_children(tmp_path):
    hold = "b = b'x' * (300 << 20); import time; time.sleep(1.5)"   # 300 MB touched, held long enough to sample
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {hold!r}], check=True)"
    res = scale.measure([sys.executable, "-c", parent], tmp_path / "log", env=None)
    assert res["rc"] == 0
    assert res["peak_rss_mb"] >= 300          # the largest process is the child
    assert res["peak_tree_pss_mb"] >= 300     # the tree sampler saw it
    bad = scale.measure([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "log2", env=None)
    assert bad["rc"] == 3 and bad["peak_rss_mb"] < 300


def test_a_step_whose_input_is_missing_makes_it_first_unmeasured(tmp_path, monkeypatch):
    root, out = tmp_path / "root", tmp_path / "results"
    monkeypatch.setattr(sys, "argv", ["scale.py", "--quick", "--root", str(root), "--out", str(out),
                                      "--ladder", "2x4", "--steps", "teacher_train"])
    scale.main()
    measured = sorted(p.name for p in (out / "c2_n4").iterdir())
    assert measured == ["teacher_train.json"]            # select_random ran, but is not reported as measured
    assert (root / "quick/runs/quick/c2_n4/random.pt").is_file()
    rec = json.loads((out / "c2_n4/teacher_train.json").read_text())
    assert rec["rc"] == 0 and rec["error"] is None
