"""Face detectors behind one :class:`Detector` protocol, built by name from the ``DETECTORS`` registry.

Importing this package registers every bundled detector (``mtcnn``, ``scrfd``).
"""

from facecli.align.detectors import mtcnn, scrfd  # noqa: F401  (registration side effect)
from facecli.align.detectors.base import DETECTORS, Detector, Face

__all__ = ["DETECTORS", "Detector", "Face", "build_detector"]


def build_detector(name: str = "mtcnn", **options: object) -> Detector:
    """Build the detector registered as ``name`` with its options (e.g. ``min_face_size=40``)."""
    return DETECTORS.build(name, **options)
