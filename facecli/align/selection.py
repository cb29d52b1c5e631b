"""Which detected faces become crops: filters (``--min-score``, ``--min-face``) then ``largest``, ``center`` or ``all``.

``center`` picks the face nearest the image centre, which is what LFW-style photos (one subject in the middle,
bystanders at the edges) need; ``largest`` picks the biggest box; ``all`` keeps every face, left to right, so that
``stem_0``, ``stem_1``, ... are numbered in a stable, visible order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from facecli.align.detectors.base import Face
from facecli.errors import UsageError

SELECT_MODES = ("largest", "center", "all")


@dataclass
class Selection:
    """The faces to crop, or why there are none (``status`` is a manifest status)."""

    faces: list[Face] = field(default_factory=list)
    status: str = "ok"
    reason: str = ""


def select_faces(
    faces: list[Face],
    image_shape: tuple[int, ...],
    select: str = "largest",
    min_face: float = 0.0,
    min_score: float = 0.0,
) -> Selection:
    """Apply the filters, then the selection mode; see the module docstring."""
    if select not in SELECT_MODES:
        raise UsageError(f"unknown face selection {select!r}; choose one of: {', '.join(SELECT_MODES)}")
    if not faces:
        return Selection(status="no_face", reason="no face detected")
    confident = [f for f in faces if f.score >= min_score]
    if not confident:
        best = max(f.score for f in faces)
        return Selection(status="low_score", reason=f"best face score {best:.3f} is below --min-score {min_score:g}")
    big = [f for f in confident if f.size >= min_face]
    if not big:
        biggest = max(f.size for f in confident)
        return Selection(
            status="too_small", reason=f"largest face is {biggest:.0f} px, smaller than --min-face {min_face:g}"
        )
    if select == "all":
        return Selection(faces=sorted(big, key=lambda f: (float(f.box[0]), float(f.box[1]))))
    if select == "largest":
        return Selection(faces=[max(big, key=lambda f: f.width * f.height)])
    cy, cx = image_shape[0] / 2.0, image_shape[1] / 2.0
    return Selection(faces=[min(big, key=lambda f: (f.center[0] - cx) ** 2 + (f.center[1] - cy) ** 2)])
