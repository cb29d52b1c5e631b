"""Turning an image file into the bytes a record stores: pass JPEGs of the right size through, encode the rest.

Re-encoding a JPEG costs quality and time, so a JPEG that already has the dataset's size is stored byte for byte
(as insightface's RecBuilder and im2rec ``--pass-through`` do). Sizes come from the file header, so the common
case never decodes pixels; ``verify="decode"`` decodes everything to catch damaged image data too.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from facecli.imageio import ImageReadError, decode_image, encode_image

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: no length field
_SOF_SIZE = struct.Struct(">HH")
_JPEG_END = b"\xff\xd9"  # EOI; a JPEG cut short (a partial download or copy) lacks it near its end
VERIFY_MODES = ("header", "decode")


class ImageInfo(NamedTuple):
    format: str  # "jpeg", "png", ... (PIL's name, lower case)
    width: int
    height: int


#: The header bytes up to the end of the last SOF segment :func:`jpeg_size` walked to, and the size found there.
_last_sof: tuple[bytes, tuple[int, int]] = (b"", (0, 0))


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF segment without decoding; None when it is not a parseable JPEG.

    Walks the marker segments (an EXIF thumbnail inside APP1 has its own SOF, so searching for the bytes would
    be wrong). The walk reads nothing past the SOF, so a file that starts with the same bytes as the last one
    walked, through its SOF, has the same answer: files of one encoder and quality (a dataset of crops) share
    those bytes, and one comparison replaces the walk, which runs once per packed image.
    """
    global _last_sof
    head, size = _last_sof
    if head and data[: len(head)] == head:
        return size
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _STANDALONE_MARKERS:
            i += 2
        elif marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            height, width = _SOF_SIZE.unpack_from(data, i + 5)
            _last_sof = bytes(data[: i + 9]), (width, height)
            return width, height
        elif marker == 0xD9:
            return None
        else:
            length = data[i + 2] << 8 | data[i + 3]
            if length < 2:
                return None
            i += 2 + length
    return None


def probe(data: bytes) -> ImageInfo:
    """Format and size of encoded image bytes, from the header only; ImageReadError when unrecognisable."""
    if not data:
        raise ImageReadError("unreadable", "empty file (0 bytes)")
    size = jpeg_size(data)
    if size is not None:
        if data.rfind(_JPEG_END, -64) < 0:  # not among the last 64 bytes
            raise ImageReadError("unreadable", "truncated JPEG (no end-of-image marker)")
        return ImageInfo("jpeg", *size)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return ImageInfo((im.format or "unknown").lower(), int(im.width), int(im.height))
    except Exception:
        raise ImageReadError("unreadable", "not a recognisable image") from None


@dataclass(frozen=True)
class Encoding:
    """How records store images: their size (width, height), whether other sizes are resized, JPEG quality."""

    size: tuple[int, int]
    resize: bool = False
    quality: int = 95
    verify: str = "header"


class Prepared(NamedTuple):
    payload: bytes | None
    status: str  # "ok", "reencoded", "resized", or a skip: "unreadable", "not_a_file", "wrong_size", "too_large"
    reason: str = ""


def prepare_many(paths: Sequence[str | Path], encoding: Encoding) -> list[Prepared]:
    """The record payload (or a skip status and reason) of each image file, in order. Never raises for a bad image.

    One call per batch (one task for a worker process), and the common case, a JPEG of the dataset's size with
    header checks only, inline: this loop runs once per packed image and its overhead is the packer's.
    """
    quick = encoding.verify == "header"
    size = encoding.size
    results = []
    for path in paths:
        try:
            data = read_regular_file(path)
        except NotReadable as exc:
            results.append(Prepared(None, exc.status, exc.reason))
            continue
        except OSError as exc:
            results.append(Prepared(None, "unreadable", f"cannot read file: {exc.strerror or exc}"))
            continue
        if quick and jpeg_size(data) == size and data.rfind(_JPEG_END, -64) >= 0:
            results.append(Prepared(data, "ok"))  # what _prepare_bytes returns here, without its probe()
            continue
        try:
            results.append(_prepare_bytes(data, encoding))
        except ImageReadError as exc:
            results.append(Prepared(None, exc.status, exc.reason))
    return results


#: Larger files are not read: an image this big is no face crop, and a huge file must not take the memory.
MAX_FILE_BYTES = 256 << 20


class NotReadable(Exception):
    """A path that is no regular file, or too large: ``status`` is the skip status, ``reason`` says why."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def read_regular_file(path: str | Path, max_bytes: int | None = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file (links followed) of at most ``max_bytes`` (None: any size).

    A FIFO named ``p.jpg`` would block ``open()`` forever and a link to ``/dev/zero`` would be read until memory
    runs out, so the file is opened without blocking and checked with ``fstat`` before anything is read (no extra
    system call for the common case).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotReadable("not_a_file", "not a regular file (a FIFO, device, socket or folder)")
        if max_bytes is not None and info.st_size > max_bytes:
            raise NotReadable("too_large", f"{info.st_size} bytes, more than the {max_bytes >> 20} MiB read")
        return fh.read()


def _prepare_bytes(data: bytes, encoding: Encoding) -> Prepared:
    info = probe(data)
    right_size = (info.width, info.height) == encoding.size
    if right_size and info.format == "jpeg":
        if encoding.verify == "decode":
            decode_image(data)
        return Prepared(data, "ok")
    if not right_size and not encoding.resize:
        w, h = encoding.size
        return Prepared(
            None, "wrong_size", f"{info.width}x{info.height}, the dataset is {w}x{h} (use --resize to resize)"
        )
    rgb = decode_image(data)
    status = "reencoded"
    if not right_size:
        rgb = resize_to(rgb, encoding.size)
        status = "resized"
    return Prepared(encode_image(rgb, "jpg", encoding.quality), status)


def resize_to(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height): area averaging when shrinking, bicubic when enlarging."""
    import cv2

    w, h = size
    shrinking = w * h < rgb.shape[0] * rgb.shape[1]
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
