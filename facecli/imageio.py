"""Reading and writing images at the boundary: files are decoded once into RGB uint8 HxWx3 (DESIGN.md contract).

Decoding is OpenCV's ``IMREAD_COLOR`` — the call the insightface tools use — so pixels match theirs exactly, EXIF
orientation is applied, and grayscale, palette, CMYK, alpha and 16-bit inputs all become 8-bit RGB. What was
converted is reported as ``notes`` (see :func:`load_image`) so batch manifests can say so.

Every way a file can be unusable becomes an :class:`ImageReadError` whose ``status`` batch jobs record in their
manifests and whose ``reason`` is one human line, so a run never stops on one bad file:

``empty`` (0 bytes), ``not_image`` (no known image header), ``truncated`` (JPEG/PNG cut short), ``corrupt``
(header fine, pixels undecodable), ``too_large`` (over the pixel limit; checked from the header before decoding,
which is the decompression-bomb guard), ``unreadable`` (permissions, I/O errors, directories).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageReadError(Exception):
    """An image that cannot be used; ``status`` is a manifest status, ``reason`` one human line."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class LoadedImage:
    """A decoded image and the conversions that were needed to make it RGB uint8."""

    rgb: np.ndarray
    notes: list[str] = field(default_factory=list)


@dataclass
class _Header:
    width: int
    height: int
    mode: str
    has_alpha: bool


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _read_header(data: bytes) -> _Header | None:
    """Size and pixel mode from the file header without decoding pixels (None when PIL cannot tell)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, with our own message
    try:
        with Image.open(io.BytesIO(data)) as im:
            alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
            return _Header(int(im.width), int(im.height), im.mode, alpha)
    except Exception:
        return None


def _truncation(data: bytes) -> str | None:
    """Why a JPEG or PNG was cut short (OpenCV would silently fill the missing part with grey), or None."""
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:
        return "truncated JPEG (no end-of-image marker)"
    if data[:8] == _PNG_SIGNATURE and b"IEND" not in data[-32:]:
        return "truncated PNG (no IEND chunk)"
    return None


def _conversion_notes(data: bytes, header: _Header) -> list[str]:
    notes = []
    if header.mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif header.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"):
        notes.append("grayscale converted to RGB")
    elif header.mode in ("P", "PA"):
        notes.append("palette converted to RGB")
    if header.has_alpha:
        notes.append("alpha channel dropped")
    bit_depth = data[24] if data[:8] == _PNG_SIGNATURE and len(data) > 24 else 8
    if bit_depth == 16 or header.mode.startswith("I;16"):
        notes.append("16-bit reduced to 8-bit")
    return notes


def decode_image_with_notes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode encoded image bytes into RGB uint8 (H, W, 3) and say what had to be converted."""
    if len(data) == 0:
        raise ImageReadError("empty", "empty file (0 bytes)")
    header = _read_header(data)
    if header is not None and header.width * header.height > max_pixels:
        raise ImageReadError(
            "too_large",
            f"{header.width}x{header.height} = {header.width * header.height} pixels exceeds the limit of "
            f"{max_pixels} (decompression bomb guard; raise it with --max-pixels)",
        )
    truncated = _truncation(data)
    if truncated:
        raise ImageReadError("truncated", truncated)
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        if header is None:
            raise ImageReadError("not_image", "not a recognised image format")
        raise ImageReadError("corrupt", "image header is valid but the pixels cannot be decoded")
    if header is None and bgr.shape[0] * bgr.shape[1] > max_pixels:
        raise ImageReadError("too_large", f"{bgr.shape[1]}x{bgr.shape[0]} pixels exceeds the limit of {max_pixels}")
    if bgr.dtype != np.uint8:  # defensive: IMREAD_COLOR already reduces 16-bit to 8-bit
        bgr = (bgr // 256).astype(np.uint8) if bgr.dtype == np.uint16 else bgr.astype(np.uint8)
    notes = _conversion_notes(data, header) if header is not None else []
    return LoadedImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), notes)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes into RGB uint8 (H, W, 3), applying EXIF orientation as ``cv2.imread`` does."""
    return decode_image_with_notes(data, max_pixels).rgb


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except PermissionError:
        raise ImageReadError("unreadable", "permission denied") from None
    except IsADirectoryError:
        raise ImageReadError("unreadable", "is a directory") from None
    except OSError as exc:
        raise ImageReadError("unreadable", f"cannot read file: {exc.strerror or exc}") from None


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read an image file into RGB uint8 with conversion notes; raises ImageReadError for any unusable file."""
    return decode_image_with_notes(_read_bytes(path), max_pixels=max_pixels)


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file into RGB uint8 (H, W, 3); raises ImageReadError for any unusable file."""
    return load_image(path, max_pixels).rgb


def encode_image(rgb: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    """Encode an RGB uint8 image as JPEG (``quality``) or PNG bytes with OpenCV."""
    fmt = fmt.lower().lstrip(".")
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    if fmt in ("jpg", "jpeg"):
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", bgr)
    else:
        raise ValueError(f"unsupported image format {fmt!r}")
    if not ok:
        raise ValueError("image encoding failed")
    return buf.tobytes()
