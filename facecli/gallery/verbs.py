"""The ``facecli gallery`` verbs as library calls: one request in, the gallery file (and reports) written, the
command's JSON result out.

:mod:`facecli.gallery.workflow` holds the steps (embed, calibrate, search, evaluate) on loaded objects; the
functions here are whole verbs: they load the gallery and the model, run the steps, save the gallery, write
``report.json``/``det.png`` or the results file, and report on the way through a
:class:`~facecli.progress.Feedback` (the CLI passes its ``UI``). A Python user gets exactly the command::

    from facecli.gallery.verbs import BuildRequest, ModelChoice, SearchRequest, build, search

    build(BuildRequest(Path("enrol"), Path("people.npz"), ModelChoice("model.onnx")))
    found = search(SearchRequest(Path("probes"), Path("people.npz"), top_k=3, threshold=0.35))
    print(found.data["results"][0]["decision"])
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facecli.errors import UsageError
from facecli.gallery.calibrate import Calibration
from facecli.gallery.faces import AlignSettings
from facecli.gallery.metrics import OpenSetReport
from facecli.gallery.store import Gallery
from facecli.gallery.workflow import (
    Probes,
    add_to_gallery,
    build_gallery,
    calibrate_gallery,
    calibrate_gallery_on_pairs,
    embed_probes,
    evaluate_gallery,
    open_model,
    resolve_align,
    search_gallery,
    threshold_of,
)
from facecli.progress import SILENT, Feedback, ProgressFactory
from facecli.requests import PathFields

DTYPES = ("float32", "float16")
FLIPS = ("sum", "concat", "none")


@dataclass
class ModelChoice:
    """The network that embeds faces: ``spec`` (None: the gallery's own model) and how to feed it (None: from the
    model, or as the gallery recorded it)."""

    spec: str | None = None
    mean: str | None = None
    std: str | None = None
    bgr: bool | None = None
    device: str = "cpu"
    batch_size: int | None = None


@dataclass
class ProbeAlignment:
    """Whether probe photos are detected and aligned, and which face they keep (None: as the gallery was built)."""

    align: bool | None = None
    select: str | None = None


@dataclass
class VerbResult:
    """What a verb returns: ``data`` is the command's ``--json`` output; the rest is what its table shows."""

    data: dict[str, Any]
    gallery: Gallery
    calibration: Calibration | None = None
    report: OpenSetReport | None = None


def _report_failures(feedback: Feedback, failures: list[dict[str, str]], what: str) -> None:
    if not failures:
        return
    counts: dict[str, int] = {}
    for failure in failures:
        counts[failure["status"]] = counts.get(failure["status"], 0) + 1
    listed = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    feedback.warn(f"{len(failures)} {what} images skipped ({listed})")
    for failure in failures:
        feedback.detail(f"  {failure['path']}: {failure['reason']}")


def _stale_warning(feedback: Feedback, gallery: Gallery) -> None:
    if gallery.threshold_is_stale():
        calibrated_on = (gallery.threshold or {})["gallery_size"]
        feedback.warn(
            f"the gallery changed since calibration ({calibrated_on} -> {gallery.size} "
            "identities); FPIR grows with the gallery: re-run `facecli gallery calibrate`"
        )


def _model(feedback: Feedback, gallery: Gallery | None, choice: ModelChoice) -> tuple[Any, str]:
    """The loaded model and the spec it came from (the gallery's own when ``choice.spec`` is None)."""
    loaded, spec = open_model(gallery, choice.spec, choice.mean, choice.std, choice.bgr, choice.device,
                              choice.batch_size)
    feedback.detail(f"model {spec} (fingerprint {loaded.fingerprint})")
    return loaded, spec


def _progress(feedback: Feedback, description: str) -> ProgressFactory:
    """``feedback``'s progress under ``description``, opened by the step once it has listed its images."""
    return lambda total: feedback.progress(description, total)


def _probes(feedback: Feedback, gallery: Gallery, root: Path, model: Any, alignment: ProbeAlignment,
            batch_size: int | None, what: str, strangers: bool = False) -> Probes:
    settings = resolve_align(gallery, alignment.align, alignment.select)
    progress = _progress(feedback, f"embedding {what}")
    probes = embed_probes(gallery, root, model, settings, batch_size, progress, strangers)
    _report_failures(feedback, probes.failures, what)
    return probes


# -- build, add, remove -------------------------------------------------------------------------------------------


@dataclass
class BuildRequest(PathFields):
    """``facecli gallery build IMAGES --out OUT --model SPEC``: one template per identity folder of ``images``."""

    images: Path
    out: Path
    model: ModelChoice
    align: bool = False
    select: str = "center"
    flip: str = "sum"
    weighting: str = "none"
    dtype: str = "float32"
    quality_threshold: float | None = None


def build(request: BuildRequest, feedback: Feedback = SILENT) -> VerbResult:
    """Enrol every identity folder and write the gallery to ``request.out``."""
    if request.dtype not in DTYPES:
        raise UsageError(f"--dtype must be float32 or float16, got {request.dtype!r}")
    if request.flip not in FLIPS:
        raise UsageError(f"--flip must be sum, concat or none, got {request.flip!r}")
    loaded, spec = _model(feedback, None, request.model)
    if request.quality_threshold is not None and not loaded.describe().get("quality"):
        feedback.warn(f"{spec} has no facecli.quality metadata: its embedding norm may not encode face "
                      f"quality; --quality-threshold {request.quality_threshold:g} is applied anyway")
    result = build_gallery(
        request.images, loaded, spec, AlignSettings(request.align, request.select), request.flip,
        request.weighting, request.dtype, request.model.batch_size, _progress(feedback, "enrolling"),
        request.quality_threshold,
    )
    _report_failures(feedback, result.failures, "gallery")
    result.gallery.save(request.out)
    data = {
        "gallery": str(request.out),
        "identities": result.gallery.size,
        "images": result.added,
        "skipped": len(result.failures),
        "embedding_size": result.gallery.dim,
        "dtype": request.dtype,
        "model": result.gallery.model,
        "failures": result.failures,
    }
    return VerbResult(data, result.gallery)


@dataclass
class AddRequest(PathFields):
    """``facecli gallery add IMAGES -g GALLERY``: more people, or more photos of enrolled ones."""

    images: Path
    gallery: Path
    model: ModelChoice = field(default_factory=ModelChoice)
    alignment: ProbeAlignment = field(default_factory=ProbeAlignment)


def add(request: AddRequest, feedback: Feedback = SILENT) -> VerbResult:
    """Enrol the images not enrolled yet; the gallery file is rewritten (atomically) when any was added."""
    g = Gallery.load(request.gallery)
    loaded, _ = _model(feedback, g, request.model)
    settings = resolve_align(g, request.alignment.align, request.alignment.select)
    result = add_to_gallery(g, request.images, loaded, settings, request.model.batch_size,
                            _progress(feedback, "enrolling"))
    _report_failures(feedback, result.failures, "gallery")
    if result.added:
        result.gallery.save(request.gallery)
        _stale_warning(feedback, result.gallery)
    data = {"gallery": str(request.gallery), "added": result.added, "already_enrolled": result.already_enrolled,
            "skipped": len(result.failures), "identities": result.gallery.size, "failures": result.failures}
    return VerbResult(data, result.gallery)


def remove(gallery: Path, identities: list[str], feedback: Feedback = SILENT) -> VerbResult:
    """Remove ``identities`` (all their images) from the gallery file; written atomically."""
    updated = Gallery.load(gallery).remove(identities)
    updated.save(gallery)
    _stale_warning(feedback, updated)
    data = {"gallery": str(gallery), "removed": sorted(set(identities)), "identities": updated.size,
            "images": len(updated.paths)}
    return VerbResult(data, updated)


# -- calibrate ----------------------------------------------------------------------------------------------------


@dataclass
class CalibrateRequest(PathFields):
    """``facecli gallery calibrate -g GALLERY --impostors STRANGERS``: a folder of strangers, or a ``.bin``."""

    gallery: Path
    impostors: Path
    far: float = 1e-3
    metric: str = "fpir"
    model: ModelChoice = field(default_factory=ModelChoice)
    alignment: ProbeAlignment = field(default_factory=ProbeAlignment)

    @property
    def pairs(self) -> bool:
        """Impostor pairs of a verification ``.bin`` rather than photos of strangers."""
        return self.impostors.is_file() and self.impostors.suffix.lower() == ".bin"


def calibrate(request: CalibrateRequest, feedback: Feedback = SILENT) -> VerbResult:
    """Choose the threshold for the target false-accept rate and store it in the gallery file."""
    g = Gallery.load(request.gallery)
    if request.pairs and request.metric != "far":
        raise UsageError(
            "impostor pairs (.bin) measure the per-comparison FAR only: pass --metric far, "
            "or give a folder of strangers to calibrate FPIR"
        )
    loaded, _ = _model(feedback, g, request.model)
    skipped = 0
    if request.pairs:
        with feedback.progress("embedding impostor pairs", None) as advance:
            updated, result = calibrate_gallery_on_pairs(g, request.impostors, loaded, request.far,
                                                         request.model.batch_size, advance)
    else:
        probes = _probes(feedback, g, request.impostors, loaded, request.alignment, request.model.batch_size,
                         "impostor", strangers=True)
        updated, result = calibrate_gallery(g, probes, request.far, request.metric)
        skipped = len(probes.failures)
    for warning in result.warnings:
        feedback.warn(warning)
    updated.save(request.gallery)
    data = {"gallery": str(request.gallery), "gallery_size": g.size, **result.as_dict(), "skipped": skipped}
    return VerbResult(data, updated, calibration=result)


# -- search -------------------------------------------------------------------------------------------------------


@dataclass
class SearchRequest(PathFields):
    """``facecli gallery search PROBES -g GALLERY``: top-k identities per probe, or ``unknown``."""

    probes: Path
    gallery: Path
    top_k: int = 5
    threshold: float | None = None  # None: the calibrated one
    index: str = "exact"
    search_width: int | None = None
    out: Path | None = None  # also write the results to this .csv or .json
    model: ModelChoice = field(default_factory=ModelChoice)
    alignment: ProbeAlignment = field(default_factory=ProbeAlignment)


def score_text(score: float) -> str:
    """A float32 score written with the digits of its exact value, so that comparing the CSV's score with the
    gallery's threshold (also a float32) gives the search's decision, even one float32 step away from it. Fewer
    digits (``%.6f``, or even the shortest text that reads back as the same float32) can land on the wrong side."""
    import numpy as np

    return repr(float(np.float32(score)))


def write_results(path: Path, records: list[dict[str, Any]]) -> None:
    """Search results as JSON (``.json``) or CSV: probe, status, decision, score, then match/score per rank."""
    from facecli.fileio import atomic_write_text
    from facecli.jsonable import to_jsonable

    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps(to_jsonable(records), indent=2, ensure_ascii=False) + "\n")
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    k = max((len(r["top_k"]) for r in records), default=0)
    writer.writerow(["probe", "status", "decision", "score"]
                    + [f"{c}{i + 1}" for i in range(k) for c in ("match", "score")])
    for r in records:
        row = [r["probe"], r["status"], r["decision"] or "", "" if r["score"] is None else score_text(r["score"])]
        for match in r["top_k"]:
            row += [match["identity"], score_text(match["score"])]
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def search(request: SearchRequest, feedback: Feedback = SILENT) -> VerbResult:
    """Identify every probe; with ``request.out``, the results are also written to that file."""
    g = Gallery.load(request.gallery)
    accept = threshold_of(g, request.threshold)
    if request.threshold is None:
        _stale_warning(feedback, g)
    loaded, _ = _model(feedback, g, request.model)
    embedded = _probes(feedback, g, request.probes, loaded, request.alignment, request.model.batch_size, "probe")
    index = request.index
    cache = request.gallery.with_name(request.gallery.name + f".{index}.npz") if index != "exact" else None
    result = search_gallery(g, embedded, accept, request.top_k, index, cache, request.search_width)
    if result.recall_at_k is not None:
        memory = (f"; {result.index_bytes_per_template:.0f} bytes per template"
                  if result.index_bytes_per_template is not None else "")
        feedback.info(f"{index} index: recall@1 {result.recall_at_1:.4f}, recall@{request.top_k} "
                      f"{result.recall_at_k:.4f} against exact search on {result.recall_probes} of "
                      f"{len(embedded.embeddings)} probes{memory}")
    if request.out is not None:
        write_results(request.out, result.records)
    data = {
        "gallery": str(request.gallery),
        "threshold": accept,
        "index": index,
        "recall_at_k": result.recall_at_k,
        "recall_at_1": result.recall_at_1,
        "index_bytes_per_template": result.index_bytes_per_template,
        "recall_probes": result.recall_probes,
        "results": result.records,
    }
    return VerbResult(data, g)


# -- evaluate -----------------------------------------------------------------------------------------------------


@dataclass
class EvaluateRequest(PathFields):
    """``facecli gallery evaluate -g GALLERY --probes PROBES``: open-set metrics; ``out`` gets report.json and
    det.png."""

    gallery: Path
    probes: Path
    fpir: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    threshold: float | None = None  # None: the calibrated one, if any
    out: Path | None = None
    model: ModelChoice = field(default_factory=ModelChoice)
    alignment: ProbeAlignment = field(default_factory=ProbeAlignment)


def parse_rates(text: str) -> tuple[float, ...]:
    """``"1e-3,1e-2"`` (commas or spaces) → FPIR operating points, each in (0, 1)."""
    try:
        rates = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise UsageError(f"--fpir expects rates like 1e-3,1e-2, got {text!r}") from None
    if not rates or not all(0 < r < 1 for r in rates):
        raise UsageError(f"--fpir rates must be between 0 and 1, got {text!r}")
    return rates


def write_evaluation(out: Path, data: dict[str, Any], report: OpenSetReport, label: str) -> list[Path]:
    """``out/report.json`` (the evaluation's JSON) and, when there is a curve, ``out/det.png``; returns them."""
    from facecli.fileio import atomic_write_text
    from facecli.gallery.metrics import plot_det
    from facecli.jsonable import to_jsonable

    written = [out / "report.json"]
    atomic_write_text(written[0], json.dumps(to_jsonable(data), indent=2) + "\n")
    if len(report.det_fpir):
        written.append(out / "det.png")
        plot_det(report, written[1], label=label)
    return written


def evaluate(request: EvaluateRequest, feedback: Feedback = SILENT) -> VerbResult:
    """Open-set identification metrics of the gallery on ``request.probes``; see :func:`write_evaluation`."""
    g = Gallery.load(request.gallery)
    accept = request.threshold if request.threshold is not None else (g.threshold or {}).get("threshold")
    if request.threshold is None:
        _stale_warning(feedback, g)
    loaded, _ = _model(feedback, g, request.model)
    embedded = _probes(feedback, g, request.probes, loaded, request.alignment, request.model.batch_size, "probe")
    report, left_out = evaluate_gallery(g, embedded, accept, request.fpir)
    if left_out:
        feedback.warn(f"{left_out} probe images are enrolled in the gallery and were left out")
    for note in report.notes:
        feedback.warn(note)
    data = {"gallery": str(request.gallery), "gallery_size": g.size, **report.as_dict(), "left_out": left_out,
            "skipped": len(embedded.failures)}
    if request.out is not None:
        written = write_evaluation(request.out, data, report, request.gallery.stem)
        feedback.info("wrote " + " and ".join(str(path) for path in written))
    return VerbResult(data, g, report=report)
