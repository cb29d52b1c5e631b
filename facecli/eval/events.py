"""What an evaluation tells its caller while it runs: progress, warnings, notes. Silent unless the caller listens.

The library never prints. ``facecli eval`` passes its rich console (progress bars and yellow warnings on stderr);
a Python user gets :class:`SilentEvents` by default, or passes any object with these four methods, e.g. one that
logs warnings or feeds a notebook progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class EvalEvents(Protocol):
    """The hooks :func:`facecli.eval.run` calls. ``progress`` yields ``advance(n)`` for ``n`` more items done."""

    def progress(self, description: str, total: int | None) -> AbstractContextManager[Callable[[int], None]]:
        """A unit of work (``total`` items, None when unknown in advance)."""
        ...

    def warn(self, message: str) -> None:
        """Something the user should know that did not stop the run (resized photos, faces not found)."""
        ...

    def info(self, message: str) -> None:
        """A note on what the run did (pairs left out by the quality threshold)."""
        ...

    def detail(self, message: str) -> None:
        """Verbose detail (each model's preprocessing, embedding norms)."""
        ...


class SilentEvents:
    """Hooks that ignore everything: the default for library callers."""

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        yield _ignore

    def warn(self, message: str) -> None:
        """Ignored."""

    def info(self, message: str) -> None:
        """Ignored."""

    def detail(self, message: str) -> None:
        """Ignored."""


def _ignore(n: int = 1) -> None:
    """``advance`` of a progress nobody watches."""
