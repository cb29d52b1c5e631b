"""Load a trained backbone for inference, whatever file it came in, with the preprocessing it was trained with.

Accepted: a facecli run directory, a facecli training checkpoint or backbone file, or a plain state dict such as
arcface_torch's published ``backbone.pth`` (architecture and embedding size are read off its tensor shapes).
Every file is opened with ``torch.load(weights_only=True)``: no pickled code from a download ever runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facecli.archives import check_stored_zip
from facecli.errors import CorruptFileError, UsageError
from facecli.nn.backbones import BACKBONES, NECKS
from facecli.nn.backbones.iresnet import DEPTHS
from facecli.nn.backbones.vit import VIT_SIZES

#: What every facecli model was trained on (DESIGN.md): RGB, ``(x/255 - 0.5)/0.5`` = ``(x - 127.5)/127.5``.
DEFAULT_PREPROCESSING: dict[str, Any] = {"color": "RGB", "mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5),
                                         "input_size": (112, 112)}

#: ``info["quality"]`` of a model whose raw embedding norm is a face-quality score (trained with MagFace/AdaFace).
QUALITY_FEATURE_NORM = "feature-norm"

#: File names inside a run directory (written by ``facecli.train``).
RUN_FILES = {"last": "model.pt", "best": "best.pt", "checkpoint": "checkpoint.pt"}


def model_info(architecture: str, embedding_size: int, neck: str | None = None,
               neck_options: dict[str, Any] | None = None,
               backbone_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata stored with every checkpoint and export: enough to rebuild and feed the backbone."""
    info: dict[str, Any] = {"architecture": architecture, "embedding_size": int(embedding_size)}
    if backbone_options:
        info["backbone_options"] = dict(backbone_options)
    info.update({k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in DEFAULT_PREPROCESSING.items()})
    if neck:
        info["neck"] = neck
        info["neck_options"] = dict(neck_options or {})
    return info


def build_backbone(info: dict[str, Any], dropout: float = 0.0) -> nn.Module:
    """A fresh backbone (with its neck wrapper, if any) as ``info`` describes."""
    model = BACKBONES.build(info["architecture"], embedding_size=int(info["embedding_size"]), dropout=dropout,
                            **info.get("backbone_options", {}))
    if info.get("neck"):
        model = NECKS.build(info["neck"], backbone=model, embedding_size=int(info["embedding_size"]),
                            **info.get("neck_options", {}))
    return model


def infer_architecture(state: dict[str, torch.Tensor]) -> tuple[str, int]:
    """``(architecture, embedding_size)`` of a bare backbone state dict, from its key names and shapes."""
    if "features.layers.2.weight" in state:  # MobileFaceNet's GDC: depthwise conv, flatten, linear, bn
        scale = state["layers.0.layers.0.weight"].shape[0] // 64
        name = "mobilefacenet-large" if scale == 4 else "mobilefacenet"
        return name, int(state["features.layers.2.weight"].shape[0])
    if "fc.weight" in state and "layer1.0.conv1.weight" in state:
        blocks = []
        for stage in range(1, 5):
            indices = [int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))]
            blocks.append(max(indices) + 1 if indices else 0)
        for name, depth in DEPTHS.items():
            if tuple(blocks) == depth:
                return name, int(state["fc.weight"].shape[0])
        raise CorruptFileError(f"an IResNet state dict with {tuple(blocks)} blocks per stage matches no known depth")
    if "pos_embed" in state and "feature.2.weight" in state:  # arcface_torch's ViT
        width = int(state["pos_embed"].shape[-1])
        count = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        for name, (w, d, _heads) in VIT_SIZES.items():
            if (w, d) == (width, count):
                return name, int(state["feature.2.weight"].shape[0])
        raise CorruptFileError(f"a ViT state dict of width {width} and {count} blocks matches no known size")
    raise CorruptFileError("not a backbone state dict facecli knows (expected IResNet, MobileFaceNet or ViT keys)")


def strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix that DDP-wrapped models leave in their state dicts."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def read_weights(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` restricted to tensors and plain containers, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such model file: {path}")
    check_stored_zip(path, "weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle and zip errors of every kind mean the same to the user
        raise CorruptFileError(f"cannot read {path} as a weights-only torch file: {exc}") from None
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path} holds a {type(obj).__name__}, not a state dict or facecli checkpoint")
    _check_tensor_sizes(path, obj, path.stat().st_size)
    return obj


def _check_tensor_sizes(path: Path, obj: Any, file_size: int) -> None:
    """Refuse a tensor that claims more bytes than the whole file: a view with zero or overlapping strides can
    describe terabytes on a few bytes of storage, and the first copy (``.float()``, ``.numpy().astype``) would
    allocate them."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if item.numel() * item.element_size() > file_size:
                raise CorruptFileError(f"{path}: a tensor of shape {tuple(item.shape)} claims more bytes than the "
                                       f"file's {file_size}")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def resolve_model_file(path_or_run_dir: str | os.PathLike, which: str = "last") -> Path:
    """The weights file of a run directory (``model.pt``, else the last checkpoint; ``best.pt`` for best)."""
    path = Path(path_or_run_dir)
    if not path.is_dir():
        return path
    order = ["best"] if which == "best" else ["last", "checkpoint"]
    for key in order:
        if (path / RUN_FILES[key]).is_file():
            return path / RUN_FILES[key]
    raise UsageError(f"{path} holds no {' or '.join(RUN_FILES[k] for k in order)}: not a finished facecli run?")


def backbone_state(obj: dict[str, Any], architecture: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The backbone state dict and model info inside any accepted file's content."""
    if "backbone" in obj and isinstance(obj["backbone"], dict):
        info = dict(obj.get("info") or {})
        state = strip_prefix(obj["backbone"])
        if "architecture" not in info:
            arch, size = infer_architecture(state)
            info = model_info(architecture or arch, size)
        return state, info
    state = strip_prefix(obj)
    arch, size = infer_architecture(state)
    return state, model_info(architecture or arch, size)


def load_backbone(path_or_run_dir: str | os.PathLike, which: str = "last",
                  architecture: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(model.eval(), info)`` for a run directory, facecli checkpoint or arcface_torch state dict.

    ``info`` has ``architecture``, ``embedding_size``, ``color`` ("RGB"), ``mean``/``std`` (per channel, 0–255
    units: input = (pixel - mean) / std), ``input_size`` (width, height), ``head`` (the training head's name, None
    when unknown) and ``quality`` (``QUALITY_FEATURE_NORM`` when the embedding norm is a quality score, else None).
    """
    path = resolve_model_file(path_or_run_dir, which)
    state, info = backbone_state(read_weights(path), architecture)
    info.setdefault("head", None)
    info.setdefault("quality", None)
    model = build_backbone(info)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CorruptFileError(f"{path} does not fit {info['architecture']}: {first}") from None
    return model.eval(), info
