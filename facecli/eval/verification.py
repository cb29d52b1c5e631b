"""The 10-fold pair-verification protocol of LFW, CFP-FP, AgeDB-30 ..., number for number as insightface computes it.

Reference: ``recognition/arcface_torch/eval/verification.py`` (``evaluate``, ``calculate_roc``, ``calculate_val``).
Its rules, restated so nobody has to read it:

- pair ``i`` is rows ``2i`` and ``2i+1``; flip fusion adds the two embeddings in float64; every row is
  L2-normalised; the distance is the squared L2 distance (``= 2 - 2 cos``); "same" means ``dist < threshold``.
- folds are ``KFold(n, shuffle=False)``: contiguous blocks, the first ``n % k`` one pair larger.
- accuracy: per fold, the threshold of ``arange(0, 4, 0.01)`` with the best accuracy on the other folds (first
  one on ties) is applied to the held-out fold; the summary is the mean and the population std.
- VAL@FAR=1e-3: per fold, the training-fold FAR over ``arange(0, 4, 0.001)`` is inverted by linear interpolation;
  the reference passes duplicate FAR values to SciPy's ``interp1d``, which old SciPy accepted and newer SciPy
  rejects. The numbers old SciPy gave are kept: interpolate between the *last* threshold whose FAR is the largest
  value ``<= target`` and the *first* threshold of the next larger FAR value.

Counting is done with sorted distances and ``searchsorted`` instead of one pass per threshold; comparisons are
the same strict ``<``, so every count, and therefore every number, is identical.

Beyond the reference (computed on all pairs, not folds): TAR at FAR 1e-1 ... 1e-6 as far as the impostor count
allows, ROC AUC, EER, and the single deployment threshold as a cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from facecli.errors import UsageError
from facecli.eval import roc as roc_lib

ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
VAL_FAR_TARGET = 1e-3


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float64 as ``sklearn.preprocessing.normalize`` (zero rows stay zero)."""
    x = np.array(x, dtype=np.float64, copy=True)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    x /= norms[:, np.newaxis]
    return x


def pair_distances(embeddings: np.ndarray, embeddings_flip: np.ndarray | None = None) -> np.ndarray:
    """Squared L2 distance of every pair (rows 2i, 2i+1) after flip fusion and L2 normalisation, in float64."""
    fused = np.asarray(embeddings, dtype=np.float64)
    if embeddings_flip is not None:
        fused = fused + np.asarray(embeddings_flip, dtype=np.float64)
    normed = l2_normalize(fused)
    diff = np.subtract(normed[0::2], normed[1::2])
    return np.sum(np.square(diff), 1)


def distance_to_cosine(distance: float) -> float:
    """Squared L2 distance of unit vectors to cosine similarity: ``cos = 1 - d / 2``."""
    return 1.0 - distance / 2.0


def as_issame(values: np.ndarray | Sequence[object]) -> np.ndarray:
    """Pair labels as a 1-D bool array: booleans, or numbers that are exactly 0 or 1 (0.0/1.0 from a float .npy).

    Anything else (0.5, NaN, 2, text) would otherwise become True through ``astype(bool)`` and silently turn
    impostor pairs into genuine ones.
    """
    flags = np.asarray(values)
    if flags.dtype == bool:
        return flags.ravel()
    if flags.dtype.kind not in "iuf":
        raise UsageError(f"issame must hold booleans or 0/1, found {flags.dtype} values")
    wrong = np.flatnonzero(~np.isin(flags.ravel(), (0, 1)))
    if len(wrong):
        i = int(wrong[0])
        raise UsageError(f"issame must hold booleans or 0/1; pair {i} is {flags.ravel()[i].item()!r} "
                         f"({len(wrong)} value(s) are neither 0 nor 1)")
    return flags.ravel().astype(bool)


def fold_slices(n: int, nfolds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` index arrays of ``KFold(nfolds, shuffle=False)``; one fold means train = test = all."""
    indices = np.arange(n)
    if nfolds <= 1:
        return [(indices, indices)]
    sizes = np.full(nfolds, n // nfolds, dtype=int)
    sizes[: n % nfolds] += 1
    folds, start = [], 0
    for size in sizes:
        test = indices[start : start + size]
        train = np.concatenate([indices[:start], indices[start + size :]])
        folds.append((train, test))
        start += size
    return folds


@dataclass
class _Counts:
    """Accepted genuine/impostor counts (``dist < t``) for many thresholds over one subset of pairs."""

    true_accepts: np.ndarray
    false_accepts: np.ndarray
    n_same: int
    n_diff: int

    @classmethod
    def of(cls, dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> _Counts:
        genuine = np.sort(dist[issame])
        impostor = np.sort(dist[~issame])
        return cls(
            np.searchsorted(genuine, thresholds, side="left"),
            np.searchsorted(impostor, thresholds, side="left"),
            len(genuine),
            len(impostor),
        )

    def accuracy(self) -> np.ndarray:
        true_rejects = self.n_diff - self.false_accepts
        return (self.true_accepts + true_rejects) / (self.n_same + self.n_diff)

    def tpr(self) -> np.ndarray:
        return self.true_accepts / self.n_same if self.n_same else np.zeros(len(self.true_accepts))

    def fpr(self) -> np.ndarray:
        return self.false_accepts / self.n_diff if self.n_diff else np.zeros(len(self.false_accepts))


def _accuracy_at(threshold: float, dist: np.ndarray, issame: np.ndarray) -> float:
    accepted = dist < threshold
    correct = np.count_nonzero(accepted & issame) + np.count_nonzero(~accepted & ~issame)
    return float(correct) / dist.size


def _val_far_at(threshold: float, dist: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    accepted = dist < threshold
    n_same, n_diff = int(np.count_nonzero(issame)), int(np.count_nonzero(~issame))
    if n_same == 0 or n_diff == 0:
        raise UsageError(
            "a verification fold has no genuine or no impostor pairs: folds are contiguous blocks of the pair list, "
            "so order the pairs as LFW's pairs.txt does (each fold holds both kinds) or change --nfolds"
        )
    return (
        float(np.count_nonzero(accepted & issame)) / n_same,
        float(np.count_nonzero(accepted & ~issame)) / n_diff,
    )


def threshold_at_far(far_train: np.ndarray, thresholds: np.ndarray, target: float) -> float:
    """Invert a nondecreasing FAR(threshold) at ``target`` the way the reference's ``interp1d`` did (see module doc).

    Returns 0.0 when the FAR never reaches the target, as the reference does.
    """
    if far_train.max() < target:
        return 0.0
    last_below = int(np.searchsorted(far_train, target, side="right")) - 1  # far_train[0] == 0 <= target
    t_a, far_a = float(thresholds[last_below]), float(far_train[last_below])
    if last_below + 1 >= len(far_train) or far_a == target:
        return t_a
    t_b, far_b = float(thresholds[last_below + 1]), float(far_train[last_below + 1])
    return t_a + (target - far_a) * (t_b - t_a) / (far_b - far_a)


@dataclass
class VerificationResult:
    """Everything the 10-fold protocol and the pooled ROC say about one set of pairs."""

    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    val: float
    val_std: float
    far: float
    fold_val: list[float]
    fold_far: list[float]
    fold_val_thresholds: list[float]
    tpr: np.ndarray  # per accuracy threshold, mean over test folds (the reference's 400-point curve)
    fpr: np.ndarray
    tar_at_far: list[roc_lib.TarAtFar]
    auc: float
    eer: float
    threshold: float  # best squared-L2 threshold on all pairs (for deployment)
    threshold_cosine: float
    n_pairs: int
    n_genuine: int
    n_impostor: int
    nfolds: int
    distances: np.ndarray = field(repr=False)  # per pair, for error analysis
    issame: np.ndarray = field(repr=False)
    xnorm: float | None = None  # mean raw embedding norm, as insightface logs it
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def tar_at_far_map(self) -> dict[float, float | None]:
        return {p.far_target: p.tar for p in self.tar_at_far}

    @property
    def similarities(self) -> np.ndarray:
        """Cosine similarity of each pair (``1 - dist / 2``)."""
        return 1.0 - self.distances / 2.0

    def to_dict(self, curves: bool = False) -> dict:
        out = {
            "accuracy": self.accuracy,
            "accuracy_std": self.accuracy_std,
            "fold_accuracies": list(self.fold_accuracies),
            "fold_thresholds": list(self.fold_thresholds),
            "val": self.val,
            "val_std": self.val_std,
            "far": self.far,
            "fold_val": list(self.fold_val),
            "fold_far": list(self.fold_far),
            "fold_val_thresholds": list(self.fold_val_thresholds),
            "tar_at_far": [p.to_dict() for p in self.tar_at_far],
            "auc": self.auc,
            "eer": self.eer,
            "threshold": self.threshold,
            "threshold_cosine": self.threshold_cosine,
            "n_pairs": self.n_pairs,
            "n_genuine": self.n_genuine,
            "n_impostor": self.n_impostor,
            "nfolds": self.nfolds,
            "xnorm": self.xnorm,
        }
        if self.intervals:
            out["intervals_95"] = {k: list(v) for k, v in self.intervals.items()}
        if curves:
            out["tpr"] = self.tpr.tolist()
            out["fpr"] = self.fpr.tolist()
        return out


def _check_inputs(embeddings: np.ndarray, issame: np.ndarray, embeddings_flip: np.ndarray | None) -> None:
    if embeddings.ndim != 2:
        raise UsageError(f"embeddings must be a 2-D array (images x dims), got shape {embeddings.shape}")
    if embeddings.shape[0] % 2:
        raise UsageError(f"{embeddings.shape[0]} embeddings: an odd count cannot form pairs (rows 2i, 2i+1)")
    if issame.ndim != 1 or len(issame) != embeddings.shape[0] // 2:
        raise UsageError(
            f"issame has {issame.size} entries but {embeddings.shape[0]} embeddings make "
            f"{embeddings.shape[0] // 2} pairs"
        )
    if embeddings_flip is not None and embeddings_flip.shape != embeddings.shape:
        raise UsageError(f"flip embeddings have shape {embeddings_flip.shape}, expected {embeddings.shape}")
    if not np.isfinite(embeddings).all() or (embeddings_flip is not None and not np.isfinite(embeddings_flip).all()):
        raise UsageError("embeddings contain NaN or infinite values")


def verify(
    embeddings: np.ndarray,
    issame: np.ndarray | Sequence[bool],
    embeddings_flip: np.ndarray | None = None,
    nfolds: int = 10,
    far_targets: Sequence[float] = roc_lib.DEFAULT_FAR_TARGETS,
    bootstrap: int = 0,
) -> VerificationResult:
    """Run the insightface verification protocol on raw embeddings (pairs = rows 2i, 2i+1).

    ``embeddings_flip`` (the embeddings of the horizontally flipped images) are added before normalisation, as
    insightface's ``test()`` does; leave it out for the no-flip numbers. ``bootstrap`` > 0 adds 95% percentile
    intervals (pairs resampled per class) for the pooled accuracy at the chosen threshold, AUC and TAR@FAR.
    """
    embeddings = np.asarray(embeddings)
    issame = as_issame(issame)
    _check_inputs(embeddings, issame, embeddings_flip)
    n_pairs = len(issame)
    if nfolds < 1 or nfolds > n_pairs:
        raise UsageError(f"nfolds must be between 1 and the number of pairs ({n_pairs}), got {nfolds}")
    dist = pair_distances(embeddings, embeddings_flip)
    folds = _run_folds(dist, issame, fold_slices(n_pairs, nfolds))
    similarities = 1.0 - dist / 2.0
    genuine, impostor = roc_lib.split_scores(similarities, issame)
    if len(genuine) == 0 or len(impostor) == 0:
        raise UsageError("verification needs both genuine and impostor pairs")
    fpr_curve, tpr_curve, _ = roc_lib.roc(similarities, issame)
    all_counts = _Counts.of(dist, issame, ACCURACY_THRESHOLDS)
    best_all = float(ACCURACY_THRESHOLDS[int(np.argmax(all_counts.accuracy()))])

    result = VerificationResult(
        accuracy=float(np.mean(folds.accuracy)),
        accuracy_std=float(np.std(folds.accuracy)),
        fold_accuracies=folds.accuracy,
        fold_thresholds=folds.threshold,
        val=float(np.mean(folds.val)),
        val_std=float(np.std(folds.val)),
        far=float(np.mean(folds.far)),
        fold_val=folds.val,
        fold_far=folds.far,
        fold_val_thresholds=folds.val_threshold,
        tpr=np.mean(np.array(folds.tpr), 0),
        fpr=np.mean(np.array(folds.fpr), 0),
        tar_at_far=roc_lib.tar_at_far(genuine, impostor, far_targets),
        auc=roc_lib.auc(fpr_curve, tpr_curve),
        eer=roc_lib.equal_error_rate(fpr_curve, tpr_curve),
        threshold=best_all,
        threshold_cosine=distance_to_cosine(best_all),
        n_pairs=n_pairs,
        n_genuine=len(genuine),
        n_impostor=len(impostor),
        nfolds=len(folds.accuracy),
        distances=dist,
        issame=issame,
        xnorm=_mean_norm(embeddings, embeddings_flip),
    )
    if bootstrap > 0:
        result.intervals = _bootstrap_intervals(genuine, impostor, result, bootstrap)
    return result


def _mean_norm(embeddings: np.ndarray, embeddings_flip: np.ndarray | None) -> float:
    """The mean raw norm over every embedding and mirror embedding: insightface's logged ``XNorm``."""
    raw_norms = np.linalg.norm(np.asarray(embeddings, dtype=np.float64), axis=1)
    if embeddings_flip is not None:
        raw_norms = np.concatenate([raw_norms, np.linalg.norm(np.asarray(embeddings_flip, dtype=np.float64), axis=1)])
    return float(raw_norms.mean())


@dataclass
class _Folds:
    """Per held-out fold: the accuracy protocol's threshold, accuracy and curves, and VAL/FAR at FAR 1e-3."""

    accuracy: list[float] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    tpr: list[np.ndarray] = field(default_factory=list)
    fpr: list[np.ndarray] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    far: list[float] = field(default_factory=list)
    val_threshold: list[float] = field(default_factory=list)


def _run_folds(dist: np.ndarray, issame: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> _Folds:
    """The reference's per-fold loop: thresholds chosen on the training folds, applied to the held-out one."""
    out = _Folds()
    for train, test in folds:
        train_counts = _Counts.of(dist[train], issame[train], ACCURACY_THRESHOLDS)
        best = int(np.argmax(train_counts.accuracy()))
        test_counts = _Counts.of(dist[test], issame[test], ACCURACY_THRESHOLDS)
        out.tpr.append(test_counts.tpr())
        out.fpr.append(test_counts.fpr())
        out.threshold.append(float(ACCURACY_THRESHOLDS[best]))
        out.accuracy.append(_accuracy_at(ACCURACY_THRESHOLDS[best], dist[test], issame[test]))

        val_counts = _Counts.of(dist[train], issame[train], VAL_THRESHOLDS)
        if val_counts.n_diff == 0:
            raise UsageError("every verification training split needs impostor pairs")
        val_threshold = threshold_at_far(val_counts.fpr(), VAL_THRESHOLDS, VAL_FAR_TARGET)
        val, far = _val_far_at(val_threshold, dist[test], issame[test])
        out.val.append(val)
        out.far.append(far)
        out.val_threshold.append(float(val_threshold))
    return out


def _bootstrap_intervals(
    genuine: np.ndarray, impostor: np.ndarray, result: VerificationResult, n_resamples: int
) -> dict[str, tuple[float, float]]:
    """95% intervals for pooled accuracy at the chosen threshold, AUC and each supported TAR@FAR."""
    cos_threshold = result.threshold_cosine

    def accuracy(g: np.ndarray, i: np.ndarray) -> float:
        # dist < t  <=>  cos > 1 - t/2
        return (np.count_nonzero(g > cos_threshold) + np.count_nonzero(i <= cos_threshold)) / (len(g) + len(i))

    def area(g: np.ndarray, i: np.ndarray) -> float:
        scores = np.concatenate([g, i])
        labels = np.concatenate([np.ones(len(g), bool), np.zeros(len(i), bool)])
        fpr, tpr, _ = roc_lib.roc(scores, labels)
        return roc_lib.auc(fpr, tpr)

    intervals = {
        "accuracy_at_threshold": roc_lib.bootstrap_interval(genuine, impostor, accuracy, n_resamples),
        "auc": roc_lib.bootstrap_interval(genuine, impostor, area, n_resamples),
    }
    for point in result.tar_at_far:
        if point.tar is None:
            continue
        far = point.far_target

        def tar(g: np.ndarray, i: np.ndarray, far: float = far) -> float | None:
            return roc_lib.tar_at_far(g, i, [far])[0].tar

        intervals[f"tar@far={far:g}"] = roc_lib.bootstrap_interval(genuine, impostor, tar, n_resamples)
    return intervals
