"""Which image belongs to which identity: folder trees, AI Hub K-Face, CSV label files, ``facecli align`` manifests.

A layout lists the identities of a source folder (sorted, so labels are stable) and, one identity at a time, its
images (sorted by relative path). Listing one identity at a time keeps memory proportional to the largest
identity, not to the dataset, so a multi-million-image tree can be packed on a laptop.
"""

from __future__ import annotations

import csv
import fnmatch
import os
import random
import re
import unicodedata
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import ClassVar, Iterable, NamedTuple, Protocol, Sequence

from facecli.data.csvinput import read_csv
from facecli.errors import UsageError
from facecli.imageio import IMAGE_SUFFIXES
from facecli.registry import Registry

MANIFEST_NAME = "manifest.csv"
#: Manifest statuses of crops that exist on disk: written now, or kept from an earlier run of ``facecli align``.
MANIFEST_WRITTEN = frozenset({"ok", "skipped_existing"})


class Sample(NamedTuple):
    """One image to pack: the file, its path relative to the source root (POSIX, NFC), its identity name.

    A NamedTuple rather than a dataclass: a multi-million-image pack creates one per image.
    """

    path: str  # a plain string: millions of Path objects would cost more than the packing itself
    rel: str
    identity: str
    source: str = ""  # the original photo when the image is an aligned crop listed in an align manifest


@dataclass(frozen=True)
class Identity:
    """An identity name plus whatever its layout needs to list its images again later (folders or samples)."""

    name: str
    locator: tuple


class Layout(Protocol):
    """Lists identities in label order and the samples of one identity in record order."""

    @property
    def manifest(self) -> Path | None:
        """The ``facecli align`` manifest that lists the images, or None when the layout lists them itself."""

    def identities(self) -> list[Identity]: ...

    def samples(self, identity: Identity) -> list[Sample]: ...


LAYOUTS: Registry[Layout] = Registry("layout")


def nfc(text: str) -> str:
    """Unicode NFC, so a Korean name typed on Linux and one stored by macOS (NFD) are the same identity."""
    return unicodedata.normalize("NFC", text)


def _rel(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` as POSIX NFC text."""
    rel = _raw_rel(path, root)
    return rel if rel.isascii() else nfc(rel)


def _raw_rel(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root``, POSIX, not yet NFC (a string slice in the common case: listing is hot)."""
    path, prefix = str(path), os.path.join(str(root), "")
    rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)
    return rel.replace(os.sep, "/") if os.sep != "/" else rel


def _visible_dirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")]
    except OSError as exc:
        raise UsageError(f"cannot list {folder}: {exc.strerror or exc}") from None


def _images_below(folder: str | Path, rel: str = "") -> list[tuple[str, str]]:
    """Every image file below ``folder`` at any depth (hidden files and folders skipped) as (raw rel, path).

    The raw rel is ``rel`` (the folder's own relative path plus ``/``, or empty) joined with the names below it,
    built by concatenation while listing because recomputing it from each full path costs more than the listing.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise UsageError(f"cannot list {folder}: {exc.strerror or exc}") from None
    found = []
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        if entry.is_dir():
            found += _images_below(entry.path, f"{rel}{name}/")
        else:
            dot = name.rfind(".")  # os.path.splitext for a name that does not start with a dot
            if dot > 0 and name[dot:].lower() in IMAGE_SUFFIXES:
                found.append((rel + name, entry.path))
    return found


def _samples_below(folders: Iterable[Path], root: Path, identity: str) -> list[Sample]:
    """The images below ``folders`` as samples of ``identity``, sorted by their path relative to ``root``."""
    found = []
    for folder in folders:
        found += _images_below(folder, _raw_rel(folder, root) + "/")
    found = [pair if pair[0].isascii() else (nfc(pair[0]), pair[1]) for pair in found]
    found.sort(key=itemgetter(0))  # stable, so equal rels (NFC twins) keep their listing order
    return [Sample(path, rel, identity) for rel, path in found]


def _check_source(src: Path) -> Path:
    if not src.exists():
        raise UsageError(f"source folder not found: {src}")
    if not src.is_dir():
        raise UsageError(f"source is not a folder: {src}")
    return src


def _identity_folders(src: Path, depth: int) -> list[Identity]:
    """Folders ``depth`` levels below ``src`` grouped by (NFC) name, sorted by name."""
    if depth < 1:
        raise UsageError("--identity-depth must be at least 1")
    level = [src]
    for _ in range(depth):
        level = [child for folder in level for child in _visible_dirs(folder)]
    groups: dict[str, list[Path]] = {}
    for folder in level:
        groups.setdefault(nfc(folder.name), []).append(folder)
    return [Identity(name, tuple(sorted(groups[name]))) for name in sorted(groups)]


@LAYOUTS.register("folders")
@dataclass
class FolderLayout:
    """One identity per folder ``identity_depth`` levels below the source, images at any depth below it.

    With ``identity_depth > 1``, folders of the same name under different parents are the same identity.
    """

    manifest: ClassVar[Path | None] = None

    src: Path
    identity_depth: int = 1

    def __post_init__(self) -> None:
        self.src = _check_source(Path(self.src))

    def identities(self) -> list[Identity]:
        return _identity_folders(self.src, self.identity_depth)

    def samples(self, identity: Identity) -> list[Sample]:
        return _samples_below(identity.locator, self.src, identity.name)


def parse_ranges(text: str | None, what: str) -> frozenset[int] | None:
    """``"1-10,12"`` → {1..10, 12}; None/empty means no filter."""
    if text is None or not text.strip():
        return None
    values: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise UsageError(f"{what}: {part!r} is not a number or a range like 4-10")
        lo = int(match.group(1))
        hi = int(match.group(2) or lo)
        if hi < lo:
            raise UsageError(f"{what}: range {part!r} is backwards")
        values.update(range(lo, hi + 1))
    return frozenset(values)


_KFACE_TAIL = re.compile(r"S(\d+)/L(\d+)/E(\d+)/C(\d+)\.[A-Za-z]+$", re.IGNORECASE)


@LAYOUTS.register("kface")
@dataclass
class KFaceLayout:
    """AI Hub "한국인 안면 이미지" (K-Face): ``ID/S###/L##/E##/C##.jpg`` under each identity folder.

    S = accessory (S001 none, S002.. glasses/hats), L = lighting (1-30), E = expression (1-3), C = camera (1-20).
    Each filter is a set of numbers (None = all); files that do not follow the pattern are ignored.
    """

    manifest: ClassVar[Path | None] = None

    src: Path
    identity_depth: int = 1
    accessories: frozenset[int] | None = None
    lights: frozenset[int] | None = None
    expressions: frozenset[int] | None = None
    cameras: frozenset[int] | None = None

    def __post_init__(self) -> None:
        self.src = _check_source(Path(self.src))

    def identities(self) -> list[Identity]:
        return _identity_folders(self.src, self.identity_depth)

    def keep(self, tail: str) -> bool:
        match = _KFACE_TAIL.search(tail)
        if not match:
            return False
        numbers = [int(g) for g in match.groups()]
        filters = (self.accessories, self.lights, self.expressions, self.cameras)
        return all(f is None or n in f for n, f in zip(numbers, filters))

    def samples(self, identity: Identity) -> list[Sample]:
        found = []
        for folder in identity.locator:
            for _, path in _images_below(folder):
                if self.keep(_rel(path, folder)):
                    found.append(Sample(path, _rel(path, self.src), identity.name))
        return sorted(found, key=lambda s: s.rel)


def _resolve_listed(src: Path, listed: str) -> tuple[str, str]:
    """A path from a CSV (absolute, or relative to the source folder) and its rel form."""
    path = Path(listed)
    if not path.is_absolute():
        path = src / path
    rel = _rel(path, src)
    if rel.startswith("../"):
        rel = nfc(Path(listed).as_posix())
    return str(path), rel


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    return read_csv(path, "file", csv.DictReader)


def _label_sort_key(name: str) -> tuple:
    """Integer labels sort numerically (2 before 10), names by code point; integers come first."""
    return (0, int(name), "") if re.fullmatch(r"-?\d+", name) else (1, 0, name)


def _grouped(samples: Iterable[Sample]) -> list[Identity]:
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.identity, []).append(sample)
    return [
        Identity(name, tuple(sorted(groups[name], key=lambda s: s.rel)))
        for name in sorted(groups, key=_label_sort_key)
    ]


@LAYOUTS.register("csv")
@dataclass
class CsvLayout:
    """A CSV with ``path,label`` columns (header optional); the label is an identity name or number."""

    manifest: ClassVar[Path | None] = None

    src: Path
    labels: Path | None = None
    identity_depth: int = 1

    def __post_init__(self) -> None:
        self.src = _check_source(Path(self.src))
        if self.labels is None:
            raise UsageError("--layout csv needs --labels FILE (a CSV with path,label columns)")

    def identities(self) -> list[Identity]:
        assert self.labels is not None  # __post_init__ refuses a csv layout without labels
        labels = Path(self.labels)
        rows = [r for r in read_csv(labels, "labels file") if r and any(c.strip() for c in r)]
        if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
            rows = rows[1:]
        samples = []
        for lineno, row in enumerate(rows, 1):
            if len(row) < 2:
                raise UsageError(f"{labels}: row {lineno} needs path,label: {row!r}")
            if not row[0].strip() or not row[1].strip():  # an empty label would become an identity named ""
                raise UsageError(f"{labels}: row {lineno} has an empty {'path' if not row[0].strip() else 'label'}")
            path, rel = _resolve_listed(self.src, row[0].strip())
            samples.append(Sample(path, rel, nfc(row[1].strip())))
        return _grouped(samples)

    def samples(self, identity: Identity) -> list[Sample]:
        return list(identity.locator)


@dataclass
class ManifestLayout:
    """The ``manifest.csv`` that ``facecli align`` writes: only written crops (``ok``, ``skipped_existing``),
    identity from the output's folder, the original photo (``source``) carried into ``records.csv``."""

    src: Path
    identity_depth: int = 1
    manifest: Path = field(default=Path())

    def __post_init__(self) -> None:
        self.src = _check_source(Path(self.src))
        if self.manifest == Path():
            self.manifest = self.src / MANIFEST_NAME

    def identities(self) -> list[Identity]:
        rows = _read_csv_rows(self.manifest)
        if rows and not {"output", "status"} <= set(rows[0]):
            raise UsageError(f"{self.manifest}: an align manifest needs 'output' and 'status' columns")
        samples = []
        for row in rows:
            if (row.get("status") or "").strip() not in MANIFEST_WRITTEN or not (row.get("output") or "").strip():
                continue
            path, rel = _resolve_listed(self.src, row["output"].strip())
            parts = rel.split("/")
            if len(parts) <= self.identity_depth:
                continue  # not inside an identity folder
            samples.append(Sample(path, rel, parts[self.identity_depth - 1], (row.get("source") or "").strip()))
        return _grouped(samples)

    def samples(self, identity: Identity) -> list[Sample]:
        return list(identity.locator)


# ---------------------------------------------------------------------------------------------------------------
# Selection: globs, exclusion lists, images per identity


@dataclass
class Selection:
    """Which samples of each identity are packed (applied identically by every shard and every pass)."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    excluded_paths: frozenset[str] = frozenset()
    min_images: int = 1
    max_images: int | None = None
    seed: int = 0

    def matches(self, sample: Sample, patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(sample.rel, p) or fnmatch.fnmatchcase(sample.identity, p) for p in patterns)

    def apply(self, samples: list[Sample]) -> list[Sample]:
        """Filter by globs and the exclusion list, then cap with a seeded per-identity sample (order kept)."""
        filtered = self.include or self.exclude or self.excluded_paths
        kept = list(samples) if not filtered else [
            s
            for s in samples
            if (not self.include or self.matches(s, self.include))
            and not (self.exclude and self.matches(s, self.exclude))
            and not (self.excluded_paths and _is_listed(s, self.excluded_paths))
        ]
        if self.max_images is not None and len(kept) > self.max_images:
            rng = random.Random(f"{self.seed}:{kept[0].identity}")
            chosen = sorted(rng.sample(range(len(kept)), self.max_images))
            kept = [kept[i] for i in chosen]
        return kept


def _is_listed(sample: Sample, listed: frozenset[str]) -> bool:
    return sample.rel in listed or nfc(os.path.abspath(sample.path)) in listed


def read_exclude_list(path: Path, src: Path) -> frozenset[str]:
    """Paths to drop, from a CSV (``path`` column, or the first column) such as ``facecli clean`` writes.

    Entries may be relative to the source folder or absolute; both forms are matched.
    """
    rows = [r for r in read_csv(path, "exclude list") if r and r[0].strip()]
    column = 0
    if rows and "path" in [c.strip().lower() for c in rows[0]]:
        column = [c.strip().lower() for c in rows[0]].index("path")
        rows = rows[1:]
    listed: set[str] = set()
    for row in rows:
        if len(row) <= column:
            continue
        value = row[column].strip()
        entry = Path(value)
        listed.add(nfc(entry.as_posix()))
        full = entry if entry.is_absolute() else Path(src) / entry
        listed.add(nfc(str(full.absolute())))
    return frozenset(listed)


def build_layout(name: str, src: Path, *, use_manifest: bool = True, **options) -> Layout:
    """The layout ``name`` for ``src``; a ``manifest.csv`` from ``facecli align`` takes over the folder layout."""
    src = Path(src)
    if name == "folders" and use_manifest and (src / MANIFEST_NAME).is_file():
        return ManifestLayout(src, identity_depth=options.get("identity_depth", 1))
    builder = LAYOUTS.get(name)
    accepted = builder.__dataclass_fields__  # type: ignore[attr-defined]
    return builder(src=src, **{k: v for k, v in options.items() if k in accepted and v is not None})
