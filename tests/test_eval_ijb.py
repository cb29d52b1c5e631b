"""IJB 1:1 and 1:N against insightface's eval_ijbc.py / ijb_1n.py / ijb_evals.py (../shared/golden/ijb)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facecli.errors import CorruptFileError
from facecli.eval import ijb

CONFIGS = ["N1D1F1", "N1D0F1", "N0D1F1", "N0D0F1", "N1D1F0"]


def flags_of(name: str) -> ijb.IJBFlags:
    return ijb.IJBFlags(norm_score=name[1] == "1", detector_score=name[3] == "1", flip=name[5] == "1")


@pytest.fixture(scope="module")
def golden(shared_dir):
    root = shared_dir / "golden" / "ijb"
    protocol = ijb.read_protocol(root, "ijbc")
    return {
        "root": root,
        "expected": json.loads((root / "expected.json").read_text()),
        "protocol": protocol,
        "img_feats": np.load(root / "img_feats.npy"),
        "faceness": ijb.read_faceness(protocol),
    }


def templates_for(golden, name):
    feats = ijb.image_input_features(golden["img_feats"], golden["faceness"], flags_of(name))
    return ijb.pool_templates(feats, golden["protocol"].templates, golden["protocol"].medias)


def test_faceness_parsed_as_the_reference(golden):
    np.testing.assert_array_equal(golden["faceness"], np.load(golden["root"] / "faceness_scores.npy"))


def test_template_features_match(golden):
    feats, unique = templates_for(golden, "N1D1F1")
    np.testing.assert_allclose(feats, np.load(golden["root"] / "template_feats_N1D1F1.npy"), rtol=0, atol=1e-6)
    assert list(unique) == sorted(set(golden["protocol"].templates.tolist()))


@pytest.mark.parametrize("name", CONFIGS)
def test_one_to_one_golden(golden, name):
    feats, unique = templates_for(golden, name)
    result = ijb.verify_templates(golden["protocol"], feats, unique, flags_of(name))
    expected = golden["expected"]["one_to_one"][name]
    reference_scores = np.load(golden["root"] / "scores" / f"scores_{name}.npy")
    np.testing.assert_allclose(result.scores, reference_scores, rtol=0, atol=1e-6)
    for point in expected["tar_at_far"]:
        assert result.tar_at_far[point["far"]] == point["tar"], point
    assert result.table_row() == expected["table_row"][1:]
    assert result.auc == pytest.approx(expected["auc"], abs=1e-9)
    np.testing.assert_allclose(result.fpr, expected["roc_curve"]["fpr"], rtol=0, atol=0)
    np.testing.assert_allclose(result.tpr, expected["roc_curve"]["tpr"], rtol=0, atol=0)
    assert (result.n_genuine, result.n_impostor) == (381, 2619)
    assert not result.measurable(1e-4) and result.measurable(1e-3)


@pytest.mark.parametrize("name", CONFIGS)
def test_one_to_n_closed_set_golden(golden, name):
    feats, unique = templates_for(golden, name)
    result = ijb.identify(golden["protocol"], feats, unique, flags_of(name), mode="closed")
    expected = golden["expected"]["one_to_n"]["ijb_1n"][name]
    (gallery,) = result.galleries
    assert gallery.n_gallery == expected["n_gallery_templates"] and result.n_probes == expected["n_probe_templates"]
    for k in (1, 5, 10):
        assert gallery.rank_counts[k] == expected[f"top{k}"]["correct"]
    for point in expected["tpir_at_far"]:
        assert round(gallery.tpir[point["far"]] * result.n_probes) == point["n_pos_above"]
        assert gallery.tpir[point["far"]] == point["tpir"]
        assert gallery.thresholds[point["far"]] == pytest.approx(point["threshold"], abs=1e-6)


def test_one_to_n_open_set_golden(golden):
    feats, unique = templates_for(golden, "N1D1F1")
    result = ijb.identify(golden["protocol"], feats, unique, flags_of("N1D1F1"), mode="open")
    expected = golden["expected"]["one_to_n"]["ijb_evals"]
    assert [g.name for g in result.galleries] == ["G1", "G2"]
    for g in result.galleries:
        e = expected[g.name]
        counts = (e["n_gallery_templates"], e["n_mated_probes"], e["n_nonmated_probes"])
        assert (g.n_gallery, g.n_mated, g.n_nonmated) == counts
        assert [g.rank_counts[k] for k in (1, 5, 10)] == [e["top1_count"], e["top5_count"], e["top10_count"]]
        for point in e["tpir_at_fpir"]:
            assert g.tpir[point["fpir"]] == point["tpir"]
            assert g.thresholds[point["fpir"]] == pytest.approx(point["threshold"], abs=1e-6)
            # the FPIR actually reached never exceeds the target
            assert g.fpir_achieved[point["fpir"]] <= point["fpir"]
    assert result.mean_rank(1) == expected["mean_top1"]
    assert result.mean_rank(10) == expected["mean_top10"]


def test_pair_scoring_blocks_equal_plain_dot_products():
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((300, 64))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    dense1, dense2 = rng.integers(0, 40, 20000), rng.integers(0, 300, 20000)  # GEMM blocks
    sparse1, sparse2 = rng.integers(0, 300, 50), rng.integers(0, 300, 50)  # direct dot products
    for rows1, rows2 in ((dense1, dense2), (sparse1, sparse2)):
        for max_block in (1 << 24, 1000):  # one block / many blocks
            got = ijb.score_pairs(feats, rows1, rows2, max_block=max_block)
            np.testing.assert_allclose(got, np.sum(feats[rows1] * feats[rows2], -1), rtol=0, atol=1e-12)


def test_unknown_template_in_pair_file_is_an_error(golden, tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    for f in (golden["root"] / "meta").iterdir():
        (meta / f.name).write_bytes(f.read_bytes())
    with open(meta / "ijbc_template_pair_label.txt", "a") as fh:
        fh.write("999999999 541 0\n")
    protocol = ijb.read_protocol(tmp_path, "ijbc")
    feats, unique = templates_for(golden, "N1D1F1")
    with pytest.raises(CorruptFileError, match="999999999"):
        ijb.verify_templates(protocol, feats, unique, flags_of("N1D1F1"))


@pytest.mark.parametrize(
    "options,name", [([], "N1D1F1"), (["--no-norm-score", "--no-detector-score"], "N0D0F1"), (["--no-flip"], "N1D1F0")]
)
def test_cli_precomputed_features(run_cli, golden, options, name):
    root = golden["root"]
    res = run_cli("eval", "--bench", "ijbc", "--data-root", root, "--features", root / "img_feats.npy",
                  "--faceness", root / "faceness_scores.npy", *options, "--json")
    assert res.returncode == 0, res.stderr
    (result,) = res.json()["results"]
    one = result["one_to_one"]
    expected = golden["expected"]["one_to_one"][name]
    assert one["config"] == name
    assert [p["tar"] for p in one["tar_at_far"]] == [p["tar"] for p in expected["tar_at_far"]]
    assert one["tar_printed"] == expected["table_row"][1:]
    assert one["auc"] == pytest.approx(expected["auc"], abs=1e-9)
    assert result["one_to_n"]["mode"] == "open"


def test_loose_crops_are_aligned_with_the_protocol_landmarks(shared_dir, insightface_t1, tmp_path, run_cli):
    """A tiny IJB folder built from the six faces of t1.jpg: each face is one image row of two templates."""
    from facecli.align.transform import align
    from facecli.eval import load_model
    from facecli.eval.embed import embed_with_flip
    from facecli.eval.runner import RunOptions, evaluate_ijb, ijb_image_features
    from facecli.imageio import read_image

    faces = json.loads((shared_dir / "golden" / "align" / "expected.json").read_text())["faces"]
    (tmp_path / "meta").mkdir()
    (tmp_path / "loose_crop").mkdir()
    tid_mid, five_pts, pairs = [], [], []
    for k, face in enumerate(faces):
        for copy in (0, 1):
            name = f"{k}_{copy}.jpg"
            (tmp_path / "loose_crop" / name).write_bytes(insightface_t1.read_bytes())
            tid_mid.append(f"{name} {10 * k + copy} {100 * k + copy}")
            marks = " ".join(f"{v:.3f}" for point in face["landmarks_float"] for v in point)
            five_pts.append(f"{name} {marks} 0.9")
        pairs += [f"{10 * k} {10 * k + 1} 1"] + [f"{10 * k} {10 * j + 1} 0" for j in range(len(faces)) if j != k]
    for suffix, lines in (("face_tid_mid", tid_mid), ("name_5pts_score", five_pts), ("template_pair_label", pairs)):
        (tmp_path / "meta" / f"ijbc_{suffix}.txt").write_text("\n".join(lines) + "\n")

    model = load_model(shared_dir / "models" / "mobilefacenet_foamliu.onnx")
    protocol = ijb.read_protocol(tmp_path, "ijbc")
    feats = ijb_image_features(model, protocol, RunOptions(workers=2, cache=tmp_path / "cache"))
    photo = read_image(insightface_t1)
    crops = np.stack([align(photo, np.round(np.array(f["landmarks_float"], np.float32), 3), 112) for f in faces])
    emb, emb_flip = embed_with_flip(model, crops)
    np.testing.assert_allclose(feats[0::2], np.concatenate([emb, emb_flip], axis=1), rtol=1e-5, atol=1e-5)
    assert len(list((tmp_path / "cache").rglob("chunk_*.npy"))) == 1

    run = evaluate_ijb(protocol, feats, None, ijb.IJBFlags())
    genuine = run.verification.scores[run.verification.labels]
    np.testing.assert_allclose(genuine, 1.0, atol=1e-6)  # both rows of a face hold the same image
    assert run.verification.auc == 1.0 and run.identification is None  # no 1:N files in this folder

    res = run_cli("eval", "-m", shared_dir / "models" / "mobilefacenet_foamliu.onnx", "--bench", "ijbc",
                  "--data-root", tmp_path, "--cache", tmp_path / "cache", "--json")
    assert res.returncode == 0, res.stderr
    assert res.json()["results"][0]["one_to_one"]["auc"] == 1.0
