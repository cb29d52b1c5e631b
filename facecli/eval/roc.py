"""ROC read-offs shared by the verification and IJB protocols: TAR at a FAR, AUC, EER, bootstrap intervals.

Scores here are similarities (higher = more alike); a pair is accepted when its score is *strictly* above the
threshold. Two TAR@FAR rules exist and both are needed:

- :func:`tar_at_far` is the definition a user deploys: the threshold lets at most ``floor(far * n_impostors)``
  impostors through, and a FAR below ``1 / n_impostors`` cannot be measured at all (reported as unsupported
  instead of a misleading number).
- :func:`tar_at_far_nearest` is insightface's IJB read-off (``eval_ijbc.py``): the ROC point whose FPR is nearest
  to the target, ties going to the largest TPR, with no interpolation; its numbers are what papers print.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_FAR_TARGETS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass(frozen=True)
class TarAtFar:
    """One operating point: TAR at a FAR target, with the similarity threshold and the FAR actually reached."""

    far_target: float
    tar: float | None  # None when the impostor count cannot resolve the target
    threshold: float | None
    far_achieved: float | None
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "far": self.far_target,
            "tar": self.tar,
            "threshold": self.threshold,
            "far_achieved": self.far_achieved,
            **({"note": self.note} if self.note else {}),
        }


def split_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor scores from one score array and its boolean labels."""
    labels = np.asarray(labels, dtype=bool)
    return scores[labels], scores[~labels]


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far_targets: Sequence[float]) -> list[TarAtFar]:
    """TAR at each FAR target with the threshold that admits at most ``floor(far * n_impostor)`` impostors."""
    impostor_desc = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    genuine = np.asarray(genuine, dtype=np.float64)
    n_imp, n_gen = len(impostor_desc), len(genuine)
    points: list[TarAtFar] = []
    for far in far_targets:
        allowed = math.floor(far * n_imp * (1 + 1e-12))  # 1e-3 * 3000 must be 3, not 2.9999999999999996
        if n_gen == 0 or allowed < 1:
            needed = math.ceil(1 / far)
            points.append(TarAtFar(far, None, None, None, f"needs at least {needed} impostor pairs, have {n_imp}"))
            continue
        threshold = float(impostor_desc[allowed]) if allowed < n_imp else -math.inf
        accepted_impostors = int(np.count_nonzero(impostor_desc > threshold))
        tar = float(np.count_nonzero(genuine > threshold)) / n_gen
        points.append(TarAtFar(far, tar, threshold, accepted_impostors / n_imp))
    return points


def tar_at_far_nearest(fpr: np.ndarray, tpr: np.ndarray, far_targets: Sequence[float]) -> list[float]:
    """insightface's read-off: TPR at the ROC point with the nearest FPR; ties go to the largest TPR.

    ``fpr``/``tpr`` are in ``sklearn.metrics.roc_curve`` order (increasing); reversing them makes ``argmin``'s
    first-index tie rule pick the highest point of a vertical segment, exactly as ``np.flipud`` does there.
    """
    fpr_rev, tpr_rev = np.flipud(fpr), np.flipud(tpr)
    return [float(tpr_rev[int(np.argmin(np.abs(fpr_rev - target)))]) for target in far_targets]


def roc(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` with the points ``sklearn.metrics.roc_curve`` returns (``drop_intermediate``).

    One point per distinct score (scores sorted descending, ties kept in input order), collinear interior points
    dropped, and a leading ``(0, 0)`` point at threshold ``inf``. Written here so that ``facecli eval`` does not
    pay scikit-learn's import time; the golden IJB test checks the arrays are identical.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="mergesort")[::-1]
    sorted_scores, sorted_positive = scores[order], positive[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    tps = np.cumsum(sorted_positive, dtype=np.float64)[last_of_value]
    fps = 1 + last_of_value - tps
    thresholds = sorted_scores[last_of_value]
    if len(fps) > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    tps, fps, thresholds = np.r_[0.0, tps], np.r_[0.0, fps], np.r_[np.inf, thresholds]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve by the trapezoidal rule (as ``sklearn.metrics.auc`` on an increasing FPR)."""
    return float(np.trapezoid(tpr, fpr))


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The error rate where FAR equals FRR, linearly interpolated between the two ROC points around the crossing."""
    fnr = 1.0 - tpr
    diff = fpr - fnr  # increases along the ROC
    cross = int(np.searchsorted(diff, 0.0, side="left"))
    if cross == 0:
        return float(fpr[0])
    if cross >= len(diff):
        return float(fnr[-1])
    d0, d1 = diff[cross - 1], diff[cross]
    w = d0 / (d0 - d1) if d1 != d0 else 0.0
    return float(fpr[cross - 1] + w * (fpr[cross] - fpr[cross - 1]))


def bootstrap_interval(
    genuine: np.ndarray,
    impostor: np.ndarray,
    statistic,
    n_resamples: int,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(genuine, impostor)``, resampling each class separately."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        g = genuine[rng.integers(0, len(genuine), len(genuine))]
        i = impostor[rng.integers(0, len(impostor), len(impostor))]
        value = statistic(g, i)
        if value is not None:
            values.append(value)
    if not values:
        return (math.nan, math.nan)
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))
