"""Open-set identification metrics (NIST FRVT 1:N conventions) from mated and non-mated probe searches.

- Mated probe: its identity is enrolled. It is *detected and identified* at threshold ``t`` when its mate is the
  rank-1 result and scores ``>= t``. DIR(t) is that fraction; FNIR(t) = 1 - DIR(t) (miss rate at rank 1).
- Non-mated probe: a stranger. FPIR(t) is the fraction whose best score is ``>= t``.
- DIR@FPIR / FNIR@FPIR read these at the threshold that gives a target FPIR on the non-mated probes (chosen with
  the same rule as ``gallery calibrate``); rank-k is the closed-set accuracy of the mated probes, ignoring ``t``.
- The DET curve plots FNIR against FPIR over all thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from facecli.gallery.calibrate import threshold_for_rate
from facecli.gallery.search import ExactIndex, probe_batches

DEFAULT_FPIRS = (1e-3, 1e-2, 1e-1)


@dataclass
class ProbeOutcomes:
    """Per probe: its best score and identity index, and for mated probes the mate's score and rank."""

    best_score: np.ndarray  # (P,) float32
    best_index: np.ndarray  # (P,) int64
    mate_score: np.ndarray  # (P,) float32, NaN for non-mated probes
    mate_rank: np.ndarray  # (P,) int64, 1-based, 0 for non-mated probes

    @property
    def mated(self) -> np.ndarray:
        return self.mate_rank > 0


def search_outcomes(templates: np.ndarray, probes: np.ndarray, mates: np.ndarray) -> ProbeOutcomes:
    """Score unit-length ``probes`` against ``templates``; ``mates[i]`` is probe i's template index or -1."""
    index = ExactIndex(templates)
    n = len(probes)
    out = ProbeOutcomes(
        best_score=np.empty(n, np.float32),
        best_index=np.empty(n, np.int64),
        mate_score=np.full(n, np.nan, np.float32),
        mate_rank=np.zeros(n, np.int64),
    )
    for batch in probe_batches(n, len(templates)):
        scores = index.scores(probes[batch])
        out.best_index[batch] = scores.argmax(axis=1)
        out.best_score[batch] = scores.max(axis=1)
        m = mates[batch]
        rows = np.flatnonzero(m >= 0)
        mate = scores[rows, m[rows]]
        out.mate_score[batch][rows] = mate
        out.mate_rank[batch][rows] = 1 + (scores[rows] > mate[:, None]).sum(axis=1)
    return out


@dataclass
class OperatingPoint:
    threshold: float
    fpir: float | None
    dir: float | None
    fnir: float | None
    target_fpir: float | None = None


@dataclass
class OpenSetReport:
    n_mated: int
    n_nonmated: int
    rank1: float | None
    rank5: float | None
    at_fpir: list[OperatingPoint]
    at_threshold: OperatingPoint | None
    notes: list[str] = field(default_factory=list)
    det_fpir: np.ndarray = field(default_factory=lambda: np.empty(0))
    det_fnir: np.ndarray = field(default_factory=lambda: np.empty(0))

    def as_dict(self) -> dict:
        from dataclasses import asdict

        data = asdict(self)
        data.pop("det_fpir")
        data.pop("det_fnir")
        return data


def _point(out: ProbeOutcomes, threshold: float, target: float | None = None) -> OperatingPoint:
    mated, non = out.mated, ~out.mated
    t = np.float32(threshold)
    dir_ = float(np.mean((out.mate_rank[mated] == 1) & (out.mate_score[mated] >= t))) if mated.any() else None
    fpir = float(np.mean(out.best_score[non] >= t)) if non.any() else None
    return OperatingPoint(float(threshold), fpir, dir_, None if dir_ is None else 1.0 - dir_, target)


def det_curve(out: ProbeOutcomes) -> tuple[np.ndarray, np.ndarray]:
    """FPIR and FNIR at every distinct non-mated best score (each threshold where FPIR changes) and above all."""
    mated, non = out.mated, ~out.mated
    if not (mated.any() and non.any()):
        return np.empty(0), np.empty(0)
    thresholds = np.unique(out.best_score[non])
    thresholds = np.append(thresholds, np.nextafter(thresholds[-1], np.float32(np.inf)))  # the FPIR = 0 end
    nm = np.sort(out.best_score[non])
    fpir = 1.0 - np.searchsorted(nm, thresholds, side="left") / len(nm)
    hits = np.sort(out.mate_score[mated][out.mate_rank[mated] == 1])
    dir_ = (len(hits) - np.searchsorted(hits, thresholds, side="left")) / mated.sum()
    return fpir, 1.0 - dir_


def open_set_report(
    out: ProbeOutcomes, fpirs: tuple[float, ...] = DEFAULT_FPIRS, threshold: float | None = None
) -> OpenSetReport:
    """DIR/FNIR at target FPIRs (where the non-mated probes support them), at ``threshold``, and rank-1/5."""
    mated, non = out.mated, ~out.mated
    n_mated, n_non = int(mated.sum()), int(non.sum())
    notes: list[str] = []
    points = []
    for target in fpirs:
        if n_non == 0 or target * n_non < 1:
            notes.append(f"FPIR {target:g} needs at least {int(np.ceil(1 / target))} non-mated probes (have {n_non})")
            continue
        points.append(_point(out, threshold_for_rate(out.best_score[non], target), target))
    if n_mated == 0:
        notes.append("no mated probes: no probe identity is enrolled in the gallery")
    det_fpir, det_fnir = det_curve(out)
    return OpenSetReport(
        n_mated=n_mated,
        n_nonmated=n_non,
        rank1=float(np.mean(out.mate_rank[mated] <= 1)) if n_mated else None,
        rank5=float(np.mean(out.mate_rank[mated] <= 5)) if n_mated else None,
        at_fpir=points,
        at_threshold=None if threshold is None else _point(out, threshold),
        notes=notes,
        det_fpir=det_fpir,
        det_fnir=det_fnir,
    )


def plot_det(report: OpenSetReport, path, label: str = "") -> None:
    """Save the DET curve (FNIR vs FPIR, log axes) as an image; the calibrated point is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facecli.fileio import atomic_path

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    # log axes cannot show 0: a zero rate is drawn at half of one error, the resolution of the probe set
    fpir_floor, fnir_floor = 0.5 / max(1, report.n_nonmated), 0.5 / max(1, report.n_mated)
    ax.step(
        np.maximum(report.det_fpir, fpir_floor), np.maximum(report.det_fnir, fnir_floor), where="post", label=label or None
    )
    point = report.at_threshold
    if point is not None and point.fpir is not None and point.fnir is not None:
        ax.plot(
            [max(point.fpir, fpir_floor)], [max(point.fnir, fnir_floor)], "o", label=f"threshold {point.threshold:.3f}"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"FPIR (strangers accepted, of {report.n_nonmated})")
    ax.set_ylabel(f"FNIR (enrolled people missed, of {report.n_mated})")
    ax.set_title("Open-set identification DET (zeros drawn at half an error)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if label or point is not None:
        ax.legend(loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=str(path).rsplit(".", 1)[-1] if "." in str(path) else "png")
    plt.close(fig)
