"""Record files back to identity folders, so that ``pack → unpack → pack`` reproduces the same bytes.

Each image record is written as its stored bytes (never re-encoded) to ``OUT/<identity>/<name>``. Identity names
come from the pack's ``labels.csv`` (``NAME.labels.csv`` beside ``NAME.rec``) when present, else the zero-padded
label, which sorts like the label. File names come from ``records.csv`` when it records a path inside the
identity folder; otherwise they are the zero-padded record key. Both choices sort in record order, which is what
makes the round trip exact.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from facecli.data.payloads import probe
from facecli.data.recordio import RecordReader, first_label, ms1m_image_keys, sidecar_path, unpack
from facecli.errors import CorruptFileError, UsageError
from facecli.fileio import atomic_write_bytes
from facecli.imageio import ImageReadError

_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "bmp": ".bmp", "webp": ".webp", "tiff": ".tif"}


def find_record_file(path: Path) -> Path:
    """``path`` itself if it is a ``.rec``, else the single (or ``train``) ``.rec`` inside the folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UsageError(f"not found: {path}")
    if (path / "train.rec").is_file():
        return path / "train.rec"
    recs = sorted(path.glob("*.rec"))
    if len(recs) != 1:
        raise UsageError(f"{path}: expected one .rec file, found {len(recs)}")
    return recs[0]


def _read_table(path: Path, key: str, values: tuple[str, ...]) -> dict[int, tuple[str, ...]]:
    """``{int(row[key]): (row[v] for v in values)}`` of a pack's CSV sidecar; a malformed one is one clear line."""
    if not path.is_file():
        return {}
    table: dict[int, tuple[str, ...]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for lineno, row in enumerate(csv.DictReader(fh), 2):
                try:
                    table[int(row[key])] = tuple(str(row[v]) for v in values)
                except (KeyError, TypeError, ValueError):
                    raise CorruptFileError(f"{path}: line {lineno}: expected columns {key}, {', '.join(values)} "
                                           f"with an integer {key}") from None
    except UnicodeDecodeError:
        raise CorruptFileError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise CorruptFileError(f"{path}: malformed CSV ({exc})") from None
    return table


def _identity_names(rec: Path) -> dict[int, str]:
    table = _read_table(sidecar_path(rec, "labels.csv"), "label", ("identity",))
    return {label: row[0] for label, row in table.items()}


def _record_paths(rec: Path) -> dict[int, tuple[str, str]]:
    table = _read_table(sidecar_path(rec, "records.csv"), "key", ("identity", "path"))
    return {key: (row[0], row[1]) for key, row in table.items()}


def _safe_component(name: str) -> str:
    cleaned = re.sub(r"[\\/\x00]", "_", name).strip()
    return cleaned if cleaned not in ("", ".", "..") else "_"


def _inner_path(identity: str, rel: str) -> PurePosixPath | None:
    """The part of ``rel`` below its identity folder, when ``rel`` is a safe relative path starting there."""
    parts = PurePosixPath(rel).parts
    if len(parts) < 2 or parts[0] != identity or any(p in ("..", ".", "") for p in parts) or rel.startswith("/"):
        return None
    return PurePosixPath(*parts[1:])


@dataclass
class UnpackResult:
    out: Path
    images: int = 0
    identities: int = 0
    layout: str = ""
    bad: list[dict] = field(default_factory=list)  # {key, offset, error} per damaged record


def _image_keys(reader: RecordReader) -> tuple[list[int], str]:
    """The keys to unpack and the layout name. A file whose layout cannot be read (a damaged header or identity
    record) falls back to every key its header record names, else every indexed key: each is then read on its own,
    so one damaged record costs that record only."""
    try:
        image_keys = [k for k in ms1m_image_keys(reader).tolist() if k in reader]
    except (CorruptFileError, ValueError):  # record 0 is damaged: every indexed key, each read on its own
        return list(reader.keys), "flat"
    ms1m = 0 in reader and image_keys and image_keys[0] == 1 and len(image_keys) < len(reader)
    return image_keys, "ms1m" if ms1m else "flat"


def _offset(reader: RecordReader, key: int) -> int | None:
    try:
        return reader.offset(key)
    except KeyError:
        return None


def unpack_records(rec: Path, out: Path, advance: Callable[[int], None] = lambda n: None) -> UnpackResult:
    """Write every readable image record of ``rec`` to ``out/<identity>/...``.

    Damaged records (bad framing, an index entry pointing inside or past a record, a bad IRHeader) are skipped and
    listed in ``bad`` by key and byte offset, as ``inspect --check`` lists them; every other record is written.
    """
    rec = find_record_file(rec)
    reader = RecordReader(rec)
    image_keys, layout = _image_keys(reader)
    names = _identity_names(rec)
    recorded = _record_paths(rec)
    width = max(6, len(str(max(image_keys, default=0))))
    result = UnpackResult(out=Path(out), layout=layout)
    seen: set[int] = set()
    for key in image_keys:
        advance(1)
        try:
            header, payload = unpack(reader.read(key))
        except (CorruptFileError, ValueError, KeyError) as exc:
            result.bad.append({"key": key, "offset": _offset(reader, key), "error": str(exc)})
            continue
        if not payload:  # an identity record of a file whose header could not say where they start
            continue
        label = int(first_label(header.label))
        identity = _safe_component(names.get(label, f"{label:06d}"))
        try:
            ext = _EXTENSIONS.get(probe(payload).format, ".img")
        except ImageReadError:
            ext = ".img"
        inner = None
        if key in recorded and recorded[key][0] == names.get(label):
            inner = _inner_path(names[label], recorded[key][1])
        if inner is None:
            inner = PurePosixPath(f"{key:0{width}d}{ext}")
        elif inner.suffix.lower() not in (ext, ".jpeg" if ext == ".jpg" else ext):
            inner = inner.with_suffix(ext)
        atomic_write_bytes(Path(out) / identity / Path(*inner.parts), payload)
        result.images += 1
        seen.add(label)
    result.identities = len(seen)
    reader.close()
    return result
