"""Reading the CSV files users hand to facecli (labels, pair lists, exclude lists) with one-line errors.

Every such file is read the same way — UTF-8 with or without a byte-order mark, as spreadsheets save it — and a
missing or undecodable file is a ``UsageError`` naming what it was meant to be, never a traceback.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar, overload

from facecli.errors import UsageError

Row = TypeVar("Row")


@overload
def read_csv(path: Path, what: str) -> list[list[str]]: ...


@overload
def read_csv(path: Path, what: str, reader: Callable[[Iterable[str]], Iterable[Row]]) -> list[Row]: ...


def read_csv(path: Path, what: str, reader: Callable[[Iterable[str]], Iterable[Any]] = csv.reader) -> list[Any]:
    """All rows of ``path`` parsed by ``reader`` (``csv.reader`` or ``csv.DictReader``); ``what`` names the file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return list(reader(fh))
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {path}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{path}: not a UTF-8 CSV file ({exc})") from None
