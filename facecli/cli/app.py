"""The ``facecli`` entry point: one typer sub-app or command per verb, and the single place errors become exit codes.

Exit codes: 0 success, 1 a failure (``FacecliError``), 2 usage errors and missing inputs (``UsageError`` and
click's own usage errors), 130 interrupted. Errors are one line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import errno
import sys
import traceback

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


def _fail(message: str, code: int) -> None:
    print(f"facecli: error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI (the ``facecli`` program, ``python -m facecli``); ``argv`` defaults to ``sys.argv[1:]``.

    Always ends with ``SystemExit`` carrying the exit code, so that the interpreter shuts down as usual (atexit
    handlers, multiprocessing's clean-up, flushed streams); tests call it in-process and catch it.
    """
    _state["debug"] = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        returned = app(args=argv, prog_name="facecli", standalone_mode=False)
        if returned == 130:  # typer turns Ctrl-C into a returned 130 when not in standalone mode
            _fail("interrupted", 130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _fail("interrupted", 130)
    except typer.TyperException as exc:  # click's usage errors, vendored by typer
        message = exc.format_message().strip()
        if not message:  # no arguments given: typer has already shown the help
            sys.exit(0)
        if _state["debug"]:
            traceback.print_exc()
        _fail(message.replace("\n", " "), getattr(exc, "exit_code", 2))
    except FacecliError as exc:
        if _state["debug"]:
            traceback.print_exc()
        _fail(str(exc).replace("\n", " "), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except OSError as exc:  # the environment (full disk, permissions, a file where a folder must be), not a bug
        if _state["debug"]:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        hint = " (a file stands where a folder is needed)" if exc.errno in (errno.EEXIST, errno.ENOTDIR) else ""
        _fail(f"{where}{exc.strerror or exc}{hint}", 1)
    except Exception as exc:  # a bug: still one line unless --debug
        if _state["debug"]:
            traceback.print_exc()
        _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)
    sys.exit(0)

