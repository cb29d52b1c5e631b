"""Run a small ONNX graph as a PyTorch module, so that it runs wherever PyTorch does (CUDA without onnxruntime-gpu).

Machines lent for training have PyTorch with CUDA but often no onnxruntime GPU build. Detectors such as MTCNN are
plain convolutional graphs, so a small importer covers them: it reads the graph once, keeps the weights as buffers
and interprets the nodes in order. The operators are the ones these graphs use: ``Conv``, ``PRelu``, ``Relu``,
``MaxPool`` (``VALID``, ``SAME_UPPER``, ``SAME_LOWER`` and explicit pads), ``Transpose``, ``Flatten``,
``Reshape``, ``MatMul``, ``Gemm``, ``Add``, ``Sub``, ``Mul``, ``Softmax``; any other one is refused when the graph
is loaded, never silently mis-run.

The arithmetic is PyTorch's: the same function as onnxruntime up to float32 rounding (convolutions sum in another
order), so outputs agree to about 1e-6 relative, not bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SUPPORTED = frozenset({"Conv", "PRelu", "Relu", "MaxPool", "Transpose", "Flatten", "Reshape", "MatMul", "Gemm", "Add",
                       "Sub", "Mul", "Softmax"})


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _same_pads(size: int, kernel: int, stride: int, upper: bool) -> tuple[int, int]:
    """(before, after) padding of ONNX ``SAME_UPPER``/``SAME_LOWER`` for one axis: the odd pixel goes after the
    data for UPPER, before it for LOWER."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + kernel - size)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def load_onnx_module(model: Any) -> Any:
    """An ``onnx.ModelProto`` (or its serialised bytes) as a ``torch.nn.Module`` whose ``forward`` takes the graph's
    inputs positionally and returns its outputs as a tuple, in the graph's order."""
    import onnx
    import torch
    from onnx import numpy_helper

    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    graph = model.graph
    unknown = sorted({n.op_type for n in graph.node} - SUPPORTED)
    if unknown:
        raise ValueError(f"cannot import ONNX operators {', '.join(unknown)} into PyTorch")

    class OnnxModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
            self.outputs = [o.name for o in graph.output]
            opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
            self.nodes = [(n.op_type, list(n.input), list(n.output), {**_attrs(n), "_opset": opset})
                          for n in graph.node]
            self._names: dict[str, str] = {}
            for k, tensor in enumerate(graph.initializer):
                array = numpy_helper.to_array(tensor)
                self.register_buffer(f"w{k}", torch.from_numpy(array.copy()))
                self._names[tensor.name] = f"w{k}"

        def forward(self, *args: Any) -> tuple[Any, ...]:
            values: dict[str, Any] = dict(zip(self.inputs, args, strict=True))
            for name, buffer in self._names.items():
                values[name] = getattr(self, buffer)
            for op, ins, outs, attrs in self.nodes:
                values[outs[0]] = _run(op, [values[i] if i else None for i in ins], attrs)
            return tuple(values[o] for o in self.outputs)

    return OnnxModule().eval()


def _run(op: str, x: list[Any], a: dict[str, Any]) -> Any:
    """One node: ``x`` its inputs (tensors), ``a`` its attributes."""
    import torch
    import torch.nn.functional as F

    if op == "Conv":
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
            raise ValueError("Conv with SAME padding is not supported")
        if a.get("auto_pad") == b"VALID":
            pads = [0, 0, 0, 0]
        inp = F.pad(x[0], (pads[1], pads[3], pads[0], pads[2])) if any(pads) else x[0]
        return F.conv2d(inp, x[1], x[2] if len(x) > 2 else None, stride=tuple(a.get("strides", [1, 1])),
                        dilation=tuple(a.get("dilations", [1, 1])), groups=int(a.get("group", 1)))
    if op == "PRelu":
        return torch.where(x[0] >= 0, x[0], x[0] * x[1])
    if op == "Relu":
        return torch.relu(x[0])
    if op == "MaxPool":
        kernel, strides = list(a["kernel_shape"]), list(a.get("strides", [1, 1]))
        mode = a.get("auto_pad", b"NOTSET")
        if mode in (b"SAME_UPPER", b"SAME_LOWER"):
            (top, bottom), (left, right) = (
                _same_pads(int(x[0].shape[2 + i]), kernel[i], strides[i], mode == b"SAME_UPPER") for i in range(2))
        elif mode == b"VALID":
            top = left = bottom = right = 0
        else:
            top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
        inp = F.pad(x[0], (left, right, top, bottom), value=float("-inf")) if top or bottom or left or right else x[0]
        return F.max_pool2d(inp, kernel, strides, ceil_mode=bool(a.get("ceil_mode", 0)))
    if op == "Transpose":
        return x[0].permute(*a["perm"])
    if op == "Flatten":
        axis = int(a.get("axis", 1))
        return x[0].reshape(int(np.prod(x[0].shape[:axis])), -1)
    if op == "Reshape":
        return x[0].reshape([int(v) for v in x[1].tolist()])
    if op == "MatMul":
        return x[0] @ x[1]
    if op == "Gemm":
        left = x[0].T if a.get("transA", 0) else x[0]
        right = x[1].T if a.get("transB", 0) else x[1]
        result = float(a.get("alpha", 1.0)) * (left @ right)
        return result + float(a.get("beta", 1.0)) * x[2] if len(x) > 2 and x[2] is not None else result
    if op == "Add":
        return x[0] + x[1]
    if op == "Sub":
        return x[0] - x[1]
    if op == "Mul":
        return x[0] * x[1]
    if op == "Softmax":
        if a["_opset"] >= 13:
            return torch.softmax(x[0], dim=int(a.get("axis", -1)))
        axis = int(a.get("axis", 1)) % x[0].dim()  # before opset 13: over everything from axis on, flattened
        flat = x[0].reshape(int(np.prod(x[0].shape[:axis])), -1)
        return torch.softmax(flat, dim=1).reshape(x[0].shape)
    raise ValueError(f"cannot import ONNX operator {op} into PyTorch")
