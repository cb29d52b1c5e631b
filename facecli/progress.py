"""How library entry points show progress without knowing who watches: a factory of progress displays.

``progress(description, total)`` opens a display (``total`` None when unknown) and yields ``advance(n)``; the CLI
passes ``UI.progress`` (a rich bar on stderr), a Python caller passes nothing and gets :func:`no_progress`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

Advance = Callable[[int], None]
Progress = Callable[[str, "int | None"], AbstractContextManager[Advance]]


def _ignore(n: int = 1) -> None:
    """``advance`` of :func:`no_progress`."""


def no_progress(description: str, total: int | None) -> AbstractContextManager[Advance]:
    """A progress display that shows nothing."""
    return nullcontext(_ignore)
