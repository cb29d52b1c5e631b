"""Reading and writing images at the boundary: files are decoded once into RGB uint8 HxWx3 (DESIGN.md contract).

Decoding is OpenCV's ``IMREAD_COLOR`` — the call the insightface tools use — so pixels match theirs exactly, EXIF
orientation is applied, and grayscale, palette, CMYK, alpha and 16-bit inputs all become 8-bit RGB. What was
converted is reported as ``notes`` (see :func:`load_image`) so batch manifests can say so.

Hostile files are stopped before they cost memory or hang a batch job:

* only regular files are read (after resolving symbolic links; FIFOs, devices, sockets and directories are
  refused without being opened), and only up to :func:`max_file_bytes`;
* OpenCV only ever sees bytes whose format was recognised from its signature (the same signatures OpenCV's own
  decoders check) and whose width and height were read from the header — by Pillow, or here for the text headers
  Pillow cannot read (Radiance HDR, PFM, PAM) — and found within the pixel limit. That is the decompression-bomb
  guard, for every format OpenCV can decode;
* what the C decoders print (libjpeg's "Corrupt JPEG data", libpng's warnings) is caught instead of reaching
  stderr and becomes a ``decode_warning`` note, or the reason of a ``corrupt`` image.

Every way a file can be unusable becomes an :class:`ImageReadError` whose ``status`` batch jobs record in their
manifests and whose ``reason`` is one human line, so a run never stops on one bad file:

``empty`` (0 bytes), ``not_image`` (no known image signature), ``truncated`` (JPEG/PNG cut short: no
end-of-image marker / IEND chunk; bytes after them are fine), ``corrupt`` (header unreadable or pixels
undecodable), ``too_large`` (over the pixel limit, or a file bigger than such an image can be),
``not_a_file`` (a directory, FIFO, device or socket, or a broken link), ``unreadable`` (permissions, I/O errors).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"})

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
    animated: bool = False


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def max_file_bytes(max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The largest file read for an image within ``max_pixels``: 8 bytes a pixel (uncompressed 16-bit RGBA, the
    widest layout OpenCV reduces to 8-bit RGB) plus 64 MiB of metadata. Anything bigger is refused unread."""
    return 8 * int(max_pixels) + (64 << 20)


# ---------------------------------------------------------------------------------------------- formats

# OpenCV picks its decoder by these signatures; bytes matching none of them are never handed to it.
_SIGNATURES: list[tuple[str, Callable[[bytes], bool]]] = [
    ("BMP", lambda d: d[:2] == b"BM"),
    ("HDR", lambda d: d[:10] == b"#?RADIANCE" or d[:6] == b"#?RGBE"),
    ("JPEG", lambda d: d[:3] == b"\xff\xd8\xff"),
    ("WEBP", lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP"),
    ("AVIF", lambda d: d[4:8] == b"ftyp" and d[8:12] in (b"avif", b"avis")),
    ("SUN", lambda d: d[:4] == b"\x59\xa6\x6a\x95"),
    ("PNM", lambda d: len(d) > 2 and d[:1] == b"P" and d[1:2] in b"123456" and d[2:3].isspace()),
    ("PFM", lambda d: len(d) > 2 and d[:2] in (b"PF", b"Pf") and d[2:3].isspace()),
    ("TIFF", lambda d: d[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),
    ("PNG", lambda d: d[:8] == _PNG_SIGNATURE),
    ("GIF", lambda d: d[:6] in (b"GIF87a", b"GIF89a")),
    ("JPEG2000", lambda d: d[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or d[:4] == b"\xff\x4f\xff\x51"),
    ("PAM", lambda d: len(d) > 2 and d[:2] == b"P7" and d[2:3].isspace()),
]

_WEAK_SIGNATURES = frozenset({"BMP", "PNM", "PFM", "PAM"})

# Pillow's plugin for each format whose header Pillow reads (restricting Image.open to it means Pillow reads
# the same header OpenCV will decode, never another format's idea of the bytes).
_PIL_FORMATS = {
    "BMP": "BMP", "JPEG": "JPEG", "WEBP": "WEBP", "AVIF": "AVIF", "SUN": "SUN", "PNM": "PPM", "TIFF": "TIFF",
    "PNG": "PNG", "GIF": "GIF", "JPEG2000": "JPEG2000",
}


def _image_format(data: bytes) -> str | None:
    return next((name for name, matches in _SIGNATURES if matches(data)), None)


def _pil_header(data: bytes, fmt: str) -> _Header | None:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, with our own message
    try:
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]]) as im:
            alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
            animated = bool(getattr(im, "is_animated", False))
            return _Header(int(im.width), int(im.height), im.mode, alpha, animated)
    except Exception:
        return None


def _text_header(data: bytes, fmt: str) -> _Header | None:
    """Width and height from the text headers Pillow does not read: Radiance HDR, PFM and PAM."""
    head = data[: 64 << 10].decode("latin-1")
    if fmt == "HDR":  # "#?RADIANCE", header lines, an empty line, then e.g. "-Y 480 +X 640"
        match = re.search(r"\n\n([-+])([XY]) +(\d+) +([-+])([XY]) +(\d+)", head)
        if not match or match.group(2) == match.group(5):
            return None
        sizes = {match.group(2): int(match.group(3)), match.group(5): int(match.group(6))}
        return _Header(sizes["X"], sizes["Y"], "F", False)
    if fmt == "PFM":  # "PF\n640 480\n-1.0\n"
        tokens = head.split(None, 3)
        if len(tokens) < 3 or not (tokens[1].isdigit() and tokens[2].isdigit()):
            return None
        return _Header(int(tokens[1]), int(tokens[2]), "F", False)
    values = dict(re.findall(r"^(WIDTH|HEIGHT|DEPTH) +(\d+)", head.split("ENDHDR")[0], re.MULTILINE))
    if "WIDTH" not in values or "HEIGHT" not in values:
        return None
    return _Header(int(values["WIDTH"]), int(values["HEIGHT"]), "RGB", values.get("DEPTH") in ("2", "4"))


def _read_header(data: bytes, fmt: str) -> _Header | None:
    """Size and pixel mode from the file header without decoding pixels (None when the header is unreadable)."""
    return _pil_header(data, fmt) if fmt in _PIL_FORMATS else _text_header(data, fmt)


def _jpeg_scan_start(data: bytes) -> int | None:
    """Offset of the first scan's data: the marker segments before it are walked by their lengths, so an EXIF
    thumbnail's own end-of-image marker is not mistaken for the image's."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += 2 + length
        if marker == 0xDA:
            return pos
    return None


def _truncation(fmt: str, data: bytes) -> str | None:
    """Why a JPEG or PNG was cut short, or None. Bytes after the end-of-image marker or IEND are not truncation
    (decoders stop there); a file that ends before them is."""
    if fmt == "JPEG":
        scan = _jpeg_scan_start(data)
        if scan is None or data.find(b"\xff\xd9", scan) < 0:
            return "truncated JPEG (no end-of-image marker)"
    elif fmt == "PNG":
        pos = len(_PNG_SIGNATURE)
        while pos + 8 <= len(data):
            if data[pos + 4 : pos + 8] == b"IEND":
                return None
            pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
        return "truncated PNG (no IEND chunk)"
    return None


def _conversion_notes(data: bytes, fmt: str, header: _Header) -> list[str]:
    notes = []
    if header.mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif header.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F") and fmt not in ("HDR", "PFM"):
        notes.append("grayscale converted to RGB")
    elif header.mode in ("P", "PA"):
        notes.append("palette converted to RGB")
    if header.has_alpha:
        notes.append("alpha channel dropped")
    bit_depth = data[24] if fmt == "PNG" and len(data) > 24 else 8
    if bit_depth == 16 or header.mode.startswith("I;16"):
        notes.append("16-bit reduced to 8-bit")
    if fmt in ("HDR", "PFM"):
        notes.append("floating-point image reduced to 8-bit")
    if header.animated:
        notes.append(f"animated {fmt}: first frame used")
    return notes


# ---------------------------------------------------------------------------------------------- C decoders' output

_CAPTURE_LOCK = threading.Lock()
_CAPTURE: dict[str, int] = {}  # this process's capture file ("fd") and the process it belongs to ("pid")


def _capture_fd() -> int:
    if _CAPTURE.get("pid") != os.getpid():  # a child must not share its parent's file
        if hasattr(os, "memfd_create"):
            _CAPTURE["fd"] = os.memfd_create("facecli-decoder-messages", os.MFD_CLOEXEC)
        else:  # pragma: no cover - platforms without memfd
            handle = tempfile.TemporaryFile()
            _CAPTURE["fd"] = os.dup(handle.fileno())
            handle.close()
        _CAPTURE["pid"] = os.getpid()
    return _CAPTURE["fd"]


@contextlib.contextmanager
def decoder_messages() -> Iterator[list[str]]:
    """Catch what C libraries print on file descriptor 2 inside the block; the yielded list is filled at its end.

    libjpeg and libpng report damaged data with ``fprintf(stderr, ...)`` and OpenCV gives no other way to learn
    of it, so descriptor 2 points at a private file for the duration (one block at a time in a process). Lines
    that another thread's terminal output wrote meanwhile (a progress bar's control sequences) are passed on.
    """
    messages: list[str] = []
    with _CAPTURE_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no stderr to protect
            yield messages
            return
        capture = _capture_fd()
        os.dup2(capture, 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            written = os.lseek(capture, 0, os.SEEK_CUR)
            if written:
                text = os.pread(capture, written, 0)
                os.ftruncate(capture, 0)
                os.lseek(capture, 0, os.SEEK_SET)
                for line in text.splitlines(keepends=True):
                    if b"\x1b" in line or b"\r" in line:
                        os.write(2, line)
                    elif line.strip():
                        messages.append(line.decode("utf-8", "replace").strip())


def _imdecode(data: bytes, flags: int) -> tuple[np.ndarray | None, list[str]]:
    with decoder_messages() as messages:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    return image, messages


def _one_line(messages: list[str]) -> str:
    text = "; ".join(dict.fromkeys(messages))
    return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------------------------------------- decoding


def decode_image_with_notes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode encoded image bytes into RGB uint8 (H, W, 3) and say what had to be converted."""
    if len(data) == 0:
        raise ImageReadError("empty", "empty file (0 bytes)")
    fmt = _image_format(data)
    if fmt is None:
        raise ImageReadError("not_image", "not a recognised image format")
    header = _read_header(data, fmt)
    if header is None:
        if fmt in _WEAK_SIGNATURES:  # two letters at the start: as likely a text file as a damaged image
            raise ImageReadError("not_image", "not a recognised image format")
        raise ImageReadError("corrupt", f"{fmt} signature, but the header (image size) cannot be read")
    if header.width * header.height > max_pixels:
        raise ImageReadError(
            "too_large",
            f"{header.width}x{header.height} = {header.width * header.height} pixels exceeds the limit of "
            f"{max_pixels} (decompression bomb guard; raise it with --max-pixels)",
        )
    truncated = _truncation(fmt, data)
    if truncated:
        raise ImageReadError("truncated", truncated)
    bgr, messages = _imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        detail = _one_line(messages) or "the pixels cannot be decoded"
        raise ImageReadError("corrupt", f"{fmt} header is valid but decoding failed: {detail}")
    if bgr.dtype != np.uint8:  # defensive: IMREAD_COLOR already reduces 16-bit to 8-bit
        bgr = (bgr // 256).astype(np.uint8) if bgr.dtype == np.uint16 else bgr.astype(np.uint8)
    notes = _conversion_notes(data, fmt, header)
    if messages:
        notes.append(f"decode_warning: {_one_line(messages)}")
    return LoadedImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), notes)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes into RGB uint8 (H, W, 3), applying EXIF orientation as ``cv2.imread`` does."""
    return decode_image_with_notes(data, max_pixels).rgb


def decodes(data: bytes) -> bool:
    """Whether encoded image bytes (an existing output, say) are whole and decodable; nothing reaches stderr.

    Decodes at an eighth of the size in grayscale: enough to find a damaged file, at a fraction of the cost."""
    fmt = _image_format(data)
    if fmt is None or _truncation(fmt, data):
        return False
    image, _messages = _imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_8)
    return image is not None


_FILE_KINDS = [
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
]


def file_size_error(size: int, limit: int) -> ImageReadError:
    """``too_large`` for a file bigger than ``limit`` bytes (see :func:`max_file_bytes`), refused unread."""
    return ImageReadError(
        "too_large", f"file is {size} bytes, more than any image within the pixel limit can take "
        f"({limit} bytes; raise --max-pixels)",
    )


def read_file_bytes(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a regular file (links resolved) of at most ``limit`` bytes; anything else is refused unopened.

    A FIFO would block the reader forever and ``/dev/zero`` never ends, so the file's kind and size come from
    ``stat`` first. Raises :class:`ImageReadError` (``not_a_file``, ``too_large``, ``unreadable``).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageReadError("not_a_file", "broken symbolic link (its target does not exist)") from None
        raise ImageReadError("unreadable", "file not found") from None
    except PermissionError:
        raise ImageReadError("unreadable", "permission denied") from None
    except OSError as exc:
        raise ImageReadError("unreadable", f"cannot read file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file")
        raise ImageReadError("not_a_file", f"is {kind}, not a regular file")
    if info.st_size > limit:
        raise file_size_error(info.st_size, limit)
    try:
        return Path(path).read_bytes()
    except PermissionError:
        raise ImageReadError("unreadable", "permission denied") from None
    except IsADirectoryError:
        raise ImageReadError("not_a_file", "is a directory, not a regular file") from None
    except OSError as exc:
        raise ImageReadError("unreadable", f"cannot read file: {exc.strerror or exc}") from None


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read an image file into RGB uint8 with conversion notes; raises ImageReadError for any unusable file."""
    return decode_image_with_notes(read_file_bytes(path, max_file_bytes(max_pixels)), max_pixels=max_pixels)


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
