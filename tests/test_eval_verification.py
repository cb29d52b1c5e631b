"""The 10-fold verification protocol against insightface's own numbers (../shared/golden/verification)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facecli.errors import UsageError
from facecli.eval import verify
from facecli.eval.verification import fold_slices, threshold_at_far


@pytest.fixture(scope="module")
def golden(shared_dir):
    root = shared_dir / "golden" / "verification"
    return {
        "root": root,
        "expected": json.loads((root / "expected.json").read_text()),
        "embeddings": np.load(root / "embeddings.npy"),
        "flip": np.load(root / "embeddings_flip.npy"),
        "issame": np.load(root / "issame.npy"),
    }


@pytest.mark.parametrize("case", ["flip_fused", "no_flip"])
def test_golden_protocol_numbers(golden, case):
    flip = golden["flip"] if case == "flip_fused" else None
    result = verify(golden["embeddings"], golden["issame"], flip)
    expected = golden["expected"][case]
    dist_file = "expected_dist_flip.npy" if case == "flip_fused" else "expected_dist_noflip.npy"

    np.testing.assert_allclose(result.distances, np.load(golden["root"] / dist_file), rtol=0, atol=1e-12)
    assert result.accuracy == pytest.approx(expected["accuracy_mean"], abs=1e-9)
    assert result.accuracy_std == pytest.approx(expected["accuracy_std"], abs=1e-9)
    np.testing.assert_allclose(result.fold_accuracies, expected["accuracy_per_fold"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.fold_thresholds, expected["best_threshold_per_fold"], rtol=0, atol=1e-9)
    assert result.val == pytest.approx(expected["val"], abs=1e-9)
    assert result.val_std == pytest.approx(expected["val_std"], abs=1e-9)
    assert result.far == pytest.approx(expected["far"], abs=1e-9)
    np.testing.assert_allclose(result.fold_val, expected["val_per_fold"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.fold_far, expected["far_per_fold"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.fold_val_thresholds, expected["val_threshold_per_fold"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.tpr, expected["tpr"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.fpr, expected["fpr"], rtol=0, atol=1e-12)
    if case == "flip_fused":  # test() logs the mean raw norm over both embedding sets
        assert result.xnorm == pytest.approx(golden["expected"]["test_function"]["xnorm"], abs=1e-9)


def test_beyond_reference_metrics_are_consistent(golden):
    result = verify(golden["embeddings"], golden["issame"], golden["flip"])
    assert result.n_pairs == 6000 and result.n_genuine == 3000 and result.n_impostor == 3000
    tars = {p.far_target: p for p in result.tar_at_far}
    # 3000 impostors resolve FAR down to 1e-3; below that the number is reported as not measurable
    assert tars[1e-3].tar is not None and tars[1e-3].far_achieved <= 1e-3
    assert tars[1e-4].tar is None and "10000" in tars[1e-4].note
    # recount TAR@1e-3 by hand from the cosine similarities
    cos = result.similarities
    impostor = np.sort(cos[~result.issame])[::-1]
    threshold = impostor[3]  # at most 3 of 3000 impostors above it
    assert tars[1e-3].tar == np.mean(cos[result.issame] > threshold)
    assert tars[1e-1].tar >= tars[1e-2].tar >= tars[1e-3].tar
    assert result.threshold_cosine == pytest.approx(1 - result.threshold / 2)
    assert 0.5 < result.auc <= 1 and 0 < result.eer < 0.5
    # the EER sits where the error rates cross: between 1 - accuracy-ish bounds of this data
    assert abs(result.eer - (1 - result.accuracy)) < 0.03


def test_threshold_inversion_with_duplicate_far_values():
    """Old SciPy's interp1d on duplicates: last threshold of the lower FAR value, first of the next larger one."""
    thresholds = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    far = np.array([0.0, 0.0, 0.0005, 0.0005, 0.002, 0.002])
    expected = 0.3 + (0.001 - 0.0005) * (0.4 - 0.3) / (0.002 - 0.0005)
    assert threshold_at_far(far, thresholds, 1e-3) == pytest.approx(expected, abs=1e-15)
    assert threshold_at_far(np.array([0.0, 0.0001, 0.0002]), thresholds[:3], 1e-3) == 0.0  # never reaches it
    assert threshold_at_far(np.array([0.0, 0.001, 0.001, 0.003]), thresholds[:4], 1e-3) == 0.2  # exact hit


def test_folds_match_sklearn_kfold():
    from sklearn.model_selection import KFold

    for n, k in [(6000, 10), (203, 10), (200, 2), (7, 3)]:
        ours = fold_slices(n, k)
        theirs = list(KFold(n_splits=k, shuffle=False).split(np.arange(n)))
        for (a_train, a_test), (b_train, b_test) in zip(ours, theirs):
            np.testing.assert_array_equal(a_train, b_train)
            np.testing.assert_array_equal(a_test, b_test)


def test_bad_inputs_give_clear_errors():
    emb = np.random.default_rng(0).standard_normal((9, 8)).astype(np.float32)
    with pytest.raises(UsageError, match="odd"):
        verify(emb, np.zeros(4, bool))
    with pytest.raises(UsageError, match="issame has 3 entries but 8 embeddings make 4 pairs"):
        verify(emb[:8], np.zeros(3, bool))
    with pytest.raises(UsageError, match="flip embeddings"):
        verify(emb[:8], np.array([1, 0, 1, 0], bool), emb[:6])


def test_bootstrap_intervals_bracket_the_estimate(golden):
    pairs = np.arange(0, 6000, 10)  # every fold keeps genuine and impostor pairs
    rows = np.stack([2 * pairs, 2 * pairs + 1], axis=1).ravel()
    emb, flip, issame = golden["embeddings"][rows], golden["flip"][rows], golden["issame"][pairs]
    result = verify(emb, issame, flip, nfolds=10, bootstrap=50)
    lo, hi = result.intervals["auc"]
    assert lo <= result.auc <= hi and hi - lo < 0.05
    assert "tar@far=0.01" in result.intervals and "tar@far=0.001" not in result.intervals  # 300 impostors
