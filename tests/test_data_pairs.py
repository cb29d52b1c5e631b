"""Verification pairs: pairs.txt / CSV parsing, --make-pairs folds, .bin writing and its warnings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facecli.data.benchmarks import load_bin
from facecli.data.pairs import Pair, build_bin, make_pairs, read_pairs_csv, read_pairs_txt
from facecli.errors import UsageError


@pytest.fixture(scope="module")
def lfw(shared_dir: Path) -> Path:
    return shared_dir / "data" / "lfw-sample"


@pytest.fixture(scope="module")
def golden_src(shared_dir: Path) -> Path:
    return shared_dir / "golden" / "recordio" / "src"


def test_lfw_pairs_txt_with_header(lfw):
    pairs = read_pairs_txt(lfw / "pairs_sample.txt", lfw)
    assert len(pairs) == 200
    assert [p.same for p in pairs[:100]] == [True] * 50 + [False] * 50  # fold 0: 50 genuine then 50 impostor
    assert [p.fold for p in pairs] == [0] * 100 + [1] * 100
    assert pairs[0] == Pair(lfw / "Ana_Guevara" / "Ana_Guevara_0001.jpg", lfw / "Ana_Guevara" / "Ana_Guevara_0004.jpg",
                            True, 0)
    assert all(p.a.is_file() and p.b.is_file() for p in pairs)
    impostor = pairs[50]
    assert impostor.a.parent.name != impostor.b.parent.name


def test_pairs_txt_forms_without_header_and_bad_lines(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("Ann 1 2\nAnn\t3\tBob\t12\n\n", encoding="utf-8")
    pairs = read_pairs_txt(path, Path("/r"), ext="png")
    assert pairs == [Pair(Path("/r/Ann/Ann_0001.png"), Path("/r/Ann/Ann_0002.png"), True),
                     Pair(Path("/r/Ann/Ann_0003.png"), Path("/r/Bob/Bob_0012.png"), False)]
    path.write_text("Ann 1 2\nAnn 1 x 2 5\n", encoding="utf-8")
    with pytest.raises(UsageError, match="line 2"):
        read_pairs_txt(path, tmp_path)


def test_pairs_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("path1,path2,same\na/1.jpg,a/2.jpg,1\na/1.jpg,/abs/b.jpg,false\n", encoding="utf-8")
    assert read_pairs_csv(path, tmp_path) == [
        Pair(tmp_path / "a/1.jpg", tmp_path / "a/2.jpg", True),
        Pair(tmp_path / "a/1.jpg", Path("/abs/b.jpg"), False),
    ]
    path.write_text("a.jpg,b.jpg,1\na.jpg,c.jpg,maybe\n", encoding="utf-8")
    with pytest.raises(UsageError, match="row 2: 'same' must be"):
        read_pairs_csv(path, tmp_path)


def test_make_pairs_balanced_disjoint_folds_seeded(lfw):
    pairs = make_pairs(lfw, 200, seed=3)
    assert len(pairs) == 200
    assert [p.fold for p in pairs] == [f for f in range(10) for _ in range(20)]
    people_of_fold = [set() for _ in range(10)]
    for p in pairs:
        people_of_fold[p.fold] |= {p.a.parent.name, p.b.parent.name}
    for i in range(10):
        fold = pairs[20 * i : 20 * i + 20]
        assert sum(p.same for p in fold) == 10  # balanced in every fold
        for j in range(i):
            assert not people_of_fold[i] & people_of_fold[j]  # identity-disjoint folds
    for p in pairs:
        assert (p.a.parent.name == p.b.parent.name) == p.same and p.a != p.b
    assert len({(p.a, p.b) for p in pairs}) == 200  # no repeated pair
    assert make_pairs(lfw, 200, seed=3) == pairs
    assert make_pairs(lfw, 200, seed=4) != pairs
    with pytest.raises(UsageError, match="multiple of 20"):
        make_pairs(lfw, 30)


def test_bin_from_aligned_crops_round_trips(golden_src, tmp_path):
    files = sorted(golden_src.rglob("*.jpg"))
    pairs = [Pair(files[i], files[i + 1], files[i].parent == files[i + 1].parent) for i in range(0, 20, 2)]
    report = build_bin(pairs, tmp_path / "x.bin")
    assert report.pairs == 10 and report.images == 20 and report.wrong_size == 0
    assert report.unaligned == [] and report.label_mismatch == []
    bins, issame = load_bin(tmp_path / "x.bin")
    assert bins == [f.read_bytes() for f in files[:20]]  # stored unchanged, pair i = images 2i and 2i+1
    assert issame.tolist() == [p.same for p in pairs]


def test_bin_warnings_missing_wrong_size_mislabelled(lfw, golden_src, tmp_path):
    aligned = sorted(golden_src.rglob("*.jpg"))
    raw = lfw / "Al_Gore" / "Al_Gore_0005.jpg"
    pairs = [
        Pair(aligned[0], aligned[1], True),
        Pair(aligned[0], aligned[6], True),  # different folders marked same
        Pair(aligned[2], tmp_path / "gone.jpg", False),  # missing
        Pair(aligned[3], raw, False),  # 250x250, not aligned
    ]
    report = build_bin(pairs, tmp_path / "w.bin")
    assert report.pairs == 3 and len(report.missing) == 1 and "gone.jpg" in report.missing[0]
    assert report.wrong_size == 1 and report.sizes == {"112x112": 5, "250x250": 1}  # distinct files
    assert len(report.label_mismatch) == 1
    text = " ".join(report.warnings)
    assert "dropped" in text and "not 112x112" in text and "disagrees with their folder names" in text
    resized = build_bin(pairs, tmp_path / "r.bin", resize=(112, 112))
    assert resized.resized == 1 and resized.wrong_size == 0
    from facecli.imageio import decode_image

    bins, _ = load_bin(tmp_path / "r.bin")
    assert decode_image(bins[-1]).shape == (112, 112, 3)


def test_cli_pairs_txt_and_make_pairs(lfw, tmp_path, run_cli):
    res = run_cli("pack", "pairs", lfw / "pairs_sample.txt", tmp_path / "lfw.bin", "--resize", "112", "--json")
    assert res.returncode == 0, res.stderr
    assert res.json()["pairs"] == 200 and res.json()["resized"] == 203 and res.json()["wrong_size"] == 0
    bins, issame = load_bin(tmp_path / "lfw.bin")
    assert len(bins) == 400 and issame.sum() == 100
    res = run_cli("pack", "pairs", lfw, tmp_path / "made.bin", "--make-pairs", "100", "--seed", "1", "--strict")
    assert res.returncode == 1 and "--strict" in res.stderr  # raw LFW photos are not 112x112
    assert not (tmp_path / "made.bin").exists()
    res = run_cli("pack", "pairs", lfw, tmp_path / "made.bin", "--make-pairs", "100", "--seed", "1", "-q")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "made.pairs.csv").read_text(encoding="utf-8").startswith("path1,path2,same,fold\n")
    assert np.count_nonzero(load_bin(tmp_path / "made.bin")[1]) == 50


def _shifted(rgb: np.ndarray, dx: int, dy: int) -> np.ndarray:
    import cv2

    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(rgb, matrix, (rgb.shape[1], rgb.shape[0]), borderMode=cv2.BORDER_REPLICATE)


def test_alignment_check_passes_facecli_crops_and_flags_unaligned_ones(lfw, tmp_path, run_cli):
    """facecli's own aligned crops must pass; the raw photos resized to 112 and off-centre crops must not."""
    import cv2

    from facecli.imageio import encode_image, read_image

    aligned = tmp_path / "aligned"
    res = run_cli("align", lfw, aligned, "--select", "center", "--workers", "2", "--quiet")
    assert res.returncode == 0, res.stderr
    res = run_cli("pack", "pairs", aligned, tmp_path / "x.bin", "--make-pairs", "60", "--json")
    assert res.returncode == 0, res.stderr
    assert "do not look like" not in res.stderr

    crops = sorted(aligned.rglob("*.jpg"))
    assert len(crops) > 200
    report = build_bin([Pair(a, b, a.parent == b.parent) for a, b in zip(crops[0::2], crops[1::2])],
                       tmp_path / "all.bin")
    assert report.unaligned == []  # every crop facecli aligned passes

    bad = tmp_path / "bad"
    bad.mkdir()
    raw_files, off_files = [], []
    photos = sorted(lfw.rglob("*.jpg"))
    for i in range(8):
        raw = cv2.resize(read_image(photos[i * 25]), (112, 112), interpolation=cv2.INTER_AREA)
        raw_files.append(bad / f"raw_{i}.png")
        raw_files[-1].write_bytes(encode_image(raw, "png"))
        off = _shifted(read_image(crops[i * 25 + 7]), 24 if i % 2 else -24, 16)
        off_files.append(bad / f"off_{i}.png")
        off_files[-1].write_bytes(encode_image(off, "png"))
    good = crops[:64]
    files = good + raw_files + off_files
    report = build_bin([Pair(a, b, False) for a, b in zip(files[0::2], files[1::2])], tmp_path / "mixed.bin")
    flagged = {Path(p) for p in report.unaligned}
    assert not flagged & set(good)
    assert set(off_files) <= flagged
    assert len(flagged & set(raw_files)) >= 7
    assert any("do not look like the other aligned faces" in w for w in report.warnings)
