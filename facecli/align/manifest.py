"""``manifest.csv``: one row per input file and face, the record of what ``align`` did and why.

Rows carry the source and output paths (relative to RAW and OUT, POSIX separators, so a manifest stays valid when
both folders move), the status and reason, and for crops the detector score, box, five landmarks, the 2x3
similarity matrix, the image size, the seconds spent and ``settings``, a fingerprint of every option that shapes
the crop (a rerun with other settings redoes the file). Sharded runs write ``manifest.shard-I-of-N.csv`` each;
:func:`merge_manifests` joins them. Every manifest is written atomically.

While a run goes, each finished file's rows are also appended to a :class:`Journal` (``.manifest.csv.journal``)
in one write, after its crops are in place. The CSV is written at the end; a run killed before that (``kill -9``,
a full disk, a power cut of the process) leaves the journal, and the next run takes the rows from it, so a resumed
manifest says how every crop was made exactly as an uninterrupted run's does.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from facecli.errors import UsageError
from facecli.fileio import atomic_path, new_file_mode

MANIFEST_NAME = "manifest.csv"
_SHARD_RE = re.compile(r"^manifest\.shard-(\d+)-of-(\d+)\.csv$")

BOX_COLUMNS = ["box_x1", "box_y1", "box_x2", "box_y2"]
LANDMARK_COLUMNS = [f"lm{i}_{axis}" for i in range(5) for axis in ("x", "y")]
MATRIX_COLUMNS = ["m00", "m01", "m02", "m10", "m11", "m12"]
COLUMNS = [
    "source",
    "output",
    "status",
    "reason",
    "face",
    "score",
    *BOX_COLUMNS,
    *LANDMARK_COLUMNS,
    *MATRIX_COLUMNS,
    "width",
    "height",
    "seconds",
    "settings",
]

INTEGER_COLUMNS = ["face", "width", "height"]

#: statuses that mean "a crop exists for this row"
WRITTEN_STATUSES = ("ok", "skipped_existing")


def manifest_name(shard: int = 0, num_shards: int = 1) -> str:
    return MANIFEST_NAME if num_shards == 1 else f"manifest.shard-{shard}-of-{num_shards}.csv"


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows (dicts keyed by :data:`COLUMNS`) as CSV, sorted by source and face, atomically."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in INTEGER_COLUMNS:  # stay "3", not "3.0", when some rows have no value
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    if len(frame):
        frame = frame.sort_values(["source", "face"], kind="stable", na_position="first")
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows of a manifest written by :func:`write_manifest` (missing cells become None)."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype={"source": str, "output": str, "status": str, "reason": str, "settings": str})
    except Exception as exc:
        raise UsageError(f"cannot read manifest {path}: {exc}") from None
    missing = [c for c in ("source", "output", "status") if c not in frame.columns]
    if missing:
        raise UsageError(f"{path} is not an align manifest (missing columns: {', '.join(missing)})")
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict("records")


def journal_path(manifest: Path) -> Path:
    """The journal beside a manifest: ``.manifest.csv.journal`` (hidden: it is bookkeeping, not a result)."""
    return manifest.with_name(f".{manifest.name}.journal")


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers, for JSON."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot record {type(value).__name__} in the journal")


def read_journal(path: Path) -> tuple[list[list[dict[str, Any]]], int]:
    """The records (one list of rows per finished file) and the byte length of the intact part of a journal.

    A record is one line written by one ``write``; a crash or a full disk can only leave the last line short, and
    reading stops there.
    """
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    records: list[list[dict[str, Any]]] = []
    intact = 0
    for line in data.splitlines(keepends=True):
        try:
            rows = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            rows = None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "source" in r for r in rows):
            break
        records.append(rows)
        intact += len(line)
    return records, intact


class Journal:
    """Append-only record of the files a run has finished: one JSON line of manifest rows per file."""

    def __init__(self, path: Path, intact: int = 0) -> None:
        """Open (or create) the journal, cutting off a torn last line so that new records start on their own."""
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, new_file_mode())
        os.ftruncate(self._fd, intact)
        os.lseek(self._fd, intact, os.SEEK_SET)

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Append one file's rows in one write (the kernel has them when this returns; a crash keeps them)."""
        data = (json.dumps(rows, default=_plain, ensure_ascii=True) + "\n").encode("ascii")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        os.close(self._fd)

    def remove(self) -> None:
        """Close and delete: the manifest now holds every row."""
        self.close()
        self.path.unlink(missing_ok=True)


def status_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Files per status (a file with several faces counts once per status it has)."""
    seen: dict[str, set] = {}
    for row in rows:
        seen.setdefault(row["status"], set()).add(row["source"])
    return {status: len(sources) for status, sources in sorted(seen.items())}


def merge_manifests(out: str | Path) -> dict[str, Any]:
    """Join ``manifest.shard-I-of-N.csv`` in ``out`` into ``manifest.csv``; every shard must be there, once.
    ``out`` may be an fsspec URL: the shard manifests are downloaded, merged here and the result uploaded."""
    from facecli.align.remote import is_url

    if is_url(out):
        return _merge_remote(str(out))
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"output folder not found: {out}")
    num_shards = _shard_count(out)
    rows: list[dict[str, Any]] = []
    owner: dict[str, int] = {}
    for shard in range(num_shards):
        for row in read_manifest(out / manifest_name(shard, num_shards)):
            previous = owner.setdefault(row["source"], shard)
            if previous != shard:
                raise UsageError(f"{row['source']} appears in shards {previous} and {shard}")
            rows.append(row)
    write_manifest(out / MANIFEST_NAME, rows)
    return {
        "out": str(out),
        "manifest": str(out / MANIFEST_NAME),
        "shards": num_shards,
        "files": len(owner),
        "rows": len(rows),
        "counts": status_counts(rows),
    }


def _shard_count(out: Path) -> int:
    """N of the ``manifest.shard-I-of-N.csv`` in ``out``, once every shard 0 … N-1 of one split is there."""
    shards: dict[int, set[int]] = {}
    for path in out.iterdir():
        match = _SHARD_RE.match(path.name)
        if match:
            shards.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    if not shards:
        raise UsageError(f"no shard manifests (manifest.shard-I-of-N.csv) in {out}")
    if len(shards) > 1:
        raise UsageError(f"shard manifests of different splits in {out}: N = {sorted(shards)}")
    (num_shards, present), = shards.items()
    missing = sorted(set(range(num_shards)) - present)
    if missing:
        raise UsageError(f"missing shard manifests for shards {missing} of {num_shards} in {out}")
    return num_shards


def _merge_remote(url: str) -> dict[str, Any]:
    """:func:`merge_manifests` of a remote folder, through a local copy of its shard manifests (errors name the URL)."""
    import tempfile

    from facecli.align.remote import RemoteFolder

    folder = RemoteFolder(url)
    with tempfile.TemporaryDirectory() as local:
        for name in folder.names():
            if _SHARD_RE.match(name):
                folder.download(name, Path(local) / name)
        try:
            summary = merge_manifests(local)
        except UsageError as exc:
            raise UsageError(str(exc).replace(local, folder.url)) from None
        folder.upload(Path(local) / MANIFEST_NAME, MANIFEST_NAME)
    return {**summary, "out": folder.url, "manifest": folder.url_of(MANIFEST_NAME)}
