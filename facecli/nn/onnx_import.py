"""``--init MODEL.onnx``: turn an ONNX recognition network into a trainable PyTorch backbone.

The pretrained face models people have are ONNX files (insightface's model packs are published only as ONNX), so
fine-tuning has to start from one. :mod:`facecli.onnxtorch` reads the graph (every operator one facecli can run,
one error naming all the others) into a *spec* of plain values that the ``onnx`` backbone
(``facecli.nn.backbones.onnx_graph``) rebuilds as a trainable ``nn.Module``. What the importer handles:

- folded BatchNorm (a Conv with a bias) and BatchNormalization nodes (their statistics become fixed buffers);
- a batch size fixed in the file (``[1, 3, 112, 112]`` and a ``Reshape`` to ``[1, -1]``): reshapes to
  ``[batch, -1]`` become flattens, so a batch of any size gives one embedding per face;
- PRelu, ReLU/ReLU6 (Clip), Gemm/MatMul embeddings, Flatten or Shape/Gather/Concat/Reshape tails;
- the normalisation the network was trained with, inside the graph (Sub/Mul nodes: they simply run) or outside
  (``--mean/--std/--bgr``, else a facecli export's metadata, else insightface's rule, as ``facecli eval`` decides):
  an input adapter maps facecli's training input to it, so the fine-tuned model is an ordinary facecli backbone
  whose exports use facecli's ``(x - 127.5) / 127.5``.

The imported network is checked against onnxruntime on a batch of faces before anything trains (1e-4).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facecli.errors import CorruptFileError, FacecliError, UsageError
from facecli.nn.backbones.onnx_graph import ImportedBackbone
from facecli.nn.inference import model_info
from facecli.normalisation import INSIGHTFACE_MEAN, INSIGHTFACE_STD, resolve_onnx_preprocessing
from facecli.onnxtorch import graph_spec

#: The input size of every facecli training pipeline.
INPUT_SIZE = 112
#: Largest |onnxruntime - imported| accepted before training starts.
TOLERANCE = 1e-4


def is_onnx(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def recognition_spec(proto: Any, path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The graph spec and state dict (:func:`facecli.onnxtorch.graph_spec`) of a network that takes one batch of
    ``INPUT_SIZE`` faces, as every facecli training pipeline feeds."""
    spec, state = graph_spec(proto, str(path))
    if len(spec["inputs"]) != 1:
        raise UsageError(f"{path}: expected one image input, found {len(spec['inputs'])}")
    image = next(i for i in proto.graph.input if i.name == spec["inputs"][0])
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in image.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3 or dims[2:] != [INPUT_SIZE, INPUT_SIZE]:
        raise UsageError(f"{path}: expected an input of shape (N, 3, {INPUT_SIZE}, {INPUT_SIZE}), found {dims}")
    return spec, state


def import_onnx(path: str | os.PathLike, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                bgr: bool | None = None, check: bool = True,
                facecli_classes: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone of an ONNX recognition model, with its weights, and the facecli model info describing it.

    ``mean``/``std`` (0–255 units, per R, G, B) and ``bgr`` are the network's own input convention; omitted, they
    come from the file as ``facecli eval`` decides. With ``check`` the result is compared with onnxruntime. With
    ``facecli_classes``, a graph of one of facecli's architectures that takes facecli's input convention (a facecli
    export, an insightface model pack) comes back as that facecli backbone (``facecli.nn.onnx_facecli``);
    anything else as the generic ``onnx`` backbone.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such model file: {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf errors of every kind mean the same to the user
        raise CorruptFileError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    spec, state = recognition_spec(proto, path)
    net_mean, net_std, color, _ = resolve_onnx_preprocessing(proto, mean, std, bgr)
    net_bgr = color == "BGR"
    options = {"graph": spec, "mean": list(net_mean), "std": list(net_std), "bgr": net_bgr}
    backbone = ImportedBackbone(spec, net_mean, net_std, net_bgr)
    backbone.graph.load_state_dict(state, strict=True)
    backbone.eval()
    try:
        with torch.no_grad():
            embedding_size = int(backbone(torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)).shape[1])
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise UsageError(f"{path}: the imported graph does not run: {str(exc).splitlines()[0]}") from None
    if check:
        diff = compare_with_onnxruntime(backbone, path)
        if not diff <= TOLERANCE:
            raise FacecliError(f"{path}: the imported network differs from onnxruntime by {diff:.3g} (> {TOLERANCE})")
    if facecli_classes and (net_mean, net_std, net_bgr) == ((INSIGHTFACE_MEAN,) * 3, (INSIGHTFACE_STD,) * 3, False):
        found = _as_facecli_backbone(proto, spec, state, backbone, embedding_size)
        if found is not None:
            return found[0], {**found[1], "source": path.name}
    info = model_info("onnx", embedding_size, backbone_options=options)
    info["source"] = path.name
    return backbone, info


def _as_facecli_backbone(proto: Any, spec: dict[str, Any], state: dict[str, torch.Tensor], imported: nn.Module,
                         embedding_size: int) -> tuple[nn.Module, dict[str, Any]] | None:
    """The graph as one of facecli's own backbones, when it is one and computes the same (1e-5) on test faces."""
    from facecli.nn.onnx_facecli import load_facecli_backbone

    meta = {p.key: p.value for p in proto.metadata_props}
    found = load_facecli_backbone(spec, state, meta, embedding_size)
    if found is None:
        return None
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (2, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32))
    with torch.no_grad():
        diff = float((found[0](x) - imported(x)).abs().max())
    return found if diff <= 1e-5 else None


def compare_with_onnxruntime(backbone: ImportedBackbone, path: Path, batch: int = 3) -> float:
    """Largest |onnxruntime - imported| on a fixed random batch, fed to each in its own input convention."""
    from facecli.onnxsession import open_session

    session = open_session(path, rewrites=False).session  # the file as it is
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (batch, 3, INPUT_SIZE, INPUT_SIZE))
                         .astype(np.float32))
    with torch.no_grad():
        expected = backbone(x).numpy()
        graph_input = x * backbone.scale + backbone.shift
        if backbone.bgr:
            graph_input = graph_input.flip(1)
    step = fixed if isinstance(fixed, int) and fixed > 0 else batch
    blob = graph_input.numpy()
    got = np.concatenate([session.run(None, {name: blob[i:i + step]})[0].reshape(len(blob[i:i + step]), -1)
                          for i in range(0, batch, step)])
    return float(np.abs(got - expected).max())
