"""The docs stay true: every `ddkit ...` command shown in README.md and docs/**/*.md parses (its flags,
choices, methods, knobs and protocol fields exist), every `python bench/...` / `bash bench/...` script it names
exists, every method's knobs are on its page, and every Python snippet marked `<!-- runnable -->` runs (on
tiny bundled data). Generic: it globs the docs, so pages added later are checked too."""
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ddkit.cli import build_parser
from ddkit.methods import METHODS
from ddkit.protocols import preset
from ddkit.utils import parse_overrides

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```(?:bash|sh|console|shell)?\n(.*?)^```", re.S | re.M)   # shell blocks, not python
RUNNABLE = re.compile(r"<!-- runnable -->\s*\n```python\n(.*?)^```", re.S | re.M)
STOP = {";", "&&", "||", "|", ">", "2>", ">>", "2>&1", "&"}


def commands(text: str):
    """(line, argv after `ddkit`) of every ddkit command in fenced blocks; `torchrun ... -m ddkit` too."""
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if not line or line.startswith("#"):
                continue
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            i = 0
            while i < len(words):   # each command of a `a; b` line
                w = words[i]
                at_start = all("=" in x for x in words[:i]) or words[i - 1] in STOP   # after VAR=... or `;`
                start = (i + 1 if w == "ddkit" and at_start else
                         i + 2 if w == "-m" and words[i + 1:i + 2] == ["ddkit"] else None)
                if start is None:
                    i += 1
                    continue
                end = next((j for j in range(start, len(words)) if words[j] in STOP or words[j].startswith(("2>", ">"))),
                           len(words))
                yield line, words[start:end]
                i = end


def scripts(text: str):
    return re.findall(r"(?:python|bash) ((?:bench|examples|docs)/[\w/.-]+\.(?:py|sh))", text)


CASES = [(p.relative_to(ROOT).as_posix(), line, argv) for p in PAGES for line, argv in commands(p.read_text())]


def test_the_docs_show_commands():
    pages = {c[0] for c in CASES}
    assert len(CASES) > 40 and "README.md" in pages and "docs/getting-started.md" in pages


@pytest.mark.parametrize("page,line,argv", CASES, ids=[f"{c[0]}:{' '.join(c[2][:2])}" for c in CASES])
def test_every_documented_command_parses(page, line, argv):
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{page}: the parser refuses `ddkit {' '.join(argv)}`")
    if a.cmd == "distill":   # the method and its --set knobs exist (values parsed as the run would; no model
        #                        is loaded: a page may show a recipe for weights this machine has not got)
        assert a.method in METHODS, a.method
        parse_overrides(METHODS[a.method].Config, dict(s.split("=", 1) for s in a.set or []))
    if getattr(a, "pset", None) is not None or getattr(a, "protocol", None):
        preset(getattr(a, "protocol", None) or "ddranking", dict(s.split("=", 1) for s in a.pset or []))


def test_every_named_script_exists():
    missing = [(p.relative_to(ROOT).as_posix(), s) for p in PAGES for s in scripts(p.read_text())
               if not (ROOT / s).is_file()]
    assert not missing


def test_every_knob_of_a_documented_method_is_on_its_page():
    for name, cls in METHODS.items():
        page = ROOT / "docs" / "methods" / f"{name}.md"
        if page.is_file():
            text = page.read_text()
            assert not [f.name for f in dataclasses.fields(cls.Config) if f"`{f.name}`" not in text], name


SNIPPETS = [(p.relative_to(ROOT).as_posix(), k, code) for p in PAGES
            for k, code in enumerate(RUNNABLE.findall(p.read_text()))]


def test_there_are_runnable_snippets():
    assert len(SNIPPETS) >= 4


RUNNER = """
import os, sys, traceback
os.environ["DDKIT_PROGRESS_S"] = "1000"
for i, (page, code) in enumerate(SNIPPETS):
    os.makedirs(f"s{i}")
    os.chdir(f"s{i}")
    try:
        exec(compile(code, f"{page} (snippet {i})", "exec"), {"__name__": "__main__"})
    except BaseException:
        print(f"SNIPPET FAILED: {page} (snippet {i})\\n{traceback.format_exc()}", file=sys.stderr)
        sys.exit(1)
    os.chdir("..")
"""


def test_runnable_snippets_run(tmp_path):
    """All in one process (one torch import; the digits teacher is trained once and cached for the rest)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    code = f"SNIPPETS = {[(page, c) for page, _, c in SNIPPETS]!r}\n" + RUNNER
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
