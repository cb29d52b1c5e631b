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
``Relu(x) + Min(x, 0) * s`` instead, also exact, as one of the two terms is always an exact zero. onnxruntime
fuses the ``Relu`` of the negated values into the negating convolution and the ``Add`` into the scaling one.
The identity holds for any slope (negative, above 1), unlike ``Max(x, s * x)``. Because the whole network now
stays in the blocked layout, onnxruntime may also move a ``BatchNormalization`` that follows a ``PRelu`` into it
(iresnet's first block), which changes that layer's rounding: embeddings then differ from the original graph's by
about 1e-6 relative.

:func:`split_pair_groups` takes the one layer of insightface's MobileFaceNet that onnxruntime cannot block, a
convolution in groups of two channels, and writes it as depthwise convolutions on the even and odd channels: the
same sums added in another order (about 1e-7 relative), and the whole network runs faster (benchmarks/README.md).

:func:`fill_channel_blocks` widens a first layer whose channel count does not fill the blocked layout (MTCNN's 10-
and 28-channel layers) with zero channels up to its pooling and cuts them off after it: bit-identical, and the
activation and pool stay blocked.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
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
    from onnx import TensorProto

    constants = constant_tensors(graph)
    ranks = known_ranks(graph)
    names = {name for node in graph.node for name in node.output} | {t.name for t in graph.initializer}
    minus_one: dict[int, str] = {}  # channel count → its constant of -1 weights, shared by all PRelus that wide
    nodes, count = [], 0
    for node in graph.node:
        slope_tensor = constants.get(node.input[1]) if node.op_type == "PRelu" else None
        if slope_tensor is None or slope_tensor.data_type != TensorProto.FLOAT:
            nodes.append(node)
            continue
        prefix = _unused_prefix(names, f"{node.name or node.output[0]}/prelu_rewrite")
        count += 1
        slopes = per_channel_slopes(slope_tensor) if ranks.get(node.input[0]) == 4 else None
        if slopes is None:
            nodes += _prelu_by_min(graph, node, prefix, names)
        else:
            nodes += _prelu_by_depthwise(graph, node, prefix, slopes, minus_one)
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _unused_prefix(names: set[str], prefix: str) -> str:
    """``prefix``, lengthened with ``_`` until no name of the graph starts with it; recorded in ``names``."""
    while any(name.startswith(prefix) for name in names):
        prefix += "_"
    names.add(prefix)
    return prefix


def _prelu_by_min(graph: Any, node: Any, prefix: str, names: set[str]) -> list[Any]:
    """``Relu(x) + Min(x, 0) * s``: the form for a ``PRelu`` not known to be per channel of a 4-D tensor."""
    from onnx import helper, numpy_helper

    if "prelu_rewrite_zero" not in names:
        names.add("prelu_rewrite_zero")
        graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), "prelu_rewrite_zero"))
    x, y = node.input[0], node.output[0]
    return [
        helper.make_node("Relu", [x], [f"{prefix}/positive"], name=f"{prefix}/relu"),
        helper.make_node("Min", [x, "prelu_rewrite_zero"], [f"{prefix}/nonpositive"], name=f"{prefix}/min"),
        helper.make_node("Mul", [f"{prefix}/nonpositive", node.input[1]], [f"{prefix}/negative"],
                         name=f"{prefix}/scale"),
        helper.make_node("Add", [f"{prefix}/positive", f"{prefix}/negative"], [y], name=f"{prefix}/add"),
    ]


def _prelu_by_depthwise(graph: Any, node: Any, prefix: str, slopes: np.ndarray, minus_one: dict[int, str],
                        ) -> list[Any]:
    """``Relu(x) + DepthwiseConv1x1(Relu(DepthwiseConv1x1(x, -1)), -s)``, the module docstring's form for a
    per-channel ``PRelu`` of a 4-D tensor; the -1 weights are shared between layers of one width."""
    from onnx import helper, numpy_helper

    channels = len(slopes)
    if channels not in minus_one:
        minus_one[channels] = f"prelu_rewrite_minus_one_{channels}"
        graph.initializer.append(
            numpy_helper.from_array(np.full((channels, 1, 1, 1), -1, np.float32), minus_one[channels])
        )
    graph.initializer.append(numpy_helper.from_array(-slopes.reshape(channels, 1, 1, 1), f"{prefix}/minus_slope"))
    depthwise: dict[str, Any] = {"group": channels, "kernel_shape": [1, 1]}
    x, y = node.input[0], node.output[0]
    return [
        helper.make_node("Relu", [x], [f"{prefix}/positive"], name=f"{prefix}/relu"),
        helper.make_node("Conv", [x, minus_one[channels]], [f"{prefix}/negated"], name=f"{prefix}/negate",
                         **depthwise),
        helper.make_node("Relu", [f"{prefix}/negated"], [f"{prefix}/magnitude"], name=f"{prefix}/relu_negated"),
        helper.make_node(
            "Conv", [f"{prefix}/magnitude", f"{prefix}/minus_slope"], [f"{prefix}/negative"],
            name=f"{prefix}/scale", **depthwise,
        ),
        helper.make_node("Add", [f"{prefix}/positive", f"{prefix}/negative"], [y], name=f"{prefix}/add"),
    ]


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
    runs = _NarrowRuns(graph, block)
    changes: dict[int, list[Any]] = {}  # pool position → the pool and the Slice after it
    widened: set[str] = set()
    for conv in graph.node:
        run = runs.find(conv)
        if run is None:
            continue
        changes[run.pool_at] = [run.pool, _fill_narrow_run(graph, run, block)]
        widened.update([conv.output[0], run.prelu.output[0]])
    if changes:
        _splice(graph, list(graph.node), changes)
        shapes = [value for value in graph.value_info if value.name not in widened]  # recorded with the old width
        del graph.value_info[:]
        graph.value_info.extend(shapes)
    return len(changes)


@dataclass
class _NarrowRun:
    """One run :func:`fill_channel_blocks` widens: its activation and pool, and the constants to widen (tensors of
    the graph, changed in place)."""

    prelu: Any
    pool: Any
    pool_at: int
    weight: Any
    bias: Any | None
    slopes: Any
    channels: int


class _NarrowRuns:
    """Finds the runs of :func:`fill_channel_blocks`: each step the only reader of the one before, the weights,
    bias and slopes initializers that nothing else reads."""

    def __init__(self, graph: Any, block: int) -> None:
        self._graph = graph
        self._block = block
        self._constants = {tensor.name: tensor for tensor in graph.initializer}
        self._readers = _Readers(graph)

    def _only_reader(self, name: str, op_type: str) -> int | None:
        position = self._readers.sole(name)
        return position if position is not None and self._graph.node[position].op_type == op_type else None

    def _private_constant(self, name: str) -> Any:
        return self._constants.get(name) if self._readers.count(name) == 1 else None

    def find(self, conv: Any) -> _NarrowRun | None:
        """The run that starts at ``conv`` when it is an ungrouped convolution with private constants whose
        channels do not fill whole blocks, read by a per-channel ``PRelu`` read by a ``MaxPool``."""
        if conv.op_type != "Conv" or _attributes(conv).get("group", 1) != 1:
            return None
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        weight = self._private_constant(conv.input[1])
        bias = self._private_constant(conv.input[2]) if has_bias else None
        if weight is None or len(weight.dims) != 4 or weight.dims[0] % self._block == 0:
            return None
        if has_bias and bias is None:
            return None
        prelu_at = self._only_reader(conv.output[0], "PRelu")
        pool_at = self._only_reader(self._graph.node[prelu_at].output[0], "MaxPool") if prelu_at is not None else None
        if pool_at is None:
            return None
        prelu, pool = self._graph.node[prelu_at], self._graph.node[pool_at]
        slopes = self._private_constant(prelu.input[1])
        slope_values = per_channel_slopes(slopes)
        if slope_values is None or slope_values.size != weight.dims[0]:
            return None
        return _NarrowRun(prelu, pool, pool_at, weight, bias, slopes, weight.dims[0])


def _fill_narrow_run(graph: Any, run: _NarrowRun, block: int) -> Any:
    """Pad the run's weights, bias and slopes with zero channels up to whole blocks and rename the pool's output;
    returns the ``Slice`` that hands the original channels on under the pool's old output name."""
    from onnx import helper, numpy_helper

    wide = -(-run.channels // block) * block
    for tensor, axis in [(run.weight, 0), (run.bias, 0), (run.slopes, len(run.slopes.dims) - 3)]:
        if tensor is None:
            continue
        values = numpy_helper.to_array(tensor)
        widths = [(0, 0)] * values.ndim
        widths[axis] = (0, wide - run.channels)
        tensor.CopyFrom(numpy_helper.from_array(np.pad(values, widths), tensor.name))
    kept = run.pool.output[0]
    run.pool.output[0] = f"{kept}/filled_blocks"
    bounds = [
        numpy_helper.from_array(np.array(values, np.int64), f"{kept}/keep_channels_{part}")
        for part, values in (("start", [0]), ("end", [run.channels]), ("axis", [1]))
    ]
    graph.initializer.extend(bounds)
    return helper.make_node(
        "Slice", [run.pool.output[0], *(bound.name for bound in bounds)], [kept], name=f"{kept}/keep_channels"
    )


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
    runs = _PairRuns(graph)
    changes: dict[int, list[Any]] = {}  # node position → the nodes that take its place (none: dropped)
    count = 0
    for grouped_at in range(len(runs.nodes)):
        run = runs.find(grouped_at, taken=changes)
        if run is None:
            continue
        count += 1
        changes.update(dict.fromkeys(run.dropped, []))
        changes[run.first_at] = _split_pair_run(graph, run)
    if count:
        _splice(graph, runs.nodes, changes)
    return count


_PARITIES = {"even": slice(0, None, 2), "odd": slice(1, None, 2)}


@dataclass
class _PairRun:
    """One run :func:`split_pair_groups` rewrites: its nodes, their positions, and the constants the split needs."""

    first_at: int
    dropped: tuple[int, int, int]  # positions of the PRelu before, the grouped convolution, the PRelu after
    first: Any
    grouped: Any
    last: Any
    first_weight: np.ndarray
    first_bias: np.ndarray | None
    slopes_in: np.ndarray
    weight: np.ndarray  # the grouped layer's, (channels, 2, kh, kw)
    bias: np.ndarray | None
    slopes_out: np.ndarray
    last_weight: np.ndarray


class _PairRuns:
    """Finds the runs of :func:`split_pair_groups` in a graph as it was before the rewrite began: nodes by position
    (see :class:`_Readers`), constants by name. A run's last convolution is rewired as soon as the run is
    rewritten, so it never qualifies as the first convolution of another run."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self._to_array = numpy_helper.to_array
        self.constants = constant_tensors(graph)
        self.nodes = list(graph.node)
        self._producer = {name: k for k, node in enumerate(self.nodes) for name in node.output}
        self._sole_reader = _Readers(graph).sole

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else self._to_array(tensor)

    def _is_op(self, k: int, op: str) -> bool:
        return self.nodes[k].op_type == op

    def _dense_conv(self, k: int) -> bool:
        if not self._is_op(k, "Conv"):
            return False
        return _attributes(self.nodes[k]).get("group", 1) == 1 and self.array(self.nodes[k].input[1]) is not None

    def find(self, grouped_at: int, taken: Container[int]) -> _PairRun | None:
        """The run around the node at ``grouped_at`` when it is a convolution in groups of two channels with
        constant weights, its neighbours have the run's shape and its first convolution is not ``taken``."""
        grouped = self.nodes[grouped_at]
        groups = _attributes(grouped).get("group", 1) if grouped.op_type == "Conv" else 1
        weight = self.array(grouped.input[1]) if groups > 1 else None
        if weight is None or weight.ndim != 4 or weight.shape[:2] != (2 * groups, 2):
            return None
        around = self._around(grouped_at)
        if around is None or around[0] in taken:
            return None
        return self._with_constants(grouped_at, weight, *around)

    def _around(self, g: int) -> tuple[int, int, int, int] | None:
        """Positions of the dense convolution and ``PRelu`` before the node at ``g`` and of the ``PRelu`` and dense
        convolution after it, when each intermediate tensor feeds just the next node."""
        b, a = self._producer.get(self.nodes[g].input[0]), self._sole_reader(self.nodes[g].output[0])
        if b is None or a is None or not (self._is_op(b, "PRelu") and self._is_op(a, "PRelu")):
            return None
        f, n = self._producer.get(self.nodes[b].input[0]), self._sole_reader(self.nodes[a].output[0])
        if f is None or n is None or not (self._dense_conv(f) and self._dense_conv(n)):
            return None
        if self._sole_reader(self.nodes[f].output[0]) != b or self._sole_reader(self.nodes[b].output[0]) != g:
            return None
        return f, b, a, n

    def _with_constants(self, g: int, weight: np.ndarray, f: int, b: int, a: int, n: int) -> _PairRun | None:
        """The run, when its slopes are per channel and all its weights and biases constants of matching sizes."""
        channels = len(weight)
        first, before, grouped, after, last = (self.nodes[k] for k in (f, b, g, a, n))
        slopes_in = per_channel_slopes(self.constants.get(before.input[1]))
        slopes_out = per_channel_slopes(self.constants.get(after.input[1]))
        first_weight, last_weight = self.array(first.input[1]), self.array(last.input[1])
        if slopes_in is None or slopes_out is None or len(slopes_in) != channels or len(slopes_out) != channels:
            return None
        if first_weight is None or last_weight is None:  # _dense_conv found both: this narrows their type
            return None
        if first_weight.shape[0] != channels or last_weight.shape[1] != channels:
            return None
        bias_names = [node.input[2] if len(node.input) > 2 else "" for node in (first, grouped)]
        if any(name and name not in self.constants for name in bias_names):  # a computed bias: leave the run alone
            return None
        first_bias, bias = (self.array(name) if name else None for name in bias_names)
        return _PairRun(f, (b, g, a), first, grouped, last, first_weight, first_bias, slopes_in, weight, bias,
                        slopes_out, last_weight)


class _Emitter:
    """Names new tensors and nodes under one prefix, adding each constant to the graph as it is made (the order
    of the initializers is part of the rewritten graph's bytes)."""

    def __init__(self, graph: Any, prefix: str) -> None:
        self._graph = graph
        self._prefix = prefix

    def name(self, suffix: str) -> str:
        return f"{self._prefix}/{suffix}"

    def constant(self, suffix: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        tensor = numpy_helper.from_array(np.ascontiguousarray(value, np.float32), self.name(suffix))
        self._graph.initializer.append(tensor)
        return tensor.name

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> Any:
        from onnx import helper

        return helper.make_node(op, inputs, [self.name(output)], name=self.name(output), **attributes)


def _split_pair_run(graph: Any, run: _PairRun) -> list[Any]:
    """The nodes that replace the run's first four (see :func:`split_pair_groups`), their constants added to
    ``graph``; the last convolution is rewired to read ``[even | odd]`` with its input channels reordered."""
    emit = _Emitter(graph, f"{run.grouped.name or run.grouped.output[0]}/pair_split")
    nodes = [*_parity_halves(emit, run), *_parity_outputs(emit, run)]
    nodes.append(emit.node("Concat", [emit.name("even_out_act"), emit.name("odd_out_act")], "halves", axis=1))
    channels = len(run.weight)
    order = np.concatenate([np.arange(0, channels, 2), np.arange(1, channels, 2)])
    run.last.input[0] = emit.name("halves")
    run.last.input[1] = emit.constant("next_weight", run.last_weight[:, order])
    return nodes


def _parity_halves(emit: _Emitter, run: _PairRun) -> list[Any]:
    """E and O: the first convolution's even and odd output channels, each a convolution of half the outputs with
    its activation."""
    first_attrs = _attributes(run.first)
    nodes = []
    for parity, rows in _PARITIES.items():
        inputs = [run.first.input[0], emit.constant(f"{parity}/weight", run.first_weight[rows])]
        if run.first_bias is not None:
            inputs.append(emit.constant(f"{parity}/bias", run.first_bias[rows]))
        nodes.append(emit.node("Conv", inputs, parity, **first_attrs))
        slope = emit.constant(f"{parity}/slope", run.slopes_in[rows].reshape(-1, 1, 1))
        nodes.append(emit.node("PRelu", [emit.name(parity), slope], f"{parity}_act"))
    return nodes


def _parity_outputs(emit: _Emitter, run: _PairRun) -> list[Any]:
    """The grouped layer's even and odd outputs from E and O: two depthwise convolutions (the grouped layer's own
    attributes, group included) added, with its activation."""
    depthwise = _attributes(run.grouped)
    nodes = []
    for parity, rows in _PARITIES.items():
        from_even = [emit.name("even_act"), emit.constant(f"{parity}_out/from_even", run.weight[rows, 0:1])]
        if run.bias is not None:
            from_even.append(emit.constant(f"{parity}_out/bias", run.bias[rows]))
        from_odd = [emit.name("odd_act"), emit.constant(f"{parity}_out/from_odd", run.weight[rows, 1:2])]
        out = emit.name(f"{parity}_out")
        slope = emit.constant(f"{parity}_out/slope", run.slopes_out[rows].reshape(-1, 1, 1))
        nodes += [
            emit.node("Conv", from_even, f"{parity}_out/a", **depthwise),
            emit.node("Conv", from_odd, f"{parity}_out/b", **depthwise),
            emit.node("Add", [f"{out}/b", f"{out}/a"], f"{parity}_out"),
            emit.node("PRelu", [out, slope], f"{parity}_out_act"),
        ]
    return nodes


def _splice(graph: Any, nodes: list[Any], changes: dict[int, list[Any]]) -> None:
    """Replace ``graph``'s nodes with ``nodes`` (a copy of them, by position) where each position in ``changes``
    is replaced by the nodes it maps to."""
    rebuilt = []
    for position, node in enumerate(nodes):
        rebuilt += changes.get(position, [node])
    del graph.node[:]
    graph.node.extend(rebuilt)
