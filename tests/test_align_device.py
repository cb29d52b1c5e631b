"""Where the detector runs: MTCNN imported into PyTorch (the CUDA path) agrees with onnxruntime; --device errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from facecli.align.detectors import device as device_mod
from facecli.align.detectors.device import Runtime, pick_runtime
from facecli.errors import UsageError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def detectors():
    from facecli.align.detectors.mtcnn import MTCNN

    return MTCNN(), MTCNN(runtime="torch")


@pytest.mark.usefixtures("one_torch_thread")
def test_torch_import_of_mtcnn_gives_the_onnxruntime_landmarks(shared_dir, detectors):
    from facecli.imageio import read_image

    reference, imported = detectors
    assert imported.runtime == Runtime("torch", "cpu")
    lfw = sorted((shared_dir / "data" / "lfw-sample").rglob("*.jpg"))[:4]
    photos = [shared_dir / "data" / "photos" / name for name in ("img46.jpg", "img62.jpg")]
    faces = 0
    for path in lfw + photos:
        image = read_image(path)
        expected, got = reference.detect(image), imported.detect(image)
        assert len(got) == len(expected), path.name
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_allclose(b.landmarks, a.landmarks, rtol=0, atol=1e-3)
            np.testing.assert_allclose(b.box, a.box, rtol=0, atol=1e-3)
            assert abs(a.score - b.score) < 1e-5
        faces += len(got)
    assert faces > len(lfw) + len(photos)  # img46 holds several faces


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_landmarks(shared_dir, detectors):
    """On a GPU machine: --device cuda (onnxruntime-gpu, else PyTorch) agrees with the CPU within 1e-3 px."""
    from facecli.align.detectors.mtcnn import MTCNN
    from facecli.imageio import read_image

    gpu = MTCNN(device="cuda")
    assert gpu.runtime.device == "cuda:0"
    for path in [shared_dir / "data" / "photos" / "img46.jpg", *sorted((shared_dir / "data" / "lfw-sample").rglob(
            "*.jpg"))[:8]]:
        image = read_image(path)
        expected, got = detectors[0].detect(image), gpu.detect(image)
        assert len(got) == len(expected), path.name
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_allclose(b.landmarks, a.landmarks, rtol=0, atol=1e-3)


def test_importer_matches_onnxruntime_on_ops_mtcnn_does_not_use():
    """Gemm (transposed, alpha/beta), Reshape, explicit Conv pads, a padded MaxPool and a SAME_UPPER one, Relu."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from facecli.onnxtorch import load_onnx_module

    rng = np.random.default_rng(0)
    weights = {
        "w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32),
        "g": rng.normal(size=(5, 4 * 3 * 5)).astype(np.float32), "c": rng.normal(size=5).astype(np.float32),
        "shape": np.array([2, -1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c1"], pads=[1, 0, 1, 2], strides=[2, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("MaxPool", ["p1"], ["p2"], kernel_shape=[2, 2], pads=[1, 1, 0, 0]),
        helper.make_node("Reshape", ["p2", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "g", "c"], ["y"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["y"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 11, 9])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = rng.normal(size=(2, 3, 11, 9)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    module = load_onnx_module(model)
    assert not list(module.parameters()) and len(list(module.buffers())) == len(weights)  # frozen: all buffers
    (got,) = module(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), expected[0], rtol=1e-5, atol=1e-6)

    model.graph.node.extend([helper.make_node("Erf", ["prob"], ["e"]), helper.make_node("Resize", ["e"], ["s"])])
    with pytest.raises(UsageError, match=r"^ONNX graph: cannot import ONNX operator\(s\) Erf, Resize \(supported: "):
        load_onnx_module(model)


def test_importer_follows_onnx_semantics_at_the_graph_opset():
    """Opset 11: Softmax over everything from its axis on, Unsqueeze axes as an attribute (negative: in the output's
    rank); SAME_LOWER Conv, dilated Conv and MaxPool with asymmetric pads, 2-D Flatten at axis 2, Reshape's 0,
    negative Gather indices."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from facecli.onnxtorch import load_onnx_module

    rng = np.random.default_rng(1)
    weights = {"w": rng.normal(size=(4, 3, 3, 2)).astype(np.float32), "v": rng.normal(size=(4, 4, 2, 2)).astype(
        np.float32), "shape": np.array([0, 4, -1], dtype=np.int64), "index": np.array([-1, 0], dtype=np.int64)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c0"], auto_pad="SAME_LOWER", strides=[2, 1]),
        helper.make_node("Conv", ["c0", "v"], ["c"], dilations=[2, 1], pads=[1, 1, 0, 1]),
        helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], dilations=[1, 2], pads=[0, 1, 1, 0]),
        helper.make_node("Softmax", ["p"], ["soft"], axis=1),
        helper.make_node("Flatten", ["soft"], ["flat"], axis=2),
        helper.make_node("Reshape", ["p", "shape"], ["r"]),
        helper.make_node("Gather", ["r", "index"], ["g"], axis=2),
        helper.make_node("Unsqueeze", ["g"], ["u"], axes=[-1, 0]),
    ]
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 11, 9])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("flat", "u")],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    x = rng.normal(size=(2, 3, 11, 9)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = load_onnx_module(model)(torch.from_numpy(x))
    assert [tuple(t.shape) for t in got] == [e.shape for e in expected]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-6)


def test_device_choice(monkeypatch):
    assert pick_runtime("cpu") == Runtime("onnxruntime", "cpu")
    with pytest.raises(UsageError, match="cpu, cuda, cuda:N or auto"):
        pick_runtime("gpu")
    monkeypatch.setattr(device_mod, "_driver_present", lambda: False)
    assert pick_runtime("auto") == Runtime("onnxruntime", "cpu")
    with pytest.raises(UsageError, match="no CUDA device found"):
        pick_runtime("cuda:1")
    monkeypatch.setattr(device_mod, "_driver_present", lambda: True)
    monkeypatch.setattr(device_mod, "_onnxruntime_cuda", lambda: False)
    monkeypatch.setattr(device_mod, "_torch_cuda", lambda index: index == 0)
    assert pick_runtime("auto") == Runtime("torch", "cuda:0")
    assert pick_runtime("cuda") == Runtime("torch", "cuda:0")
    with pytest.raises(UsageError):
        pick_runtime("cuda:1")
    monkeypatch.setattr(device_mod, "_onnxruntime_cuda", lambda: True)
    assert pick_runtime("cuda:1") == Runtime("onnxruntime", "cuda:1")
    assert pick_runtime("cuda", runtime="torch") == Runtime("torch", "cuda:0")


def test_cli_device(shared_dir, tmp_path, run_cli):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(sorted((shared_dir / "data" / "lfw-sample").rglob("*.jpg"))[0], raw / "a.jpg")
    if not device_mod._driver_present():
        res = run_cli("align", raw, tmp_path / "out", "--device", "cuda")
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no CUDA device found" in res.stderr
        assert not (tmp_path / "out").exists()
    assert run_cli("align", raw, tmp_path / "out", "--device", "cpu").returncode == 0
    res = run_cli("align", raw, tmp_path / "out", "--device", "auto", "--json")  # where it runs shapes no crop
    assert res.returncode == 0, res.stderr
    assert res.json()["skipped_existing"] == 1
