"""What is inside a dataset: record files, verification ``.bin`` files and image folders.

:func:`inspect_path` summarises (counts, identities, images per identity, image sizes, label range, layout);
``check=True`` reads every record or image and lists each bad one instead of stopping at the first;
:func:`contact_sheet` draws sample images with their labels so a person can see whether faces are aligned.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facecli.data.benchmarks import load_bin
from facecli.data.layouts import FolderLayout
from facecli.data.payloads import probe
from facecli.data.recordio import (
    MAGIC_BYTES,
    IRHeader,
    RecordReader,
    first_label,
    read_framed,
    read_ms1m_layout,
    read_property,
    sidecar_path,
    unpack,
)
from facecli.data.unpack import find_record_file
from facecli.errors import CorruptFileError, UsageError
from facecli.imageio import ImageReadError, decode_image

SIZE_SAMPLE = 2000  # images whose header is probed for sizes when not checking everything


@dataclass
class Sampled:
    """A few images for the contact sheet: encoded bytes and a caption."""

    data: bytes
    caption: str


def kind_of(path: Path) -> str:
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".rec":
            return "rec"
        if path.suffix.lower() == ".bin":
            return "bin"
        raise UsageError(f"{path}: inspect reads .rec and .bin files, or folders")
    if path.is_dir():
        return "rec" if (path / "train.rec").is_file() or list(path.glob("*.rec")) else "folder"
    raise UsageError(f"not found: {path}")


def _histogram(counts: list[int]) -> dict:
    """Images per identity: min/median/max and a small histogram with power-of-two bins."""
    if not counts:
        return {"min": 0, "median": 0, "max": 0, "bins": {}}
    arr = np.asarray(counts)
    edges = [1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000]
    bins = {}
    for lo, hi in zip(edges, edges[1:] + [None], strict=True):
        n = int(((arr >= lo) & (arr < hi)).sum()) if hi else int((arr >= lo).sum())
        if n:
            bins[f"{lo}-{hi - 1}" if hi and hi - 1 != lo else (f"{lo}" if hi else f"{lo}+")] = n
    zero = int((arr == 0).sum())
    if zero:
        bins = {"0": zero, **bins}
    return {"min": int(arr.min()), "median": float(np.median(arr)), "max": int(arr.max()), "bins": bins}


def _sizes(payloads) -> dict[str, int]:
    sizes: Counter = Counter()
    for data in payloads:
        try:
            info = probe(data)
            sizes[f"{info.width}x{info.height} {info.format}"] += 1
        except ImageReadError:
            sizes["unreadable"] += 1
    return dict(sizes.most_common())


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (deterministic samples)."""
    if n <= k:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k)})


# ---------------------------------------------------------------------------------------------------------------
# Record files


def inspect_rec(path: Path, check: bool = False, samples: int = 0,
                advance: Callable[[int], None] = lambda n: None) -> tuple[dict, list[Sampled]]:
    """Summary of a record file (layout, identities, labels, image sizes), with ``check`` every record read."""
    rec = find_record_file(path)
    reader = RecordReader(rec)
    info: dict = {"kind": "rec", "path": str(rec), "file_size": reader.size}
    if not reader.idx_path.is_file():
        info["records"] = sum(1 for _ in reader.scan())
        info["layout"] = "unknown (no .idx)"
        return info, []
    info["records"] = len(reader)
    header0, header_error = _header_record(reader)
    info.update(header_error)
    try:
        image_keys, labels = read_ms1m_layout(reader)
    except CorruptFileError as exc:
        info["damaged"] = str(exc)
        image_keys, labels = _readable_labels(reader, header0)
    info.update(_layout(header0))
    info["images"] = len(image_keys)
    per_label = Counter(labels.tolist())
    info["identities"] = len(per_label)
    info["label_range"] = [int(labels.min()), int(labels.max())] if len(labels) else None
    info["images_per_identity"] = _histogram(list(per_label.values()))
    info.update(_property(rec))
    payloads = _payloads(reader, [image_keys[i] for i in _spread(len(image_keys), SIZE_SAMPLE)])
    info["image_sizes"] = _sizes(payloads)
    info["image_sizes_from"] = len(payloads)
    if check:
        info["check"] = check_rec(reader, image_keys, advance)
    return info, _rec_samples(reader, image_keys, samples)


def _header_record(reader: RecordReader) -> tuple[IRHeader | None, dict]:
    """The header of record 0 (None when the file has none or it is damaged) and ``header_error`` when damaged."""
    if 0 not in reader:
        return None, {}
    try:
        return unpack(reader.read(0))[0], {}
    except (CorruptFileError, ValueError) as exc:
        return None, {"header_error": str(exc)}


def _layout(header0: IRHeader | None) -> dict:
    """``layout``, and for insightface's MS1M layout the identity range record 0 announces."""
    if header0 is None or header0.flag <= 0:
        return {"layout": "flat (im2rec style)"}
    bounds = np.atleast_1d(header0.label)
    lo, hi = int(bounds[0]), int(bounds[1]) if header0.flag > 1 else -1
    return {"layout": "insightface MS1M (header record 0)",
            "header": {"first_identity_key": lo, "end_identity_key": hi, "id2": header0.id2},
            "identity_records": max(hi - lo, 0)}


def _property(rec: Path) -> dict:
    """The ``property`` file beside the record file, when there is one (or why it does not read)."""
    if not sidecar_path(rec, "property").is_file():
        return {}
    try:
        num_classes, h, w = read_property(sidecar_path(rec, "property"))
    except CorruptFileError as exc:
        return {"property_error": str(exc)}
    return {"property": {"num_classes": num_classes, "height": h, "width": w}}


def _payloads(reader: RecordReader, keys: list[int]) -> list[bytes]:
    """The image bytes of the records ``keys`` that read (damaged ones are left out)."""
    payloads = []
    for key in keys:
        try:
            payloads.append(unpack(reader.read(key))[1])
        except (CorruptFileError, ValueError):
            pass
    return payloads


def _rec_samples(reader: RecordReader, image_keys: list[int], samples: int) -> list[Sampled]:
    """``samples`` images spread over the file, captioned ``key: label`` (damaged records are skipped)."""
    sampled = []
    for i in _spread(len(image_keys), samples) if samples else []:
        try:
            header, payload = unpack(reader.read(image_keys[i]))
            sampled.append(Sampled(payload, f"{image_keys[i]}: {int(first_label(header.label))}"))
        except (CorruptFileError, ValueError):
            continue
    return sampled


def _readable_labels(reader: RecordReader, header0: IRHeader | None) -> tuple[list[int], np.ndarray]:
    """Image keys and labels of a damaged file: the records that still read (the others are left out)."""
    keys = reader.keys
    if header0 is not None and header0.flag > 0:
        keys = list(range(1, int(np.atleast_1d(header0.label)[0])))
    good, labels = [], []
    for key in keys:
        try:
            header, _ = unpack(reader.read(key))
        except (CorruptFileError, ValueError, KeyError):
            continue
        good.append(key)
        labels.append(int(first_label(header.label)))
    return good, np.asarray(labels, dtype=np.int64)


def check_rec(reader: RecordReader, image_keys: list[int], advance: Callable[[int], None]) -> dict:
    """Read every indexed record, decode every image, and scan the file sequentially; list every problem."""
    bad: list[dict] = []
    image_set = set(image_keys)
    for key in reader.keys:
        advance(1)
        try:
            record = reader.read(key)
            header, payload = unpack(record)
            if key in image_set:
                decode_image(payload)
        except CorruptFileError as exc:
            bad.append({"key": key, "offset": _offset(reader, key), "error": str(exc)})
        except ValueError as exc:
            bad.append({"key": key, "offset": _offset(reader, key), "error": f"bad IRHeader: {exc}"})
        except ImageReadError as exc:
            bad.append({"key": key, "offset": _offset(reader, key), "error": f"image: {exc.reason}"})
    return {"records_checked": len(reader), "bad": bad, "scan": scan_problems(reader), "ok": not bad}


def _offset(reader: RecordReader, key: int) -> int | None:
    try:
        return reader.offset(key)
    except KeyError:
        return None


def scan_problems(reader: RecordReader) -> list[dict]:
    """Walk the file chunk by chunk; after a damaged record resume at the next aligned magic. Lists every gap."""
    buf = reader.buffer
    size = len(buf)
    problems = []
    pos = 0
    while pos < size:
        try:
            _, pos = read_framed(buf, pos, path=reader.rec_path)
        except CorruptFileError as exc:
            problems.append({"offset": pos, "error": str(exc)})
            nxt = pos + 4
            while True:
                nxt = buf.find(MAGIC_BYTES, nxt)
                if nxt == -1 or nxt % 4 == 0:
                    break
                nxt += 1
            if nxt == -1:
                break
            pos = nxt
    return problems


# ---------------------------------------------------------------------------------------------------------------
# .bin files and image folders


def inspect_bin(path: Path, check: bool = False, samples: int = 0,
                advance: Callable[[int], None] = lambda n: None) -> tuple[dict, list[Sampled]]:
    bins, issame = load_bin(path)
    info = {
        "kind": "bin",
        "path": str(path),
        "pairs": int(len(issame)),
        "genuine": int(issame.sum()),
        "impostor": int((~issame).sum()),
        "images": len(bins),
        "image_sizes": _sizes(bins),
    }
    if check:
        bad = []
        for i, data in enumerate(bins):
            advance(1)
            try:
                decode_image(data)
            except ImageReadError as exc:
                bad.append({"image": i, "pair": i // 2, "error": exc.reason})
        info["check"] = {"images_checked": len(bins), "bad": bad, "ok": not bad}
    sampled = []
    for pair in _spread(len(issame), max(samples // 2, 0)) if samples else []:
        tag = "same" if issame[pair] else "diff"
        sampled += [Sampled(bins[2 * pair], f"pair {pair} a ({tag})"), Sampled(bins[2 * pair + 1], f"pair {pair} b")]
    return info, sampled


def inspect_folder(path: Path, check: bool = False, samples: int = 0,
                   advance: Callable[[int], None] = lambda n: None) -> tuple[dict, list[Sampled]]:
    layout = FolderLayout(path)
    counts: list[int] = []
    files: list[tuple[str, str]] = []
    identities = layout.identities()
    for identity in identities:
        found = layout.samples(identity)
        counts.append(len(found))
        files.extend((identity.name, s.path) for s in found)
    loose = [p for p in Path(path).iterdir() if p.is_file() and not p.name.startswith(".")]
    info = {
        "kind": "folder",
        "path": str(path),
        "identities": sum(1 for c in counts if c),
        "images": len(files),
        "images_per_identity": _histogram([c for c in counts if c]),
        "files_outside_identity_folders": len(loose),
        "manifest": (Path(path) / "manifest.csv").is_file(),
    }
    picks = range(len(files)) if check else _spread(len(files), SIZE_SAMPLE)
    payloads = []
    bad = []
    for i in picks:
        try:
            data = Path(files[i][1]).read_bytes()
        except OSError as exc:
            bad.append({"path": str(files[i][1]), "error": exc.strerror or str(exc)})
            continue
        payloads.append(data)
        if check:
            advance(1)
            try:
                decode_image(data)
            except ImageReadError as exc:
                bad.append({"path": str(files[i][1]), "error": exc.reason})
    info["image_sizes"] = _sizes(payloads)
    if check:
        info["check"] = {"images_checked": len(files), "bad": bad, "ok": not bad}
    picked = _spread(len(files), samples) if samples else []
    sampled = [Sampled(Path(files[i][1]).read_bytes(), files[i][0]) for i in picked]
    return info, sampled


INSPECTORS = {"rec": inspect_rec, "bin": inspect_bin, "folder": inspect_folder}


def inspect_path(path: Path, check: bool = False, samples: int = 0,
                 advance: Callable[[int], None] = lambda n: None) -> tuple[dict, list[Sampled]]:
    """Summary of ``path`` (.rec, its folder, .bin, or an image folder) and ``samples`` images for a sheet."""
    return INSPECTORS[kind_of(path)](Path(path), check=check, samples=samples, advance=advance)


def work_for_check(path: Path) -> int | None:
    """How many items ``check`` will visit (for a progress bar), when cheap to know."""
    kind = kind_of(path)
    if kind == "rec":
        rec = find_record_file(path)
        idx = rec.with_suffix(".idx")
        return sum(1 for _ in open(idx, "rb")) if idx.is_file() else None
    return None


# ---------------------------------------------------------------------------------------------------------------
# Contact sheet


def contact_sheet(samples: list[Sampled], out: Path, columns: int = 8, tile: int = 112) -> Path:
    """A PNG grid of the samples with their captions (labels), written atomically."""
    from PIL import Image, ImageDraw

    from facecli.fileio import atomic_path

    if not samples:
        raise UsageError("no images to draw")
    columns = max(1, min(columns, len(samples)))
    rows = (len(samples) + columns - 1) // columns
    caption_h = 14
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, sample in enumerate(samples):
        x, y = (i % columns) * tile, (i // columns) * (tile + caption_h)
        try:
            rgb = decode_image(sample.data)
            image = Image.fromarray(rgb).resize((tile, tile))
        except ImageReadError:
            image = Image.new("RGB", (tile, tile), (200, 0, 0))
        sheet.paste(image, (x, y))
        draw.text((x + 2, y + tile + 1), sample.caption[:20], fill="black")
    out = Path(out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out

