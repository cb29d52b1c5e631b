"""A trainable imported ONNX recognition network as a registered backbone (``onnx``, for ``--init MODEL.onnx``).

The graph itself runs in :mod:`facecli.onnxtorch` (shared with the detectors that run ONNX graphs in PyTorch);
its spec travels in a checkpoint's ``info["backbone_options"]``, so every facecli tool (export, eval, resume)
rebuilds the fine-tuned network without the original file. What this module adds makes it a facecli backbone:

- which weights train: the float weights of convolutions, fully connected layers, PReLU slopes and BatchNorm
  scale and shift (:data:`PARAMETER_INPUTS`) are ``nn.Parameter``s; everything else (BatchNorm statistics,
  constants, shape tensors) are buffers, so BatchNorm statistics of an imported graph never change — which is
  what small-batch fine-tuning wants, and folded BatchNorm has no statistics anyway. The choice is made from the
  spec alone, so a rebuilt network has the same parameters;
- an input adapter in front of the graph converts facecli's standard input (RGB, ``(x - 127.5) / 127.5``) to the
  colour order and normalisation the graph was trained with, so the backbone obeys the same contract as every
  other facecli backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from facecli.nn.backbones import BACKBONES
from facecli.onnxtorch import OnnxGraph

#: For each operator, which inputs are trainable weights when they are float initializers.
PARAMETER_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "PRelu": (1,), "BatchNormalization": (1, 2),
}


def trainable_tensors(spec: dict[str, Any]) -> set[str]:
    """The initializers of a :func:`facecli.onnxtorch.graph_spec` spec that fine-tuning trains."""
    floats = {t["name"] for t in spec["tensors"] if t["dtype"].startswith("float")}
    return {node["inputs"][i] for node in spec["nodes"] for i in PARAMETER_INPUTS.get(node["op"], ())
            if i < len(node["inputs"]) and node["inputs"][i] in floats}


class ImportedBackbone(nn.Module):
    """Input adapter (facecli's RGB ``(x - 127.5) / 127.5`` → the graph's own input) + graph + flatten."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, graph: dict[str, Any], mean: Sequence[float], std: Sequence[float], bgr: bool) -> None:
        super().__init__()
        self.graph = OnnxGraph(graph, trainable_tensors(graph))
        mean_t = torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1)
        std_t = torch.tensor([float(v) for v in std]).view(1, 3, 1, 1)
        # pixel = 127.5 x + 127.5, input = (pixel - mean) / std, per colour (R, G, B order)
        self.register_buffer("scale", 127.5 / std_t, persistent=False)
        self.register_buffer("shift", (127.5 - mean_t) / std_t, persistent=False)
        self.bgr = bool(bgr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale + self.shift
        if self.bgr:
            x = x.flip(1)
        return torch.flatten(self.graph(x)[0], 1)

    def parameter_layers(self) -> list[list[nn.Parameter]]:
        return self.graph.parameter_layers()


@BACKBONES.register("onnx")
def onnx_backbone(embedding_size: int = 0, dropout: float = 0.0, graph: dict[str, Any] | None = None,
                  mean: Sequence[float] = (127.5,) * 3, std: Sequence[float] = (127.5,) * 3,
                  bgr: bool = False) -> ImportedBackbone:
    """An imported ONNX recognition network (``--init MODEL.onnx``); its structure is ``graph``, a graph spec."""
    if graph is None:
        raise ValueError("the onnx backbone is built by --init MODEL.onnx, not by name")
    if dropout:
        raise ValueError("an imported ONNX network has no dropout option; leave model.dropout at 0")
    return ImportedBackbone(graph, mean, std, bgr)
