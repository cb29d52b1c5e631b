"""The ``facecli`` entry point: one typer sub-app or command per verb, and the single place errors become exit codes.

Exit codes: 0 success, 1 a failure (``FacecliError``), 2 usage errors and missing inputs (``UsageError`` and
click's own usage errors), 130 interrupted. Errors are one line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import errno
import sys
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn

import typer

from facecli import __version__
from facecli.cli import align, clean, eval_, gallery, inspect_, pack, train
from facecli.errors import FacecliError

app = typer.Typer(
    name="facecli",
    help="Face recognition with ArcFace and its margin-loss family: align, pack, train, eval, gallery.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        print(f"facecli {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state["debug"] = debug


for _verb in (align, pack, inspect_, train, eval_, gallery, clean):
    _verb.register(app)


class _Outcome(NamedTuple):
    """How the program ends: the error line (None: none), the exit code, and whether ``--debug`` shows the
    traceback of the exception that ends it (not for interruptions and typer's own exits)."""

    message: str | None
    code: int
    traceback: bool = False


def _end(outcome: _Outcome) -> NoReturn:
    """The error line on stderr (when there is one), then ``SystemExit`` with the code."""
    if outcome.message is not None:
        print(f"facecli: error: {outcome.message}", file=sys.stderr)
    sys.exit(outcome.code)


def _usage_error(exc: typer.TyperException) -> _Outcome:
    """click's usage errors, vendored by typer; an empty message means typer has already shown the help."""
    message = exc.format_message().strip()
    if not message:  # no arguments given
        return _Outcome(None, 0)
    return _Outcome(message.replace("\n", " "), getattr(exc, "exit_code", 2), True)


def _os_error(exc: OSError) -> _Outcome:
    """The environment (full disk, permissions, a file where a folder must be), not a bug: the file and the cause."""
    where = f"{exc.filename}: " if exc.filename else ""
    hint = " (a file stands where a folder is needed)" if exc.errno in (errno.EEXIST, errno.ENOTDIR) else ""
    return _Outcome(f"{where}{exc.strerror or exc}{hint}", 1, True)


_INTERRUPTED = _Outcome("interrupted", 130)

#: Exception type → its outcome, first match wins (so the order matters: ``Exception``, a bug, comes last).
_OUTCOMES: list[tuple[type[BaseException], Callable[[Any], _Outcome]]] = [
    (typer.Exit, lambda exc: _Outcome(None, exc.exit_code)),
    (typer.Abort, lambda exc: _INTERRUPTED),
    (typer.TyperException, _usage_error),
    (FacecliError, lambda exc: _Outcome(str(exc).replace("\n", " "), exc.exit_code, True)),
    (KeyboardInterrupt, lambda exc: _INTERRUPTED),
    (OSError, _os_error),
    (Exception, lambda exc: _Outcome(
        f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1, True)),
]


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the CLI (the ``facecli`` program, ``python -m facecli``); ``argv`` defaults to ``sys.argv[1:]``.

    Always ends with ``SystemExit`` carrying the exit code, so that the interpreter shuts down as usual (atexit
    handlers, multiprocessing's clean-up, flushed streams); tests call it in-process and catch it.
    """
    _state["debug"] = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        returned = app(args=argv, prog_name="facecli", standalone_mode=False)
    except (Exception, KeyboardInterrupt) as exc:
        outcome = next(handle(exc) for kind, handle in _OUTCOMES if isinstance(exc, kind))
        if outcome.traceback and _state["debug"]:
            traceback.print_exc()
        _end(outcome)
    _end(_INTERRUPTED if returned == 130 else _Outcome(None, 0))  # typer returns 130 for Ctrl-C (not standalone)
