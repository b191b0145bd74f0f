"""bench/gpu_check.sh runs its code paths on CPU at toy sizes and writes what it measured, section by section."""
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_and_writes_every_section(tmp_path):
    p = subprocess.run(["bash", str(ROOT / "bench/gpu_check.sh"), "--device", "cpu", "--tiny", "--out", str(tmp_path),
                        "--methods", "edc"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-1000:] + p.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_check_tiny.json").read_text())
    assert res["tiny"] and set(res["sections"]) == {"methods", "e2d_paper", "student"}
    assert res["sections"]["methods"]["runs"]["edc"]["ok"]
    paper = res["sections"]["e2d_paper"]
    assert paper["teachers"] == ["alexnet"] and paper["iterations_run"] == 2
    assert paper["s_per_image_iteration"] > 0 and paper["stats_bytes_per_class"] > 4 * paper["stats_dims"]
    assert res["sections"]["student"]["images_per_s"] > 0
