"""``facecli align`` as a library call: an :class:`AlignRequest` in, :func:`run` aligns (or merges) and returns
the summary the command prints.

The command only parses its options into a request and renders the summary; a Python user gets the same crops,
manifest and errors::

    from facecli.align import AlignRequest, run

    summary = run(AlignRequest(raw="photos/", out="aligned/", select="center", workers=4))
    summary = run(AlignRequest(out="aligned/", merge_manifests=True))   # join the shard manifests
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facecli.errors import UsageError
from facecli.imageio import DEFAULT_MAX_PIXELS
from facecli.progress import SILENT, Feedback
from facecli.requests import PathFields


def parse_thresholds(text: str) -> tuple[float, ...]:
    """MTCNN's P,R,O-net thresholds from ``"0.6,0.7,0.7"``."""
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise UsageError(f"--mtcnn-thresholds must be numbers like 0.6,0.7,0.7, got {text!r}") from None


def example_image() -> Path:
    """insightface's bundled six-face photo, the quick-start input."""
    spec = importlib.util.find_spec("insightface")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / "data" / "images" / "t1.jpg" if folders else None
    if path is None or not path.is_file():
        raise UsageError(
            "the example photo ships with insightface, which is not installed: pip install 'facecli[insightface]'"
        )
    return path


@dataclass
class AlignRequest(PathFields):
    """Everything ``facecli align`` is told; the fields are its options, already parsed.

    ``raw``/``out`` are folders, one image or fsspec URLs. ``merge_manifests`` and ``example`` take one folder,
    given as ``out`` (or ``raw``): the shard manifests to join, or where the sample photo's six faces go.
    """

    raw: str | None = None
    out: str | None = None
    size: int = 112
    select: str = "largest"
    min_face: float = 0.0
    min_score: float = 0.0
    fmt: str = "jpg"
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS
    detector: str = "mtcnn"
    det_model: Path | None = None  # --detector scrfd: the ONNX file
    device: str = "cpu"
    mtcnn_min_size: float = 20.0
    mtcnn_thresholds: tuple[float, ...] = (0.6, 0.7, 0.7)
    mtcnn_factor: float = 0.709
    landmarks: Path | None = None
    assume_aligned: bool = False
    overwrite: bool = False
    workers: int | None = None
    shard: str | None = None  # "I/N"; None: RANK/WORLD_SIZE from the environment, else everything
    merge_manifests: bool = False
    example: bool = False

    def detector_options(self) -> dict[str, Any]:
        return {
            "min_face_size": self.mtcnn_min_size,
            "thresholds": self.mtcnn_thresholds,
            "factor": self.mtcnn_factor,
            "model_path": self.det_model,
            "device": self.device,
        }


def _single_folder(request: AlignRequest) -> str:
    """The one folder ``--merge-manifests`` and ``--example`` take."""
    target = request.out or request.raw
    if target is None or (request.raw is not None and request.out is not None):
        flag = "--merge-manifests" if request.merge_manifests else "--example"
        raise UsageError(f"{flag} takes exactly one folder: facecli align {flag} OUT")
    return target


def run(request: AlignRequest, feedback: Feedback = SILENT) -> dict[str, Any]:
    """Align what ``request`` describes (or merge its shard manifests) and return the summary.

    ``feedback`` (:mod:`facecli.progress`) shows the work. Mistakes raise :class:`~facecli.errors.UsageError`.
    """
    raw, out, select = request.raw, request.out, request.select
    if request.merge_manifests or request.example:
        target = _single_folder(request)
        if request.merge_manifests:
            from facecli.align.manifest import merge_manifests

            return merge_manifests(target)
        raw, out, select = str(example_image()), target, "all"
    if raw is None or out is None:
        raise UsageError("align needs RAW and OUT: facecli align RAW OUT (or facecli align --example OUT)")
    from facecli.align.pipeline import align_folder

    return align_folder(
        raw,
        out,
        size=request.size,
        select=select,
        min_face=request.min_face,
        min_score=request.min_score,
        fmt=request.fmt,
        quality=request.quality,
        max_pixels=request.max_pixels,
        detector=request.detector,
        detector_options=request.detector_options(),
        landmarks=request.landmarks,
        assume_aligned=request.assume_aligned,
        overwrite=request.overwrite,
        workers=request.workers,
        shard=request.shard,
        progress=lambda total: feedback.progress("align", total),
    )
