"""Array and weight files (``.npy``, ``.npz``, torch checkpoints) checked against their own size before loading.

numpy and torch allocate what a file's headers declare before they read the data: a ``.npy`` header may claim an
array far larger than the file, and a zip member (``.npz`` and torch's format are zip archives) may be compressed
a thousandfold. A small hostile file would then take gigabytes. facecli's writers (``np.save``, ``np.savez``,
``torch.save``) never compress, so the rule is simple and exact: every zip member is stored as it is, and every
declared array fits in the bytes that hold it. Files that break it are refused in one line before any load.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from facecli.errors import CorruptFileError


def _declared_bytes(fh: IO[bytes]) -> int:
    """Bytes of array data a ``.npy`` header (at the handle's position) declares."""
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran, dtype = read_header(fh)
    return int(np.prod(shape, dtype=np.float64) * dtype.itemsize)


def check_stored_zip(path: str | os.PathLike, what: str) -> list[zipfile.ZipInfo]:
    """The members of a zip archive, refused unless each is stored uncompressed and all fit in the file.

    Returns an empty list when ``path`` is no zip at all (the loader then reports what it is).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        return []
    total = 0
    for info in members:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise CorruptFileError(f"{path}: {what} member {info.filename!r} is compressed, and facecli writes "
                                   "them uncompressed (refusing what could be a decompression bomb)")
        total += info.file_size
    if total > path.stat().st_size:
        raise CorruptFileError(f"{path}: {what} members claim {total} bytes, more than the file's "
                               f"{path.stat().st_size}")
    return members


def check_npz(path: str | os.PathLike, what: str) -> None:
    """:func:`check_stored_zip`, then each ``.npy`` member's declared array must fit in the member."""
    path = Path(path)
    members = check_stored_zip(path, what)
    if not members:
        return
    with zipfile.ZipFile(path) as archive:
        for info in members:
            with archive.open(info) as fh:
                try:
                    declared = _declared_bytes(fh)
                except (ValueError, EOFError) as exc:
                    raise CorruptFileError(f"{path}: {what} member {info.filename!r} is no array ({exc})") from None
            if declared > info.file_size:
                raise CorruptFileError(f"{path}: {what} member {info.filename!r} declares {declared} bytes of data "
                                       f"but holds {info.file_size}")


def check_npy(path: str | os.PathLike, what: str) -> None:
    """A ``.npy`` file's declared array must fit in the file."""
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            declared = _declared_bytes(fh)
        except (ValueError, EOFError) as exc:
            raise CorruptFileError(f"{path}: not a readable .npy {what} ({exc})") from None
    if declared > path.stat().st_size:
        raise CorruptFileError(f"{path}: the .npy header declares {declared} bytes of {what}, the file holds "
                               f"{path.stat().st_size}")
