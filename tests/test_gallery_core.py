"""Gallery maths on synthetic embeddings: threshold calibration, exact search, open-set metrics, the gallery file."""

from __future__ import annotations

import numpy as np
import pytest

from facecli.errors import CorruptFileError, FacecliError, UsageError
from facecli.gallery.calibrate import calibrate, clopper_pearson, support_warning, threshold_for_rate
from facecli.gallery.metrics import open_set_report, search_outcomes
from facecli.gallery.search import ExactIndex, probe_batches, recall_at_k, top_k
from facecli.gallery.store import Gallery, l2_normalize

MODEL = {"spec": "m.onnx", "fingerprint": "abc123", "color": "RGB", "mean": [127.5], "std": [127.5],
         "embedding_size": 64, "flip": "sum"}


def unit(x: np.ndarray) -> np.ndarray:
    return l2_normalize(x)[0]


def identities(rng: np.random.Generator, n: int, per: int, dim: int = 64, noise: float = 0.6):
    """``n`` synthetic people with ``per`` images each: a random direction plus Gaussian noise per image."""
    centres = unit(rng.standard_normal((n, dim)))
    images = centres[:, None, :] + noise * rng.standard_normal((n, per, dim)) / np.sqrt(dim)
    return images.reshape(n * per, dim).astype(np.float32), np.repeat(np.arange(n), per)


def make_gallery(rng, n=30, per=4, dim=64):
    raw, labels = identities(rng, n, per, dim)
    raw = raw * rng.uniform(5, 30, size=(len(raw), 1)).astype(np.float32)  # raw norms, as a network gives
    names = [f"person_{i:03d}" for i in labels]
    paths = [f"/data/{names[j]}/{j}.jpg" for j in range(len(raw))]
    return Gallery.from_images(names, raw, paths, MODEL), raw, names, paths


# -- calibration ------------------------------------------------------------------------------------------------


def test_threshold_for_rate_is_the_lowest_that_meets_the_target():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=5000), 2).astype(np.float32)  # many ties
    for rate in (1e-3, 1e-2, 0.1, 0.37):
        t = threshold_for_rate(scores, rate)
        accepted = int((scores >= np.float32(t)).sum())
        assert accepted <= int(rate * len(scores))
        lower = np.nextafter(np.float32(t), np.float32(-np.inf))
        assert int((scores >= lower).sum()) > int(rate * len(scores))  # one step lower breaks the target


def test_calibrated_fpir_holds_on_held_out_strangers():
    rng = np.random.default_rng(1)
    gallery = unit(rng.standard_normal((300, 32)))
    strangers = unit(rng.standard_normal((40_000, 32)))
    cal, held_out = strangers[:20_000], strangers[20_000:]
    for metric, target in (("fpir", 0.01), ("fpir", 0.05), ("far", 1e-3)):
        result = calibrate(gallery, cal, target, metric)
        assert result.n_probes == 20_000 and result.n_comparisons == 20_000 * 300
        assert result.warnings == []
        scores = held_out @ gallery.T
        measured = (scores.max(axis=1) >= result.threshold).mean() if metric == "fpir" else (scores >= result.threshold).mean()
        n = len(held_out) if metric == "fpir" else scores.size
        sigma = np.sqrt(2 * target * (1 - target) / n)  # calibration and held-out samples are both binomial
        assert abs(measured - target) < 4 * sigma, (metric, target, measured)
        achieved = result.fpir if metric == "fpir" else result.far
        assert achieved <= target and result.threshold == (result.fpir_threshold if metric == "fpir" else result.far_threshold)


def test_fpir_is_much_larger_than_far_at_the_same_threshold():
    rng = np.random.default_rng(2)
    gallery = unit(rng.standard_normal((500, 32)))
    strangers = unit(rng.standard_normal((5000, 32)))
    result = calibrate(gallery, strangers, 1e-3, "far")
    # a threshold that accepts 1 comparison in 1000 lets through a large share of strangers searched over 500 people
    assert result.far <= 1e-3 and result.fpir > 0.2
    assert result.fpir_threshold > result.far_threshold
    lo, hi = result.fpir_ci95
    assert lo < result.fpir < hi


def test_too_few_impostors_are_flagged():
    assert "cannot be measured" in support_warning(1e-5, 10_000, "fpir")
    assert "only 5 false accepts" in support_warning(5e-4, 10_000, "fpir")
    assert support_warning(1e-3, 10_000, "fpir") is None
    rng = np.random.default_rng(3)
    result = calibrate(unit(rng.standard_normal((10, 16))), unit(rng.standard_normal((200, 16))), 1e-3)
    assert "cannot be measured on 200 impostor probes" in result.warnings[0] and result.fpir == 0.0


def test_clopper_pearson_matches_known_values():
    lo, hi = clopper_pearson(0, 100)
    assert lo == 0.0 and hi == pytest.approx(0.03621669, abs=1e-6)
    lo, hi = clopper_pearson(5, 100)
    assert lo == pytest.approx(0.01643, abs=1e-4) and hi == pytest.approx(0.11284, abs=1e-4)


def test_bad_targets_are_usage_errors():
    g = np.eye(4, dtype=np.float32)
    with pytest.raises(UsageError, match="between 0 and 1"):
        calibrate(g, g, 1.5)
    with pytest.raises(UsageError, match="unknown rate"):
        calibrate(g, g, 0.1, "eer")


# -- search -----------------------------------------------------------------------------------------------------


def test_exact_search_matches_a_full_sort():
    rng = np.random.default_rng(4)
    templates = unit(rng.standard_normal((1000, 48)))
    probes = unit(rng.standard_normal((37, 48)))
    scores, idx = ExactIndex(templates).search(probes, 5)
    full = probes @ templates.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=0, atol=1e-6)
    assert recall_at_k(idx, expected) == 1.0


def test_float16_search_agrees_with_float32():
    rng = np.random.default_rng(5)
    templates = unit(rng.standard_normal((2000, 64)))
    probes = unit(templates[:200] + 0.3 * rng.standard_normal((200, 64)).astype(np.float32) / 8)
    s32, i32 = ExactIndex(templates).search(probes, 3)
    s16, i16 = ExactIndex(templates.astype(np.float16)).search(probes, 3)
    np.testing.assert_array_equal(i16[:, 0], i32[:, 0])
    np.testing.assert_allclose(s16, s32, atol=2e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_exact_search_in_blocks_equals_one_block(dtype, monkeypatch):
    """Chunks of probes against blocks of templates with a running top-k give the one-matrix answer, ties included
    (lower template index first), whatever the block and chunk sizes."""
    import facecli.gallery.search as search

    rng = np.random.default_rng(6)
    templates = unit(rng.standard_normal((1000, 32))).astype(dtype)
    templates[700] = templates[3]  # a tie across blocks: 3 must come before 700
    probes = np.concatenate([templates[[3, 10, 999]].astype(np.float32), unit(rng.standard_normal((47, 32)))])
    whole = ExactIndex(templates).search(probes, 7)
    monkeypatch.setattr(search, "PROBE_CHUNK", 16)  # 50 probes: chunks of 16, 16, 16 and 2
    monkeypatch.setattr(search, "SCORE_BLOCK", 16 * 97)  # 97 templates a block for 16 probes, 776 for 2, 517 for 3
    for n_probes in (50, 3, 1):
        scores, idx = ExactIndex(templates).search(probes[:n_probes], 7)
        np.testing.assert_array_equal(idx, whole[1][:n_probes])
        # other GEMM shapes round differently; a few float16 probes take the half-precision kernel
        np.testing.assert_allclose(scores, whole[0][:n_probes], atol=1e-6 if dtype == np.float32 else 2e-3)
    assert idx[0, :2].tolist() == [3, 700]


def test_probe_batches_bound_the_score_matrix():
    batches = list(probe_batches(1000, 10_000_000))
    assert all(b.stop - b.start <= 6 for b in batches) and batches[-1].stop == 1000
    assert list(probe_batches(3, 10)) == [slice(0, 3)]


def test_top_k_larger_than_gallery():
    scores, idx = top_k(np.array([[0.1, 0.9, 0.5]], np.float32), 10)
    assert idx.tolist() == [[1, 2, 0]] and scores.shape == (1, 3)


# -- open-set metrics -------------------------------------------------------------------------------------------


def test_open_set_metrics_on_a_hand_made_example():
    templates = np.eye(3, dtype=np.float32)
    # mated: p0 -> id0 found (0.9); p1 -> id1 but id2 scores higher (rank 2); p2 -> id2 found with low score 0.3
    # non-mated: best scores 0.8, 0.5, 0.2, 0.1
    probes = np.array(
        [[0.9, 0.1, 0.0], [0.0, 0.6, 0.7], [0.1, 0.0, 0.3], [0.8, 0, 0], [0, 0.5, 0], [0, 0, 0.2], [0.1, 0, 0]],
        np.float32,
    )
    mates = np.array([0, 1, 2, -1, -1, -1, -1])
    out = search_outcomes(templates, probes, mates)
    assert out.mate_rank.tolist() == [1, 2, 1, 0, 0, 0, 0]
    report = open_set_report(out, fpirs=(0.25, 0.5, 1e-3), threshold=0.4)
    assert report.n_mated == 3 and report.n_nonmated == 4
    assert report.rank1 == pytest.approx(2 / 3) and report.rank5 == 1.0
    # FPIR 0.25 allows 1 of 4 strangers: threshold just above 0.5 -> only p0 (0.9) detected and identified
    p25 = report.at_fpir[0]
    assert p25.fpir == 0.25 and p25.dir == pytest.approx(1 / 3) and p25.fnir == pytest.approx(2 / 3)
    assert 0.5 < p25.threshold < 0.51
    # FPIR 0.5 allows 2: threshold just above 0.2 -> p0 and p2 (0.3) identified
    assert report.at_fpir[1].dir == pytest.approx(2 / 3)
    assert any("1000 non-mated" in note for note in report.notes)  # 1e-3 is not supported by 4 strangers
    at = report.at_threshold
    assert at.fpir == 0.5 and at.dir == pytest.approx(1 / 3)
    assert report.det_fpir.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert report.det_fnir.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])


# -- the gallery file -------------------------------------------------------------------------------------------


def test_gallery_templates_are_unit_means(tmp_path):
    rng = np.random.default_rng(6)
    gallery, raw, names, _ = make_gallery(rng, n=5, per=3)
    assert gallery.size == 5 and gallery.embeddings.shape == (15, 64)
    first = unit(raw[:3]).mean(axis=0)
    np.testing.assert_allclose(gallery.templates[0], first / np.linalg.norm(first), atol=1e-6)
    np.testing.assert_allclose(gallery.norms, np.linalg.norm(raw, axis=1), rtol=1e-6)
    weighted = Gallery.from_images(names, raw, [str(i) for i in range(15)], MODEL, weighting="norm")
    w = np.linalg.norm(raw[:3], axis=1)
    expect = (unit(raw[:3]) * w[:, None]).sum(axis=0)
    np.testing.assert_allclose(weighted.templates[0], expect / np.linalg.norm(expect), atol=1e-6)


def test_gallery_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    gallery, *_ = make_gallery(rng)
    gallery = gallery.with_threshold({"metric": "fpir", "threshold": 0.41})
    path = tmp_path / "g.npz"
    gallery.save(path)
    loaded = Gallery.load(path)
    np.testing.assert_array_equal(loaded.templates, gallery.templates)
    np.testing.assert_array_equal(loaded.identities, gallery.identities)
    np.testing.assert_array_equal(loaded.paths, gallery.paths)
    assert loaded.threshold == {"metric": "fpir", "threshold": 0.41, "gallery_size": 30}
    assert loaded.model == MODEL and not loaded.threshold_is_stale()
    assert [p.name for p in tmp_path.iterdir()] == ["g.npz"]


def test_gallery_save_is_atomic(tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    gallery, *_ = make_gallery(rng)
    path = tmp_path / "g.npz"
    gallery.save(path)
    before = path.read_bytes()

    def interrupted(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gallery.remove(["person_000"]).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.npz"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable gallery"),
        (lambda p: p.write_bytes(b"hello"), "not a readable gallery"),
        (lambda p: np.savez(open(p, "wb"), templates=np.zeros((2, 2))), "not a facecli gallery"),
    ],
)
def test_corrupt_gallery_is_reported_clearly(tmp_path, damage, message):
    rng = np.random.default_rng(9)
    gallery, *_ = make_gallery(rng)
    path = tmp_path / "g.npz"
    gallery.save(path)
    damage(path)
    with pytest.raises(CorruptFileError, match=message):
        Gallery.load(path)


def test_gallery_with_pickled_objects_is_refused_not_unpickled(tmp_path):
    rng = np.random.default_rng(10)
    gallery, *_ = make_gallery(rng)
    path = tmp_path / "g.npz"
    gallery.save(path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["identities"] = np.array([object()] * gallery.size, dtype=object)  # stored as a pickle in the .npy
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(CorruptFileError, match="not a readable gallery.*pickle"):
        Gallery.load(path)


def test_inconsistent_gallery_is_reported(tmp_path):
    rng = np.random.default_rng(11)
    gallery, *_ = make_gallery(rng)
    path = tmp_path / "g.npz"
    gallery.save(path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["labels"] = arrays["labels"] + 1000
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(CorruptFileError, match="labels out of range"):
        Gallery.load(path)
    with pytest.raises(UsageError, match="gallery not found"):
        Gallery.load(tmp_path / "missing.npz")


def test_fingerprint_mismatch_is_refused():
    rng = np.random.default_rng(12)
    gallery, *_ = make_gallery(rng)
    gallery.check_model("abc123")
    with pytest.raises(FacecliError, match="fingerprint ffff .*differs from the gallery's abc123"):
        gallery.check_model("ffff", "other.onnx")


def test_add_and_remove_keep_search_consistent():
    rng = np.random.default_rng(13)
    full, raw, names, paths = make_gallery(rng, n=20, per=4)
    half = 40  # the first 10 people
    partial = Gallery.from_images(names[:half], raw[:half], paths[:half], MODEL).with_threshold({"threshold": 0.3})
    grown, added = partial.add(names[half:], raw[half:], paths[half:])
    assert added == 40 and grown.threshold_is_stale()
    np.testing.assert_array_equal(grown.identities, full.identities)
    np.testing.assert_allclose(grown.templates, full.templates, atol=1e-6)
    again, added = grown.add(names[:8], raw[:8], paths[:8])  # already enrolled paths are skipped
    assert added == 0 and again is grown

    probes = unit(raw[::4] + 0.05 * rng.standard_normal(raw[::4].shape).astype(np.float32))
    _, idx_full = ExactIndex(full.templates).search(probes, 3)
    _, idx_grown = ExactIndex(grown.templates).search(probes, 3)
    np.testing.assert_array_equal(idx_full, idx_grown)

    removed = grown.remove(["person_003", "person_017"])
    assert removed.size == 18 and "person_003" not in removed.identities
    assert len(removed.paths) == 72 and not any("person_003" in p for p in removed.paths)
    rebuilt_names = [n for n in names if n not in ("person_003", "person_017")]
    keep = [i for i, n in enumerate(names) if n in rebuilt_names]
    rebuilt = Gallery.from_images(rebuilt_names, raw[keep], [paths[i] for i in keep], MODEL)
    np.testing.assert_allclose(removed.templates, rebuilt.templates, atol=1e-6)
    _, idx = ExactIndex(removed.templates).search(probes, 1)
    found = removed.identities[idx[:, 0]]
    assert "person_003" not in found and "person_017" not in found
    kept = [i for i in range(20) if i not in (3, 17)]
    assert found[kept].tolist() == [f"person_{i:03d}" for i in kept]
    with pytest.raises(UsageError, match="not in the gallery: nobody"):
        removed.remove(["nobody"])


# -- FAISS (optional dependency) --------------------------------------------------------------------------------


def test_faiss_index_agrees_with_exact_search(tmp_path):
    pytest.importorskip("faiss")
    from facecli.gallery.search import FaissIndex

    rng = np.random.default_rng(14)
    # clustered templates, like a face gallery (people who look alike), not uniform noise
    centres = unit(rng.standard_normal((50, 64)))
    templates = unit(centres[rng.integers(0, 50, 5000)] + 0.6 * rng.standard_normal((5000, 64)).astype(np.float32) / 8)
    probes = unit(templates[:300] + 0.3 * rng.standard_normal((300, 64)).astype(np.float32) / 8)
    _, exact = ExactIndex(templates).search(probes, 5)
    flat_scores, flat = FaissIndex(templates).search(probes, 5)
    assert recall_at_k(flat, exact) > 0.999
    np.testing.assert_allclose(flat_scores[:, 0], (probes * templates[flat[:, 0]]).sum(axis=1), atol=1e-5)
    cache = tmp_path / "g.npz.faiss.npz"
    _, ivf = FaissIndex(templates, cache=cache, ivf_above=1000, nprobe=16).search(probes, 5)  # approximate
    assert recall_at_k(ivf, exact) > 0.9 and (ivf[:, 0] == np.arange(300)).mean() > 0.95
    assert cache.is_file()
    again = FaissIndex(templates, cache=cache, ivf_above=1000, nprobe=16)  # loaded from the cache
    np.testing.assert_array_equal(again.search(probes, 5)[1], ivf)
    changed = FaissIndex(templates[:4000], cache=cache, ivf_above=1000)  # other templates: rebuilt, not reused
    assert changed.index.ntotal == 4000


@pytest.mark.parametrize("kind,structure", [("pq", "pq-fastscan"), ("ivfpq", "ivf-pq"), ("hnsw", "hnsw-sq8")])
def test_faiss_compressed_indexes_rerank_exactly(kind, structure, tmp_path):
    """PQ, IVF-PQ and HNSW-SQ8 return exact cosines of re-ranked candidates: recall@1 of enrolled mates ≥ 0.99."""
    pytest.importorskip("faiss")
    from facecli.gallery.search import FaissIndex

    rng = np.random.default_rng(16)
    centres = unit(rng.standard_normal((200, 64)))
    templates = unit(centres[rng.integers(0, 200, 12000)] + rng.standard_normal((12000, 64)).astype(np.float32) / 8)
    probes = unit(templates[:300] + rng.standard_normal((300, 64)).astype(np.float32) / 24)
    exact_scores, exact = ExactIndex(templates).search(probes, 5)
    index = FaissIndex(templates, cache=tmp_path / f"{kind}.npz", kind=kind)
    assert index.structure == structure and index.rerank == (64 if kind == "hnsw" else 256)
    scores, idx = index.search(probes, 5)
    assert recall_at_k(idx[:, :1], exact[:, :1]) >= 0.99 and recall_at_k(idx, exact) > 0.95
    np.testing.assert_allclose(scores, np.einsum("pkd,pd->pk", templates[idx], probes), atol=1e-5)  # exact scores
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first
    per_template = index.bytes_per_template()
    if kind == "ivfpq":  # 8 sub-quantisers x 4 bits + 8-byte id + the cell centroids' share
        cells = int(4 * np.sqrt(12000))
        assert per_template == pytest.approx(4 + 8 + cells * 64 * 4 / 12000)
    elif kind == "pq":  # 8 sub-quantisers x 4 bits, nothing else (12000 fills whole blocks of 32)
        assert per_template == 4
    else:  # 64 one-byte codes + 2x32 level-0 links of 4 bytes + upper levels and bookkeeping
        assert 64 + 256 < per_template < 64 + 400
    reloaded = FaissIndex(templates, cache=tmp_path / f"{kind}.npz", kind=kind)  # from the cache
    np.testing.assert_array_equal(reloaded.search(probes, 5)[1], idx)


def test_templates_digest_covers_every_block(monkeypatch):
    """The FAISS cache key hashes the templates block by block on all cores: every byte still counts."""
    import hashlib

    import facecli.gallery.search as search

    monkeypatch.setattr(search, "DIGEST_BLOCK", 1000)  # 4,000 bytes of templates: 4 blocks
    templates = unit(np.random.default_rng(20).standard_normal((125, 8)))
    digest = search.templates_digest(templates)
    assert digest == search.templates_digest(templates.copy())  # the same bytes, the same key
    for row in (0, 40, 124):  # a change in the first, a middle and the last block
        changed = templates.copy()
        changed[row, 3] = np.nextafter(changed[row, 3], np.float32(2))
        assert search.templates_digest(changed) != digest
    assert search.templates_digest(templates.astype(np.float16)) != digest
    assert search.templates_digest(np.zeros((0, 8), np.float32)) == hashlib.sha256(b"").hexdigest()


def test_faiss_small_galleries_use_the_exact_flat_index():
    pytest.importorskip("faiss")
    from facecli.gallery.search import FaissIndex, build_index

    templates = unit(np.random.default_rng(17).standard_normal((500, 32)))
    for name in ("faiss", "faiss-ivfpq", "faiss-hnsw"):
        index = build_index(name, templates)
        assert isinstance(index, FaissIndex) and index.structure == "flat" and index.rerank == 0
        assert index.bytes_per_template() == 32 * 4
        np.testing.assert_array_equal(index.search(templates[:20], 3)[1], ExactIndex(templates).search(
            templates[:20], 3)[1])
    with pytest.raises(UsageError, match="--search-width applies to the FAISS indexes"):
        build_index("exact", templates, search_width=8)
    with pytest.raises(UsageError, match="at least 1"):
        build_index("faiss", templates, search_width=0)


def test_faiss_search_width_sets_nprobe_ef_search_and_candidates():
    faiss = pytest.importorskip("faiss")
    from facecli.gallery.search import build_index

    templates = unit(np.random.default_rng(18).standard_normal((10000, 16)))
    ivf = build_index("faiss-ivfpq", templates, search_width=7)
    assert faiss.extract_index_ivf(ivf.index).nprobe == 7
    hnsw = build_index("faiss-hnsw", templates, search_width=40)
    assert faiss.downcast_index(hnsw.index).hnsw.efSearch == 40
    assert faiss.downcast_index(build_index("faiss-hnsw", templates).index).hnsw.efSearch == 128
    # the exhaustive PQ scan has no cells or beam: its width is the number of candidates re-scored exactly
    assert build_index("faiss-pq", templates, search_width=100).rerank == 100
    assert build_index("faiss-pq", templates).rerank == 256


def test_faiss_missing_is_a_clear_usage_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
    from facecli.gallery.search import build_index

    with pytest.raises(UsageError, match="--index faiss needs the faiss-cpu package"):
        build_index("faiss", np.eye(3, dtype=np.float32))
    with pytest.raises(UsageError, match="unknown index 'annoy'"):
        build_index("annoy", np.eye(3, dtype=np.float32))


def test_recall_of_an_approximate_index_is_measured_on_a_bounded_sample(monkeypatch):
    """Checking an index against exact search on every probe would cost more than the index saves on a huge
    gallery: a fixed random sample of RECALL_PROBES probes is checked, and the figures are those of the sample."""
    pytest.importorskip("faiss")
    from pathlib import Path

    import facecli.gallery.workflow as workflow
    from facecli.gallery.workflow import Probes, search_gallery

    rng = np.random.default_rng(19)
    gallery, *_ = make_gallery(rng, n=10, per=3)
    embeddings = unit(gallery.templates[rng.integers(0, 10, 40)] + rng.standard_normal((40, 64)).astype(np.float32))
    probes = Probes(paths=[Path(f"{i}.png") for i in range(40)], identities=[None] * 40, embeddings=embeddings,
                    failures=[])
    checked: list[int] = []
    exact_search = workflow.ExactIndex.search

    def spy(self, queries, k):
        checked.append(len(queries))
        return exact_search(self, queries, k)

    monkeypatch.setattr(workflow, "RECALL_PROBES", 8)
    monkeypatch.setattr(workflow.ExactIndex, "search", spy)
    found = search_gallery(gallery, probes, 0.5, k=3, index="faiss-pq")
    assert found.recall_probes == 8 and checked == [8]  # 8 of the 40 probes, in one exact search
    assert (found.recall_at_1, found.recall_at_k) == (1.0, 1.0)  # a 30-template gallery: the exact flat index
    assert len(found.records) == 40  # every probe is still answered
    again = search_gallery(gallery, probes, 0.5, k=3, index="faiss-pq")
    assert again.recall_probes == 8  # the same sample each time


def test_search_decisions_and_failures_in_records():
    from pathlib import Path

    from facecli.gallery.workflow import Probes, search_gallery, threshold_of

    rng = np.random.default_rng(15)
    gallery, raw, names, paths = make_gallery(rng, n=10, per=3)
    probes = Probes(
        paths=[Path("a.png"), Path("b.png")],
        identities=[None, None],
        embeddings=np.stack([gallery.templates[4], unit(rng.standard_normal((1, 64)))[0]]),
        failures=[{"path": "c.png", "status": "no_face", "reason": "no face detected"}],
    )
    with pytest.raises(UsageError, match="no calibrated threshold"):
        threshold_of(gallery, None)
    result = search_gallery(gallery, probes, threshold_of(gallery.with_threshold({"threshold": 0.5}), None), k=3)
    a, b, c = result.records
    assert a["decision"] == "person_004" and a["score"] == pytest.approx(1.0, abs=1e-5) and len(a["top_k"]) == 3
    assert b["decision"] == "unknown" and b["score"] < 0.5
    assert c == {"probe": "c.png", "status": "no_face", "reason": "no face detected", "decision": None,
                 "score": None, "top_k": []}
    assert result.recall_at_k is None
    if __import__("importlib").util.find_spec("faiss"):
        found = search_gallery(gallery, probes, 0.5, k=3, index="faiss-ivfpq")
        assert (found.recall_at_k, found.recall_at_1, found.index_bytes_per_template) == (1.0, 1.0, 64 * 4)
        assert found.recall_probes == 2


def test_calibrate_pairs_uses_impostor_pair_scores_only():
    from facecli.gallery.calibrate import calibrate_pairs

    scores = np.linspace(-0.2, 0.6, 1000).astype(np.float32)
    result = calibrate_pairs(scores, 0.01)
    assert result.n_comparisons == 1000 and result.far == 0.01 and result.fpir is None
    assert scores[-11] < result.threshold <= scores[-10]  # the 10 highest scores are accepted, the 11th is not
    assert "per-comparison FAR only" in result.warnings[0] and len(result.warnings) == 1
    assert "cannot be measured" in calibrate_pairs(scores, 1e-4).warnings[1]
