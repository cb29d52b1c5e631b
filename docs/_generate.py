"""The generated parts of the docs: the CLI reference from every ``--help``, the heads table from the registry.

Hand-written copies of ``--help`` and of the heads' defaults go stale the day someone edits an option; these are
rendered from the code instead. cog markers in ``docs/cli-reference.md`` and ``docs/heads.md`` call the functions
below, so one command rewrites both files from the repository root::

    cog -r -I docs docs/*.md

``tests/test_docs.py`` imports this module (no cog needed) and fails when a file no longer matches what these
functions produce, so a change to a help text or a head's defaults must come with the regenerated page.
"""

from __future__ import annotations

import re
import sys
from typing import Any

#: the terminal the help is rendered for: fixed, so the output does not depend on the window that regenerates it
WIDTH = 100
_ENV = {"COLUMNS": str(WIDTH), "LINES": "50", "NO_COLOR": "1", "TERM": "dumb"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def command_paths() -> list[tuple[str, ...]]:
    """Every command and sub-command of ``facecli`` in the order ``--help`` lists them (hidden ones left out)."""
    import typer

    from facecli.cli.app import app

    root = typer.main.get_command(app)
    paths: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        paths.append(path)
        ctx = command.context_class(command, info_name=path[-1]) if hasattr(command, "list_commands") else None
        for name in command.list_commands(ctx) if ctx is not None else []:
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                walk(sub, (*path, name))

    walk(root, ("facecli",))
    return paths


def command_help(path: tuple[str, ...]) -> str:
    """``facecli ... --help`` rendered in process at :data:`WIDTH` columns, without colour or trailing blanks."""
    from unittest import mock

    from typer import rich_utils
    from typer.testing import CliRunner

    from facecli.cli.app import app

    # typer fixes the width from $TERMINAL_WIDTH when it is imported, which would beat $COLUMNS: pin it for this call
    with mock.patch.object(rich_utils, "MAX_WIDTH", WIDTH):
        result = CliRunner().invoke(app, [*path[1:], "--help"], env=_ENV, color=False, prog_name=path[0])
    if result.exit_code != 0:
        raise RuntimeError(f"{' '.join(path)} --help exited {result.exit_code}: {result.output}")
    lines = [_ANSI.sub("", line).rstrip() for line in result.output.splitlines()]
    return "\n".join(lines).strip("\n") + "\n"


def anchor(path: tuple[str, ...]) -> str:
    """The anchor of a command's section in cli-reference.md: ``facecli gallery build`` → ``facecli-gallery-build``."""
    return "-".join(path)


def cli_reference() -> str:
    """The body of docs/cli-reference.md: a contents list, then one section per command with its ``--help``."""
    paths = command_paths()
    out = [f"- [`{' '.join(p)}`](#{anchor(p)})" for p in paths]
    for path in paths:
        out += ["", f"## {' '.join(path)}", "", "```text", command_help(path).rstrip("\n"), "```"]
    return "\n".join(out) + "\n"


def _summary(cls: type) -> str:
    """What the head does, in one paragraph: its module's docstring, or its own where a module holds several heads."""
    from facecli.nn.heads import HEADS

    module = sys.modules[cls.__module__]
    siblings = [n for n in HEADS.names() if HEADS.get(n).__module__ == cls.__module__]
    doc = (module.__doc__ if len(siblings) == 1 else cls.__doc__) or ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return paragraph.replace("``", "`")


def _value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def heads_table() -> str:
    """The heads table of docs/heads.md: every registered head with its paper, defaults and Partial FC support."""
    from facecli.nn.heads import HEADS

    out = [
        "| head | kind | what it does | paper | defaults | Partial FC |",
        "|---|---|---|---|---|---|",
    ]
    for name in HEADS.names():
        cls = HEADS.get(name)
        paper = f"{cls.paper} ({cls.year})" if cls.year else cls.paper
        defaults = ", ".join(f"{k}={_value(v)}" for k, v in cls.defaults().items()) or "–"
        reason = cls.partial_fc_incompatible
        partial_fc = "yes" if reason is None else f"no: {reason}"
        cells = [f"`{name}`", cls.kind, _summary(cls), paper, defaults, partial_fc]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"
