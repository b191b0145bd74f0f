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
    metrics, config = (json.loads((run / f).read_text()) for f in ("metrics.json", "config.json"))
    assert config["distill"]["amp"] == "auto" and metrics["precision"] == "fp32"   # the CPU default: no autocast
    assert all(e["seeds"]["0"]["precision"] == "fp32" for e in metrics["evaluation"].values())
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


def test_ddranking_metrics_from_stored_results(dataset, teacher_path, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["distill", "--method", "random", "--ipc", "2", "--data", str(dataset), "--teacher", str(teacher_path),
                 "--out", str(run), "--quiet"]) == 0
    for labels in ("soft", "hard"):
        assert main(["evaluate", str(run), "--protocol", "ddranking", "--labels", labels, "--seeds", "1",
                     "--epochs", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["ddranking", str(run), "--random", str(run), "--full-hard", "0.9", "--epochs", "1"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["ior"] == 0 and m["hlr"] == pytest.approx(0.9 - m["syn_hard"])   # the set is its own random floor
    assert main(["ddranking", str(run), "--random", str(run), "--full-hard", "0.9", "--epochs", "2"]) == 2
    assert "run `ddkit evaluate" in capsys.readouterr().err


def test_edc_protocol_from_the_cli_records_final_and_best_after_80_percent(dataset, teacher_path, tmp_path, capsys):
    from ddkit.cli import _eval_config, build_parser
    epochs = {n: _eval_config(build_parser().parse_args(["evaluate", "r", "--protocol", n]), (), "cpu").epochs
              for n in ("edc", "ddkit")}
    assert epochs == {"edc": 1000, "ddkit": 300}   # edc's own default, unless --epochs says otherwise
    run = tmp_path / "run"
    assert main(["distill", "--method", "random", "--ipc", "2", "--data", str(dataset), "--teacher", str(teacher_path),
                 "--out", str(run), "--quiet"]) == 0
    assert main(["evaluate", str(run), "--protocol", "edc", "--epochs", "2", "--seeds", "1", "--quiet"]) == 0
    assert "convnet3/soft/edc/e2-" in capsys.readouterr().out
    (key, entry), = json.loads((run / "metrics.json").read_text())["evaluation"].items()
    seed = entry["seeds"]["0"]
    assert "/edc/e2-" in key and 0 <= seed["acc"] <= 1 and seed["best_acc_selected_on_test"] >= seed["acc"]
    assert (seed["best_epoch"], seed["tested_every"], seed["tested_after_epoch"]) == (2, 10, 1)
    assert entry["config"]["protocol"]["name"] == "edc" and entry["train"]["randaug_ops"] == 2


def _error_flags():
    """Every --flag named in the text of a DDKitError raised anywhere in the package."""
    import ast
    import re
    from pathlib import Path

    import ddkit
    for path in Path(ddkit.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DDKitError":
                for const in ast.walk(node):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        for flag in re.findall(r"--[a-z][a-z-]*", const.value):
                            yield path.name, flag


def test_error_messages_name_only_flags_that_exist():
    import argparse

    from ddkit.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {o for p in sub.choices.values() for a in p._actions for o in a.option_strings}
    named = list(_error_flags())
    assert len(named) > 5  # the scan sees the messages
    assert [(f, flag) for f, flag in named if flag not in options] == []


def test_evaluate_reads_a_test_folder_given_apart(dataset, tmp_path, capsys):
    import shutil
    train_only = tmp_path / "train_only"
    shutil.copytree(dataset / "train", train_only)
    run = tmp_path / "run"
    assert main(["distill", "--method", "random", "--ipc", "2", "--data", str(train_only), "--out", str(run),
                 "--quiet"]) == 0
    assert main(["evaluate", str(run), "--labels", "hard", "--seeds", "1", "--epochs", "1", "--quiet"]) == 2
    assert "pass --test-data" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--test-data", str(dataset / "test"), "--labels", "hard", "--seeds", "1",
                 "--epochs", "1", "--quiet"]) == 0


def test_skipped_images_are_counted_in_the_run(dataset, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    (data / "train" / "cat" / "bad.png").write_bytes(b"junk")
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "ddkit", "distill", "--method", "random", "--ipc", "1", "--data",
                        str(data), "--out", str(run), "--quiet", "--on-bad-image", "skip"], capture_output=True,
                       text=True)
    assert p.returncode == 0 and [("bad.png" in line) for line in p.stderr.splitlines()] == [True]  # one warning
    (skipped,) = json.loads((run / "metrics.json").read_text())["skipped_images"]
    assert "bad.png" in skipped


def test_the_core_runs_without_the_optional_extras(dataset, teacher_path, tmp_path):
    """timm and diffusers are extras: `import ddkit`, --help and a checkpoint teacher -> distill -> evaluate
    must not import them (importing a module set to None in sys.modules raises ImportError)."""
    script = f"""
import sys
for m in ("timm", "diffusers", "huggingface_hub", "safetensors"):
    sys.modules[m] = None
from ddkit.cli import build_parser, main
build_parser().format_help()
common = ["distill", "--ipc", "2", "--data", {str(dataset)!r}, "--quiet", "--method"]
assert main(common + ["random", "--teacher", {str(teacher_path)!r}, "--out", {str(tmp_path / "run")!r},
                      "--evaluate", "--seeds", "1", "--epochs", "1"]) == 0
assert main(common + ["ddoq", "--set", "encoder=vae", "--set", "vae=x", "--out", {str(tmp_path / "vae")!r}]) == 2
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "pip install 'ddkit[diffusers]'" in p.stderr and (tmp_path / "run" / "metrics.json").is_file()


def test_amp_and_compile_flags_reach_each_command_config(dataset, teacher_path, tmp_path, monkeypatch):
    import ddkit.distill
    import ddkit.evaluate
    import ddkit.teacher
    seen = {}

    def capture(name):
        def fn(*args, **kw):
            seen[name] = args
            raise SystemExit(0)  # the configuration is what is checked here, not the work
        return fn
    monkeypatch.setattr(ddkit.teacher, "train_teacher", capture("teacher"))
    monkeypatch.setattr(ddkit.distill, "distill", capture("distill"))
    monkeypatch.setattr(ddkit.evaluate, "evaluate_set", capture("evaluate"))
    for argv in (["teacher", "--data", str(dataset)], ["distill", "--method", "random", "--ipc", "1", "--data",
                 str(dataset), "--out", str(tmp_path / "r")], ["evaluate", "--full", "--data", str(dataset),
                 "--teacher", str(teacher_path)]):
        with pytest.raises(SystemExit):
            main([*argv, "--amp", "off", "--compile", "--quiet", "--device", "cpu"])
    recipe, dcfg, ecfg = seen["teacher"][3], seen["distill"][0], seen["evaluate"][3]
    assert (recipe.amp, recipe.compile) == (False, True)
    assert (dcfg.amp, dcfg.compile) == ("off", True)
    assert (ecfg.amp, ecfg.compile) == (False, True)
    from ddkit.train import config_id, teacher_recipe
    assert config_id(recipe) == config_id(teacher_recipe(12))  # --compile, --amp: the same cached teacher


def test_teacher_batch_size_scales_the_recipe_lr_unless_lr_is_given_and_label_smoothing_is_set(dataset,
                                                                                                monkeypatch):
    import ddkit.teacher
    seen = []

    def capture(*args, **kw):
        seen.append(args[3])
        raise SystemExit(0)
    monkeypatch.setattr(ddkit.teacher, "train_teacher", capture)
    for extra in (["--batch-size", "64"], ["--batch-size", "64", "--lr", "0.3"], [], ["--label-smoothing", "0"]):
        with pytest.raises(SystemExit):
            main(["teacher", "--data", str(dataset), "--quiet", "--device", "cpu", *extra])
    assert [(r.batch_size, r.lr, r.label_smoothing) for r in seen] == [
        (64, 0.1 * 64 / 256, 0.2), (64, 0.3, 0.2), (256, 0.1, 0.2), (256, 0.1, 0.0)]
    from ddkit.train import config_id
    assert config_id(seen[3]) != config_id(seen[2])  # another cached teacher, not the smoothed one


def test_sigterm_means_stop_only_while_a_command_runs(tmp_path):
    """The stop-request handler is the command's: the caller's handler is back when main returns, so processes
    forked later (a multiprocessing pool the caller SIGTERMs at its end) still die on SIGTERM."""
    import signal

    def callers(*_):
        pass

    before = signal.signal(signal.SIGTERM, callers)
    try:
        assert main(["evaluate", str(tmp_path / "missing_run")]) == 2   # ran (and failed) with the handler set
        assert signal.getsignal(signal.SIGTERM) is callers
    finally:
        signal.signal(signal.SIGTERM, before)
