"""A trainable PyTorch module that runs an imported ONNX recognition graph (backbone ``onnx``).

``facecli.nn.onnx_import`` turns an ONNX file into a *graph spec* (plain lists and dicts: nodes, their attributes,
tensor names and parameter shapes) and a state dict. This module rebuilds the network from the spec alone, so the
spec travels in a checkpoint's ``info["backbone_options"]`` and every facecli tool (export, eval, resume) can
rebuild the fine-tuned network without the original file.

The graph's float weights (convolution and fully connected weights and biases, PReLU slopes, BatchNorm scale and
shift) are ``nn.Parameter``s; everything else (BatchNorm statistics, constants, shape tensors) are buffers, so
BatchNorm statistics of an imported graph never change — which is what small-batch fine-tuning wants, and
folded BatchNorm has no statistics anyway. In front of the graph an input adapter converts facecli's standard
input (RGB, ``(x - 127.5) / 127.5``) to the colour order and normalisation the graph was trained with, so the
backbone obeys the same contract as every other facecli backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facecli.nn.backbones import BACKBONES

Node = dict[str, Any]
Op = Callable[["OnnxGraph", Node, list[Any]], list[torch.Tensor]]

#: ONNX operator → implementation; the keys are the operators facecli can import.
OPS: dict[str, Op] = {}

#: For each operator, which inputs are trainable weights when they are float initializers.
PARAMETER_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "PRelu": (1,), "BatchNormalization": (1, 2),
}


def op(*names: str) -> Callable[[Op], Op]:
    def add(fn: Op) -> Op:
        for name in names:
            OPS[name] = fn
        return fn

    return add


def _pair_pads(pads: Sequence[int]) -> tuple[list[int], bool]:
    """ONNX pads ``[t, l, b, r]`` as torch ``F.pad`` order, and whether they are symmetric."""
    half = len(pads) // 2
    begin, end = list(pads[:half]), list(pads[half:])
    torch_order: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        torch_order += [b, e]
    return torch_order, begin == end


@op("Conv")
def _conv(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    a = node["attrs"]
    weight = x[1]
    dims = weight.dim() - 2
    pads, symmetric = _pair_pads(a.get("pads", [0] * 2 * dims))
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise ValueError("Conv with auto_pad SAME is not supported")
    inp = x[0]
    padding: Any = pads[::2][::-1] if symmetric else 0
    if not symmetric:
        inp = F.pad(inp, pads)
    conv = F.conv2d if dims == 2 else F.conv1d
    return [conv(inp, weight, x[2] if len(x) > 2 else None, stride=a.get("strides", 1), padding=padding,
                 dilation=a.get("dilations", 1), groups=a.get("group", 1))]


@op("Gemm")
def _gemm(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    a = node["attrs"]
    left = x[0].t() if a.get("transA", 0) else x[0]
    right = x[1].t() if a.get("transB", 0) else x[1]
    out = a.get("alpha", 1.0) * (left @ right)
    if len(x) > 2 and x[2] is not None:
        out = out + a.get("beta", 1.0) * x[2]
    return [out]


@op("MatMul")
def _matmul(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [x[0] @ x[1]]


@op("BatchNormalization")
def _batchnorm(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [F.batch_norm(x[0], x[3], x[4], x[1], x[2], training=False, eps=node["attrs"].get("epsilon", 1e-5))]


@op("PRelu")
def _prelu(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [torch.where(x[0] >= 0, x[0], x[0] * x[1])]


@op("Relu")
def _relu(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [F.relu(x[0])]


@op("LeakyRelu")
def _leaky(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [F.leaky_relu(x[0], node["attrs"].get("alpha", 0.01))]


@op("Sigmoid")
def _sigmoid(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [torch.sigmoid(x[0])]


@op("Tanh")
def _tanh(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [torch.tanh(x[0])]


@op("Clip")
def _clip(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    a = node["attrs"]
    low = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    high = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    return [torch.clamp(x[0], low, high)]


_ARITHMETIC: dict[str, Callable[..., torch.Tensor]] = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul,
                                                       "Div": torch.div}


@op(*_ARITHMETIC)
def _arith(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [_ARITHMETIC[node["op"]](x[0], x[1])]


@op("Identity", "Dropout")
def _identity(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [x[0]]


@op("Flatten")
def _flatten(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [torch.flatten(x[0], node["attrs"].get("axis", 1))]


@op("Reshape")
def _reshape(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    """``[N, -1]`` with N the batch (the exported one, 0, or the actual one) is a flatten: any batch size runs."""
    target = [int(v) for v in x[1].tolist()]
    if len(target) == 2 and target[1] == -1 and target[0] in (0, g.fixed_batch, x[0].shape[0]):
        return [torch.flatten(x[0], 1)]
    if not node["attrs"].get("allowzero", 0):
        target = [x[0].shape[i] if v == 0 else v for i, v in enumerate(target)]
    return [x[0].reshape(target)]


@op("Shape")
def _shape(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [torch._shape_as_tensor(x[0])]


@op("Gather")
def _gather(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    data, indices, axis = x[0], x[1], node["attrs"].get("axis", 0) % x[0].dim()
    picked = torch.index_select(data, axis, indices.reshape(-1).long())
    return [picked.reshape(data.shape[:axis] + indices.shape + data.shape[axis + 1:])]


@op("Unsqueeze")
def _unsqueeze(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    axes = node["attrs"].get("axes") or [int(v) for v in x[1].tolist()]
    out = x[0]
    for axis in sorted(axes):
        out = out.unsqueeze(axis)
    return [out]


@op("Squeeze")
def _squeeze(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    axes = node["attrs"].get("axes") or ([int(v) for v in x[1].tolist()] if len(x) > 1 else None)
    if axes is None:
        return [x[0].squeeze()]
    out = x[0]
    for axis in sorted((a % out.dim() for a in axes), reverse=True):
        out = out.squeeze(axis)
    return [out]


@op("Concat")
def _concat(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [torch.cat(x, dim=node["attrs"]["axis"])]


@op("Transpose")
def _transpose(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    perm = node["attrs"].get("perm") or list(range(x[0].dim()))[::-1]
    return [x[0].permute(perm)]


@op("GlobalAveragePool")
def _gap(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)]


@op("AveragePool", "MaxPool")
def _pool(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    a = node["attrs"]
    pads, symmetric = _pair_pads(a.get("pads", [0, 0, 0, 0]))
    if not symmetric or a.get("ceil_mode", 0):
        raise ValueError(f"{node['op']} with asymmetric padding or ceil_mode is not supported")
    kernel, stride, padding = a["kernel_shape"], a.get("strides", 1), pads[::2][::-1]
    if node["op"] == "MaxPool":
        return [F.max_pool2d(x[0], kernel, stride, padding)]
    return [F.avg_pool2d(x[0], kernel, stride, padding, count_include_pad=bool(a.get("count_include_pad", 0)))]


@op("Cast")
def _cast(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    dtypes = {1: torch.float32, 6: torch.int32, 7: torch.int64, 11: torch.float64}
    return [x[0].to(dtypes.get(node["attrs"]["to"], torch.float32))]


class OnnxGraph(nn.Module):
    """The ONNX nodes of ``spec`` run in order on torch tensors; parameters and buffers named ``t0``, ``t1``, ..."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self.nodes: list[Node] = spec["nodes"]
        self.input_name: str = spec["input"]
        self.output_name: str = spec["output"]
        self.fixed_batch = int(spec.get("fixed_batch") or 0)
        self.slots: dict[str, str] = {}  # ONNX tensor name → attribute name
        for index, tensor in enumerate(spec["tensors"]):
            slot = f"t{index}"
            self.slots[tensor["name"]] = slot
            value = torch.zeros(tensor["shape"], dtype=getattr(torch, tensor["dtype"]))
            if tensor["trainable"]:
                self.register_parameter(slot, nn.Parameter(value))
            else:
                self.register_buffer(slot, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, Any] = {self.input_name: x}
        for node in self.nodes:
            inputs = [self._value(name, values) for name in node["inputs"]]
            outputs = OPS[node["op"]](self, node, inputs)
            values.update(zip(node["outputs"], outputs, strict=False))  # optional outputs (e.g. a mask) unused
        return values[self.output_name]

    def _value(self, name: str, values: dict[str, Any]) -> Any:
        if name == "":
            return None
        if name in values:
            return values[name]
        return getattr(self, self.slots[name])

    def parameter_layers(self) -> list[list[nn.Parameter]]:
        """The trainable tensors grouped by the node that uses them, in execution order (for partial unfreezing)."""
        groups: list[list[nn.Parameter]] = []
        seen: set[str] = set()
        for node in self.nodes:
            group = []
            for name in node["inputs"]:
                slot = self.slots.get(name)
                if slot and slot not in seen and isinstance(getattr(self, slot), nn.Parameter):
                    seen.add(slot)
                    group.append(getattr(self, slot))
            if group:
                groups.append(group)
        return groups


class ImportedBackbone(nn.Module):
    """Input adapter (facecli's RGB ``(x - 127.5) / 127.5`` → the graph's own input) + graph + flatten."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, graph: dict[str, Any], mean: Sequence[float], std: Sequence[float], bgr: bool) -> None:
        super().__init__()
        self.graph = OnnxGraph(graph)
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
        return torch.flatten(self.graph(x), 1)

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
