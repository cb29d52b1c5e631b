"""What every face detector returns and promises, so that the pipeline never needs to know which one ran.

A detector is any object with ``detect(image_rgb) -> list[Face]``; it is built once (model loading is the slow
part) through the ``DETECTORS`` registry and then called per image. Adding a detector is one new module in this
package that registers a builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from facecli.registry import Registry


@dataclass(frozen=True, eq=False)  # arrays inside: compare fields explicitly, not faces
class Face:
    """One detected face in image pixels.

    ``box`` is float32 ``(x1, y1, x2, y2)``; ``landmarks`` is float32 (5, 2) in the ArcFace order (left eye, right
    eye, nose tip, left mouth corner, right mouth corner; "left" = smaller image x); ``score`` is the detector's
    confidence in [0, 1].
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def size(self) -> float:
        """The shorter side of the box: what ``--min-face`` compares against."""
        return min(self.width, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return (float(self.box[0] + self.box[2]) / 2.0, float(self.box[1] + self.box[3]) / 2.0)


@runtime_checkable
class Detector(Protocol):
    """A face detector: RGB uint8 (H, W, 3) in, faces out (any order)."""

    def detect(self, image_rgb: np.ndarray) -> list[Face]: ...


DETECTORS: Registry[Detector] = Registry("detector")
