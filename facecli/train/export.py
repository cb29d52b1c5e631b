"""ONNX export that insightface and facecli both read: ``data`` input (N, 3, 112, 112), dynamic batch, raw output.

insightface's ``model_zoo.get_model`` routes a square ≥112 input to ``ArcFaceONNX``, which feeds BGR images
through ``blobFromImages(..., swapRB=True)`` with mean = std = 127.5 when the graph does not start with Sub/Mul
nodes — exactly facecli's RGB ``(x - 127.5) / 127.5`` input, so the normalisation stays outside the graph.
The preprocessing and model are recorded in ``metadata_props`` (``facecli.color``, ``facecli.mean``,
``facecli.std``, ``facecli.embedding_size``, ``facecli.architecture``, ``facecli.input_size``) so that no reader
has to assume them, with the backbone options (``facecli.backbone_options``, JSON), the training head
(``facecli.head``) and, for MagFace/AdaFace models whose embedding norm
is a face-quality score, ``facecli.quality = feature-norm``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facecli.errors import FacecliError, UsageError
from facecli.fileio import atomic_path
from facecli.nn.inference import load_backbone

INPUT_NAME = "data"
OUTPUT_NAME = "fc1"
DEFAULT_OPSET = 17


def metadata(info: dict[str, Any]) -> dict[str, str]:
    """The ``facecli.*`` metadata_props of an export (numbers comma-separated, 0–255 units)."""
    def csv(values: Any) -> str:
        return ",".join(f"{float(v):g}" for v in values)

    return {
        "facecli.color": str(info["color"]),
        "facecli.mean": csv(info["mean"]),
        "facecli.std": csv(info["std"]),
        "facecli.embedding_size": str(int(info["embedding_size"])),
        "facecli.architecture": str(info["architecture"]),
        "facecli.input_size": ",".join(str(int(v)) for v in info["input_size"]),
        **({"facecli.head": str(info["head"])} if info.get("head") else {}),
        **({"facecli.backbone_options": json.dumps(info["backbone_options"])}
           if info.get("backbone_options") and info["architecture"] != "onnx" else {}),
        **({"facecli.quality": str(info["quality"])} if info.get("quality") else {}),
    }


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``facecli.*`` metadata of an ONNX file (empty for foreign models)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props if p.key.startswith("facecli.")}


def export_onnx(source: str | os.PathLike, target: str | os.PathLike, which: str = "last",
                opset: int = DEFAULT_OPSET, check: bool = True) -> dict[str, Any]:
    """Export the backbone of a run directory or checkpoint to ``target``; returns a summary.

    With ``check`` the ONNX model is run with onnxruntime on a batch of 3 and compared with PyTorch
    (``max_abs_diff`` in the summary; an error above 1e-4).
    """
    import onnx

    if opset < 11:
        raise UsageError(f"opset {opset} is too old; insightface models need opset 11 or later")
    target = Path(target)
    model, info = load_backbone(source, which=which)
    width, height = info["input_size"]
    dummy = torch.zeros(1, 3, int(height), int(width))
    with atomic_path(target) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
            do_constant_folding=True, dynamo=False,
        )
        proto = onnx.load(str(tmp))
        for key, value in metadata(info).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        summary: dict[str, Any] = {"onnx": str(target), "source": str(source), "opset": opset,
                                   "input": INPUT_NAME, "output": OUTPUT_NAME, **metadata(info)}
        if check:
            summary["max_abs_diff"] = compare_with_torch(model, tmp, int(height), int(width))
    return summary


def compare_with_torch(model: torch.nn.Module, onnx_path: Path, height: int, width: int) -> float:
    """Largest absolute difference between PyTorch and onnxruntime embeddings on a fixed random batch."""
    from facecli.onnxsession import open_session

    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (3, 3, height, width)).astype(np.float32))
    with torch.no_grad():
        expected = model(x).numpy()
    session = open_session(onnx_path, rewrites=False).session  # the file as it is
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= 1e-4:
        raise FacecliError(f"ONNX export differs from PyTorch by {diff:.3g} (> 1e-4); not written")
    return diff
