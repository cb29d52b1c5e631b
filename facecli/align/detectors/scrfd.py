"""SCRFD / RetinaFace detectors exported by insightface, run through ``insightface.model_zoo``.

insightface's model router recognises its detection ONNX files (SCRFD and RetinaFace share the output layout) and
returns a detector that expects BGR input; this adapter converts the colour order once and returns :class:`Face`
objects like every other detector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facecli import onnxsession
from facecli.align.detectors.base import DETECTORS, Face
from facecli.align.detectors.device import pick_runtime
from facecli.errors import UsageError


class SCRFD:
    """An insightface SCRFD/RetinaFace ONNX model (``--det-model PATH.onnx``)."""

    def __init__(
        self,
        model_path: str | Path,
        input_size: tuple[int, int] = (640, 640),
        score_threshold: float = 0.5,
        threads: int = 1,
        device: str = "cpu",
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise UsageError(f"detector model not found: {path}")
        if path.suffix.lower() != ".onnx":  # insightface treats other names as model-package folders
            raise UsageError(f"detector model must be an .onnx file: {path}")
        try:
            from insightface import model_zoo
        except ImportError:
            raise UsageError(
                "--detector scrfd runs through insightface, which is not installed: pip install 'facecli[insightface]'"
            ) from None

        try:
            runtime = pick_runtime(device, "onnxruntime")
        except UsageError:
            raise UsageError(f"--device {device}: SCRFD runs in onnxruntime, and its CUDA provider is not available "
                             "(pip install onnxruntime-gpu); use --device cpu or auto") from None
        gpu = -1 if runtime.device == "cpu" else int(runtime.device.partition(":")[2])
        # insightface makes the session itself: facecli's options and providers, not its graph rewrites
        providers, options = onnxsession.device_providers(runtime.device), onnxsession.session_options(threads)
        try:
            model = model_zoo.get_model(str(path), providers=providers, sess_options=options)
        except Exception as exc:  # onnxruntime/onnx parse errors name the internal cause only
            raise UsageError(f"cannot load detector model {path}: {exc}") from None
        if model is None or not hasattr(model, "detect") or getattr(model, "taskname", "detection") != "detection":
            raise UsageError(f"{path} is not an insightface SCRFD/RetinaFace detection model")
        model.prepare(ctx_id=gpu, input_size=tuple(input_size), det_thresh=float(score_threshold))
        self._model = model

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
        boxes, keypoints = self._model.detect(bgr)
        if keypoints is None:
            raise UsageError("this detector model gives no 5-point landmarks, which alignment needs")
        return [
            Face(
                box=np.asarray(boxes[i, :4], dtype=np.float32),
                score=float(boxes[i, 4]),
                landmarks=np.asarray(keypoints[i], dtype=np.float32).reshape(5, 2),
            )
            for i in range(len(boxes))
        ]


@DETECTORS.register("scrfd")
def build_scrfd(
    model_path: str | Path | None = None,
    input_size: tuple[int, int] = (640, 640),
    score_threshold: float = 0.5,
    threads: int = 1,
    device: str = "cpu",
    **_other_detectors_options: object,
) -> SCRFD:
    """SCRFD/RetinaFace needs its ONNX file (``--det-model``); insightface's weights are not bundled."""
    if model_path is None:
        raise UsageError("--detector scrfd needs --det-model PATH.onnx (an insightface SCRFD or RetinaFace model)")
    return SCRFD(model_path, input_size=input_size, score_threshold=score_threshold, threads=threads, device=device)
