"""Exact rewrites of ONNX graphs that let onnxruntime's CPU provider run them faster.

Face networks (iresnet, MobileFaceNet, MTCNN) put a per-channel ``PRelu`` after most convolutions. onnxruntime's
CPU ``PRelu`` broadcasts its slopes slowly, and it is not one of the operators that its NCHWc layout optimiser
keeps in the blocked layout, so every ``PRelu`` also costs a reorder of its input and its output. On facecli's
MobileFaceNet these three steps take about half of the inference time.

:func:`rewrite_prelu` writes each such ``PRelu`` with operators that stay in the blocked layout and give the same
values bit for bit: ``PRelu(x, s) = Relu(x) + DepthwiseConv1x1(Relu(DepthwiseConv1x1(x, -1)), -s)``.

* ``x >= 0``: ``Relu(x) = x`` and ``Relu(-x) = 0``, so the sum is ``x + 0 = x``;
* ``x < 0``: ``Relu(x) = 0`` and ``Relu(-x) = -x`` exactly (negation does not round), so the sum is
  ``0 + round(-s * -x) = round(s * x)``, PRelu's own product.

A 1x1 depthwise convolution without bias computes one product per value, which is all that is needed here; only
the sign of a zero can differ. A ``PRelu`` that is not on a 4-D image tensor (after a dense layer) is written as
``Relu(x) + Min(x, 0) * s`` instead, also exact, as one of the two terms is always an exact zero. onnxruntime fuses the ``Relu`` of the negated values into the negating convolution
and the ``Add`` into the scaling one. The identity holds for any slope (negative, above 1), unlike
``Max(x, s * x)``. Because the whole network now stays in the blocked layout, onnxruntime may also move a
``BatchNormalization`` that follows a ``PRelu`` into it (iresnet's first block), which changes that layer's
rounding: embeddings then differ from the original graph's by about 1e-6 relative.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def constant_tensors(graph: Any) -> dict[str, Any]:
    """The ``TensorProto`` behind every tensor of ``graph`` whose value is fixed: initializers, ``Constant`` nodes
    and ``Identity`` of those.

    PyTorch exports share one slope tensor between layers through ``Identity`` nodes, so looking at the
    initializers alone misses most slopes."""
    tensors = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:  # nodes are topologically sorted, so an Identity's input is resolved before it
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensors[node.output[0]] = node.attribute[0].t
        elif node.op_type == "Identity" and node.input[0] in tensors:
            tensors[node.output[0]] = tensors[node.input[0]]
    return tensors


def per_channel_slopes(tensor: Any) -> np.ndarray | None:
    """The slopes in ``tensor`` as a (C,) float32 vector when they apply per channel of an NCHW tensor, else None."""
    from onnx import TensorProto, numpy_helper

    if tensor is None or tensor.data_type != TensorProto.FLOAT or len(tensor.dims) not in (3, 4):
        return None
    slope = numpy_helper.to_array(tensor)
    if slope.size < 2:
        return None
    channel_axis = slope.ndim - 3  # (C, 1, 1) or (1, C, 1, 1): broadcast onto axis 1 of (N, C, H, W)
    if slope.shape[channel_axis] != slope.size:
        return None
    return slope.reshape(-1)


def known_ranks(graph: Any) -> dict[str, int]:
    """The rank of every tensor whose shape ``graph`` records (inputs, outputs, ``value_info``)."""
    ranks = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    return ranks


def rewrite_prelu(graph: Any) -> int:
    """Rewrite in place every ``PRelu`` of ``graph`` with constant slopes; returns how many.

    A per-channel ``PRelu`` whose input the graph records as 4-D (NCHW; run ``onnx.shape_inference.infer_shapes``
    on the model first) takes the depthwise form of the module docstring. Any other ``PRelu`` with constant
    float32 slopes (after a dense layer, say) becomes ``Relu(x) + Min(x, 0) * s``, also exact: one of the two
    terms is always an exact zero. ``PRelu`` nodes with computed slopes are left as they are."""
    from onnx import TensorProto, helper, numpy_helper

    constants = constant_tensors(graph)
    ranks = known_ranks(graph)
    names = {name for node in graph.node for name in node.output} | {t.name for t in graph.initializer}
    minus_one: dict[int, str] = {}
    nodes, count = [], 0
    for node in graph.node:
        slope_tensor = constants.get(node.input[1]) if node.op_type == "PRelu" else None
        if slope_tensor is None or slope_tensor.data_type != TensorProto.FLOAT:
            nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        prefix = f"{node.name or y}/prelu_rewrite"
        while any(name.startswith(prefix) for name in names):
            prefix += "_"
        names.add(prefix)
        count += 1
        slopes = per_channel_slopes(slope_tensor) if ranks.get(x) == 4 else None
        if slopes is None:
            if "prelu_rewrite_zero" not in names:
                names.add("prelu_rewrite_zero")
                graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), "prelu_rewrite_zero"))
            nodes += [
                helper.make_node("Relu", [x], [f"{prefix}/positive"], name=f"{prefix}/relu"),
                helper.make_node("Min", [x, "prelu_rewrite_zero"], [f"{prefix}/nonpositive"], name=f"{prefix}/min"),
                helper.make_node("Mul", [f"{prefix}/nonpositive", node.input[1]], [f"{prefix}/negative"],
                                 name=f"{prefix}/scale"),
                helper.make_node("Add", [f"{prefix}/positive", f"{prefix}/negative"], [y], name=f"{prefix}/add"),
            ]
            continue
        channels = len(slopes)
        if channels not in minus_one:
            minus_one[channels] = f"prelu_rewrite_minus_one_{channels}"
            graph.initializer.append(
                numpy_helper.from_array(np.full((channels, 1, 1, 1), -1, np.float32), minus_one[channels])
            )
        graph.initializer.append(numpy_helper.from_array(-slopes.reshape(channels, 1, 1, 1), f"{prefix}/minus_slope"))
        depthwise = {"group": channels, "kernel_shape": [1, 1]}
        nodes += [
            helper.make_node("Relu", [x], [f"{prefix}/positive"], name=f"{prefix}/relu"),
            helper.make_node("Conv", [x, minus_one[channels]], [f"{prefix}/negated"], name=f"{prefix}/negate", **depthwise),
            helper.make_node("Relu", [f"{prefix}/negated"], [f"{prefix}/magnitude"], name=f"{prefix}/relu_negated"),
            helper.make_node(
                "Conv", [f"{prefix}/magnitude", f"{prefix}/minus_slope"], [f"{prefix}/negative"],
                name=f"{prefix}/scale", **depthwise,
            ),
            helper.make_node("Add", [f"{prefix}/positive", f"{prefix}/negative"], [y], name=f"{prefix}/add"),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return count
