"""Choosing the accept threshold from a target false-accept rate measured on strangers.

Two rates matter and they differ by orders of magnitude:

- **FPIR** (false-positive identification rate, per probe): the fraction of strangers whose *best* match over the
  whole gallery is accepted. This is what a search decision risks, and it grows with the gallery size.
- **FAR** (false-accept rate, per comparison): the fraction of single stranger-vs-template comparisons accepted,
  the 1:1 verification number.

A stranger searched against G identities makes G comparisons, so at equal thresholds FPIR is up to G times FAR.
Calibrating a search threshold on FAR is the mistake that makes "everyone matches"; FPIR is the default here, and
both rates are reported at the chosen threshold. A rate can only be measured if enough impostors stand behind it:
with n impostor probes a target below 1/n cannot be observed at all, and an estimate resting on fewer than
:data:`MIN_EXPECTED_ERRORS` false accepts is noisy; both cases are flagged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from facecli.errors import UsageError
from facecli.gallery.search import ExactIndex, probe_batches

METRICS = ("fpir", "far")
MIN_EXPECTED_ERRORS = 10


def threshold_for_rate(scores: np.ndarray, rate: float) -> float:
    """The lowest threshold ``t`` (accept when ``score >= t``) that accepts at most ``floor(rate * n)`` scores.

    ``t`` is the float32 number just above the ``(allowed + 1)``-th largest score, so the rate on ``scores`` never
    exceeds the target (ties at that score are all rejected).
    """
    scores = np.asarray(scores, dtype=np.float32).ravel()
    if scores.size == 0:
        raise UsageError("no impostor scores to calibrate on")
    allowed = int(np.floor(rate * scores.size + 1e-9))
    if allowed >= scores.size:
        return float(scores.min())
    kth = np.partition(scores, scores.size - allowed - 1)[scores.size - allowed - 1]
    return float(np.nextafter(np.float32(kth), np.float32(np.inf)))


def clopper_pearson(errors: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval of a rate observed as ``errors`` out of ``n``."""
    from scipy.stats import beta

    alpha = 1.0 - level
    lo = 0.0 if errors == 0 else float(beta.ppf(alpha / 2, errors, n - errors + 1))
    hi = 1.0 if errors == n else float(beta.ppf(1 - alpha / 2, errors + 1, n - errors))
    return lo, hi


def support_warning(rate: float, n: int, metric: str) -> str | None:
    """A sentence when ``n`` impostor probes (FPIR) or comparisons (FAR) are too few to measure ``rate``."""
    what = metric.upper()
    unit = "probes" if metric == "fpir" else "comparisons"
    expected = rate * n
    if expected < 1:
        return (
            f"a {what} of {rate:g} cannot be measured on {n} impostor {unit}: "
            f"the smallest observable rate is {1 / n:.2g} and the threshold sits above every impostor score "
            f"(the true rate may be up to {min(1.0, 3 / n):.2g}); use at least {int(np.ceil(MIN_EXPECTED_ERRORS / rate))} {unit}"
        )
    if expected < MIN_EXPECTED_ERRORS:
        return (
            f"the {what} target {rate:g} rests on only {int(expected)} false accepts among {n}; the achieved rate is "
            f"imprecise, use at least {int(np.ceil(MIN_EXPECTED_ERRORS / rate))} {unit} for a stable threshold"
        )
    return None


@dataclass
class Calibration:
    """The chosen threshold and what it rests on (stored in the gallery as a dict)."""

    metric: str
    target: float
    threshold: float
    fpir: float | None  # None when calibrated on impostor pairs, which cannot measure it
    fpir_ci95: tuple[float, float] | None
    far: float
    far_ci95: tuple[float, float]
    fpir_threshold: float | None
    far_threshold: float
    n_probes: int
    n_comparisons: int
    warnings: list[str]

    def as_dict(self) -> dict:
        return asdict(self)


class _TopScores:
    """The ``m`` largest of a stream of scores, kept in bounded memory."""

    def __init__(self, m: int) -> None:
        self.m = m
        self.kept = np.empty(0, np.float32)

    def update(self, scores: np.ndarray) -> None:
        merged = np.concatenate([self.kept, scores.ravel()])
        if merged.size > self.m:
            merged = np.partition(merged, merged.size - self.m)[merged.size - self.m :]
        self.kept = merged


def calibrate(templates: np.ndarray, impostors: np.ndarray, target: float, metric: str = "fpir") -> Calibration:
    """Threshold on the gallery ``templates`` for a target rate on unit-length ``impostors`` (strangers' embeddings).

    Two passes of batched matmuls: the first collects each probe's best score (FPIR) and the globally largest
    comparison scores (FAR, in bounded memory), the second counts the accepts of both thresholds.
    """
    if metric not in METRICS:
        raise UsageError(f"unknown rate {metric!r}; choose one of: {', '.join(METRICS)}")
    if not 0 < target < 1:
        raise UsageError(f"the target rate must be between 0 and 1, got {target:g}")
    n_probes = len(impostors)
    if n_probes == 0:
        raise UsageError("no impostor embeddings to calibrate on")
    index = ExactIndex(templates)
    n_comparisons = n_probes * len(templates)
    allowed_far = int(np.floor(target * n_comparisons + 1e-9))
    best = np.empty(n_probes, np.float32)
    top = _TopScores(min(n_comparisons, allowed_far + 1))
    for batch in probe_batches(n_probes, len(templates)):
        scores = index.scores(impostors[batch])
        best[batch] = scores.max(axis=1)
        top.update(scores)
    fpir_threshold = threshold_for_rate(best, target)
    if allowed_far + 1 > top.kept.size:  # the target accepts every comparison
        far_threshold = float(top.kept.min())
    else:
        far_threshold = float(np.nextafter(np.float32(top.kept.min()), np.float32(np.inf)))
    threshold = fpir_threshold if metric == "fpir" else far_threshold

    far_errors = 0
    for batch in probe_batches(n_probes, len(templates)):
        far_errors += int((index.scores(impostors[batch]) >= np.float32(threshold)).sum())
    fpir_errors = int((best >= np.float32(threshold)).sum())
    warning = support_warning(target, n_probes if metric == "fpir" else n_comparisons, metric)
    return Calibration(
        metric=metric,
        target=float(target),
        threshold=float(threshold),
        fpir=fpir_errors / n_probes,
        fpir_ci95=clopper_pearson(fpir_errors, n_probes),
        far=far_errors / n_comparisons,
        far_ci95=clopper_pearson(far_errors, n_comparisons),
        fpir_threshold=float(fpir_threshold),
        far_threshold=float(far_threshold),
        n_probes=n_probes,
        n_comparisons=n_comparisons,
        warnings=[warning] if warning else [],
    )


def calibrate_pairs(impostor_scores: np.ndarray, target: float) -> Calibration:
    """Threshold for a per-comparison FAR from the cosine scores of impostor pairs (e.g. a verification .bin).

    Pairs know nothing about the gallery, so they cannot measure FPIR; the result says so in its warnings.
    """
    if not 0 < target < 1:
        raise UsageError(f"the target rate must be between 0 and 1, got {target:g}")
    scores = np.asarray(impostor_scores, dtype=np.float32).ravel()
    threshold = threshold_for_rate(scores, target)
    errors = int((scores >= np.float32(threshold)).sum())
    warnings = [
        "impostor pairs measure the per-comparison FAR only: a search over the whole gallery accepts strangers "
        "more often (FPIR); calibrate on a folder of strangers to control search decisions"
    ]
    warning = support_warning(target, scores.size, "far")
    return Calibration(
        metric="far",
        target=float(target),
        threshold=threshold,
        fpir=None,
        fpir_ci95=None,
        far=errors / scores.size,
        far_ci95=clopper_pearson(errors, scores.size),
        fpir_threshold=None,
        far_threshold=threshold,
        n_probes=0,
        n_comparisons=int(scores.size),
        warnings=warnings + ([warning] if warning else []),
    )
