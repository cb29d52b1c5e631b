"""The gallery verbs as library calls: image folders in, a gallery or decisions or metrics out.

Each function takes an already loaded model (see :func:`open_model`) so that callers embed once and the CLI stays
a thin layer of options and rendering. Probe-side functions refuse a model whose fingerprint differs from the
gallery's: cosine scores between embeddings of different models are meaningless, and would silently look fine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facecli.errors import UsageError
from facecli.gallery.calibrate import Calibration, calibrate, calibrate_pairs
from facecli.gallery.faces import (
    AlignSettings,
    Embedded,
    FaceImage,
    describe_failures,
    drop_low_quality,
    embed_images,
    list_images,
    model_record,
)
from facecli.gallery.metrics import DEFAULT_FPIRS, OpenSetReport, open_set_report, search_outcomes
from facecli.gallery.search import ExactIndex, build_index, recall_at_k
from facecli.gallery.store import Gallery, l2_normalize, score_threshold_problem
from facecli.progress import Advance, ProgressFactory, silent_progress

UNKNOWN = "unknown"


def open_model(
    gallery: Gallery | None,
    spec: str | None,
    mean: Any = None,
    std: Any = None,
    bgr: bool | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
) -> tuple[Any, str]:
    """Load ``spec`` (or, without one, the model the gallery was built with) and check it against the gallery.

    Returns the model and the spec it was loaded from.
    """
    from facecli.eval import load_model

    if spec is None:
        if gallery is None:
            raise UsageError("--model is required")
        stored = gallery.model
        spec = stored.get("spec")
        if not spec:
            raise UsageError("the gallery does not name its model; pass --model")
        if mean is None:
            mean = stored.get("mean")
        if std is None:
            std = stored.get("std")
        if bgr is None:
            bgr = stored.get("color") == "BGR"
    model = load_model(spec, mean=mean, std=std, bgr=bgr, device=device, batch_size=batch_size)
    if gallery is not None:
        gallery.check_model(str(model.fingerprint), spec)
    return model, spec


def resolve_align(gallery: Gallery, align: bool | None, select: str | None) -> AlignSettings:
    """Probe alignment: as given, else as the gallery was built (raw photos in, raw photos out)."""
    stored = gallery.align or {}
    return AlignSettings(
        enabled=bool(stored.get("enabled", False)) if align is None else align,
        select=select or stored.get("select", "center"),
    )


# -- enrolment ---------------------------------------------------------------------------------------------------


@dataclass
class Enrolment:
    gallery: Gallery
    added: int
    already_enrolled: int
    failures: list[dict[str, str]] = field(default_factory=list)


def _named(embedded: Embedded, what: str) -> list[str]:
    names = [item.identity for item in embedded.images]
    flat = [str(item.path) for item in embedded.images if item.identity is None]
    if flat:
        raise UsageError(f"{what} images must be in one folder per identity (ROOT/NAME/*.jpg); loose file: {flat[0]}")
    return names  # type: ignore[return-value]


def build_gallery(
    images: Path,
    model: Any,
    spec: str,
    align: AlignSettings,
    flip: str = "sum",
    weighting: str = "none",
    dtype: str = "float32",
    batch_size: int | None = None,
    progress: ProgressFactory = silent_progress,
    quality_threshold: float | None = None,
) -> Enrolment:
    """Enrol every identity folder under ``images``: one template per identity, per-image embeddings kept.

    ``quality_threshold``: skip (and record as ``low_quality``) faces whose raw embedding norm is below it.
    """
    items = list_images(images)
    with progress(len(items)) as advance:
        embedded = embed_images(model, items, align, flip, batch_size, advance)
    if quality_threshold is not None:
        embedded = drop_low_quality(embedded, quality_threshold)
    if not embedded.images:
        raise UsageError(f"no usable face in {images} ({describe_failures(embedded.failures)})")
    names = _named(embedded, "gallery")
    paths = [str(item.path.resolve()) for item in embedded.images]
    gallery = Gallery.from_images(
        names, embedded.raw, paths, model_record(model, spec, flip), align.as_dict(), weighting, dtype
    )
    return Enrolment(gallery, len(paths), 0, embedded.failures)


def add_to_gallery(
    gallery: Gallery,
    images: Path,
    model: Any,
    align: AlignSettings,
    batch_size: int | None = None,
    progress: ProgressFactory = silent_progress,
) -> Enrolment:
    """Enrol more images (new people or more photos of enrolled ones); already enrolled files are skipped."""
    items = list_images(images)
    known = set(gallery.paths.tolist())
    fresh = [item for item in items if str(item.path.resolve()) not in known]
    with progress(len(items)) as advance:
        advance(len(items) - len(fresh))
        embedded = embed_images(model, fresh, align, gallery.model.get("flip", "sum"), batch_size, advance)
    if not embedded.images:
        return Enrolment(gallery, 0, len(items) - len(fresh), embedded.failures)
    names = _named(embedded, "gallery")
    new, added = gallery.add(names, embedded.raw, [str(item.path.resolve()) for item in embedded.images])
    return Enrolment(new, added, len(items) - len(fresh), embedded.failures)


# -- probes ------------------------------------------------------------------------------------------------------


@dataclass
class Probes:
    """Unit-length probe embeddings with their files and identities, and the files that could not be used."""

    paths: list[Path]
    identities: list[str | None]
    embeddings: np.ndarray
    failures: list[dict[str, str]]


def check_strangers(gallery: Gallery, items: list[FaceImage]) -> None:
    """Refuse impostor sets that contain enrolled identities (their scores would not be a stranger's)."""
    enrolled = sorted({item.identity for item in items if item.identity} & set(gallery.identities.tolist()))
    if enrolled:
        shown = ", ".join(enrolled[:5]) + (" ..." if len(enrolled) > 5 else "")
        raise UsageError(
            f"{len(enrolled)} impostor identities are enrolled in the gallery ({shown}); calibration needs strangers"
        )


def embed_probes(
    gallery: Gallery,
    root: Path,
    model: Any,
    align: AlignSettings,
    batch_size: int | None = None,
    progress: ProgressFactory = silent_progress,
    strangers: bool = False,
) -> Probes:
    """Embed the probe images under ``root``; with ``strangers``, refuse enrolled identity folders first."""
    items = list_images(root)
    if strangers:
        check_strangers(gallery, items)
    with progress(len(items)) as advance:
        embedded = embed_images(model, items, align, gallery.model.get("flip", "sum"), batch_size, advance)
    unit, _ = l2_normalize(embedded.raw)
    return Probes(
        [item.path for item in embedded.images], [item.identity for item in embedded.images], unit, embedded.failures
    )


def calibrate_gallery(gallery: Gallery, impostors: Probes, target: float, metric: str = "fpir") -> tuple[Gallery, Calibration]:
    """Choose the gallery's threshold on strangers' embeddings and store it in the gallery (returned, not saved)."""
    check_strangers(gallery, [FaceImage(path, name) for path, name in zip(impostors.paths, impostors.identities)])
    if len(impostors.embeddings) == 0:
        raise UsageError("no usable impostor face")
    result = calibrate(gallery.templates, impostors.embeddings, target, metric)
    return gallery.with_threshold(result.as_dict()), result


def calibrate_gallery_on_pairs(
    gallery: Gallery, pairs: Path, model: Any, target: float, batch_size: int | None = None, advance: Advance = lambda n: None
) -> tuple[Gallery, Calibration]:
    """Per-comparison FAR threshold from the impostor pairs of a verification ``.bin`` (aligned crops)."""
    from facecli.data.benchmarks import load_bin
    from facecli.eval import embed
    from facecli.imageio import ImageReadError, decode_image

    images, issame = load_bin(pairs)
    impostor = np.flatnonzero(~np.asarray(issame, dtype=bool))
    if impostor.size == 0:
        raise UsageError(f"{pairs} has no impostor pairs")
    wanted = np.stack([2 * impostor, 2 * impostor + 1], axis=1).ravel()
    try:
        crops = np.stack([decode_image(images[i]) for i in wanted])
    except (ImageReadError, ValueError) as exc:
        raise UsageError(f"{pairs}: images must be decodable aligned crops of one size ({exc})") from None
    raw = embed(model, crops, flip=gallery.model.get("flip", "sum"), batch_size=batch_size, progress=advance)
    unit, _ = l2_normalize(raw)
    scores = (unit[0::2] * unit[1::2]).sum(axis=1)
    result = calibrate_pairs(scores, target)
    return gallery.with_threshold(result.as_dict()), result


def threshold_of(gallery: Gallery, override: float | None) -> float:
    """The accept threshold: ``override`` if given, else the calibrated one; an uncalibrated gallery is refused."""
    if override is not None:
        problem = score_threshold_problem(override)
        if problem:
            raise UsageError(f"--threshold: {problem}")
        return float(override)
    if gallery.threshold is None:
        raise UsageError(
            "the gallery has no calibrated threshold: run `facecli gallery calibrate` on strangers, or pass --threshold"
        )
    return float(gallery.threshold["threshold"])


@dataclass
class SearchResult:
    records: list[dict[str, Any]]
    threshold: float
    index: str
    recall_at_k: float | None = None
    recall_at_1: float | None = None
    #: Memory of the approximate index per template (bytes), for sizing a gallery of millions.
    index_bytes_per_template: float | None = None
    #: Probes the recall figures were measured on (a sample of at most :data:`RECALL_PROBES`).
    recall_probes: int | None = None


#: Probes on which an approximate index is checked against exact search, drawn at random (every probe when there
#: are fewer): enough for recall@1 to about ±0.03, and on a 10M gallery a check of seconds, not of minutes per
#: thousand probes, which would cost far more than the index saves.
RECALL_PROBES = 256


def search_gallery(
    gallery: Gallery,
    probes: Probes,
    threshold: float,
    k: int = 5,
    index: str = "exact",
    index_cache: Path | None = None,
    search_width: int | None = None,
) -> SearchResult:
    """Top-``k`` identities per probe; the decision is the best identity when it scores ``>= threshold``.

    A non-exact ``index`` is checked against exact search on up to :data:`RECALL_PROBES` of the same probes
    (``recall_at_k``, ``recall_at_1``) and reports its memory per template.
    """
    if k < 1:
        raise UsageError("--top-k must be at least 1")
    searcher = build_index(index, gallery.templates, index_cache, search_width)
    scores, idx = searcher.search(probes.embeddings, k)
    recall = recall_1 = per_template = checked = None
    if index != "exact":
        n = len(probes.embeddings)
        rng = np.random.default_rng(0)  # the same probes give the same sample: a rerun reports the same recall
        sample = np.sort(rng.choice(n, RECALL_PROBES, replace=False)) if n > RECALL_PROBES else np.arange(n)
        _, exact_idx = ExactIndex(gallery.templates).search(probes.embeddings[sample], k)
        recall = recall_at_k(idx[sample], exact_idx)
        recall_1 = recall_at_k(idx[sample, :1], exact_idx[:, :1])
        checked = len(sample)
        measure = getattr(searcher, "bytes_per_template", None)
        per_template = float(measure()) if callable(measure) else None
    records: list[dict[str, Any]] = []
    for path, row_scores, row_idx in zip(probes.paths, scores, idx):
        hits = [(str(gallery.identities[j]), float(s)) for s, j in zip(row_scores, row_idx) if j >= 0]
        top = [{"identity": identity, "score": score} for identity, score in hits]
        best_identity, best_score = hits[0]
        decision = best_identity if best_score >= np.float32(threshold) else UNKNOWN
        records.append({"probe": str(path), "status": "ok", "decision": decision, "score": best_score, "top_k": top})
    for failure in probes.failures:
        records.append({"probe": failure["path"], "status": failure["status"], "reason": failure["reason"],
                        "decision": None, "score": None, "top_k": []})
    return SearchResult(records, threshold, index, recall, recall_1, per_template, checked)


def evaluate_gallery(
    gallery: Gallery, probes: Probes, threshold: float | None, fpirs: Sequence[float] = DEFAULT_FPIRS
) -> tuple[OpenSetReport, int]:
    """Open-set metrics; probes of enrolled identities are mated, others strangers. Enrolled files are left out.

    Returns the report and the number of probe files left out because they are themselves enrolled (a probe that
    is also a gallery image would be found trivially).
    """
    if not probes.paths:
        raise UsageError("no usable probe face")
    enrolled_paths = set(gallery.paths.tolist())
    keep = np.array([str(p.resolve()) not in enrolled_paths for p in probes.paths], dtype=bool)
    if any(identity is None for identity in probes.identities):
        raise UsageError("evaluation probes must be in one folder per identity (ROOT/NAME/*.jpg)")
    position = {name: i for i, name in enumerate(gallery.identities.tolist())}
    mates = np.array([position.get(name, -1) for name in probes.identities], dtype=np.int64)[keep]
    if not keep.any():
        raise UsageError("every probe image is enrolled in the gallery; evaluate on other photos")
    out = search_outcomes(gallery.templates, probes.embeddings[keep], mates)
    return open_set_report(out, tuple(fpirs), threshold), int((~keep).sum())
