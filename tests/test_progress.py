"""Progress output: bars on a terminal, complete lines at a bounded rate in a log, the error last."""
import io
import subprocess
import sys

import pytest

from ddkit.progress import LineProgress, steps


class Clock:
    """Time stands still unless the test moves it."""
    t = 0.0

    def __call__(self):
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(total, seconds_per_step, start=0, stop_at=None, fail_at=None, monkeypatch=None):
    log, clock = io.StringIO(), Clock()
    bar = steps(start, total, "teacher convnet3", unit="epoch", stream=log, clock=clock)
    for i in bar:
        clock.t += seconds_per_step
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
        if i == fail_at:
            raise RuntimeError("boom")
        if i == stop_at:
            break
    bar.close()
    return log.getvalue()


def test_a_log_gets_a_line_per_interval_and_one_at_the_end(monkeypatch):
    monkeypatch.setenv("DDKIT_PROGRESS_S", "30")
    out = _run(10, 7.0)  # 70 s: one line after 35 s (the first step past 30 s), one at the end
    assert out.splitlines() == [
        "ddkit: teacher convnet3: epoch 5/10 (50%), 0.143 epoch/s, 35 s elapsed, ETA 35 s, loss=0.200",
        "ddkit: teacher convnet3: epoch 10/10 done, 0.143 epoch/s, 1 min 10 s elapsed, loss=0.100",
    ]
    assert "\r" not in out


def test_the_eta_follows_the_recent_rate_when_the_loop_slows(monkeypatch):
    monkeypatch.setenv("DDKIT_PROGRESS_S", "1")
    log, clock = io.StringIO(), Clock()
    bar = steps(0, 100, "student", unit="epoch", stream=log, clock=clock)
    for i in bar:
        clock.t += 1.0 if i < 50 else 5.0  # e.g. tests in the last half
    bar.close()
    line = log.getvalue().splitlines()[69]  # after epoch 70: ten lines of 5 s epochs behind it
    assert line == "ddkit: student: epoch 70/100 (70%), 0.467 epoch/s, 2 min 30 s elapsed, ETA 2 min 30 s"
    # (30 epochs at 5 s; the whole run's 0.467 epoch/s would have promised 1 min 04 s)


def test_the_line_rate_is_bounded_however_many_steps(monkeypatch):
    monkeypatch.setenv("DDKIT_PROGRESS_S", "30")
    out = _run(10_000, 0.1)  # 1000 s of 0.1 s steps: 33 interval lines and the end line
    assert len(out.splitlines()) == 34 and out.count("done") == 1


def test_a_resumed_loop_counts_positions_from_zero_and_its_rate_from_this_process(monkeypatch):
    monkeypatch.setenv("DDKIT_PROGRESS_S", "1000")
    assert _run(10, 2.0, start=6) == "ddkit: teacher convnet3: epoch 10/10 done, 0.5 epoch/s, 8.0 s elapsed, loss=0.100\n"


def test_an_early_stop_ends_where_it_stopped(monkeypatch):
    monkeypatch.setenv("DDKIT_PROGRESS_S", "1000")
    assert _run(200, 1.0, stop_at=40).startswith("ddkit: teacher convnet3: epoch 41/200 done, 1 epoch/s, 41 s")


def test_an_error_leaves_no_end_line_after_it(monkeypatch):
    monkeypatch.setenv("DDKIT_PROGRESS_S", "1000")
    with pytest.raises(RuntimeError):
        _run(10, 1.0, fail_at=3)


def test_quiet_prints_nothing_and_a_terminal_gets_a_bar(monkeypatch):
    log = io.StringIO()
    bar = steps(0, 3, "x", enabled=False, stream=log)
    assert list(bar) == [0, 1, 2] and (bar.close() or log.getvalue() == "")
    tty = Terminal()
    bar = steps(0, 3, "x", stream=tty)
    assert list(bar) == [0, 1, 2] and not isinstance(bar, LineProgress)
    bar.close()
    assert "\r" in tty.getvalue()  # tqdm's redraws: right for a terminal


def test_a_bad_interval_is_one_clear_error(monkeypatch):
    from ddkit.utils import DDKitError
    monkeypatch.setenv("DDKIT_PROGRESS_S", "soon")
    with pytest.raises(DDKitError, match="DDKIT_PROGRESS_S must be a number"):
        steps(0, 1, "x", stream=io.StringIO())


def test_a_teacher_run_logged_to_a_file_writes_plain_lines(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_PROGRESS_S", "1e9")  # no interval lines: the end line alone, whatever the speed
    log = tmp_path / "log"
    with open(log, "w") as err:
        p = subprocess.run([sys.executable, "-m", "ddkit", "teacher", "--data", str(dataset), "--epochs", "3",
                            "--no-cache", "--out", str(tmp_path / "t.pt")], stderr=err, stdout=subprocess.PIPE)
    assert p.returncode == 0
    text = log.read_text()
    assert "\r" not in text
    (line,) = text.splitlines()
    assert line.startswith("ddkit: teacher convnet3: epoch 3/3 done, ") and "loss=" in line
