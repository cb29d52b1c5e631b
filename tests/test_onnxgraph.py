"""``facecli.onnxgraph``'s rewrites compute what the original graph computes, and touch only the patterns they know:
``split_pair_groups`` (MobileFaceNet's 2-channel grouped convolution split by channel parity) and
``fill_channel_blocks`` (narrow first layers widened to whole channel blocks up to their pooling)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from facecli.onnxgraph import fill_channel_blocks, rewrite_prelu, split_pair_groups  # noqa: E402

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


def _narrow_graph(channels: int, prelu_read_twice: bool = False):
    """data → Conv 3x3 (3→channels) → PRelu → MaxPool 3x3/2 → Conv 3x3 (channels→16) → out, as MTCNN's R-net
    opens."""
    rng = np.random.default_rng(2)

    def const(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["data", "w0", "b0"], ["x"], kernel_shape=[3, 3]),
        helper.make_node("PRelu", ["x", "s0"], ["y"]),
        helper.make_node("MaxPool", ["y"], ["p"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
        helper.make_node("Conv", ["p", "w1", "b1"], ["out"], kernel_shape=[3, 3]),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 16, 16, 16])]
    if prelu_read_twice:
        outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, 38, 38]))
    slopes = numpy_helper.from_array(rng.uniform(-0.5, 1.5, (1, channels, 1, 1)).astype(np.float32), "s0")
    graph = helper.make_graph(
        nodes, "narrow", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 40, 40])], outputs,
        [const("w0", channels, 3, 3, 3), const("b0", channels), slopes, const("w1", 16, channels, 3, 3),
         const("b1", 16)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("channels", [10, 28])
def test_fill_channel_blocks_is_bit_identical(channels):
    original = _narrow_graph(channels)
    filled = onnx.ModelProto()
    filled.CopyFrom(original)
    assert fill_channel_blocks(filled.graph) == 1
    onnx.checker.check_model(filled)
    weights = {t.name: tuple(t.dims) for t in filled.graph.initializer}
    assert weights["w0"] == (32 if channels > 16 else 16, 3, 3, 3) and weights["w1"] == (16, channels, 3, 3)
    assert [n.op_type for n in filled.graph.node] == ["Conv", "PRelu", "MaxPool", "Slice", "Conv"]
    blob = np.random.default_rng(3).uniform(-1, 1, (5, 3, 40, 40)).astype(np.float32)
    assert np.array_equal(_run(filled, blob), _run(original, blob))
    shaped = onnx.shape_inference.infer_shapes(filled)  # and with the PRelu rewrite, as MTCNN runs it
    assert rewrite_prelu(shaped.graph) == 1
    assert np.array_equal(_run(shaped, blob), _run(original, blob))


def test_fill_channel_blocks_leaves_other_graphs_alone():
    full = _narrow_graph(32)
    before = full.SerializeToString()
    assert fill_channel_blocks(full.graph) == 0 and full.SerializeToString() == before
    shared = _narrow_graph(10, prelu_read_twice=True)  # the activation is also a graph output: its width must stay
    before = shared.SerializeToString()
    assert fill_channel_blocks(shared.graph) == 0 and shared.SerializeToString() == before


def test_mtcnn_nets_compute_the_same_bits_with_filled_blocks(monkeypatch):
    from facecli.align.detectors import mtcnn

    rng = np.random.default_rng(4)
    for net, size, pixel_type in (("pnet", 97, "uint8"), ("rnet", 24, "float32")):
        blob = rng.uniform(0, 255, (7, size, size, 3)).astype(pixel_type)
        path = mtcnn._weights_dir() / f"{net}.onnx"
        filled = _session_outputs(mtcnn._prepare_graph(path, pixel_type), blob)
        with monkeypatch.context() as patch:
            patch.setattr(mtcnn, "fill_channel_blocks", lambda graph: 0)
            plain = _session_outputs(mtcnn._prepare_graph(path, pixel_type), blob)
        assert all(np.array_equal(a, b) for a, b in zip(filled, plain)), net


def _session_outputs(model_bytes: bytes, blob: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": blob})
