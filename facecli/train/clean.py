"""Noisy-label cleaning with a Sub-center ArcFace model (``facecli clean --head subcenter-arcface``).

Sub-center ArcFace trains K centres per identity; clean faces of an identity gather around one *dominant*
sub-centre while mislabelled or very atypical images settle on the others. After training:

1. assign every training image to the nearest of its own identity's K sub-centres;
2. the dominant sub-centre of an identity is the one that most of its images chose;
3. an image whose angle to its identity's dominant sub-centre exceeds a threshold (the paper uses 75°) is
   suspicious: it is listed (a CSV with a ``path`` column that ``facecli pack --exclude-list`` consumes).

The core (steps 1–3) is :func:`find_noisy`, a pure function of centres, embeddings and labels; :func:`clean_run`
wraps it with the model and the dataset of a finished run.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facecli.errors import UsageError
from facecli.fileio import atomic_write_text

#: The Sub-center ArcFace paper's angle threshold for dropping images far from the dominant sub-centre.
DEFAULT_THRESHOLD_DEG = 75.0


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class NoiseReport:
    """Per-image results of :func:`find_noisy` (arrays of length N) and the per-class dominant sub-centre (C)."""

    dominant: np.ndarray  # (C,) index of each class's dominant sub-centre (-1: class has no image)
    nearest: np.ndarray  # (N,) the sub-centre of its own class each image is closest to
    angle_deg: np.ndarray  # (N,) angle between the image and its class's dominant sub-centre
    suspicious: np.ndarray  # (N,) bool, angle_deg > threshold
    threshold_deg: float


def find_noisy(
    centres: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, threshold_deg: float = DEFAULT_THRESHOLD_DEG
) -> NoiseReport:
    """Dominant sub-centre per class and the images farther than ``threshold_deg`` from it.

    ``centres`` (C, K, D) class sub-centres (any scale), ``embeddings`` (N, D) raw or normalised, ``labels`` (N,)
    class indices. Ties between equally popular sub-centres go to the lowest index.
    """
    centres = _unit(centres)
    embeddings = _unit(embeddings)
    labels = np.asarray(labels, dtype=np.int64)
    if centres.ndim != 3:
        raise UsageError(f"sub-centres must be (classes, K, dim), got shape {centres.shape}")
    num_classes, k, dim = centres.shape
    if embeddings.ndim != 2 or embeddings.shape[1] != dim or len(embeddings) != len(labels):
        raise UsageError(f"embeddings {embeddings.shape} and labels {labels.shape} do not fit centres {centres.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UsageError(f"labels must lie in [0, {num_classes}); got {labels.min()}..{labels.max()}")
    own = np.einsum("nd,nkd->nk", embeddings, centres[labels])  # cosine to each of the image's own K sub-centres
    nearest = own.argmax(axis=1)
    votes = np.zeros((num_classes, k), dtype=np.int64)
    np.add.at(votes, (labels, nearest), 1)
    dominant = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1), -1)
    cos = np.clip(own[np.arange(len(labels)), dominant[labels]], -1.0, 1.0)
    angle = np.degrees(np.arccos(cos))
    return NoiseReport(dominant, nearest, angle, angle > threshold_deg, float(threshold_deg))


def suspicious_csv(paths: list[str], labels: np.ndarray, report: NoiseReport) -> str:
    """CSV text of the suspicious images (``path,label,angle_deg,nearest_subcenter,dominant_subcenter``),
    farthest first. ``facecli pack --exclude-list`` reads its ``path`` column."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label", "angle_deg", "nearest_subcenter", "dominant_subcenter"])
    order = np.argsort(-report.angle_deg, kind="stable")
    for i in order:
        if report.suspicious[i]:
            label = int(labels[i])
            writer.writerow([paths[i], label, f"{report.angle_deg[i]:.3f}", int(report.nearest[i]),
                             int(report.dominant[label])])
    return out.getvalue()


def write_suspicious_csv(target: str | Path, paths: list[str], labels: np.ndarray, report: NoiseReport) -> int:
    """Write the CSV atomically; returns how many images it lists."""
    atomic_write_text(target, suspicious_csv(paths, labels, report))
    return int(report.suspicious.sum())


# ---------------------------------------------------------------------------------------------------------------
# A finished run + its training data


@dataclass
class CleanSummary:
    """What ``facecli clean`` did (also its ``--json`` output)."""

    run: str
    data: str
    images: int
    classes: int
    subcenters: int
    threshold_deg: float
    suspicious: int
    csv: str
    pack: str | None
    classes_by_dominant_share: dict[str, int]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def load_subcenters(run_dir: str | Path) -> np.ndarray:
    """The (C, K, D) class sub-centres of a Sub-center ArcFace run (all Partial FC shards, in rank order)."""
    from facecli.nn.heads import HEADS, constructor_defaults
    from facecli.train import checkpoint

    run_dir = Path(run_dir)
    main = checkpoint.load(checkpoint.rank_file(run_dir, 0))
    head = dict(main.get("config", {}).get("head", {}))
    name = str(head.get("name", ""))
    if name not in HEADS or HEADS.get(name) is not HEADS.get("subcenter-arcface"):
        raise UsageError(f"{run_dir} was trained with head {name or '?'}; cleaning needs a subcenter-arcface run")
    k = int(head.get("options", {}).get("k", constructor_defaults(HEADS.get("subcenter-arcface"))["k"]))
    shards = [main] + [checkpoint.load(checkpoint.rank_file(run_dir, r)) for r in range(1, int(main["world_size"]))]
    weights = [s.get("classifier", {}).get("weight") for s in shards]
    if any(w is None for w in weights):
        raise UsageError(f"{run_dir}: the checkpoint holds no class centres")
    weight = np.concatenate([w.float().numpy() for w in weights])
    if weight.shape[0] % k:
        raise UsageError(f"{run_dir}: {weight.shape[0]} centre rows are not a multiple of k={k}")
    return weight.reshape(weight.shape[0] // k, k, weight.shape[1])  # class-major rows: c·K + j


def embed_dataset(model, dataset, batch_size: int = 64, advance=lambda n: None) -> np.ndarray:
    """Raw embeddings (N, D) of every image of a facecli training dataset, in dataset order, without flips."""
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            stop = min(start + batch_size, len(dataset))
            images = torch.stack([dataset[(i, False)][0] for i in range(start, stop)])
            out.append(model(images).float().numpy())
            advance(stop - start)
    return np.concatenate(out)


def item_paths(dataset) -> list[str]:
    """How each item is named in the CSV: the path relative to an image folder (what ``pack --exclude-list``
    matches), or ``FILE.rec#KEY`` for a record file."""
    if hasattr(dataset, "paths"):
        root = Path(dataset.root)
        return [Path(p).relative_to(root).as_posix() for p in dataset.paths]
    return [f"{Path(dataset.rec_path).name}#{int(k)}" for k in dataset.keys]


def clean_run(
    run_dir: str | Path,
    data: str | Path,
    out_csv: str | Path,
    threshold_deg: float = DEFAULT_THRESHOLD_DEG,
    pack_out: str | Path | None = None,
    batch_size: int = 64,
    progress=None,
) -> CleanSummary:
    """Embed ``data`` with the run's backbone, find images far from their dominant sub-centre, write the CSV and
    (``pack_out``, image folders only) a new pack without them. ``progress(description, total)`` is a context
    manager yielding ``advance(n)`` (e.g. ``UI.progress``)."""
    import contextlib

    from facecli.data.datasets import ImageFolderDataset, open_dataset
    from facecli.nn.inference import load_backbone

    if not 0.0 < threshold_deg < 180.0:
        raise UsageError(f"--threshold must be an angle in degrees between 0 and 180, got {threshold_deg}")
    centres = load_subcenters(run_dir)
    dataset = open_dataset(data)
    if dataset.num_classes != centres.shape[0]:
        raise UsageError(
            f"{data} has {dataset.num_classes} identities but the run was trained on {centres.shape[0]}: "
            "clean the dataset the run was trained on"
        )
    if pack_out is not None and not isinstance(dataset, ImageFolderDataset):
        raise UsageError("--pack needs the image folder the run was trained on (a .rec has no source paths)")
    model, _ = load_backbone(run_dir)
    progress = progress or (lambda description, total: contextlib.nullcontext(lambda n=1: None))
    with progress("embedding", len(dataset)) as advance:
        embeddings = embed_dataset(model, dataset, batch_size, advance)
    report = find_noisy(centres, embeddings, dataset.labels, threshold_deg)
    paths = item_paths(dataset)
    count = write_suspicious_csv(out_csv, paths, dataset.labels, report)
    if pack_out is not None and isinstance(dataset, ImageFolderDataset):  # checked above
        _write_clean_pack(dataset.root, Path(out_csv), Path(pack_out))
    share = _dominant_share(report, dataset.labels, centres.shape[0])
    return CleanSummary(str(run_dir), str(data), len(dataset), int(centres.shape[0]), int(centres.shape[1]),
                        float(threshold_deg), count, str(out_csv), str(pack_out) if pack_out else None, share)


def _dominant_share(report: NoiseReport, labels: np.ndarray, num_classes: int) -> dict[str, int]:
    """How many classes have ≥ 90 %, 70–90 % and < 70 % of their images nearest the dominant sub-centre."""
    labels = np.asarray(labels)
    bins = {">=90%": 0, "70-90%": 0, "<70%": 0}
    for c in range(num_classes):
        mine = labels == c
        if not mine.any():
            continue
        share = float((report.nearest[mine] == report.dominant[c]).mean())
        bins[">=90%" if share >= 0.9 else "70-90%" if share >= 0.7 else "<70%"] += 1
    return bins


def _write_clean_pack(src: Path, exclude_csv: Path, out: Path) -> None:
    """``facecli pack dataset SRC OUT --exclude-list CSV`` through the pack library."""
    from facecli.data import pack as packing
    from facecli.data.layouts import Selection, build_layout, read_exclude_list

    layout = build_layout("folders", src, use_manifest=False)
    selection = Selection(excluded_paths=read_exclude_list(exclude_csv, src))
    plan = packing.plan_pack(layout, selection, None)
    packing.write_pack(plan, out, packing.PackOptions(), source=str(src.resolve()),
                       settings={"layout": "folders", "exclude_list": str(exclude_csv)})
