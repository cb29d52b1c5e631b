"""Verification benchmark ``.bin`` files (LFW, CFP-FP, AgeDB-30 ... as insightface distributes them), read safely.

A ``.bin`` is a pickle of ``(list_of_encoded_images, issame)`` where pair ``i`` is images ``2i`` and ``2i+1``.
These files are downloaded from the internet and a plain ``pickle.load`` would run whatever code they name, so
they are read with an unpickler that can build only lists, tuples, bytes, bools, ints and (through an explicit
allow-list) numpy bool arrays. Python-2 pickles (insightface's originals) are read with ``encoding='bytes'``.

Refusing code is not enough: a 97-byte pickle calling ``bytearray(1_500_000_000)`` asks for gigabytes. So memory
is bounded by the file's size: the opcodes are walked first (a length field larger than the bytes left is refused
before the C unpickler would allocate it), the allowed callables only copy data that is in the file (no integer
sizes), and an image referenced many times through the pickle memo (``pack pairs`` writes each image once however
many pairs use it) is kept once, not copied per reference.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from facecli.errors import CorruptFileError, UsageError

_ALLOWED_DTYPES = frozenset({"b1", "?", "bool"})


def _safe_dtype(name: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype`` for the unpickler: only the boolean dtype of ``issame`` arrays."""
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    if name not in _ALLOWED_DTYPES:
        raise pickle.UnpicklingError(f"numpy dtype {name!r} is not allowed in a .bin file")
    return np.dtype(bool)


class _NdarrayToken:
    """Stands in for ``numpy.ndarray`` in a pickle, so the class itself can never be called with pickle arguments."""


def _safe_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` for the unpickler: plain ndarrays only (filled by ``__setstate__``)."""
    if cls is not _NdarrayToken:
        raise pickle.UnpicklingError("only plain numpy arrays are allowed in a .bin file")
    return np.ndarray.__new__(np.ndarray, (0,), np.dtype(bool))


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode``, which Python 3 pickles of protocol < 3 use to spell ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected _codecs.encode call in a .bin file")
    return text.encode("latin1")


def _copy_bytearray(source: Any = b"", encoding: Any = None) -> bytearray:
    """``bytearray`` for the unpickler: a copy of bytes (or latin-1 text) the file holds, never a size to allocate."""
    if isinstance(source, (bytes, bytearray)) and encoding is None:
        return bytearray(source)
    if isinstance(source, str) and encoding in ("latin1", "latin-1"):
        return bytearray(source.encode("latin1"))
    raise pickle.UnpicklingError(f"bytearray({type(source).__name__}) is not allowed in a .bin file")


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy", "dtype"): _safe_dtype,
    ("numpy", "ndarray"): _NdarrayToken,
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytearray"): _copy_bytearray,
    ("builtins", "bytearray"): _copy_bytearray,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only plain containers and scalars; every global outside the allow-list is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in a .bin file")


_MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


def _check_lengths(data: bytes) -> None:
    """Walk the opcodes: every length field (strings, bytes, frames) must fit in the bytes that follow it, and
    every memo index must be one a pickler could have numbered in a file this size.

    The C unpickler allocates a declared length before reading it, so a 20-byte file declaring a 10 GB string
    would take 10 GB; ``pickletools.genops`` reads with ``BytesIO.read``, which returns only what is there. A memo
    index of 2**31 would likewise grow the unpickler's memo table to 2**31 slots (16 GB), all set to NULL.
    """
    size = len(data)
    try:
        for opcode, arg, at in pickletools.genops(data):
            pos = at or 0  # always set when reading bytes
            if opcode.name == "FRAME" and int(arg or 0) > size - pos:
                raise pickle.UnpicklingError(f"a frame at byte {pos} claims {arg} bytes; {size - pos} are left")
            if opcode.name in _MEMO_OPCODES and int(arg or 0) > size:  # picklers number memo entries 0, 1, 2, ...
                raise pickle.UnpicklingError(f"memo index {arg} at byte {pos} is larger than the file")
    except ValueError as exc:  # genops: "expected N bytes in a ..., but only M remain", unknown opcodes
        raise pickle.UnpicklingError(f"malformed pickle: {exc}") from None


def safe_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` with the restricted unpickler (Python-2 strings come back as bytes), memory bounded."""
    _check_lengths(data)
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def load_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """Read a verification ``.bin``: the encoded images and the bool ``issame`` array (one per pair).

    Raises UsageError when the file is missing and CorruptFileError when it is not a valid ``.bin`` (including a
    pickle that tries to call anything, which is refused before it runs).
    """
    path = Path(path)
    data = _read_file(path)
    try:
        obj = safe_unpickle(data)
    except pickle.UnpicklingError as exc:
        raise CorruptFileError(f"{path}: not a safe verification .bin ({exc})") from None
    except Exception as exc:  # truncated/garbled pickles raise EOFError, ValueError, TypeError, ...
        raise CorruptFileError(f"{path}: not a readable .bin pickle ({type(exc).__name__}: {exc})") from None
    return _validate(path, obj)


def _read_file(path: Path) -> bytes:
    """The bytes of ``path``, a regular file (a FIFO would block the read forever, /dev/zero never end); any size:
    the unpickler bounds memory by the file's size. UsageError when it is missing, not a regular file or unreadable."""
    from facecli.data.payloads import NotReadable, read_regular_file  # here: it loads the image codecs

    not_regular = UsageError(f"{path} is not a regular file")
    try:
        return read_regular_file(path, max_bytes=None)
    except NotReadable:
        raise not_regular from None
    except FileNotFoundError:
        raise UsageError(f"benchmark file not found: {path}") from None
    except OSError as exc:
        if path.exists() and not path.is_file():  # a folder or a socket: not even opened
            raise not_regular from None
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _validate(path: Path, obj: Any) -> tuple[list[bytes], np.ndarray]:
    """The images and ``issame`` flags of an unpickled ``.bin``: a pair (images, issame) with 2 images per pair."""
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise CorruptFileError(f"{path}: expected a pair (images, issame), found {type(obj).__name__}")
    images, issame = obj
    bins = _image_bytes(path, images)
    flags = _issame_flags(path, issame)
    if len(bins) != 2 * len(flags):
        raise CorruptFileError(
            f"{path}: {len(bins)} images but {len(flags)} pairs; a .bin needs exactly 2 images per pair"
        )
    return bins, flags


def _image_bytes(path: Path, images: Any) -> list[bytes]:
    """The encoded images as bytes; a bytearray the pickle memo repeats is copied once, however often it appears."""
    if not isinstance(images, (list, tuple)):
        raise CorruptFileError(f"{path}: the image list is a {type(images).__name__}, not a list")
    bins: list[bytes] = []
    copies: dict[int, bytes] = {}  # id of a bytearray → its one bytes copy
    for i, item in enumerate(images):
        if isinstance(item, bytes):
            bins.append(item)
        elif isinstance(item, bytearray):
            copy = copies.get(id(item))
            if copy is None:
                copy = copies[id(item)] = bytes(item)
            bins.append(copy)
        else:
            raise CorruptFileError(f"{path}: image {i} is a {type(item).__name__}, not encoded image bytes")
    return bins


def _issame_flags(path: Path, issame: Any) -> np.ndarray:
    """``issame`` as a 1-D bool array: a bool ndarray (copied) or a list of booleans (True/False or 0/1)."""
    if isinstance(issame, np.ndarray):
        if issame.dtype != np.bool_ or issame.ndim != 1:
            raise CorruptFileError(f"{path}: issame must be a 1-D bool array, found {issame.dtype} {issame.shape}")
        return issame.copy()
    if not isinstance(issame, (list, tuple)):
        raise CorruptFileError(f"{path}: issame is a {type(issame).__name__}, not a list of booleans")
    wrong = next((i for i, v in enumerate(issame) if not (isinstance(v, (bool, int)) and v in (0, 1))), None)
    if wrong is not None:
        raise CorruptFileError(f"{path}: issame must hold only booleans (True/False or 0/1); pair {wrong} holds "
                               f"{type(issame[wrong]).__name__} {issame[wrong]!r}")
    return np.array([bool(v) for v in issame], dtype=bool)


def save_bin(path: str | os.PathLike, images: list[bytes], issame: list[bool] | np.ndarray) -> None:
    """Write a ``.bin`` that insightface's ``load_bin`` reads: ``pickle((list of bytes, list of bool))``, atomically."""
    from facecli.fileio import atomic_write_bytes

    flags = [bool(v) for v in issame]
    if len(images) != 2 * len(flags):
        raise ValueError(f"{len(images)} images for {len(flags)} pairs; need 2 per pair")
    payload = pickle.dumps(([bytes(b) for b in images], flags), protocol=4)
    atomic_write_bytes(path, payload)
