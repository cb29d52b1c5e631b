"""How library entry points show progress and notes without knowing who watches.

An entry point takes a :class:`Feedback`: ``progress(description, total)`` opens a display (``total`` None when
unknown) and yields ``advance(n)``; ``info``/``warn``/``detail`` take one-line notes. The CLI passes its ``UI``
(rich bars and messages on stderr); a Python caller passes nothing and gets :data:`SILENT`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

Advance = Callable[[int], None]
#: ``progress(total)`` for a step that learns its own total (listing a folder, say) before its progress is shown
ProgressFactory = Callable[[int], AbstractContextManager[Advance]]


def _ignore(n: int = 1) -> None:
    """``advance`` of :func:`no_progress`."""


def no_progress(description: str, total: int | None) -> AbstractContextManager[Advance]:
    """A progress display that shows nothing."""
    return nullcontext(_ignore)


def silent_progress(total: int) -> AbstractContextManager[Advance]:
    """A :data:`ProgressFactory` that shows nothing."""
    return nullcontext(_ignore)


class Feedback(Protocol):
    """Progress and the one-line notes a long library call gives on the way; the CLI's ``UI`` is one."""

    def progress(self, description: str, total: int | None) -> AbstractContextManager[Advance]: ...

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def detail(self, message: str) -> None: ...


class Silent:
    """:class:`Feedback` that shows nothing: what a Python caller gets by default."""

    def progress(self, description: str, total: int | None) -> AbstractContextManager[Advance]:
        return no_progress(description, total)

    def info(self, message: str) -> None:
        """Dropped."""

    def warn(self, message: str) -> None:
        """Dropped."""

    def detail(self, message: str) -> None:
        """Dropped."""


#: The shared :class:`Silent` instance, the default ``feedback`` of library entry points.
SILENT = Silent()
