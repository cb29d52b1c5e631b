"""Rewrites of ONNX graphs that let onnxruntime's CPU provider run them faster, computing the same function.

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

:func:`split_pair_groups` takes the one layer of insightface's MobileFaceNet that onnxruntime cannot block, a
convolution in groups of two channels, and writes it as depthwise convolutions on the even and odd channels: the
same sums added in another order (about 1e-7 relative), and the whole network runs faster (benchmarks/README.md).

:func:`fill_channel_blocks` widens a first layer whose channel count does not fill the blocked layout (MTCNN's 10-
and 28-channel layers) with zero channels up to its pooling and cuts them off after it: bit-identical, and the
activation and pool stay blocked.
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
        depthwise: dict[str, Any] = {"group": channels, "kernel_shape": [1, 1]}
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


class _Readers:
    """Which nodes read each tensor of a graph, by their position in it.

    Nodes are referred to by position because protobuf may hand out a new Python object on every access, so
    identity says nothing. A graph output counts as a reader outside the graph: it never has a sole reader.
    """

    def __init__(self, graph: Any) -> None:
        self._outputs = {value.name for value in graph.output}
        self._positions: dict[str, list[int]] = {}
        for position, node in enumerate(graph.node):
            for name in node.input:
                self._positions.setdefault(name, []).append(position)

    def count(self, name: str) -> int:
        return len(self._positions.get(name, []))

    def sole(self, name: str) -> int | None:
        """The position of the one node that reads ``name``, if exactly one does and the graph does not output it."""
        positions = self._positions.get(name, [])
        return positions[0] if len(positions) == 1 and name not in self._outputs else None


def fill_channel_blocks(graph: Any, block: int = 16) -> int:
    """Widen every ``Conv → PRelu → MaxPool`` run whose channel count is not a multiple of ``block`` with zero
    channels, cut back to the original channels after the pool; in place, returns how many runs.

    onnxruntime keeps a tensor in its blocked (NCHWc) layout only when its channels fill whole blocks of 8 (AVX2)
    or 16 (AVX-512). A 10-channel layer (MTCNN's P-net) or a 28-channel one (its R-net) therefore had its
    activation and pool run in plain layout, on copies reordered out of the blocked convolution twice at full
    resolution. With zero channels added up to a multiple of ``block``:

    * the convolution runs the same blocked kernel as before, which already padded its output to whole blocks, so
      the real channels get the same values;
    * the ``PRelu`` (slope 0 on the new channels, which hold zeros) and the pool stay blocked;
    * a ``Slice`` after the pool, at a quarter of the resolution, hands the original channels to the next layer,
      which runs exactly as before.

    The result is bit-identical, and MTCNN's P- and R-nets run faster. A run is left alone
    unless each step is the only reader of the one before and the weights, bias and slopes are constants used
    nowhere else.
    """
    from onnx import helper, numpy_helper

    constants = {tensor.name: tensor for tensor in graph.initializer}
    readers = _Readers(graph)

    def only_reader(name: str, op_type: str) -> int | None:
        position = readers.sole(name)
        return position if position is not None and graph.node[position].op_type == op_type else None

    def private_constant(name: str) -> Any:
        return constants.get(name) if readers.count(name) == 1 else None

    cut_after: dict[int, Any] = {}
    widened: set[str] = set()
    for conv in graph.node:
        if conv.op_type != "Conv" or _attributes(conv).get("group", 1) != 1:
            continue
        weight = private_constant(conv.input[1])
        bias = private_constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if weight is None or len(weight.dims) != 4 or weight.dims[0] % block == 0:
            continue
        if len(conv.input) > 2 and conv.input[2] and bias is None:
            continue
        prelu_at = only_reader(conv.output[0], "PRelu")
        pool_at = only_reader(graph.node[prelu_at].output[0], "MaxPool") if prelu_at is not None else None
        if pool_at is None:
            continue
        prelu, pool = graph.node[prelu_at], graph.node[pool_at]
        slopes = private_constant(prelu.input[1])
        channels = weight.dims[0]
        slope_values = per_channel_slopes(slopes)
        if slope_values is None or slope_values.size != channels:
            continue
        wide = -(-channels // block) * block
        for tensor, axis in [(weight, 0), (bias, 0), (slopes, len(slopes.dims) - 3)]:
            if tensor is None:
                continue
            values = numpy_helper.to_array(tensor)
            widths = [(0, 0)] * values.ndim
            widths[axis] = (0, wide - channels)
            tensor.CopyFrom(numpy_helper.from_array(np.pad(values, widths), tensor.name))
        kept = pool.output[0]
        pool.output[0] = f"{kept}/filled_blocks"
        bounds = [
            numpy_helper.from_array(np.array(values, np.int64), f"{kept}/keep_channels_{part}")
            for part, values in (("start", [0]), ("end", [channels]), ("axis", [1]))
        ]
        graph.initializer.extend(bounds)
        cut_after[pool_at] = helper.make_node(
            "Slice", [pool.output[0], *(bound.name for bound in bounds)], [kept], name=f"{kept}/keep_channels"
        )
        widened.update([conv.output[0], prelu.output[0]])
    if cut_after:
        nodes = []
        for position, node in enumerate(graph.node):
            nodes.append(node)
            if position in cut_after:
                nodes.append(cut_after[position])
        del graph.node[:]
        graph.node.extend(nodes)
        shapes = [value for value in graph.value_info if value.name not in widened]  # recorded with the old width
        del graph.value_info[:]
        graph.value_info.extend(shapes)
    return len(cut_after)


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}


def split_pair_groups(graph: Any) -> int:
    """Rewrite every ``Conv → PRelu → Conv(2 channels per group) → PRelu → Conv`` run in place; returns how many.

    MobileFaceNet as insightface trains it (arcface_torch's ``mbf``, ``w600k_mbf.onnx``) opens with a 3x3
    convolution of 64 groups of 2 channels on the largest feature map. onnxruntime's blocked layout takes only
    dense and depthwise convolutions, so this one runs in plain NCHW, with a reorder on each side: about a sixth
    of the network's time. Split by channel parity it needs no grouping at all. With ``E``/``O`` the even/odd
    channels of the first convolution (two convolutions of half the outputs), the grouped layer is
    ``even = dw(E, w[0::2, 0]) + dw(O, w[0::2, 1])`` and ``odd = dw(E, w[1::2, 0]) + dw(O, w[1::2, 1])``: four
    depthwise convolutions whose sums onnxruntime fuses into them. The halves are concatenated as
    ``[even | odd]`` and the next convolution takes its input channels in that order. All of it stays in the
    blocked layout, which is faster (benchmarks/README.md). The sums are the same products added in another order, so
    results differ from the original graph by about 1e-7 relative (float rounding), not bit for bit.

    Only runs whose intermediate tensors each feed just the next node qualify; the slopes and weights must be
    constants, the first and last convolutions ungrouped.
    """
    from onnx import helper, numpy_helper

    constants = constant_tensors(graph)
    nodes_in = list(graph.node)  # referred to by position, see _Readers
    producer = {name: k for k, node in enumerate(nodes_in) for name in node.output}
    sole_consumer = _Readers(graph).sole

    def array(name: str) -> np.ndarray | None:
        tensor = constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def is_op(k: int, op: str) -> bool:
        return nodes_in[k].op_type == op

    def dense_conv(k: int) -> bool:
        if not is_op(k, "Conv"):
            return False
        return _attributes(nodes_in[k]).get("group", 1) == 1 and array(nodes_in[k].input[1]) is not None

    replaced: dict[int, list[Any]] = {}  # position of the first convolution → the nodes that replace the run
    dropped: set[int] = set()
    count = 0
    for g, grouped in enumerate(nodes_in):
        attrs = _attributes(grouped) if grouped.op_type == "Conv" else {}
        groups = attrs.get("group", 1)
        weight = array(grouped.input[1]) if groups > 1 else None
        if weight is None or weight.ndim != 4 or weight.shape[:2] != (2 * groups, 2):
            continue
        channels = 2 * groups
        b, a = producer.get(grouped.input[0]), sole_consumer(grouped.output[0])
        if b is None or a is None or not (is_op(b, "PRelu") and is_op(a, "PRelu")):
            continue
        before, after = nodes_in[b], nodes_in[a]
        f, n = producer.get(before.input[0]), sole_consumer(after.output[0])
        if f is None or n is None or not (dense_conv(f) and dense_conv(n)) or f in replaced or f in dropped:
            continue
        first, last = nodes_in[f], nodes_in[n]
        if sole_consumer(first.output[0]) != b or sole_consumer(before.output[0]) != g:
            continue
        slopes_in = per_channel_slopes(constants.get(before.input[1]))
        slopes_out = per_channel_slopes(constants.get(after.input[1]))
        first_weight, last_weight = array(first.input[1]), array(last.input[1])
        if slopes_in is None or slopes_out is None or len(slopes_in) != channels or len(slopes_out) != channels:
            continue
        if first_weight is None or last_weight is None:  # dense_conv found both: this narrows their type
            continue
        if first_weight.shape[0] != channels or last_weight.shape[1] != channels:
            continue
        bias_names = [node.input[2] if len(node.input) > 2 else "" for node in (first, grouped)]
        if any(name and name not in constants for name in bias_names):  # a computed bias: leave the run alone
            continue
        first_bias, bias = (array(name) if name else None for name in bias_names)
        count += 1
        prefix = f"{grouped.name or grouped.output[0]}/pair_split"

        def constant(name: str, value: np.ndarray, prefix: str = prefix) -> str:
            tensor = numpy_helper.from_array(np.ascontiguousarray(value, np.float32), f"{prefix}/{name}")
            graph.initializer.append(tensor)
            return tensor.name

        def make_node(op: str, inputs: list[str], output: str, prefix: str = prefix, **attributes: Any) -> Any:
            return helper.make_node(op, inputs, [f"{prefix}/{output}"], name=f"{prefix}/{output}", **attributes)

        first_attrs = _attributes(first)
        depthwise = {**attrs, "group": groups}
        nodes = []
        parities = {"even": slice(0, None, 2), "odd": slice(1, None, 2)}
        for parity, rows in parities.items():  # E and O: the first convolution's even and odd output channels
            inputs = [first.input[0], constant(f"{parity}/weight", first_weight[rows])]
            if first_bias is not None:
                inputs.append(constant(f"{parity}/bias", first_bias[rows]))
            nodes.append(make_node("Conv", inputs, parity, **first_attrs))
            slope = constant(f"{parity}/slope", slopes_in[rows].reshape(-1, 1, 1))
            nodes.append(make_node("PRelu", [f"{prefix}/{parity}", slope], f"{parity}_act"))
        for parity, rows in parities.items():  # the grouped layer's even and odd outputs from E and O
            from_even = [f"{prefix}/even_act", constant(f"{parity}_out/from_even", weight[rows, 0:1])]
            if bias is not None:
                from_even.append(constant(f"{parity}_out/bias", bias[rows]))
            from_odd = [f"{prefix}/odd_act", constant(f"{parity}_out/from_odd", weight[rows, 1:2])]
            out = f"{prefix}/{parity}_out"
            slope = constant(f"{parity}_out/slope", slopes_out[rows].reshape(-1, 1, 1))
            nodes += [
                make_node("Conv", from_even, f"{parity}_out/a", **depthwise),
                make_node("Conv", from_odd, f"{parity}_out/b", **depthwise),
                make_node("Add", [f"{out}/b", f"{out}/a"], f"{parity}_out"),
                make_node("PRelu", [out, slope], f"{parity}_out_act"),
            ]
        nodes.append(make_node("Concat", [f"{prefix}/even_out_act", f"{prefix}/odd_out_act"], "halves", axis=1))
        order = np.concatenate([np.arange(0, channels, 2), np.arange(1, channels, 2)])
        last.input[0] = f"{prefix}/halves"
        last.input[1] = constant("next_weight", last_weight[:, order])
        replaced[f] = nodes
        dropped.update({b, g, a})
    if count:
        rebuilt = []
        for k, node in enumerate(nodes_in):
            if k in replaced:
                rebuilt += replaced[k]
            elif k not in dropped:
                rebuilt.append(node)
        del graph.node[:]
        graph.node.extend(rebuilt)
    return count
