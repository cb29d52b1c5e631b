"""Run an ONNX graph as a PyTorch module: one interpreter for every stage that needs an ONNX network in PyTorch.

Two needs meet here. Detectors (MTCNN) must run wherever PyTorch does, e.g. on CUDA where onnxruntime has no GPU
build; ``train --init MODEL.onnx`` must fine-tune a recognition network that exists only as ONNX (insightface's
model packs). No converter package does both (onnx2torch pulls in torchvision and keeps a batch-1 ``Reshape``), and
both are plain feed-forward graphs, so a small interpreter covers them:

- :func:`graph_spec` reads an ``onnx.ModelProto`` into a *spec* of plain values (nodes, attributes, tensor names,
  shapes and dtypes, the opset) and a state dict. The spec needs no file to be rebuilt, so a checkpoint can carry
  it; an operator outside :data:`OPS` is refused there, all of them named in one error, never silently mis-run.
- :class:`OnnxGraph` runs a spec node by node. Its caller chooses which initializers are ``nn.Parameter``s (a
  trainable backbone) and which are buffers (frozen weights, shapes, statistics).
- :func:`load_onnx_module` is the frozen case in one call.

Each operator follows the ONNX definition at the graph's opset (e.g. ``Softmax`` before opset 13 normalises over
everything from ``axis`` on; ``Reshape``'s 0 copies a dimension unless ``allowzero``; ``MaxPool``'s ``SAME_UPPER``
and asymmetric pads). One deliberate extension: in a graph whose input has a fixed batch size, a ``Reshape`` to
``[batch, -1]`` is a flatten, so a network exported at batch 1 runs on any batch. The arithmetic is PyTorch's: the
function onnxruntime computes up to float32 rounding (convolutions sum in another order), about 1e-6 relative.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facecli.errors import UsageError

Node = dict[str, Any]
Op = Callable[["OnnxGraph", Node, list[Any]], list[torch.Tensor]]

#: ONNX operator → implementation; the keys are the operators facecli can run (``Constant`` is folded by
#: :func:`graph_spec` into an initializer and never runs).
OPS: dict[str, Op] = {}

#: ONNX ``TensorProto`` element types that ``Cast`` can produce.
CAST_TYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
              9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def op(*names: str) -> Callable[[Op], Op]:
    def add(fn: Op) -> Op:
        for name in names:
            OPS[name] = fn
        return fn

    return add


def _torch_pads(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """Per-axis (begin, end) padding in ``F.pad``'s order: last axis first."""
    order: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        order += [int(b), int(e)]
    return order


def _same_pads(size: int, kernel: int, stride: int, upper: bool) -> tuple[int, int]:
    """(before, after) padding of ONNX ``SAME_UPPER``/``SAME_LOWER`` for one axis: the odd pixel goes after the
    data for UPPER, before it for LOWER."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + kernel - size)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def _window_pads(node: Node, x: torch.Tensor, reach: Sequence[int],
                 strides: Sequence[int]) -> tuple[list[int], list[int]]:
    """(begin, end) pads over the spatial axes of a Conv or pooling node, from ``auto_pad`` or explicit ``pads``;
    ``reach`` is each window's extent (the kernel, dilated)."""
    a, dims = node["attrs"], len(reach)
    mode = a.get("auto_pad", "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        pairs = [_same_pads(int(x.shape[2 + i]), int(reach[i]), int(strides[i]), mode == "SAME_UPPER")
                 for i in range(dims)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    if mode == "VALID":
        return [0] * dims, [0] * dims
    pads = list(a.get("pads", [0] * 2 * dims))
    return pads[:dims], pads[dims:]


@op("Conv")
def _conv(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    a, weight = node["attrs"], x[1]
    dims = weight.dim() - 2
    strides = a.get("strides", [1] * dims)
    dilations = a.get("dilations", [1] * dims)
    reach = [(k - 1) * d + 1 for k, d in zip(weight.shape[2:], dilations, strict=True)]
    begin, end = _window_pads(node, x[0], reach, strides)
    inp, padding = x[0], [0] * dims
    if begin == end:
        padding = begin  # the convolution pads symmetrically itself
    else:
        inp = F.pad(inp, _torch_pads(begin, end))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return [conv(inp, weight, x[2] if len(x) > 2 else None, stride=strides, padding=padding, dilation=dilations,
                 groups=a.get("group", 1))]


@op("MaxPool")
def _maxpool(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    """Pads of ``-inf`` (they never win), so asymmetric and SAME pads are exact; PyTorch pads symmetric ones the
    same way. ``storage_order`` only concerns the optional indices output, which these graphs never use."""
    a = node["attrs"]
    kernel = list(a["kernel_shape"])
    strides = a.get("strides", [1] * len(kernel))
    dilations = a.get("dilations", [1] * len(kernel))
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    begin, end = _window_pads(node, x[0], reach, strides)
    inp = F.pad(x[0], _torch_pads(begin, end), value=float("-inf")) if any(begin + end) else x[0]
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]
    return [pool(inp, kernel, strides, dilation=dilations, ceil_mode=bool(a.get("ceil_mode", 0)))]


@op("AveragePool")
def _avgpool(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    a = node["attrs"]
    kernel = list(a["kernel_shape"])
    strides = a.get("strides", [1] * len(kernel))
    begin, end = _window_pads(node, x[0], kernel, strides)
    if begin != end or a.get("ceil_mode", 0):
        raise ValueError("AveragePool with asymmetric padding or ceil_mode is not supported")
    return [F.avg_pool2d(x[0], kernel, strides, begin, count_include_pad=bool(a.get("count_include_pad", 0)))]


@op("GlobalAveragePool")
def _gap(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)]


@op("Gemm")
def _gemm(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    a = node["attrs"]
    left = x[0].t() if a.get("transA", 0) else x[0]
    right = x[1].t() if a.get("transB", 0) else x[1]
    out = float(a.get("alpha", 1.0)) * (left @ right)
    if len(x) > 2 and x[2] is not None:
        out = out + float(a.get("beta", 1.0)) * x[2]
    return [out]


@op("MatMul")
def _matmul(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [x[0] @ x[1]]


@op("BatchNormalization")
def _batchnorm(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    """Inference mode: the stored statistics normalise (what onnxruntime computes), and never change."""
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
    """Bounds are inputs from opset 11 on, attributes before."""
    a = node["attrs"]
    low = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    high = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    return [torch.clamp(x[0], low, high)]


@op("Softmax")
def _softmax(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    """From opset 13 over one axis (default -1); before it over everything from ``axis`` (default 1) on, as if the
    tensor were flattened to 2-D there."""
    if g.opset >= 13:
        return [torch.softmax(x[0], dim=int(node["attrs"].get("axis", -1)))]
    axis = int(node["attrs"].get("axis", 1)) % x[0].dim()
    flat = x[0].reshape(int(np.prod(x[0].shape[:axis])), -1)
    return [torch.softmax(flat, dim=1).reshape(x[0].shape)]


_ARITHMETIC: dict[str, Callable[..., torch.Tensor]] = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul,
                                                       "Div": torch.div}


@op(*_ARITHMETIC)
def _arith(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    return [_ARITHMETIC[node["op"]](x[0], x[1])]


@op("Identity", "Dropout")
def _identity(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    """Dropout at inference is the identity (its optional mask output is never used by these graphs)."""
    return [x[0]]


@op("Flatten")
def _flatten(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    """Always 2-D: the axes before ``axis`` form the first dimension, the rest the second."""
    axis = int(node["attrs"].get("axis", 1))
    return [x[0].reshape(int(np.prod(x[0].shape[:axis])), -1)]


@op("Reshape")
def _reshape(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    """``[N, -1]`` with N the exported batch, 0 or the actual batch is a flatten, so any batch size runs."""
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
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)  # ONNX counts negative indices from the end
    picked = torch.index_select(data, axis, indices.reshape(-1).long())
    return [picked.reshape(data.shape[:axis] + indices.shape + data.shape[axis + 1:])]


@op("Unsqueeze")
def _unsqueeze(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    """Axes are an attribute before opset 13, an input from it on; negative ones count in the output's rank."""
    axes = node["attrs"].get("axes") or [int(v) for v in x[1].tolist()]
    rank = x[0].dim() + len(axes)
    out = x[0]
    for axis in sorted(a % rank for a in axes):
        out = out.unsqueeze(axis)
    return [out]


@op("Squeeze")
def _squeeze(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    axes = node["attrs"].get("axes") or ([int(v) for v in x[1].tolist()] if len(x) > 1 and x[1] is not None else None)
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
    """Without ``perm`` the axes are reversed."""
    perm = node["attrs"].get("perm") or list(range(x[0].dim()))[::-1]
    return [x[0].permute(perm)]


@op("Cast")
def _cast(g: OnnxGraph, node: Node, x: list[Any]) -> list[torch.Tensor]:
    to = node["attrs"]["to"]
    if to not in CAST_TYPES:
        raise ValueError(f"Cast to ONNX element type {to} is not supported")
    return [x[0].to(CAST_TYPES[to])]


def _attribute(attr: Any) -> Any:
    """An attribute as a plain value (strings decoded), so a spec pickles and prints without onnx."""
    from onnx import helper

    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def _constant(node: Any, source: str) -> np.ndarray:
    """The value of a ``Constant`` node, in any of its scalar, list or tensor forms."""
    from onnx import numpy_helper

    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name in ("value_float", "value_floats"):
        return np.array(_attribute(attr), dtype=np.float32)
    if attr.name in ("value_int", "value_ints"):
        return np.array(_attribute(attr), dtype=np.int64)
    raise UsageError(f"{source}: cannot import a Constant given by {attr.name!r}")


def graph_spec(model: Any, source: str = "ONNX graph") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The spec (plain values) and the state dict (``t0``, ``t1``, ... as :class:`OnnxGraph` names them) of an
    ``onnx.ModelProto``; ``source`` names it in errors.

    Only initializers some node uses are kept. Float ones become float32 (PyTorch's arithmetic, and what a
    trainable parameter needs), integer ones int64 (what shapes and indices take).
    """
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    unsupported = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in graph.node
                          if n.domain not in ("", "ai.onnx") or (n.op_type not in OPS and n.op_type != "Constant")})
    if unsupported:
        raise UsageError(f"{source}: cannot import ONNX operator(s) {', '.join(unsupported)} "
                         f"(supported: {', '.join(sorted(OPS))})")
    from onnx import numpy_helper

    values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes: list[Node] = []
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = _constant(node, source)
            continue
        nodes.append({"op": node.op_type, "inputs": list(node.input), "outputs": list(node.output),
                      "attrs": {a.name: _attribute(a) for a in node.attribute}})
    used = {name for node in nodes for name in node["inputs"]}
    tensors: list[dict[str, Any]] = []
    state: dict[str, torch.Tensor] = {}
    for name, array in values.items():
        if name not in used:
            continue
        array = array.astype(np.float32 if array.dtype.kind == "f" else np.int64)  # a copy; keeps 0-d scalars
        state[f"t{len(tensors)}"] = torch.from_numpy(array)
        tensors.append({"name": name, "shape": list(array.shape), "dtype": str(array.dtype)})
    inputs = [i for i in graph.input if i.name not in values]
    first_dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    fixed_batch = first_dims[0].dim_value if len(first_dims) and first_dims[0].HasField("dim_value") else 0
    spec = {"nodes": nodes, "tensors": tensors, "inputs": [i.name for i in inputs],
            "outputs": [o.name for o in graph.output], "opset": opset, "fixed_batch": fixed_batch}
    return spec, state


class OnnxGraph(nn.Module):
    """The nodes of a :func:`graph_spec` spec run in order on torch tensors. ``forward`` takes the graph's inputs
    positionally and returns its outputs as a tuple, in the graph's order (names in ``inputs``/``outputs``).

    The initializers are registered as ``t0``, ``t1``, ...: those named in ``trainable`` as ``nn.Parameter``s,
    the rest as buffers. The values are zeros until a state dict is loaded.
    """

    def __init__(self, spec: dict[str, Any], trainable: Collection[str] = ()) -> None:
        super().__init__()
        self.nodes: list[Node] = spec["nodes"]
        self.inputs: list[str] = spec["inputs"]
        self.outputs: list[str] = spec["outputs"]
        self.opset = int(spec["opset"])
        self.fixed_batch = int(spec["fixed_batch"])
        self.slots: dict[str, str] = {}  # ONNX tensor name → attribute name
        for index, tensor in enumerate(spec["tensors"]):
            slot = f"t{index}"
            self.slots[tensor["name"]] = slot
            value = torch.zeros(tensor["shape"], dtype=getattr(torch, tensor["dtype"]))
            if tensor["name"] in trainable:
                self.register_parameter(slot, nn.Parameter(value))
            else:
                self.register_buffer(slot, value)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values: dict[str, Any] = dict(zip(self.inputs, args, strict=True))
        for node in self.nodes:
            inputs = [self._value(name, values) for name in node["inputs"]]
            outputs = OPS[node["op"]](self, node, inputs)
            values.update(zip(node["outputs"], outputs, strict=False))  # optional outputs (e.g. a mask) unused
        return tuple(values[name] for name in self.outputs)

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


def load_onnx_module(model: Any, source: str = "ONNX graph") -> OnnxGraph:
    """An ``onnx.ModelProto`` (or its serialised bytes) as an :class:`OnnxGraph` in eval mode with every weight a
    frozen buffer: for running a graph, not training it."""
    import onnx

    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    spec, state = graph_spec(model, source)
    module = OnnxGraph(spec)
    module.load_state_dict(state, strict=True)
    return module.eval()
