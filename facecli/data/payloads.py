"""Turning an image file into the bytes a record stores: pass JPEGs of the right size through, encode the rest.

Re-encoding a JPEG costs quality and time, so a JPEG that already has the dataset's size is stored byte for byte
(as insightface's RecBuilder and im2rec ``--pass-through`` do). Sizes come from the file header, so the common
case never decodes pixels; ``verify="decode"`` decodes everything to catch damaged image data too.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from facecli.imageio import ImageReadError, decode_image, encode_image

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: no length field
_SOF_SIZE = struct.Struct(">HH")
VERIFY_MODES = ("header", "decode")


class ImageInfo(NamedTuple):
    format: str  # "jpeg", "png", ... (PIL's name, lower case)
    width: int
    height: int


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF segment without decoding; None when it is not a parseable JPEG.

    Walks the marker segments (an EXIF thumbnail inside APP1 has its own SOF, so searching for the bytes would
    be wrong); indexing bytes rather than slicing keeps this cheap, as it runs once per packed image.
    """
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
        if b"\xff\xd9" not in data[-64:]:
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
    status: str  # "ok", "reencoded", "resized", or a skip status: "unreadable", "wrong_size", "too_large"
    reason: str = ""


def prepare(path: str | Path, encoding: Encoding) -> Prepared:
    """The record payload for one image file, or a skip status and reason. Never raises for a bad image."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return Prepared(None, "unreadable", f"cannot read file: {exc.strerror or exc}")
    try:
        return _prepare_bytes(data, encoding)
    except ImageReadError as exc:
        return Prepared(None, exc.status, exc.reason)


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
