"""MkDocs hook: the CLI reference is generated from ddkit's argument parser at build time, so it cannot go
stale. A page containing the line `<!-- ddkit-cli -->` gets one section per command in its place."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

MARK = "<!-- ddkit-cli -->"


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.dest.upper() if action.nargs != '?' else '[' + action.dest.upper() + ']'}`"
    name = ", ".join(f"`{o}`" for o in action.option_strings)
    if action.nargs == 0:
        return name
    meta = action.metavar or (f"{{{','.join(map(str, action.choices))}}}" if action.choices else action.dest.upper())
    return f"{name} `{meta}{' ...' if action.nargs in ('+', '*') else ''}`"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def cli_reference() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ddkit.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    out = []
    for name, p in sub.choices.items():
        out += [f"## ddkit {name}", "", _cell(helps.get(name)), "", "```", p.format_usage().strip(), "```", "",
                "| argument | default | description |", "|---|---|---|"]
        for a in p._actions:
            if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
                continue
            default = "" if a.default is None or a.default is False or a.default == argparse.SUPPRESS or a.required \
                else f"`{a.default}`"
            req = " (required)" if a.required else ""
            out.append(f"| {_flags(a)}{req} | {default} | {_cell(a.help)} |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARK, cli_reference()) if MARK in markdown else markdown
