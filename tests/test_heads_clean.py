"""Sub-center noisy-label cleaning on synthetic centres and embeddings with known noisy images."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from facecli.errors import UsageError
from facecli.train.clean import find_noisy, suspicious_csv, write_suspicious_csv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rotate_towards(base: np.ndarray, other: np.ndarray, degrees: float) -> np.ndarray:
    """A unit vector at exactly ``degrees`` from unit ``base`` in the plane of ``base`` and ``other``."""
    ortho = other - (other @ base) * base
    ortho /= np.linalg.norm(ortho)
    rad = np.radians(degrees)
    return np.cos(rad) * base + np.sin(rad) * ortho


@pytest.fixture
def synthetic():
    rng = np.random.default_rng(0)
    classes, k, dim = 4, 3, 32
    centres = rng.normal(size=(classes, k, dim))
    centres /= np.linalg.norm(centres, axis=-1, keepdims=True)
    dominant = np.array([0, 2, 1, 0])
    embeddings, labels, angles = [], [], []
    for c in range(classes):
        for _ in range(6):  # clean images: 20° from the dominant sub-centre
            embeddings.append(rotate_towards(centres[c, dominant[c]], rng.normal(size=dim), 20.0) * 7.0)
            labels.append(c)
            angles.append(20.0)
    noisy_at = {}
    for c, angle in [(1, 80.0), (3, 110.0)]:  # noisy images: near a non-dominant sub-centre, far from the dominant
        other = (dominant[c] + 1) % k
        vec = rotate_towards(centres[c, dominant[c]], centres[c, other], angle)
        noisy_at[len(labels)] = angle
        embeddings.append(vec)
        labels.append(c)
        angles.append(angle)
    return centres * 3.0, np.array(embeddings), np.array(labels), dominant, noisy_at, np.array(angles)


def test_dominant_subcentre_and_angles(synthetic):
    centres, embeddings, labels, dominant, noisy_at, angles = synthetic
    report = find_noisy(centres, embeddings, labels)
    assert report.dominant.tolist() == dominant.tolist()
    np.testing.assert_allclose(report.angle_deg, angles, atol=1e-6)
    assert sorted(np.nonzero(report.suspicious)[0].tolist()) == sorted(noisy_at)
    stricter = find_noisy(centres, embeddings, labels, threshold_deg=90.0)
    assert np.nonzero(stricter.suspicious)[0].tolist() == [max(noisy_at)]


def test_class_without_images_and_ties(synthetic):
    centres, embeddings, labels, *_ = synthetic
    keep = labels != 2
    report = find_noisy(centres, embeddings[keep], labels[keep])
    assert report.dominant[2] == -1
    one = np.zeros((1, 2, 2))
    one[0, 0] = [1, 0]
    one[0, 1] = [0, 1]
    tie = find_noisy(one, np.array([[1.0, 0.1], [0.1, 1.0]]), np.array([0, 0]))
    assert tie.dominant.tolist() == [0]  # one vote each: the lowest index wins


def test_csv_lists_suspicious_images_farthest_first(synthetic, tmp_path):
    centres, embeddings, labels, dominant, noisy_at, _ = synthetic
    report = find_noisy(centres, embeddings, labels)
    paths = [f"id{labels[i]}/img{i}.jpg" for i in range(len(labels))]
    rows = list(csv.DictReader(io.StringIO(suspicious_csv(paths, labels, report))))
    assert [r["path"] for r in rows] == [paths[i] for i in sorted(noisy_at, key=lambda i: -noisy_at[i])]
    assert float(rows[0]["angle_deg"]) == pytest.approx(110.0, abs=1e-3)
    assert int(rows[0]["dominant_subcenter"]) == dominant[3]
    target = tmp_path / "suspicious.csv"
    assert write_suspicious_csv(target, paths, labels, report) == 2
    assert target.read_text().startswith("path,label,angle_deg")


def test_bad_shapes_are_usage_errors(synthetic):
    centres, embeddings, labels, *_ = synthetic
    with pytest.raises(UsageError):
        find_noisy(centres[0], embeddings, labels)
    with pytest.raises(UsageError):
        find_noisy(centres, embeddings[:, :5], labels)
    with pytest.raises(UsageError, match="labels must lie"):
        find_noisy(centres, embeddings, labels + 10)


# ----------------------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def subcenter_run(shared_dir, tmp_path_factory):
    """A few Sub-center ArcFace steps on 6 LFW identities (real photos) through facecli's own trainer."""
    import shutil

    from facecli.train.config import build_config
    from facecli.train.trainer import Trainer

    root = tmp_path_factory.mktemp("clean")
    data = root / "faces"
    people = sorted(p for p in (shared_dir / "data" / "lfw-sample").iterdir() if p.is_dir())[:6]
    for person in people:
        shutil.copytree(person, data / person.name)
    cfg = build_config({"out": str(root / "run"), "batch_size": 8, "steps": 3, "seed": 0, "device": "cpu",
                        "data": {"path": str(data), "workers": 0},
                        "model": {"backbone": "mobilefacenet", "embedding_size": 64},
                        "head": {"name": "subcenter-arcface", "k": 3}})
    Trainer(cfg).fit()
    return root / "run", data


def test_clean_cli_lists_far_images_and_writes_a_pack_without_them(subcenter_run, run_cli, tmp_path):
    from facecli.data.datasets import open_dataset
    from facecli.nn.inference import load_backbone
    from facecli.train.clean import embed_dataset, load_subcenters

    run, data = subcenter_run
    centres = load_subcenters(run)
    assert centres.shape == (6, 3, 64)
    dataset = open_dataset(data)
    model, _ = load_backbone(run)
    report = find_noisy(centres, embed_dataset(model, dataset), dataset.labels, 75.0)
    threshold = float(np.median(report.angle_deg))  # half the images are "suspicious": a real split to check
    out_csv, pack = tmp_path / "noisy.csv", tmp_path / "pack"
    result = run_cli("clean", data, "--run", run, "--threshold", threshold, "--out", out_csv, "--pack", pack,
                     "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    summary = result.json()
    expected = int((report.angle_deg > threshold).sum())
    assert summary["suspicious"] == expected and 0 < expected < len(dataset)
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == expected
    assert all((data / r["path"]).is_file() and not r["path"].startswith("/") for r in rows)
    angles = [float(r["angle_deg"]) for r in rows]
    assert angles == sorted(angles, reverse=True) and min(angles) > threshold
    packed = open_dataset(pack)
    assert len(packed) == len(dataset) - expected


def test_clean_refuses_a_run_of_another_head(subcenter_run, run_cli, tmp_path):
    run, data = subcenter_run
    result = run_cli("clean", data, "--run", run, "--head", "arcface")
    assert result.returncode == 2 and "only subcenter-arcface" in result.stderr
    result = run_cli("clean", tmp_path, "--run", run)
    assert result.returncode == 2 and "facecli: error:" in result.stderr and "Traceback" not in result.stderr
