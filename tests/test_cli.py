import json
import subprocess
import sys

import pytest

from ddkit.cli import main


def test_cli_end_to_end(dataset, tmp_path, capsys):
    t = tmp_path / "t.pt"
    assert main(["teacher", "--data", str(dataset), "--epochs", "3", "--out", str(t), "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["test_acc"] is not None and t.is_file()
    run = tmp_path / "run"
    assert main(["distill", "--method", "e2d", "--ipc", "2", "--data", str(dataset), "--teacher", str(t),
                 "--out", str(run), "--set", "iterations=4", "--quiet", "--evaluate", "--seeds", "1",
                 "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "convnet3/soft" in out and "±" in out
    for f in ("report.md", "grid.png", "curves.png", "config.json", "metrics.json", "data.pt"):
        assert (run / f).is_file(), f
    assert "convnet3/soft" in (run / "report.md").read_text()
    # a peer's protocol, a field override and an ensemble of two teachers (the same checkpoint twice)
    assert main(["evaluate", str(run), "--protocol", "rded", "--pset", "eval_every=1", "--teacher", str(t), str(t),
                 "--seeds", "1", "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "convnet3/soft/rded/e2-" in out
    entry = next(v for k, v in json.loads((run / "metrics.json").read_text())["evaluation"].items() if "/rded/" in k)
    assert entry["config"]["protocol"]["eval_every"] == 1 and len(entry["config"]["teachers"]) == 2
    # evaluate also takes a plain ImageFolder made elsewhere, with hard labels and no teacher
    assert main(["evaluate", str(run / "images"), "--data", str(dataset), "--labels", "hard", "--seeds", "1",
                 "--epochs", "1", "--quiet"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["distill", "--method", "nope", "--ipc", "1", "--data", "{data}", "--out", "{tmp}/r"], "unknown method"),
    (["distill", "--method", "random", "--ipc", "1", "--data", "{tmp}/missing", "--out", "{tmp}/r"], "not found"),
    (["distill", "--method", "random", "--ipc", "99", "--data", "{data}", "--out", "{tmp}/r"], "fewer than IPC"),
    (["teacher", "--data", "{data}", "--arch", "vgg99", "--epochs", "1"], "unknown architecture"),
    (["evaluate", "{tmp}/norun", "--data", "{data}"], "not found"),
    (["evaluate", "--full", "--data", "{data}", "--labels", "hard", "--protocol", "edc"], "unknown protocol"),
    (["evaluate", "--full", "--data", "{data}", "--labels", "hard", "--pset", "lr"], "--pset expects key=value"),
])
def test_bad_input_is_one_line_and_nonzero(argv, message, dataset, tmp_path):
    argv = [a.format(data=dataset, tmp=tmp_path) for a in argv]
    p = subprocess.run([sys.executable, "-m", "ddkit", *argv, "--quiet"], capture_output=True, text=True)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddkit: error:") and message in err[0]
    assert not (tmp_path / "r").exists()
