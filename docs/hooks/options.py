"""MkDocs hook: `<!-- cli-reference -->` in a page becomes one options table per `cnnlab` command, read from
the Typer app itself, so the documented options cannot drift from the code."""

from __future__ import annotations

import click
import typer.main

from cnnlab.cli import app

MARKER = "<!-- cli-reference -->"


def _default(param: click.Parameter) -> str:
    if param.required:
        return "required"
    value = param.default
    if value is None or callable(value) or (isinstance(value, (list, tuple)) and not value):
        return ""
    if isinstance(param, click.Option) and param.is_flag and param.secondary_opts:
        return param.opts[0] if value else param.secondary_opts[0]
    return f"`{value}`"


def _row(param: click.Parameter) -> str:
    if isinstance(param, click.Argument):
        name = param.human_readable_name
    else:
        name = " / ".join(param.opts + param.secondary_opts)
    text = (getattr(param, "help", None) or "").replace("|", "\\|").replace("\n", " ")
    return f"| `{name}` | {_default(param)} | {text} |"


def reference() -> str:
    group = typer.main.get_command(app)
    parts = []
    for name in sorted(group.commands):
        command = group.commands[name]
        summary = (command.help or "").strip().split("\n\n")[0].replace("\n", " ")
        rows = [_row(p) for p in command.params if p.name != "help"]
        parts.append(f"## cnnlab {name}\n\n{summary}\n\n| option | default | what it does |\n| --- | --- | --- |\n"
                     + "\n".join(rows) + "\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, **_) -> str:
    return markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
