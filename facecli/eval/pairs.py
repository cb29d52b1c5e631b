"""LFW-style pairs files (``pairs.txt``): which photos form each pair, and how many folds the protocol has.

Format (LFW view 2): an optional header ``<folds>\\t<pairs per class per fold>``, then one pair per line:
``name\\tn1\\tn2`` (same person) or ``name1\\tn1\\tname2\\tn2`` (different people); the image of ``name`` number
``n`` is ``<images>/name/name_<n:04d>.jpg``. Whitespace of any kind separates fields. The header defines the
folds: they are the file's contiguous blocks, exactly what ``KFold(folds, shuffle=False)`` makes of the pair list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facecli.errors import CorruptFileError, UsageError

DEFAULT_FOLDS = 10


@dataclass
class PairList:
    """Image paths in pair order (pair i = paths 2i, 2i+1), the labels, and the fold count."""

    paths: list[Path]
    issame: np.ndarray
    nfolds: int

    @property
    def unique_paths(self) -> list[Path]:
        return list(dict.fromkeys(self.paths))


def _image_path(images: Path, name: str, number: str, line_no: int, source: Path) -> Path:
    try:
        index = int(number)
    except ValueError:
        raise CorruptFileError(f"{source}:{line_no}: image number {number!r} is not an integer") from None
    return images / name / f"{name}_{index:04d}.jpg"


def read_pairs(pairs_file: str | Path, images: str | Path) -> PairList:
    """Parse an LFW pairs file into image paths under ``images``; every referenced photo must exist."""
    source, images = Path(pairs_file), Path(images)
    if not source.is_file():
        raise UsageError(f"pairs file not found: {source}")
    if not images.is_dir():
        raise UsageError(f"images folder not found: {images}")
    lines = source.read_text(encoding="utf-8", errors="replace").splitlines()
    nfolds, per_fold = DEFAULT_FOLDS, None
    paths: list[Path] = []
    labels: list[bool] = []
    for line_no, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if line_no == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
            nfolds, per_fold = int(fields[0]), int(fields[1])
            continue
        if len(fields) == 3:
            name, n1, n2 = fields
            paths += [_image_path(images, name, n1, line_no, source), _image_path(images, name, n2, line_no, source)]
            labels.append(True)
        elif len(fields) == 4:
            name1, n1, name2, n2 = fields
            paths += [_image_path(images, name1, n1, line_no, source), _image_path(images, name2, n2, line_no, source)]
            labels.append(False)
        else:
            raise CorruptFileError(
                f"{source}:{line_no}: expected 3 or 4 fields (LFW pairs format), found {len(fields)}"
            )
    if not labels:
        raise CorruptFileError(f"{source}: no pairs found")
    if per_fold is not None and len(labels) != nfolds * 2 * per_fold:
        raise CorruptFileError(
            f"{source}: header says {nfolds} folds x {per_fold} pairs per class, but the file has {len(labels)} pairs"
        )
    missing = [p for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        raise UsageError(f"{len(missing)} image(s) of {source.name} not found under {images}, e.g. {missing[0]}")
    return PairList(paths, np.array(labels, dtype=bool), nfolds)
