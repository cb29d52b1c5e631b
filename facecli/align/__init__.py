"""``facecli.align``: detect five facial landmarks and warp faces into insightface-exact ArcFace crops.

Library use, without the CLI (images are RGB uint8 (H, W, 3), see DESIGN.md)::

    from facecli.align import detect, align, align_image, align_folder
    from facecli.imageio import read_image

    image = read_image("group.jpg")
    faces = detect(image)                        # [Face(box, score, landmarks (5, 2))], MTCNN by default
    crop = align(image, faces[0].landmarks)      # 112x112 RGB, bit-identical to insightface norm_crop
    crop, face = align_image(image, select="center")   # detect + choose + warp in one call
    summary = align_folder("raw/", "aligned/", select="center", workers=2)
    summary = run(AlignRequest(raw="raw/", out="aligned/", select="center"))  # facecli align raw/ aligned/ ...

Detectors are built once and reused (``get_detector``); MTCNN's model loading costs far more than one image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facecli.align.detectors import DETECTORS, Detector, Face, build_detector
from facecli.align.request import AlignRequest, run
from facecli.align.selection import SELECT_MODES, Selection, select_faces
from facecli.align.transform import ARCFACE_DST, align, estimate_norm, template, warp
from facecli.errors import UsageError

__all__ = [
    "ARCFACE_DST",
    "AlignRequest",
    "DETECTORS",
    "SELECT_MODES",
    "Detector",
    "Face",
    "Selection",
    "align",
    "align_folder",
    "align_image",
    "build_detector",
    "detect",
    "estimate_norm",
    "get_detector",
    "merge_manifests",
    "run",
    "select_faces",
    "template",
    "warp",
]

_DETECTOR_CACHE: dict[tuple, Detector] = {}


def get_detector(name: str = "mtcnn", **options: Any) -> Detector:
    """A shared detector instance for ``name`` and ``options`` (built on first use, then reused)."""
    key = (name, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _DETECTOR_CACHE:
        _DETECTOR_CACHE[key] = build_detector(name, **options)
    return _DETECTOR_CACHE[key]


def detect(image_rgb: np.ndarray, detector: Detector | str | None = None, **options: Any) -> list[Face]:
    """All faces in an RGB uint8 image. ``detector`` is an instance, a registered name, or None for MTCNN;
    ``options`` configure a detector built by name (e.g. ``min_face_size=40``)."""
    if detector is None or isinstance(detector, str):
        detector = get_detector(detector or "mtcnn", **options)
    return detector.detect(image_rgb)


def align_image(
    image_rgb: np.ndarray,
    select: str = "center",
    size: int = 112,
    detector: Detector | str | None = None,
    min_face: float = 0.0,
    min_score: float = 0.0,
) -> tuple[np.ndarray | None, Face | None]:
    """Detect, choose one face (``center`` or ``largest``) and warp it: ``(crop, face)``, or ``(None, None)``."""
    if select == "all":
        raise UsageError("align_image returns one face; use detect() and align() for all of them")
    chosen = select_faces(detect(image_rgb, detector), image_rgb.shape, select, min_face, min_score)
    if not chosen.faces:
        return None, None
    face = chosen.faces[0]
    return align(image_rgb, face.landmarks, size), face


def align_folder(raw: Any, out: Any, **options: Any) -> dict[str, Any]:
    """Align every image under ``raw`` into ``out`` (see :func:`facecli.align.pipeline.align_folder`)."""
    from facecli.align.pipeline import align_folder as run

    return run(raw, out, **options)


def merge_manifests(out: Any) -> dict[str, Any]:
    """Join the shard manifests in ``out`` into ``manifest.csv`` (see :mod:`facecli.align.manifest`)."""
    from facecli.align.manifest import merge_manifests as run

    return run(out)
