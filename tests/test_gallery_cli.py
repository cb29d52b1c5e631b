"""``facecli gallery`` on real faces: the LFW sample, aligned by facecli, embedded by a real pretrained model.

20 people are enrolled with 3 photos each; their other photos are mated probes. The remaining 20 people are
strangers: 10 calibrate the threshold, the other 10 are held out as non-mated probes.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from facecli.gallery.store import Gallery

pytestmark = pytest.mark.shared

MODEL = "models/mobilefacenet_foamliu.onnx"
IMAGENET = ["--mean", "123.675,116.28,103.53", "--std", "58.395,57.12,57.375", "--rgb"]  # see the model's README


@pytest.fixture(scope="module")
def lfw(tmp_path_factory, shared_dir) -> Path:
    """Aligned 112x112 crops (PNG, lossless) in enrol/, probes/, cal/ trees; raw photos of 3 people and a wall."""
    from facecli.align import align_image
    from facecli.imageio import encode_image, read_image

    root = tmp_path_factory.mktemp("lfw")
    src = shared_dir / "data" / "lfw-sample"
    people = sorted(p.name for p in src.iterdir() if p.is_dir())
    assert len(people) == 40
    for i, name in enumerate(people):
        photos = sorted((src / name).glob("*.jpg"))
        if i % 2 == 0:
            plan = {"enrol": photos[:3], "probes": photos[3:]}
        else:
            plan = {"cal" if i % 4 == 1 else "probes": photos}
        for tree, files in plan.items():
            (root / tree / name).mkdir(parents=True, exist_ok=True)
            for photo in files:
                crop, _ = align_image(read_image(photo), select="center")
                assert crop is not None, photo
                (root / tree / name / (photo.stem + ".png")).write_bytes(encode_image(crop, "png"))
    for name in people[:6:2]:  # raw photos of three enrolled people, for --align
        (root / "raw" / name).mkdir(parents=True)
        for photo in sorted((src / name).glob("*.jpg"))[:3]:
            shutil.copy(photo, root / "raw" / name / photo.name)
    (root / "raw" / "Nobody").mkdir()
    (root / "raw" / "Nobody" / "wall.png").write_bytes(encode_image(np.full((250, 250, 3), 128, np.uint8), "png"))
    return root


@pytest.fixture(scope="module")
def model(shared_dir) -> list[str]:
    return ["--model", str(shared_dir / MODEL), *IMAGENET]


@pytest.fixture(scope="module")
def calibrated(lfw, model, tmp_path_factory, run_cli) -> Path:
    """A gallery built from the enrolled crops and calibrated at FPIR 0.05 on the calibration strangers."""
    path = tmp_path_factory.mktemp("gallery") / "g.npz"
    res = run_cli("gallery", "build", lfw / "enrol", "--out", path, *model, "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["identities"] == 20 and summary["images"] == 60 and summary["skipped"] == 0
    res = run_cli("gallery", "calibrate", "-g", path, "--impostors", lfw / "cal", "--far", "0.05", "--json")
    assert res.returncode == 0, res.stderr
    return path


@pytest.fixture(scope="module")
def searched(lfw, calibrated, run_cli) -> dict:
    """``gallery search`` of every probe with all 20 identities listed (so every score is there)."""
    res = run_cli("gallery", "search", lfw / "probes", "-g", calibrated, "--top-k", "20", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def stranger_scores(results: list[dict], enrolled: set[str]) -> np.ndarray:
    return np.array([m["score"] for r in results if Path(r["probe"]).parent.name not in enrolled for m in r["top_k"]])


def copy_of(path: Path, tmp_path: Path) -> Path:
    target = tmp_path / path.name
    shutil.copy(path, target)
    return target


def test_enrolled_people_are_found_and_strangers_rejected(calibrated, searched):
    gallery = Gallery.load(calibrated)
    t = gallery.threshold
    assert t["metric"] == "fpir" and t["target"] == 0.05 and t["n_probes"] == 61 and t["n_comparisons"] == 61 * 20
    assert t["fpir"] <= 0.05 and t["far"] < t["fpir"]
    assert any("only 3 false accepts among 61" in w for w in t["warnings"])  # 61 strangers are few for 5%

    out = searched
    assert out["threshold"] == t["threshold"]
    enrolled = set(gallery.identities.tolist())
    mated = [r for r in out["results"] if Path(r["probe"]).parent.name in enrolled]
    strangers = [r for r in out["results"] if Path(r["probe"]).parent.name not in enrolled]
    assert len(mated) == 60 and len(strangers) == 56
    found = sum(r["decision"] == Path(r["probe"]).parent.name for r in mated)
    rejected = sum(r["decision"] == "unknown" for r in strangers)
    assert found >= 57, found  # this model is 99% accurate on LFW
    assert rejected >= 50, rejected  # calibrated at 5% FPIR: about 3 of 56 strangers may get through
    for r in out["results"]:
        scores = [m["score"] for m in r["top_k"]]
        assert len(scores) == 20 and scores == sorted(scores, reverse=True) and r["score"] == scores[0]
        assert (r["decision"] == "unknown") == (r["score"] < t["threshold"])


def test_evaluate_reports_open_set_metrics_and_det(lfw, calibrated, tmp_path, run_cli):
    res = run_cli("gallery", "evaluate", "-g", calibrated, "--probes", lfw / "probes", "--fpir", "0.05,0.1,0.001",
              "--out", tmp_path, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["n_mated"] == 60 and report["n_nonmated"] == 56
    assert report["rank1"] >= 0.95 and report["rank5"] >= report["rank1"]
    assert [p["target_fpir"] for p in report["at_fpir"]] == [0.05, 0.1]  # 1e-3 is not measurable on 56 strangers
    assert any("FPIR 0.001 needs at least 1000" in note for note in report["notes"])
    for point in report["at_fpir"]:
        assert point["fpir"] <= point["target_fpir"] and point["dir"] + point["fnir"] == pytest.approx(1.0)
    at = report["at_threshold"]
    assert at["threshold"] == Gallery.load(calibrated).threshold["threshold"] and at["dir"] >= 0.9
    assert (tmp_path / "det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report.json").read_text())["rank1"] == report["rank1"]

    # a Python user's call writes the same report.json and returns the command's JSON
    from facecli.gallery.verbs import EvaluateRequest, evaluate

    done = evaluate(EvaluateRequest(calibrated, lfw / "probes", (0.05, 0.1, 0.001), out=tmp_path / "library"))
    assert (tmp_path / "library" / "report.json").read_bytes() == (tmp_path / "report.json").read_bytes()
    assert json.loads(json.dumps(done.data)) == report and (tmp_path / "library" / "det.png").is_file()


def test_far_calibration_holds_on_held_out_strangers(lfw, calibrated, searched, tmp_path, run_cli):
    path = copy_of(calibrated, tmp_path)
    res = run_cli("gallery", "calibrate", "-g", path, "--impostors", lfw / "cal", "--far", "0.05", "--metric", "far",
              "--json")
    assert res.returncode == 0, res.stderr
    cal = json.loads(res.stdout)
    assert cal["metric"] == "far" and cal["far"] <= 0.05 and cal["threshold"] == cal["far_threshold"]
    assert cal["far_threshold"] < cal["fpir_threshold"]  # per comparison is the laxer of the two
    scores = stranger_scores(searched["results"], set(Gallery.load(path).identities.tolist()))
    assert scores.size == 56 * 20  # held-out strangers x enrolled identities
    measured = float((scores >= cal["threshold"]).mean())
    sigma = np.sqrt(2 * 0.05 * 0.95 / scores.size)  # calibration and held-out are both binomial samples
    assert abs(measured - 0.05) < 4 * sigma, measured


def test_a_different_model_is_refused(lfw, calibrated, shared_dir, run_cli):
    res = run_cli("gallery", "search", lfw / "probes", "-g", calibrated, "--model", shared_dir / MODEL,
              "--mean", "127.5", "--std", "127.5")
    assert res.returncode == 1
    assert res.stderr.startswith("facecli: error: model fingerprint") and "differs from the gallery's" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_add_and_remove_keep_search_consistent(lfw, calibrated, tmp_path, run_cli):
    path = copy_of(calibrated, tmp_path)
    before = Gallery.load(path)
    gone = ["Al_Gore", "Ana_Palacio"]
    res = run_cli("gallery", "remove", *gone, "-g", path, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["identities"] == 18 and "re-run `facecli gallery calibrate`" in res.stderr
    res = run_cli("gallery", "search", lfw / "probes" / "Al_Gore", "-g", path, "--json")
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout)["results"]
    assert results and all(r["decision"] not in gone and all(m["identity"] not in gone for m in r["top_k"])
                           for r in results)

    back = tmp_path / "back"
    for name in gone:
        shutil.copytree(lfw / "enrol" / name, back / name)
    res = run_cli("gallery", "add", back, "-g", path, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["added"] == 6
    after = Gallery.load(path)
    np.testing.assert_array_equal(after.identities, before.identities)
    np.testing.assert_allclose(after.templates, before.templates, atol=1e-6)
    res = run_cli("gallery", "add", back, "-g", path, "--json")  # same files again: nothing changes
    assert json.loads(res.stdout)["added"] == 0 and json.loads(res.stdout)["already_enrolled"] == 6


@pytest.mark.parametrize("index", ["faiss-pq", "faiss-ivfpq"])
def test_faiss_index_reports_recall_and_memory(index, lfw, calibrated, tmp_path, run_cli):
    pytest.importorskip("faiss")
    path = copy_of(calibrated, tmp_path)
    res = run_cli("gallery", "search", lfw / "probes" / "Al_Gore", "-g", path, "--index", index, "-k", "3", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    dim = Gallery.load(path).dim
    # a 20-identity gallery is below the approximate-index size: exact flat index, full recall, 4 bytes a dimension
    assert (data["recall_at_1"], data["recall_at_k"], data["index_bytes_per_template"]) == (1.0, 1.0, 4 * dim)
    assert "recall@1 1.0000, recall@3 1.0000 against exact search" in res.stderr
    assert (tmp_path / (path.name + f".{index}.npz")).is_file()  # cached beside the gallery


def test_corrupt_gallery_is_one_clear_line(tmp_path, lfw, run_cli):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a gallery")
    res = run_cli("gallery", "search", lfw / "probes", "-g", bad)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith(f"facecli: error: {bad}: not a readable gallery file")
    res = run_cli("gallery", "remove", "x", "-g", tmp_path / "missing.npz")
    assert res.returncode == 2 and "gallery not found" in res.stderr


def test_uncalibrated_gallery_needs_a_threshold(lfw, calibrated, tmp_path, run_cli):
    path = tmp_path / "raw.npz"
    g = Gallery.load(calibrated)
    g.threshold = None
    g.save(path)
    res = run_cli("gallery", "search", lfw / "probes" / "Al_Gore", "-g", path)
    assert res.returncode == 2 and "no calibrated threshold" in res.stderr
    out = tmp_path / "results.csv"
    res = run_cli("gallery", "search", lfw / "probes" / "Al_Gore", "-g", path, "--threshold", "0.3", "-k", "2",
              "--out", out, "-q")
    assert res.returncode == 0, res.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["probe", "status", "decision", "score", "match1", "score1", "match2", "score2"]
    assert len(rows) == 3 and all(row[2] == "Al_Gore" for row in rows[1:])


def test_impostors_must_be_strangers(lfw, calibrated, tmp_path, run_cli):
    res = run_cli("gallery", "calibrate", "-g", copy_of(calibrated, tmp_path), "--impostors", lfw / "probes")
    assert res.returncode == 2 and "impostor identities are enrolled in the gallery" in res.stderr


def test_align_on_the_fly_matches_aligned_crops(lfw, model, calibrated, tmp_path, run_cli):
    path = tmp_path / "aligned.npz"
    res = run_cli("gallery", "build", lfw / "raw", "--align", "--out", path, *model, "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["images"] == 9 and summary["skipped"] == 1  # a photo of a wall: recorded, not fatal
    assert summary["failures"] == [{"path": str(lfw / "raw" / "Nobody" / "wall.png"), "status": "no_face",
                                    "reason": "no face detected"}]
    raw = Gallery.load(path)
    crops = Gallery.load(calibrated)
    assert raw.align == {"enabled": True, "select": "center", "size": 112} and raw.size == 3
    rows = [crops.identities.tolist().index(name) for name in raw.identities]
    cosines = (raw.templates * crops.templates[rows]).sum(axis=1)
    assert cosines.min() > 0.999  # JPEG photos aligned on the fly = the same crops saved as PNG

    res = run_cli("gallery", "build", lfw / "raw", "--out", tmp_path / "x.npz", *model)  # raw photos, no --align
    assert res.returncode == 2 and "no usable face" in res.stderr and "not_aligned: 10" in res.stderr


def test_calibrate_on_impostor_pairs_of_a_bin(lfw, calibrated, tmp_path, run_cli):
    from facecli.data.benchmarks import save_bin

    crops = {p.parent.name: [] for p in sorted((lfw / "cal").rglob("*.png"))}
    for p in sorted((lfw / "cal").rglob("*.png")):
        crops[p.parent.name].append(p.read_bytes())
    names = sorted(crops)
    images, issame = [], []
    for a in range(len(names)):  # every pair of different strangers (first photos), and one genuine pair each
        for b in range(a + 1, len(names)):
            images += [crops[names[a]][0], crops[names[b]][1]]
            issame.append(False)
        images += [crops[names[a]][0], crops[names[a]][1]]
        issame.append(True)
    pairs = tmp_path / "pairs.bin"
    save_bin(pairs, images, issame)
    path = copy_of(calibrated, tmp_path)

    res = run_cli("gallery", "calibrate", "-g", path, "--impostors", pairs, "--far", "0.1")
    assert res.returncode == 2 and "measure the per-comparison FAR only" in res.stderr
    res = run_cli("gallery", "calibrate", "-g", path, "--impostors", pairs, "--far", "0.1", "--metric", "far", "--json")
    assert res.returncode == 0, res.stderr
    cal = json.loads(res.stdout)
    assert cal["metric"] == "far" and cal["n_comparisons"] == 45 and cal["fpir"] is None
    assert cal["far"] <= 0.1 and cal["threshold"] == cal["far_threshold"]
    assert any("per-comparison FAR only" in w for w in cal["warnings"])
    assert Gallery.load(path).threshold["threshold"] == cal["threshold"]


def test_csv_scores_keep_decisions_one_float32_step_from_the_threshold():
    from facecli.gallery.verbs import score_text

    rng = np.random.default_rng(0)
    for below in rng.uniform(-1, 1, 1000).astype(np.float32):
        threshold = np.nextafter(below, np.float32(np.inf))  # as calibration sets it: one step above a score
        assert np.float32(float(score_text(below))) == below
        assert float(score_text(below)) < float(threshold) <= float(score_text(threshold))
    assert score_text(0.5) == "0.5" and score_text(np.float32(0.1)) == "0.10000000149011612"
