"""The warp against insightface's own output: golden matrices and crops from ../shared/golden/align."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from facecli.align import ARCFACE_DST, align, estimate_norm, template
from facecli.align.transform import similarity_transform


@pytest.fixture(scope="module")
def golden(shared_dir):
    folder = shared_dir / "golden" / "align"
    expected = json.loads((folder / "expected.json").read_text())
    image = cv2.cvtColor(cv2.imread(str(folder / "t1.jpg")), cv2.COLOR_BGR2RGB)
    return folder, expected, image


def _hex_matrix(rows):
    return np.array([[float.fromhex(v) for v in row] for row in rows])


def test_template_is_insightface_arcface_dst(golden):
    _, expected, _ = golden
    hexes = np.array([[float.fromhex(v) for v in row] for row in expected["arcface_dst_float32_hex"]])
    assert ARCFACE_DST.dtype == np.float32
    np.testing.assert_array_equal(ARCFACE_DST, hexes.astype(np.float32))
    for size, points in expected["templates_by_size"].items():
        np.testing.assert_allclose(template(int(size)), np.array(points), rtol=0, atol=1e-6)


@pytest.mark.parametrize("crop_key", ["int_112", "int_128", "int_224", "float_112"])
def test_matrix_and_crop_match_norm_crop(golden, crop_key, golden_crop_tolerance):
    folder, expected, image = golden
    assert len(expected["faces"]) == 6
    for face in expected["faces"]:
        crop_info = face["crops"][crop_key]
        landmarks = np.array(face[f"landmarks_{crop_info['landmarks_used']}"])
        size = crop_info["image_size"]
        matrix = estimate_norm(landmarks, size)
        reference = _hex_matrix(crop_info["M_hex"])
        assert np.abs(matrix - reference).max() <= 1e-4
        crop = align(image, landmarks, size)
        golden_crop = cv2.cvtColor(cv2.imread(str(folder / crop_info["file"])), cv2.COLOR_BGR2RGB)
        assert crop.shape == (size, size, 3)
        diff = np.abs(crop.astype(int) - golden_crop.astype(int)).max()
        assert diff <= golden_crop_tolerance, f"face {face['face_index']} {crop_key}: max grey-level difference {diff}"


def _norm_crop(image, landmarks, size):
    """insightface's ``norm_crop`` recipe (``insightface/utils/face_align.py``) run on this machine's libraries:
    scikit-image's ``SimilarityTransform`` fitted to the float32 template, its top two rows, one ``cv2.warpAffine``
    with a black border. insightface itself is an optional extra; this is the code it runs."""
    transform = pytest.importorskip("skimage.transform")
    src = np.asarray(landmarks, dtype=np.float32)
    if hasattr(transform.SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = transform.SimilarityTransform.from_estimate(src, template(size))
    else:
        tform = transform.SimilarityTransform()
        tform.estimate(src, template(size))
    matrix = tform.params[0:2, :]
    return matrix, cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)


def test_crops_are_bit_identical_to_norm_crop_on_this_opencv(golden):
    """Stronger than the 1-grey-level contract with the golden files (made with another OpenCV): the same float32
    Umeyama and the same warpAffine call as norm_crop, run with the installed OpenCV, give the same bytes."""
    _, expected, image = golden
    for face in expected["faces"]:
        for crop_info in face["crops"].values():
            landmarks = np.array(face[f"landmarks_{crop_info['landmarks_used']}"])
            size = crop_info["image_size"]
            their_matrix, their_crop = _norm_crop(image, landmarks, size)
            np.testing.assert_array_equal(estimate_norm(landmarks, size), their_matrix)
            np.testing.assert_array_equal(align(image, landmarks, size), their_crop)


def test_landmarks_land_on_the_template(golden):
    _, expected, _ = golden
    face = expected["faces"][0]
    info = face["crops"]["int_224"]
    matrix = estimate_norm(np.array(face["landmarks_int"]), 224)
    points = np.hstack([np.array(face["landmarks_int"]), np.ones((5, 1))]) @ matrix.T
    np.testing.assert_allclose(points, np.array(info["landmarks_after_warp"]), atol=1e-4)


def test_similarity_never_reflects():
    """Mirrored landmarks (left/right swapped) must give a rotation+scale, not a flip (positive determinant)."""
    mirrored = ARCFACE_DST.copy()
    mirrored[:, 0] = 112 - mirrored[:, 0]
    matrix = similarity_transform(mirrored, ARCFACE_DST)
    assert np.linalg.det(matrix[:2, :2]) > 0
    exact = similarity_transform(ARCFACE_DST * 2 + 5, ARCFACE_DST)
    np.testing.assert_allclose(exact[:2, :2], np.eye(2) * 0.5, atol=1e-6)
    np.testing.assert_allclose(exact[:2, 2], [-2.5, -2.5], atol=1e-5)


@pytest.mark.parametrize("size", [0, 100, 150])
def test_sizes_that_insightface_refuses_are_refused(size):
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        template(size)
