"""Reading and writing images at the boundary: files are decoded once into RGB uint8 HxWx3 (DESIGN.md contract).

Every way a file can be bad is turned into an :class:`ImageReadError` with a ``status`` that batch jobs record in
their manifests (``unreadable``, ``too_large``) and a human ``reason``, so a run never stops on one bad file.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


class ImageReadError(Exception):
    """An image that cannot be used; ``status`` is a manifest status, ``reason`` one human line."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _pixel_count_from_header(data: bytes) -> int | None:
    """Width x height read from the file header without decoding pixels (None when PIL cannot tell)."""
    import io

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, with our own message
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.width) * int(im.height)
    except Exception:
        return None


def _looks_truncated(data: bytes) -> bool:
    """A JPEG whose end-of-image marker is missing was cut short (OpenCV would fill the rest with grey)."""
    if data[:2] != b"\xff\xd8":
        return False
    return b"\xff\xd9" not in data[-64:]


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes into RGB uint8 (H, W, 3), applying EXIF orientation as ``cv2.imread`` does.

    Grayscale, alpha, CMYK and 16-bit inputs are converted to 8-bit RGB; anything else raises ImageReadError.
    """
    if len(data) == 0:
        raise ImageReadError("unreadable", "empty file (0 bytes)")
    pixels = _pixel_count_from_header(data)
    if pixels is not None and pixels > max_pixels:
        raise ImageReadError("too_large", f"{pixels} pixels exceeds the limit of {max_pixels} (decompression bomb guard)")
    if _looks_truncated(data):
        raise ImageReadError("unreadable", "truncated JPEG (no end-of-image marker)")
    buf = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageReadError("unreadable", "not a decodable image")
    if bgr.dtype != np.uint8:  # defensive: IMREAD_COLOR already reduces 16-bit to 8-bit
        bgr = (bgr / 257).astype(np.uint8)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file into RGB uint8 (H, W, 3); raises ImageReadError for any unusable file."""
    try:
        data = Path(path).read_bytes()
    except PermissionError:
        raise ImageReadError("unreadable", "permission denied") from None
    except IsADirectoryError:
        raise ImageReadError("unreadable", "is a directory") from None
    except OSError as exc:
        raise ImageReadError("unreadable", f"cannot read file: {exc.strerror or exc}") from None
    return decode_image(data, max_pixels=max_pixels)


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
