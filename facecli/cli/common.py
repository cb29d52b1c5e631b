"""What every verb shares: one way to print results and progress (the shared options are in ``options``).

Results go to stdout (a rich table, or JSON with ``--json``); progress bars, warnings and logs go to stderr so that
``facecli ... --json | jq`` always sees clean JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from facecli.jsonable import to_jsonable


def _no_advance(n: int = 1) -> None:
    """``advance`` when no progress bar is shown."""


@dataclass
class UI:
    """Rendering for one command invocation."""

    json: bool = False
    verbose: int = 0
    quiet: bool = False
    out: Console = field(default_factory=lambda: Console(soft_wrap=True))
    err: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True))

    @property
    def show_progress(self) -> bool:
        return not (self.quiet or self.json)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message, highlight=False)

    def detail(self, message: str, level: int = 1) -> None:
        if self.verbose >= level and not self.quiet:
            self.err.print(message, highlight=False, style="dim")

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    def result(self, data: Any, render: Callable[[Console], None] | None = None) -> None:
        """Print ``data`` as JSON with ``--json``; otherwise call ``render`` with the stdout console."""
        if self.json:
            print(json.dumps(to_jsonable(data), indent=2, ensure_ascii=False))
        elif render is not None and not self.quiet:
            render(self.out)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A rich progress bar (items/s and ETA) on stderr; yields ``advance(n)``. Silent in quiet/JSON mode."""
        if not self.show_progress:
            yield _no_advance
            return
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.err, transient=False) as bar:
            task = bar.add_task(description, total=total, rate="")

            def advance(n: int = 1) -> None:
                bar.advance(task, n)
                speed = bar.tasks[0].speed
                if speed:
                    bar.update(task, rate=f"{speed:.1f}/s")

            try:
                yield advance
            except BaseException:  # the error's one line is all that should remain on stderr
                bar.live.transient = True
                raise
