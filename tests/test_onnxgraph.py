"""``facecli.onnxgraph``'s rewrites compute what the original graph computes, and touch only the patterns they know:
``split_pair_groups`` (MobileFaceNet's 2-channel grouped convolution split by channel parity) and
``fill_channel_blocks`` (narrow first layers widened to whole channel blocks up to their pooling); and the session
factory that applies them (``facecli.onnxsession``) can be switched off."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from facecli.errors import UsageError  # noqa: E402
from facecli.onnxgraph import fill_channel_blocks, rewrite_prelu, split_pair_groups  # noqa: E402
from facecli.onnxsession import REWRITES_ENV, device_providers, open_session  # noqa: E402

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


def test_mtcnn_nets_compute_the_same_bits_rewritten_or_not():
    """The session factory fills MTCNN's narrow layers and rewrites its PRelus without changing one bit; with the
    rewrites off it runs onnxruntime's plain session of the same graph."""
    from facecli.align.detectors import mtcnn

    rng = np.random.default_rng(4)
    for net, size, pixel_type in (("pnet", 97, "uint8"), ("rnet", 24, "float32")):
        blob = rng.uniform(0, 255, (7, size, size, 3)).astype(pixel_type)
        graph = mtcnn._prepare_graph(mtcnn._weights_dir() / f"{net}.onnx", pixel_type)
        rewritten, plain = open_session(graph), open_session(graph, rewrites=False)
        assert rewritten.rewritten and not plain.rewritten
        ops = [node.op_type for node in rewritten.model.graph.node]
        assert "PRelu" not in ops and "Slice" in ops  # rewritten, and the first layer filled to whole blocks
        reference = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = reference.run(None, {"pixels": blob})
        for opened in (rewritten, plain):
            got = opened.session.run(None, {"pixels": blob})
            assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True)), net


def test_the_rewrites_are_turned_off_by_keyword_or_environment(monkeypatch):
    graph = _narrow_graph(10)
    monkeypatch.delenv(REWRITES_ENV, raising=False)
    assert open_session(graph).rewritten  # on by default
    for off in ("0", "off", "False"):
        monkeypatch.setenv(REWRITES_ENV, off)
        assert not open_session(graph).rewritten and open_session(graph).model is graph
    assert open_session(graph, rewrites=True).rewritten  # the keyword wins
    monkeypatch.setenv(REWRITES_ENV, "1")
    assert not open_session(graph, rewrites=False).rewritten
    blob = np.random.default_rng(3).uniform(-1, 1, (2, 3, 40, 40)).astype(np.float32)
    outputs = [open_session(graph, rewrites=on).session.run(None, {"data": blob})[0] for on in (True, False)]
    assert np.array_equal(outputs[0], outputs[1]) and np.array_equal(outputs[1], _run(graph, blob))


def test_embeddings_without_rewrites_are_onnxruntimes_plain_ones(shared_dir, monkeypatch):
    """A real model with the rewrites off by the environment: the embeddings of a plain onnxruntime session of the
    file; with them on (the default), the same within float rounding."""
    from facecli.eval import load_model

    path = shared_dir / "models" / "mobilefacenet_foamliu.onnx"
    faces = np.random.default_rng(5).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    monkeypatch.setenv(REWRITES_ENV, "0")
    off = load_model(path)
    monkeypatch.delenv(REWRITES_ENV)
    on = load_model(path)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    blob = off.preprocess(faces)
    expected = np.concatenate([plain.run(None, {off.input_name: blob[i : i + 1]})[0] for i in range(len(blob))])
    expected = expected.reshape(len(blob), -1)
    np.testing.assert_allclose(off.forward(blob), expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_allclose(on.forward(blob), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_devices_map_to_onnxruntime_providers():
    assert device_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(UsageError, match="unknown device"):
        device_providers("gpu")
    with pytest.raises(UsageError, match="unknown device"):
        device_providers("cuda:x")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UsageError, match="no CUDAExecutionProvider"):
            device_providers("cuda:1")
    else:
        assert device_providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
