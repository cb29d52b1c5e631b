"""``facecli eval --quality-threshold``: the raw-embedding norm as face quality (MagFace/AdaFace)."""

from __future__ import annotations

import numpy as np
import pytest

from facecli.eval.roc import auc, roc
from facecli.eval.runner import RunOptions, verify_with_quality


def _synthetic(tmp_path, n_pairs: int = 300, seed: int = 0):
    """Pairs of 64-d embeddings; one image in every fifth pair is a blurry face: small norm, mostly noise."""
    rng = np.random.default_rng(seed)
    issame = np.tile([True, False], n_pairs // 2)
    rows = []
    low = np.zeros(n_pairs, bool)
    for i, same in enumerate(issame):
        a = rng.normal(size=64)
        b = a + rng.normal(size=64) if same else rng.normal(size=64)
        a, b = 20 * a / np.linalg.norm(a), 20 * b / np.linalg.norm(b)
        if i % 5 == 0:  # a low-quality image: norm about 5 and its identity drowned in noise
            b = 0.1 * b + 5 * rng.normal(size=64) / 8
            low[i] = True
        rows += [a, b]
    emb = np.array(rows, dtype=np.float32)
    np.save(tmp_path / "emb.npy", emb)
    np.save(tmp_path / "issame.npy", issame)
    return emb, issame, low


def test_quality_distribution_and_threshold(run_cli, tmp_path):
    emb, issame, low = _synthetic(tmp_path)
    norms = np.linalg.norm(emb.astype(np.float64), axis=1)
    args = ["eval", "--embeddings", str(tmp_path / "emb.npy"), "--issame", str(tmp_path / "issame.npy"), "--json"]

    plain = run_cli(*args)
    assert plain.returncode == 0, plain.stderr
    base = plain.json()["results"][0]
    q = base["quality"]
    assert q["norm_min"] == pytest.approx(norms.min())
    assert q["norm_median"] == pytest.approx(np.median(norms))
    assert q["norm_max"] == pytest.approx(norms.max())
    assert q["threshold"] is None

    filtered = run_cli(*args, "--quality-threshold", "12")
    assert filtered.returncode == 0, filtered.stderr
    out = filtered.json()["results"][0]
    fq = out["quality"]
    assert fq["low_quality_pairs"] == int(low.sum()) == 60
    assert fq["low_quality_images"] == 60
    assert fq["pooled_genuine"] + fq["pooled_impostor"] == 240
    # the 10-fold protocol still scores every pair ...
    assert out["accuracy"] == base["accuracy"] and out["n_pairs"] == 300
    assert out["fold_accuracies"] == base["fold_accuracies"]
    # ... while the pooled ROC is that of the good pairs only, and better than with the noisy ones
    keep = ~low
    a, b = emb[0::2][keep].astype(np.float64), emb[1::2][keep].astype(np.float64)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    fpr, tpr, _ = roc(cos, issame[keep])
    assert out["auc"] == pytest.approx(auc(fpr, tpr), abs=1e-12)
    assert out["auc"] > base["auc"] + 0.01
    assert out["auc"] == 1.0
    assert "left out of TAR@FAR" in run_cli(*args[:-1], "--quality-threshold", "12").stderr


def test_threshold_that_leaves_no_pairs_is_a_usage_error(run_cli, tmp_path):
    _synthetic(tmp_path, n_pairs=20)
    res = run_cli(
        "eval", "--embeddings", str(tmp_path / "emb.npy"), "--issame", str(tmp_path / "issame.npy"),
        "--quality-threshold", "1000",
    )
    assert res.returncode == 2
    assert "leaves 0 genuine and 0 impostor pairs" in res.stderr
    assert "Traceback" not in res.stderr


def test_quality_uses_unflipped_embedding_and_concat_flip(tmp_path):
    emb, issame, low = _synthetic(tmp_path, n_pairs=40, seed=1)
    flipped = emb * 3.0  # a larger norm in the mirror image must not lift the quality of a face
    result, quality = verify_with_quality(emb, issame, flipped, RunOptions("concat", 10, quality_threshold=12))
    assert quality.n_low_pairs == int(low.sum()) == 8
    assert np.allclose(quality.norms, np.linalg.norm(emb, axis=1))
    unfiltered, _ = verify_with_quality(emb, issame, flipped, RunOptions("concat", 10))
    assert result.accuracy == unfiltered.accuracy
    assert result.n_pairs == 40


def test_model_without_quality_metadata_warns_but_applies_threshold(run_cli, shared_dir):
    model = shared_dir / "models" / "mobilefacenet_foamliu.onnx"
    tiny = shared_dir / "golden" / "verification" / "tiny.bin"
    imagenet = ["--mean", "123.675,116.28,103.53", "--std", "58.395,57.12,57.375"]
    base = run_cli("eval", "-m", model, "--bench", tiny, "--nfolds", "2", *imagenet, "--json")
    assert base.returncode == 0, base.stderr
    q = base.json()["results"][0]["quality"]
    assert 0 < q["norm_min"] < q["norm_median"] < q["norm_max"]
    res = run_cli("eval", "-m", model, "--bench", tiny, "--nfolds", "2", *imagenet, "--json",
                  "--quality-threshold", str(q["norm_median"]))
    assert res.returncode == 0, res.stderr
    assert "may not encode face quality" in res.stderr
    out = res.json()["results"][0]
    # at the median norm half the 80 images are low quality, so at least 20 of the 40 pairs have one
    assert out["quality"]["low_quality_images"] == 40
    assert 20 <= out["quality"]["low_quality_pairs"] < 40
    pooled = out["quality"]["pooled_genuine"] + out["quality"]["pooled_impostor"]
    assert pooled == 40 - out["quality"]["low_quality_pairs"]
    assert out["accuracy"] == base.json()["results"][0]["accuracy"]
