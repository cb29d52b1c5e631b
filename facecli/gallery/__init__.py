"""Open-set identification: enrol identities in a gallery, calibrate the accept threshold on strangers, search.

``store`` (the gallery file), ``faces`` (image folders → embeddings), ``search`` (exact/FAISS top-k),
``calibrate`` (threshold from a target FPIR or FAR), ``metrics`` (DIR/FNIR at FPIR, rank-k, DET);
``workflow`` chains them on loaded objects and ``verbs`` runs each ``facecli gallery`` command as one library call
(a request in, the gallery file and reports written, the command's JSON out).
"""

from facecli.gallery.calibrate import Calibration, calibrate, threshold_for_rate
from facecli.gallery.metrics import open_set_report, search_outcomes
from facecli.gallery.search import ExactIndex, build_index
from facecli.gallery.store import Gallery

__all__ = [
    "Calibration",
    "ExactIndex",
    "Gallery",
    "build_index",
    "calibrate",
    "open_set_report",
    "search_outcomes",
    "threshold_for_rate",
]
