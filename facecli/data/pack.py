"""Pack a folder dataset into insightface record files: ``train.rec``/``train.idx``/``property`` + ``labels.csv``.

Two passes keep memory independent of the dataset size: :func:`plan_pack` lists every identity once and keeps
only names and counts (labels are fixed there, so every shard agrees on them); :func:`write_pack` lists one
identity at a time again, prepares its images (optionally in worker processes, results kept in input order) and
streams the records out. Output is a pure function of the input files and options: the same source gives
byte-identical files with 1 or N workers, and ``--shard I/N`` parts merged with :func:`merge_parts` give exactly
the files an unsharded run writes.

Output layouts (``layout_out``):

* ``ms1m`` (insightface ``RecBuilder``/``MXFaceDataset``): images are keys ``1..N`` with
  ``IRHeader(0, label, key, 0)``; then one record per identity, label ``[start, end)`` of its image keys; then
  the header record key 0, label ``[first identity key, one past the last]``, ``id2 = 1``, written last.
* ``flat`` (im2rec style): images are keys ``0..N-1`` with ``IRHeader(0, label, key, 0)``, nothing else.

Sidecar files belong to one pack: the default name ``train`` writes insightface's fixed ``property``,
``labels.csv``, ``records.csv`` and ``pack.json``; ``--name NAME`` writes ``NAME.property``, ``NAME.labels.csv``, ...
(:func:`facecli.data.recordio.sidecar_path`), so a second pack in the same folder never overwrites the first's.
Temporary files (``.NAME.rec.*.tmp``, ...) are removed when a pack fails, and left-overs of a killed pack are
removed when the same pack is written again.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import itertools
import json
import os
import re
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from facecli.data.layouts import Identity, Layout, Sample, Selection
from facecli.data.payloads import Encoding, Prepared, prepare_many, probe, read_regular_file
from facecli.data.recordio import (
    DEFAULT_REC_NAME,
    RecordReader,
    RecordWriter,
    pack,
    sidecar_path,
    unpack,
    write_property,
)
from facecli.errors import CorruptFileError, UsageError
from facecli.fileio import atomic_write_text, new_file_mode, sha256_file, temp_pattern, temp_prefix
from facecli.parallel import Executor

LAYOUTS_OUT = ("ms1m", "flat")
REC_NAME = DEFAULT_REC_NAME
LABELS_CSV = "labels.csv"
RECORDS_CSV = "records.csv"
PACK_JSON = "pack.json"
BATCH = 32  # images per batch read (one task per worker process): amortises per-call costs, bounds memory
_CSV_QUOTED = re.compile('[,"\r\n]')  # the delimiter, quote and line breaks: csv.writer quotes fields holding them
_PART_RE = re.compile(r"^(?P<name>.+)\.part-(?P<i>\d+)-of-(?P<n>\d+)\.rec$")


@dataclass
class PlannedIdentity:
    name: str
    label: int
    identity: Identity
    planned: int  # images selected (before reading them)


@dataclass
class PackPlan:
    """What to pack: a layout and a selection, plus (once listed) identities in label order with image counts.

    A *lazy* plan (``identities is None``, from :func:`lazy_plan`) is listed while writing, in one pass; a
    *listed* plan (from :func:`plan_pack`) is what every ``--shard`` must agree on.
    """

    layout: Layout
    selection: Selection
    identities: list[PlannedIdentity] | None = None
    dropped_identities: int = 0  # below --min-images (or empty) before reading
    image_size: tuple[int, int] | None = None  # (width, height); None when there is nothing to pack

    @property
    def num_images(self) -> int:
        return sum(p.planned for p in self.identities or ())

    @property
    def num_classes(self) -> int:
        return len(self.identities or ())

    def shard(self, index: int, count: int) -> list[PlannedIdentity]:
        """Shard ``index`` of ``count``: a contiguous run of identities holding about 1/count of the images."""
        if not 0 <= index < count:
            raise UsageError(f"--shard {index}/{count}: the index must be in 0..{count - 1}")
        if self.identities is None:
            raise ValueError("a lazy plan is listed while it is written; only a listed plan can be sharded")
        total = max(self.num_images, 1)
        chosen, before = [], 0
        for planned in self.identities:
            # an identity belongs to the shard in which its first image falls
            if before * count // total == index:
                chosen.append(planned)
            before += planned.planned
        return chosen


def iter_plan(layout: Layout, selection: Selection, dropped: list[str] | None = None,
              ) -> Iterator[tuple[PlannedIdentity, list[Sample]]]:
    """Identities in label order with their selected samples, labels assigned as identities pass the filters.

    Identities left empty by the selection or below ``--min-images`` get no label; their names are appended to
    ``dropped`` (when given). Memory: one identity's samples at a time.
    """
    label = 0
    for identity in layout.identities():
        samples = selection.apply(layout.samples(identity))
        if not samples or len(samples) < selection.min_images:
            if dropped is not None:
                dropped.append(identity.name)
            continue
        yield PlannedIdentity(identity.name, label, identity, len(samples)), samples
        label += 1


def lazy_plan(layout: Layout, selection: Selection, image_size: tuple[int, int] | None = None) -> PackPlan:
    """A plan that :func:`write_pack` lists as it writes: one pass over the source, memory of one identity."""
    return PackPlan(layout, selection, None, 0, image_size)


def plan_pack(layout: Layout, selection: Selection, image_size: tuple[int, int] | None = None) -> PackPlan:
    """A full first pass (needed by ``--shard``): every identity's label and image count, and the image size.

    ``image_size`` (width, height) is the size records store (``--resize``); without it, the size of the first
    readable image in label order becomes the dataset's size.
    """
    planned: list[PlannedIdentity] = []
    dropped: list[str] = []
    size = image_size
    for identity, samples in iter_plan(layout, selection, dropped):
        if size is None:
            size = _first_size(samples)
        planned.append(identity)
    return PackPlan(layout, selection, planned, len(dropped), size)


def _first_size(samples: Sequence[Sample]) -> tuple[int, int] | None:
    for sample in samples:
        try:
            info = probe(read_regular_file(sample.path))
        except Exception:
            continue
        return info.width, info.height
    return None


# ---------------------------------------------------------------------------------------------------------------
# Writing records in a chosen layout


class DatasetWriter:
    """Writes image records grouped by label (labels must not decrease) and finishes the output layout.

    ``records.csv`` gets one row per image record (key, label, identity, path, source) so that ``unpack`` can
    restore file names and every record can be traced back to its source photo.
    """

    def __init__(self, out: Path, name: str, layout_out: str, records_name: str = RECORDS_CSV) -> None:
        if layout_out not in LAYOUTS_OUT:
            raise UsageError(f"unknown output layout {layout_out!r}; choose one of: {', '.join(LAYOUTS_OUT)}")
        self.layout_out = layout_out
        self.writer = RecordWriter(out / f"{name}.rec", out / f"{name}.idx")
        self._records_path = out / records_name
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(records_name), suffix=".tmp", dir=out)
        os.chmod(tmp, new_file_mode())  # a finished records.csv gets the permissions of the other outputs
        self._records_tmp = Path(tmp)
        self._records_fh = open(fd, "w", newline="", encoding="utf-8")
        self._records = csv.writer(self._records_fh, lineterminator="\n")
        self._records.writerow(["key", "label", "identity", "path", "source"])
        self.next_key = 1 if layout_out == "ms1m" else 0
        self.counts: list[int] = []  # images per label, grown as labels arrive
        self._last_label = -1

    def add(self, label: int, payload: bytes, identity: str, rel: str, source: str = "") -> int:
        key = self.next_key
        self.add_many(label, identity, [payload], [rel], [source])
        return key

    def add_many(self, label: int, identity: str, payloads: Sequence[bytes], rels: Sequence[str],
                 sources: Sequence[str]) -> None:
        """Records for images of one label, written as one batch: per-image costs dominate packing."""
        if label < self._last_label:
            raise ValueError("records must be added in label order")
        self._last_label = label
        n = len(payloads)
        keys = range(self.next_key, self.next_key + n)
        self.writer.write_images(keys, [float(label)] * n, payloads)
        self._write_rows(keys, label, identity, rels, sources)
        if label >= len(self.counts):
            self.counts.extend([0] * (label + 1 - len(self.counts)))
        self.counts[label] += n
        self.next_key += n

    def _write_rows(self, keys: range, label: int, identity: str, rels: Sequence[str], sources: Sequence[str],
                    ) -> None:
        """``records.csv`` rows. When no field holds a character that makes the csv module quote it, its output
        is the fields joined by commas, so that is written directly (several times faster per row)."""
        if any(_CSV_QUOTED.search(text) for text in (identity, "".join(rels), "".join(sources))):
            self._records.writerows(zip(keys, itertools.repeat(label), itertools.repeat(identity), rels, sources))
        else:
            rows = [f"{key},{label},{identity},{rel},{source}\n"
                    for key, rel, source in zip(keys, rels, sources, strict=True)]
            self._records_fh.write("".join(rows))

    def close(self, num_classes: int) -> dict[str, str]:
        """Write identity and header records (ms1m), rename everything into place; returns sha256 per file."""
        if self.layout_out == "ms1m":
            first_identity_key = self.next_key
            start = 1
            counts = self.counts + [0] * (num_classes - len(self.counts))
            for label, count in enumerate(counts):
                key = first_identity_key + label
                # mx.recordio style: a list label
                self.writer.write(key, pack((0, [start, start + count], key, 0), b""))
                start += count
            end = first_identity_key + num_classes
            self.writer.write(0, pack((0, [first_identity_key, end], 0, 1), b""))
        self.writer.close()
        self._records_fh.close()
        os.replace(self._records_tmp, self._records_path)
        return {
            self.writer.rec_path.name: self.writer.rec_sha256,
            self.writer.idx_path.name: self.writer.idx_sha256,
        }

    def abort(self) -> None:
        """Remove every temporary file, even when closing one fails (on a full disk the final flush does)."""
        with contextlib.suppress(OSError):
            self.writer.abort()
        with contextlib.suppress(OSError):
            self._records_fh.close()
        self._records_tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# The pack job


def _executor(workers: int) -> Executor:
    """Where images are prepared: this process, or ``workers`` processes (:class:`facecli.parallel.Executor`, its
    fork server preloading the preparation code) each given one batch at a time, at most ``4 * workers`` batches
    ahead of the writer."""
    return Executor(workers, preload=["facecli.data.payloads"])


@dataclass
class PackOptions:
    layout_out: str = "ms1m"
    quality: int = 95
    resize: tuple[int, int] | None = None  # (width, height)
    verify: str = "header"
    workers: int = 1
    shard: tuple[int, int] | None = None  # (index, count)
    name: str = REC_NAME


@dataclass
class PackResult:
    out: Path
    files: dict[str, dict]
    num_classes: int
    num_images: int
    image_size: tuple[int, int] | None
    layout_out: str
    statuses: dict[str, int] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    dropped_identities: int = 0
    shard: tuple[int, int] | None = None

    def as_dict(self) -> dict:
        data = asdict(self)
        data["out"] = str(self.out)
        return data


def write_pack(
    plan: PackPlan,
    out: Path,
    options: PackOptions,
    source: str,
    advance: Callable[[int], None] = lambda n: None,
    settings: dict | None = None,
) -> PackResult:
    """List, prepare and write every selected image; returns what was written and what was skipped.

    A lazy plan is listed during this single streaming pass; ``options.shard`` needs a listed plan (made here
    when missing) so that all shards agree on labels and the image size. ``advance(1)`` is called once per
    identity (a progress unit known before any image is read). ``settings`` (the user's options, for
    ``pack.json``) must hold nothing run-specific (workers, times), so that ``pack.json`` is reproducible too.
    """
    out = Path(out)
    executor = _executor(options.workers)  # its worker processes' fork server starts now, while the plan is listed
    todo = _to_write(plan, options)
    name, layout_out, records_name = _output_names(out, options)
    if todo.size is None:
        raise UsageError("nothing to pack: no images selected (or none readable); check the layout and filters")
    encoding = Encoding(size=todo.size, resize=options.resize is not None, quality=options.quality,
                        verify=options.verify)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, name)
    writer = DatasetWriter(out, name, layout_out, records_name)
    try:
        written = _write_images(writer, executor, todo.stream, encoding, advance)
        num_classes = len(written.identities) if todo.plan.identities is None else todo.plan.num_classes
        hashes = writer.close(num_classes)
    except BaseException:
        writer.abort()
        raise
    advance(len(todo.dropped))
    counts = writer.counts + [0] * (num_classes - len(writer.counts))
    result = PackResult(
        out=out,
        files=_file_entries(out, hashes),
        num_classes=num_classes,
        num_images=sum(counts),
        image_size=todo.size,
        layout_out=options.layout_out,
        statuses=dict(sorted(written.statuses.items())),
        skipped=written.skipped,
        dropped_identities=len(todo.dropped) if todo.plan.identities is None else todo.plan.dropped_identities,
        shard=options.shard,
    )
    identities = [(p.label, p.name, counts[p.label]) for p in written.identities]
    _describe(out, name, result, identities, {"source": source, "settings": settings or {}})
    return result


class _ToWrite(NamedTuple):
    plan: PackPlan  # listed here when sharding a lazy plan
    stream: Iterator[tuple[PlannedIdentity, list[Sample]]]  # identities in label order with their samples
    size: tuple[int, int] | None  # the image size the records store
    dropped: list[str]  # identities a lazy plan drops, named as its stream passes them


def _to_write(plan: PackPlan, options: PackOptions) -> _ToWrite:
    """What this run writes: a lazy plan listed as it streams (its first readable image's size peeked unless
    ``--resize`` gives one), a listed plan's identities (the shard's only, with ``--shard``)."""
    layout, selection = plan.layout, plan.selection
    if options.shard is not None and plan.identities is None:
        plan = plan_pack(layout, selection, options.resize or plan.image_size)
    dropped: list[str] = []
    if plan.identities is None:
        stream, size = _peek_size(iter_plan(layout, selection, dropped), options.resize or plan.image_size)
        return _ToWrite(plan, stream, size, dropped)
    chosen = plan.identities if options.shard is None else plan.shard(*options.shard)
    listed = ((p, selection.apply(layout.samples(p.identity))) for p in chosen)
    return _ToWrite(plan, listed, options.resize or plan.image_size, dropped)


def _output_names(out: Path, options: PackOptions) -> tuple[str, str, str]:
    """The records' base name, output layout and ``records.csv`` name: the pack's own, or for a ``--shard`` part
    its part name, the flat layout (merging writes the final one) and a records file of its own."""
    if options.shard is None:
        return options.name, options.layout_out, sidecar_path(out / f"{options.name}.rec", RECORDS_CSV).name
    name = part_name(options.name, *options.shard)
    return name, "flat", f"{name}.records.csv"


@dataclass
class _Written:
    """What the image records came from: identities in label order, each image's status, the skipped images."""

    identities: list[PlannedIdentity] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    skipped: list[dict] = field(default_factory=list)


def _write_images(writer: DatasetWriter, executor: Executor, stream: Iterator[tuple[PlannedIdentity, list[Sample]]],
                  encoding: Encoding, advance: Callable[[int], None]) -> _Written:
    """Prepare the stream's images in batches (:func:`_track`) on ``executor`` and write each identity's records
    as its results come back, in input order; ``advance(1)`` as each identity is complete."""
    written = _Written()
    in_flight: deque = deque()  # each batch's segments (planned, samples, last of the identity), in order
    batches = _track(stream, in_flight, written.identities)
    prepare = functools.partial(prepare_many, encoding=encoding)
    with executor.map(prepare, batches) as prepared:
        for results in prepared:
            written.statuses.update([result.status for result in results])
            end = 0
            for planned, samples, last in in_flight.popleft():
                start, end = end, end + len(samples)
                _write_segment(writer, written.skipped, planned, samples, results[start:end])
                if last:
                    advance(1)
    return written


def _write_segment(writer: DatasetWriter, skipped: list[dict], planned: PlannedIdentity, samples: list[Sample],
                   results: Sequence[Prepared]) -> None:
    """One identity's images of a batch: the prepared ones as records, the others listed in ``skipped``."""
    if any(r.payload is None for r in results):  # skipped images: listed, left out of the records
        skipped.extend({"path": s.rel, "status": r.status, "reason": r.reason}
                       for r, s in zip(results, samples, strict=True) if r.payload is None)
        samples = [s for r, s in zip(results, samples, strict=True) if r.payload is not None]
    payloads = [r.payload for r in results if r.payload is not None]
    writer.add_many(planned.label, planned.name, payloads, [s.rel for s in samples], [s.source for s in samples])


def _file_entries(out: Path, hashes: dict[str, str]) -> dict[str, dict]:
    """Size and sha256 of each written file, for ``pack.json`` and the result."""
    return {fname: {"size": (out / fname).stat().st_size, "sha256": sha} for fname, sha in hashes.items()}


def _describe(out: Path, name: str, result: PackResult, identities: list[tuple[int, str, int]], meta: dict) -> None:
    """A pack's sidecar files (:func:`_finish`), or a ``--shard`` part's ``NAME.part-I-of-N.json``, which merging
    reads: ``meta`` (source and settings), its identities and its result."""
    if result.shard is None:
        _finish(out, name, result, identities, meta)
        return
    meta = {**meta, "identities": [list(row) for row in identities], "result": result.as_dict()}
    atomic_write_text(out / f"{name}.json", json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


def _peek_size(stream, resize):
    """The image size (``resize``, else the first readable image's) and the stream with the peeked items back."""
    if resize is not None:
        return stream, resize
    peeked = []
    for item in stream:
        peeked.append(item)
        size = _first_size(item[1])
        if size is not None:
            return itertools.chain(peeked, stream), size
    return iter(peeked), None


def _track(stream, in_flight: deque, identities: list[PlannedIdentity]) -> Iterator[list[str]]:
    """Yield the sample paths in batches of about :data:`BATCH` (small identities joined, large ones split),
    remembering each batch's segments (identity, its samples, last of the identity) until its results come back."""
    segments: list[tuple[PlannedIdentity, list[Sample], bool]] = []
    paths: list[str] = []
    for planned, samples in stream:
        identities.append(planned)
        for start in range(0, len(samples), BATCH):
            chunk = samples[start : start + BATCH]
            segments.append((planned, chunk, start + BATCH >= len(samples)))
            paths += [sample.path for sample in chunk]
            if len(paths) >= BATCH:
                in_flight.append(segments)
                yield paths
                segments, paths = [], []
    if segments:
        in_flight.append(segments)
        yield paths


def remove_stale_temporaries(out: Path, name: str) -> list[Path]:
    """Delete the temporary files a killed run of the pack ``name`` left in ``out`` (``.train.rec.*.tmp``, ...)."""
    rec = out / f"{name}.rec"
    targets = [rec, rec.with_suffix(".idx"), out / f"{name}.json"]
    targets += [sidecar_path(rec, base) for base in ("property", LABELS_CSV, RECORDS_CSV, PACK_JSON)]
    removed = []
    for target in targets:
        for tmp in out.glob(temp_pattern(target.name)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _finish(out: Path, name: str, result: PackResult, labels: list[tuple[int, str, int]], meta: dict) -> None:
    """property, labels.csv and pack.json (with the sha256 of every output) for a finished dataset."""
    w, h = result.image_size or (0, 0)
    rec = out / f"{name}.rec"
    write_property(out, result.num_classes, h, w, name)
    buf = io.StringIO()
    table = csv.writer(buf, lineterminator="\n")
    table.writerow(["label", "identity", "images"])
    table.writerows(labels)
    atomic_write_text(sidecar_path(rec, LABELS_CSV), buf.getvalue())
    for base in ("property", LABELS_CSV, RECORDS_CSV):
        path = sidecar_path(rec, base)
        result.files[path.name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    record = {
        "format": "insightface-recordio",
        "layout_out": result.layout_out,
        "source": meta["source"],
        "settings": meta["settings"],
        "num_classes": result.num_classes,
        "num_images": result.num_images,
        "image_size": {"width": w, "height": h},
        "statuses": result.statuses,
        "skipped": result.skipped,
        "dropped_identities": result.dropped_identities,
        "files": result.files,
    }
    atomic_write_text(sidecar_path(rec, PACK_JSON), json.dumps(record, indent=1, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Shards


def _part_meta(path: Path) -> dict:
    """A shard's ``NAME.part-I-of-N.json``, checked to be what ``--shard`` writes."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not all(key in meta for key in ("source", "settings", "identities", "result")):
            raise ValueError("missing keys")
    except FileNotFoundError:
        raise UsageError(f"cannot merge: {path} is missing") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise CorruptFileError(f"{path}: not a shard description written by pack --shard ({exc})") from None
    return meta


def part_name(name: str, index: int, count: int) -> str:
    return f"{name}.part-{index:03d}-of-{count:03d}"


def merge_parts(out: Path, name: str = REC_NAME, layout_out: str = "ms1m",
                advance: Callable[[int], None] = lambda n: None) -> PackResult:
    """Concatenate the ``--shard I/N`` parts in ``out`` into the final dataset (keys renumbered, layout finished)."""
    out = Path(out)
    parts = _find_parts(out, name)
    metas = _part_metas(parts)
    first = metas[0]
    result0 = first["result"]
    num_classes = result0["num_classes"]
    remove_stale_temporaries(out, name)
    writer = DatasetWriter(out, name, layout_out, sidecar_path(out / f"{name}.rec", RECORDS_CSV).name)
    labels: list[tuple[int, str, int]] = []
    statuses: Counter = Counter()
    skipped: list[dict] = []
    try:
        for i, (part, meta) in enumerate(zip(parts, metas, strict=True)):
            labels.extend(tuple(x) for x in meta["identities"])
            statuses.update(meta["result"]["statuses"])
            skipped.extend(meta["result"]["skipped"])
            _copy_part(writer, part, part.with_name(f"{part_name(name, i, len(parts))}.records.csv"), advance)
        hashes = writer.close(num_classes)
    except BaseException:
        writer.abort()
        raise
    size = result0["image_size"]
    result = PackResult(
        out=out,
        files=_file_entries(out, hashes),
        num_classes=num_classes,
        num_images=sum(writer.counts),
        image_size=tuple(size) if size else None,
        layout_out=layout_out,
        statuses=dict(sorted(statuses.items())),
        skipped=skipped,
        dropped_identities=result0["dropped_identities"],
    )
    _finish(out, name, result, labels, {"source": first["source"], "settings": first["settings"]})
    for i in range(len(parts)):
        for suffix in (".rec", ".idx", ".json", ".records.csv"):
            (out / (part_name(name, i, len(parts)) + suffix)).unlink(missing_ok=True)
    return result


def _find_parts(out: Path, name: str) -> list[Path]:
    """The record files of every part of the pack ``name`` in ``out``, in shard order, all of one ``--shard`` count
    and none missing."""
    parts: dict[int, Path] = {}
    counts = set()
    for path in sorted(out.glob(f"{name}.part-*-of-*.rec")):
        match = _PART_RE.match(path.name)
        if match and match.group("name") == name:
            parts[int(match.group("i"))] = path
            counts.add(int(match.group("n")))
    if not parts:
        raise UsageError(f"no shard parts '{name}.part-III-of-NNN.rec' in {out}")
    if len(counts) != 1:
        raise UsageError(f"{out} holds parts of different shard counts: {sorted(counts)}")
    total = counts.pop()
    missing = [i for i in range(total) if i not in parts]
    if missing:
        raise UsageError(f"cannot merge: shard(s) {', '.join(map(str, missing))} of {total} are missing in {out}")
    return [parts[i] for i in range(total)]


def _part_metas(parts: list[Path]) -> list[dict]:
    """Each part's description (:func:`_part_meta`), checked to come from one source packed with one set of
    options."""
    metas = [_part_meta(part.with_suffix(".json")) for part in parts]
    first = metas[0]
    for meta in metas[1:]:
        if meta["settings"] != first["settings"] or meta["source"] != first["source"]:
            raise UsageError("cannot merge: the parts were packed from different sources or with different options")
    return metas


def _copy_part(writer: DatasetWriter, part: Path, records_csv: Path, advance: Callable[[int], None]) -> None:
    """Append one part's image records to ``writer`` (new keys), each with its ``records.csv`` row."""
    reader = RecordReader(part)
    with open(records_csv, newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh)
        for (_offset, record), row in zip(reader.scan(), rows, strict=False):  # the shorter of the two ends the part
            header, payload = unpack(record)
            if not {"identity", "path", "source"} <= row.keys():
                raise CorruptFileError(f"{fh.name}: line {rows.line_num}: expected the columns "
                                       "key,label,identity,path,source")
            writer.add(int(header.label), payload, row["identity"], row["path"], row["source"])
            advance(1)
    reader.close()


# ---------------------------------------------------------------------------------------------------------------
# im2rec .lst files


def read_lst(path: Path) -> Iterator[tuple[int, float, str]]:
    """Rows of an im2rec ``.lst`` (``index<TAB>label[<TAB>label...]<TAB>path``) as (key, first label, path)."""
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f".lst file not found: {path}") from None
    with fh:
        for lineno, line in enumerate(fh, 1):
            fields = [f.strip() for f in line.strip().split("\t")]
            if len(fields) < 3:
                if line.strip():
                    raise UsageError(f"{path}: line {lineno} needs index<TAB>label<TAB>path")
                continue
            try:
                yield int(fields[0]), float(fields[1]), fields[-1]
            except ValueError:
                raise UsageError(f"{path}: line {lineno}: index and label must be numbers") from None


def pack_lst(lst: Path, root: Path, out: Path, options: PackOptions,
             advance: Callable[[int], None] = lambda n: None) -> PackResult:
    """Pack the images an im2rec ``.lst`` lists, in its order, keyed by its index: ``im2rec --pass-through``.

    Each record is ``IRHeader(0, first label, index, 0)`` (im2rec without ``--pack-label``). JPEGs of the
    dataset's size are stored as they are, so the output equals im2rec's byte for byte; other images are encoded
    (or resized with ``options.resize``) as in :func:`write_pack`.
    """
    out = Path(out)
    executor = _executor(options.workers)
    rows = read_lst(lst)
    head = list(itertools.islice(rows, 100))
    size = options.resize or _first_size([Sample(str(Path(root) / p), p, "") for _, _, p in head])
    if size is None:
        raise UsageError(f"nothing to pack: no readable images among the first rows of {lst}")
    encoding = Encoding(size=size, resize=options.resize is not None, quality=options.quality, verify=options.verify)
    out.mkdir(parents=True, exist_ok=True)
    statuses: Counter = Counter()
    skipped: list[dict] = []
    labels: set[float] = set()
    in_flight: deque = deque()  # batches of rows awaiting results, in order

    def batches() -> Iterator[list[str]]:
        rows_left = itertools.chain(head, rows)
        while batch := list(itertools.islice(rows_left, BATCH)):
            in_flight.append(batch)
            yield [str(Path(root) / rel) for _, _, rel in batch]

    remove_stale_temporaries(out, options.name)
    with RecordWriter(out / f"{options.name}.rec", out / f"{options.name}.idx") as writer:
        prepare = functools.partial(prepare_many, encoding=encoding)
        with executor.map(prepare, batches()) as prepared:
            for results in prepared:
                keys, row_labels, payloads = [], [], []
                for (key, label, rel), result in zip(in_flight.popleft(), results, strict=True):
                    statuses[result.status] += 1
                    if result.payload is None:
                        skipped.append({"path": rel, "status": result.status, "reason": result.reason})
                    else:
                        keys.append(key)
                        row_labels.append(label)
                        payloads.append(result.payload)
                labels.update(row_labels)
                writer.write_images(keys, row_labels, payloads)
                advance(len(results))
    files = {
        writer.rec_path.name: {"size": writer.rec_path.stat().st_size, "sha256": writer.rec_sha256},
        writer.idx_path.name: {"size": writer.idx_path.stat().st_size, "sha256": writer.idx_sha256},
    }
    return PackResult(out=out, files=files, num_classes=len(labels),
                      num_images=writer.count, image_size=size, layout_out="lst",
                      statuses=dict(sorted(statuses.items())), skipped=skipped)
