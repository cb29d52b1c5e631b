"""Atomic file output: every file facecli writes appears whole or not at all.

Writers create ``.NAME.<random>.tmp`` beside the target and rename it into place at the end, so an interrupted job
never leaves a half-written output that a rerun would mistake for a finished one. :func:`sha256_file` is the one
checksum of a file's bytes that outputs (pack records) and model fingerprints are built from.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def new_file_mode() -> int:
    """The permissions ``open()`` gives a new file under the current umask (``mkstemp`` would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_prefix(name: str) -> str:
    """``.NAME.``, with NAME cut to 241 bytes so that the temporary name (14 bytes longer than NAME) fits the
    255-byte limit of file names whenever NAME itself does."""
    return "." + os.fsdecode(os.fsencode(name)[:241]) + "."


def temp_pattern(name: str) -> str:
    """The glob pattern of the temporary files a writer of ``name`` makes, to clean up after a killed run."""
    return glob.escape(temp_prefix(name)) + "*.tmp"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` when the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, new_file_mode())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (weights and packs can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_name(name: str | os.PathLike) -> str:
    """A file name or path as text that any UTF-8 file, CSV or terminal takes: itself when it is valid UTF-8,
    else with each undecodable byte written ``\\xNN`` (``caf\\xe9.jpg`` for Latin-1 ``café.jpg``).

    POSIX names are bytes; Python hands undecodable ones over as lone surrogates, which cannot be encoded, so a
    manifest, a JSON summary or an error message naming such a file would fail. The escaped form is the same on
    every run, so it also serves as a stable key.
    """
    text = os.fspath(name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text
