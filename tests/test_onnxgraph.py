"""``facecli.onnxgraph.split_pair_groups``: MobileFaceNet's 2-channel grouped convolution split by channel parity
computes what the original graph computes, and only the exact pattern it knows is touched."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from facecli.onnxgraph import rewrite_prelu, split_pair_groups  # noqa: E402

C = 32  # 16 groups of 2 channels


def _graph(extra_consumer: bool = False):
    """data → Conv 3x3 (3→C) → PRelu → Conv 3x3 (groups of 2) → PRelu → Conv 1x1 (C→C) → out."""
    rng = np.random.default_rng(0)

    def const(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    slopes = [numpy_helper.from_array(rng.uniform(-0.5, 1.5, (C, 1, 1)).astype(np.float32), f"s{i}") for i in range(2)]
    nodes = [
        helper.make_node("Conv", ["data", "w0", "b0"], ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("PRelu", ["x", "s0"], ["y"]),
        helper.make_node("Conv", ["y", "wg", "bg"], ["z"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=C // 2),
        helper.make_node("PRelu", ["z", "s1"], ["z2"]),
        helper.make_node("Conv", ["z2", "w2"], ["out"], kernel_shape=[1, 1]),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", C, 16, 16])]
    if extra_consumer:  # the grouped layer's input is also a graph output: the pattern must be left alone
        outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, 16, 16]))
    graph = helper.make_graph(
        nodes, "pairs", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 32, 32])], outputs,
        [const("w0", C, 3, 3, 3), const("b0", C), *slopes, const("wg", C, 2, 3, 3), const("bg", C),
         const("w2", C, C, 1, 1)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model, blob):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["out"], {"data": blob})[0]


def test_split_pair_groups_computes_the_same_layer():
    original = _graph()
    split = onnx.ModelProto()
    split.CopyFrom(original)
    assert split_pair_groups(split.graph) == 1
    ops = [(n.op_type, next((a.i for a in n.attribute if a.name == "group"), 1)) for n in split.graph.node]
    assert ("Conv", C // 2) in ops and ops.count(("Conv", C // 2)) == 4  # four depthwise convolutions of C/2
    assert [n.op_type for n in split.graph.node].count("Concat") == 1
    onnx.checker.check_model(split)
    blob = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32) * 20
    expected = _run(original, blob)
    np.testing.assert_allclose(_run(split, blob), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # and after the PRelu rewrite, as facecli eval runs it
    shaped = onnx.shape_inference.infer_shapes(split)
    assert rewrite_prelu(shaped.graph) == 4
    np.testing.assert_allclose(_run(shaped, blob), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_split_pair_groups_leaves_other_graphs_alone():
    shared = _graph(extra_consumer=True)
    before = shared.SerializeToString()
    assert split_pair_groups(shared.graph) == 0 and shared.SerializeToString() == before
    wider = _graph()  # groups of 4 channels
    next(t for t in wider.graph.initializer if t.name == "wg").CopyFrom(
        numpy_helper.from_array(np.ones((C, 4, 3, 3), np.float32), "wg"))
    next(a for n in wider.graph.node if n.input[0] == "y" for a in n.attribute if a.name == "group").i = C // 4
    onnx.checker.check_model(wider)
    assert _run(wider, np.ones((1, 3, 32, 32), np.float32)).shape == (1, C, 16, 16)
    assert split_pair_groups(wider.graph) == 0
