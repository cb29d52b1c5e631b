"""Model loading for every kind (facecli checkpoint, facecli ONNX export, insightface-style ONNX, fixed-batch
ONNX), its preprocessing rules, and embedding parity with PyTorch and with insightface's ArcFaceONNX."""

from __future__ import annotations

import numpy as np
import pytest

from facecli.errors import CorruptFileError, UsageError
from facecli.eval import embed, load_model
from facecli.eval.embed import embed_with_flip
from facecli.eval.models import MODEL_FORMATS, OnnxEmbeddingModel, default_batch_size, model_format
from facecli.normalisation import check_normalisation, parse_channels

IMAGENET_MEAN = "123.675,116.28,103.53"
IMAGENET_STD = "58.395,57.12,57.375"


@pytest.fixture(scope="module")
def faces(shared_dir):
    """Six real ArcFace crops (insightface norm_crop of the t1.jpg faces, ../shared/golden/align)."""
    from facecli.imageio import read_image

    return np.stack([read_image(shared_dir / "golden" / "align" / f"face{k}_float_112.png") for k in range(6)])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised facecli MobileFaceNet saved as a plain state dict, and its ONNX export."""
    import torch

    from facecli.nn.backbones import BACKBONES
    from facecli.train.export import export_onnx

    torch.manual_seed(0)
    net = BACKBONES.build("mobilefacenet", embedding_size=128).eval()
    root = tmp_path_factory.mktemp("model")
    torch.save(net.state_dict(), root / "backbone.pth")
    export_onnx(root / "backbone.pth", root / "model.onnx")
    return {"net": net, "pth": root / "backbone.pth", "onnx": root / "model.onnx"}


def torch_reference(net, faces: np.ndarray) -> np.ndarray:
    import torch

    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return net(((x / 255) - 0.5) / 0.5).numpy()


def test_checkpoint_embeds_like_pytorch(checkpoint, faces):
    model = load_model(checkpoint["pth"], batch_size=4)
    assert model.kind == "checkpoint" and model.embedding_size == 128 and model.input_size == 112
    assert (model.color, model.mean, model.std) == ("RGB", (127.5,) * 3, (127.5,) * 3)
    expected = torch_reference(checkpoint["net"], faces)
    np.testing.assert_allclose(model.embed_batch(faces), expected, rtol=1e-4, atol=1e-4)


def test_run_directory_is_a_model(checkpoint, tmp_path, faces):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(checkpoint["pth"].read_bytes())
    model = load_model(run)
    assert model.kind == "checkpoint" and model.describe()["architecture"] == "mobilefacenet"
    assert model.fingerprint == load_model(checkpoint["pth"]).fingerprint  # same weights, same preprocessing
    np.testing.assert_allclose(model.embed_batch(faces[:2]), torch_reference(checkpoint["net"], faces[:2]),
                               rtol=1e-4, atol=1e-4)


def test_facecli_onnx_reads_its_metadata(checkpoint, faces):
    model = load_model(checkpoint["onnx"])
    info = model.describe()
    assert info["preprocessing_from"] == "facecli metadata" and info["architecture"] == "mobilefacenet"
    assert model.fixed_batch is None and model.embedding_size == 128
    expected = torch_reference(checkpoint["net"], faces)
    np.testing.assert_allclose(model.embed_batch(faces), expected, rtol=1e-4, atol=1e-4)


def test_batch_size_defaults_to_the_device_and_yields_to_the_user(checkpoint):
    assert (default_batch_size("cpu"), default_batch_size("CUDA:1"), default_batch_size("tensorrt")) == (8, 64, 64)
    assert load_model(checkpoint["onnx"]).batch_size == 8
    assert load_model(checkpoint["pth"]).batch_size == 8
    assert load_model(checkpoint["onnx"], batch_size=100).batch_size == 100


def test_same_embeddings_as_insightface_arcface_onnx(checkpoint, faces):
    ArcFaceONNX = pytest.importorskip("insightface.model_zoo.arcface_onnx").ArcFaceONNX  # the [insightface] extra

    theirs = ArcFaceONNX(model_file=str(checkpoint["onnx"])).get_feat([f[:, :, ::-1] for f in faces])  # BGR in
    ours = load_model(checkpoint["onnx"]).embed_batch(faces)  # RGB in
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def _tiny_onnx(path, node_names):
    """A 3-output toy recognition graph whose first two nodes carry ``node_names`` (as MXNet exports do)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Sub", ["data", "m"], ["a"], name=node_names[0]),
        helper.make_node("Mul", ["a", "s"], ["b"], name=node_names[1]),
        helper.make_node("GlobalAveragePool", ["b"], ["c"], name="pool"),
        helper.make_node("Flatten", ["c"], ["fc1"], name="flat"),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 3])],
        [
            helper.make_tensor("m", TensorProto.FLOAT, [], [127.5]),
            helper.make_tensor("s", TensorProto.FLOAT, [], [0.0078125]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_insightface_normalisation_rule(tmp_path, faces):
    self_normalising = load_model(_tiny_onnx(tmp_path / "mx.onnx", ["_minusscalar0", "_mulscalar0"]))
    assert (self_normalising.mean, self_normalising.std) == ((0.0,) * 3, (1.0,) * 3)
    assert "graph normalises itself" in self_normalising.preprocessing_from
    plain = load_model(_tiny_onnx(tmp_path / "plain.onnx", ["node0", "node1"]))
    assert (plain.mean, plain.std, plain.color) == ((127.5,) * 3, (127.5,) * 3, "RGB")
    # the toy graph averages (x - 127.5) / 128 per channel: check the whole input path end to end
    expected = ((faces.astype(np.float64) - 127.5) / 127.5 - 127.5) / 128
    np.testing.assert_allclose(plain.embed_batch(faces), expected.mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)


def _prelu_onnx(path):
    """Convolutions, each followed by a PRelu whose slopes come the ways exports write them: an initializer, an
    ``Identity`` of one (PyTorch shares tensors that way), a ``Constant`` node of shape (1, C, 1, 1), and a
    scalar slope, which is not per channel. The slopes are negative, zero, one and above one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = 16
    slopes = rng.uniform(-1.5, 2.5, c).astype(np.float32)
    slopes[:3] = (0.0, 1.0, -1.0)
    constant = numpy_helper.from_array(slopes[::-1].reshape(1, c, 1, 1).copy(), "constant_slope")
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["data", "w1", "b1"], ["c1"], **conv),
        helper.make_node("PRelu", ["c1", "slope"], ["p1"]),
        helper.make_node("Identity", ["slope"], ["shared_slope"]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], **conv),
        helper.make_node("PRelu", ["c2", "shared_slope"], ["p2"]),
        helper.make_node("Constant", [], ["constant_slope"], value=constant),
        helper.make_node("Conv", ["p2", "w2"], ["c3"], **conv),
        helper.make_node("PRelu", ["c3", "constant_slope"], ["p3"]),
        helper.make_node("PRelu", ["p3", "scalar_slope"], ["p4"]),
        helper.make_node("GlobalAveragePool", ["p4"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["fc1"]),
    ]
    initializers = [
        numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32) / 100, "w1"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "b1"),
        numpy_helper.from_array(slopes.reshape(c, 1, 1), "slope"),
        numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) / 12).astype(np.float32), "w2"),
        numpy_helper.from_array(np.float32([0.25]), "scalar_slope"),
    ]
    graph = helper.make_graph(
        nodes,
        "prelu_toy",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", c]),
         helper.make_tensor_value_info("p4", TensorProto.FLOAT, ["N", c, 112, 112])],
        initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_prelu_rewrite_gives_the_same_bits(tmp_path, faces):
    """``rewrite_prelu`` replaces every PRelu with constant slopes, and the graph computes exactly what it did."""
    import onnx
    import onnxruntime as ort

    from facecli.onnxgraph import rewrite_prelu

    def depthwise_convs(model):
        return sum(n.op_type == "Conv" and any(a.name == "group" for a in n.attribute) for n in model.graph.node)

    path = _prelu_onnx(tmp_path / "prelu.onnx")
    original = onnx.load(str(path))
    generic = onnx.load(str(path))  # input ranks unknown without shape inference: the Relu/Min form everywhere
    assert rewrite_prelu(generic.graph) == 4 and depthwise_convs(generic) == 0
    shaped = onnx.shape_inference.infer_shapes(original)
    assert rewrite_prelu(shaped.graph) == 4
    assert depthwise_convs(shaped) == 2 * 3  # the scalar slope is not per channel: Relu/Min form
    for model in (generic, shaped):
        assert [n.op_type for n in model.graph.node].count("PRelu") == 0
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for m in (original, generic, shaped)]
    pixels = (faces.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 127.5
    noise = np.random.default_rng(1).standard_normal((2, 3, 112, 112)).astype(np.float32) * 50
    for blob in (pixels, noise):
        expected, *others = (s.run(None, {"data": blob}) for s in sessions)
        for got in others:
            assert all(np.array_equal(e, g) for e, g in zip(expected, got, strict=True))


def test_onnx_models_load_with_prelu_rewritten(tmp_path, checkpoint, faces, monkeypatch):
    """load_model runs PRelu networks rewritten on the CPU, with the embeddings of the file as it is."""
    import onnxruntime as ort

    import facecli.onnxgraph

    rewrites: list[int] = []
    rewrite = facecli.onnxgraph.rewrite_prelu

    def counting(graph):
        rewrites.append(rewrite(graph))
        return rewrites[-1]

    monkeypatch.setattr(facecli.onnxgraph, "rewrite_prelu", counting)
    # MobileFaceNet: its grouped layer is split (its two PRelus become four, sums in another order); the other:
    # bit for bit
    for path, count, exact in ((checkpoint["onnx"], 35, False), (_prelu_onnx(tmp_path / "prelu.onnx"), 4, True)):
        model = load_model(path)
        assert rewrites[-1] == count
        blob = model.preprocess(faces)
        plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ours, theirs = model.forward(blob), plain.run(None, {model.input_name: blob})[0]
        if exact:
            assert np.array_equal(ours, theirs)
        else:
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())


def test_user_overrides_win_and_change_the_fingerprint(shared_dir, faces):
    path = shared_dir / "models" / "mobilefacenet_foamliu.onnx"
    default = load_model(path)
    imagenet = load_model(path, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    bgr = load_model(path, mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr=True)
    assert default.preprocessing_from == "insightface rule" and imagenet.preprocessing_from == "user options"
    assert imagenet.mean == (123.675, 116.28, 103.53) and bgr.color == "BGR"
    assert len({default.fingerprint, imagenet.fingerprint, bgr.fingerprint}) == 3
    # BGR on RGB input equals RGB on channel-swapped input
    swapped = np.ascontiguousarray(faces[..., ::-1])
    np.testing.assert_allclose(bgr.embed_batch(faces), load_model(path, mean="103.53,116.28,123.675",
                               std="57.375,57.12,58.395").embed_batch(swapped), rtol=1e-5, atol=1e-5)


def test_fixed_batch_model(shared_dir, faces):
    """foamliu's MobileFaceNet declares batch 1: it is rewritten to take whole batches, and the padded
    one-call-per-face path gives the same embeddings."""
    import onnxruntime as ort

    path = shared_dir / "models" / "mobilefacenet_foamliu.onnx"
    model = load_model(path)
    assert model.describe()["declared_batch"] == 1 and model.fixed_batch is None and model.embedding_size == 128
    fixed = OnnxEmbeddingModel(
        path, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), fixed_batch=1, declared_batch=1,
        input_size=112, embedding_size=128, color="RGB", mean=model.mean, std=model.std,
        preprocessing_from="test", batch_size=4,
    )
    np.testing.assert_allclose(model.embed_batch(faces[:5]), fixed.embed_batch(faces[:5]), rtol=1e-5, atol=1e-5)


def test_flip_fusion_modes(shared_dir, faces):
    model = load_model(shared_dir / "models" / "mobilefacenet_foamliu.onnx")
    emb, emb_flip = embed_with_flip(model, faces)
    np.testing.assert_allclose(emb_flip, model.embed_batch(faces[:, :, ::-1]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(embed(model, faces, flip="sum", batch_size=4), emb + emb_flip, rtol=1e-5, atol=1e-5)
    assert embed(model, faces, flip="concat").shape == (6, 256)
    np.testing.assert_allclose(embed(model, faces, flip="none"), emb, rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match="flip mode"):
        embed(model, faces, flip="mirror")


def test_each_format_claims_its_own_paths(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "odd.onnx").mkdir()  # a folder is a run directory whatever its name
    cases = {"m.onnx": "onnx", "M.ONNX": "onnx", "b.pt": "checkpoint", "b.pth": "checkpoint", "b.ckpt": "checkpoint",
             "run": "checkpoint", "odd.onnx": "checkpoint"}
    for name, expected in cases.items():
        assert model_format(tmp_path / name) == expected, name
        claimed = [f for f in MODEL_FORMATS.names() if MODEL_FORMATS.build(f).matches(tmp_path / name)]
        assert claimed == [expected], name  # exactly one format claims each path


def test_bad_model_inputs(tmp_path):
    with pytest.raises(UsageError, match="model not found"):
        load_model(tmp_path / "missing.onnx")
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(UsageError, match="unknown model format") as refused:
        load_model(tmp_path / "model.h5")
    for name in MODEL_FORMATS.names():  # the message names every registered format
        assert MODEL_FORMATS.build(name).description in str(refused.value)
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(CorruptFileError):
        load_model(tmp_path / "broken.onnx")
    with pytest.raises(UsageError, match="one value or one per channel"):
        parse_channels("1,2", "mean")
    with pytest.raises(UsageError, match="std must be positive"):
        parse_channels("0", "std")
    for bad, what, message in [("-1", "std", "positive"), ("inf", "std", "finite"), ("nan", "mean", "finite"),
                               ("300", "mean", "0-255")]:
        with pytest.raises(UsageError, match=message):
            parse_channels(bad, what)
    with pytest.raises(UsageError, match="0-1 pixels.*58.395"):  # ImageNet statistics in 0-1 units
        check_normalisation(parse_channels("0.485,0.456,0.406", "mean"), parse_channels("0.229,0.224,0.225", "std"))
    check_normalisation((127.5,) * 3, (127.5,) * 3)
    check_normalisation((0.0,) * 3, (1.0,) * 3)  # raw 0-255 pixels: allowed
