"""Export: ONNX that insightface loads as ArcFaceONNX, same embeddings as PyTorch, facecli metadata; loaders."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
import torch
from train_support import centre_crops, tiny_config

from facecli.errors import CorruptFileError, UsageError
from facecli.nn.inference import load_backbone
from facecli.train.export import export_onnx, read_metadata
from facecli.train.trainer import Trainer


@pytest.fixture(scope="module")
def trained_run(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    faces = centre_crops(shared_dir / "data" / "lfw-sample", root / "faces")
    Trainer(tiny_config(faces, root / "run", steps=3)).fit()  # real, non-trivial BatchNorm statistics
    return root / "run", faces


def test_export_cli_insightface_and_facecli_agree_with_pytorch(trained_run, tmp_path, run_cli):
    run, faces = trained_run
    onnx_path = tmp_path / "model.onnx"
    res = run_cli("export", run, onnx_path, "--json")
    assert res.returncode == 0, res.stderr
    summary = res.json()
    assert summary["max_abs_diff"] <= 1e-4
    proto = onnx.load(str(onnx_path))
    assert proto.opset_import[0].version >= 11
    inp = proto.graph.input[0]
    assert inp.name == "data"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 112, 112]  # dynamic batch
    assert read_metadata(onnx_path) == {
        "facecli.color": "RGB", "facecli.mean": "127.5,127.5,127.5", "facecli.std": "127.5,127.5,127.5",
        "facecli.embedding_size": "32", "facecli.architecture": "mobilefacenet", "facecli.input_size": "112,112",
        "facecli.head": "arcface", "facecli.backbone_options": '{"blocks": [1, 1, 1, 1], "scale": 1}',
    }  # no facecli.quality: an ArcFace embedding norm is not a quality score

    model, info = load_backbone(run)
    bgr = [cv2.imread(str(p)) for p in sorted(faces.glob("*/*.jpg"))[:5]]
    rgb = np.stack([im[:, :, ::-1] for im in bgr]).astype(np.float32)
    x = torch.from_numpy(((rgb - 127.5) / 127.5).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        expected = model(x).numpy()

    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"data": x.numpy()})[0]  # batch of 5 through the dynamic axis
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_insightface_loads_the_export_as_arcface(trained_run, tmp_path):
    zoo = pytest.importorskip("insightface.model_zoo")  # the optional [insightface] extra
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    run, faces = trained_run
    onnx_path = tmp_path / "model.onnx"
    export_onnx(run, onnx_path)
    model, _ = load_backbone(run)
    bgr = [cv2.imread(str(p)) for p in sorted(faces.glob("*/*.jpg"))[:5]]
    rgb = np.stack([im[:, :, ::-1] for im in bgr]).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(((rgb - 127.5) / 127.5).transpose(0, 3, 1, 2).copy())).numpy()
    arc = zoo.get_model(str(onnx_path), providers=["CPUExecutionProvider"])
    assert isinstance(arc, ArcFaceONNX)
    assert (arc.input_mean, arc.input_std) == (127.5, 127.5)
    feats = arc.get_feat(bgr)  # insightface feeds BGR crops and swaps to RGB itself
    np.testing.assert_allclose(feats, expected, atol=1e-4, rtol=0)


def test_load_backbone_accepts_run_checkpoint_and_bare_state_dict(trained_run, tmp_path):
    run, _ = trained_run
    model, info = load_backbone(run)
    assert info["color"] == "RGB" and info["mean"] == (127.5,) * 3 and info["std"] == (127.5,) * 3
    assert info["embedding_size"] == 32 and info["architecture"] == "mobilefacenet"
    assert info["input_size"] == (112, 112) and not model.training
    assert info["head"] == "arcface" and info["quality"] is None
    x = torch.randn(2, 3, 112, 112)
    ckpt_model, _ = load_backbone(run / "checkpoint.pt")
    with torch.no_grad():
        torch.testing.assert_close(ckpt_model(x), model(x))
    # an arcface_torch-style bare state dict of a standard architecture, with the DDP "module." prefix
    from facecli.nn.backbones import BACKBONES

    mbf = BACKBONES.build("mobilefacenet", embedding_size=128).eval()
    torch.save({f"module.{k}": v for k, v in mbf.state_dict().items()}, tmp_path / "backbone.pth")
    loaded, info = load_backbone(tmp_path / "backbone.pth")
    assert (info["architecture"], info["embedding_size"]) == ("mobilefacenet", 128)
    assert info["head"] is None and info["quality"] is None  # a foreign file does not say
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), mbf(x))


@pytest.mark.parametrize("head", ["magface", "adaface"])
def test_feature_norm_quality_is_recorded_for_magface_and_adaface(head, trained_run, tmp_path):
    """Their raw embedding norm is a face-quality score: checkpoint, model.pt and ONNX say so."""
    from facecli.train.export import export_onnx

    _, faces = trained_run
    Trainer(tiny_config(faces, tmp_path / "run", steps=1, head__name=head)).fit()
    for source in (tmp_path / "run", tmp_path / "run" / "checkpoint.pt"):
        _, info = load_backbone(source)
        assert info["head"] == head and info["quality"] == "feature-norm"
    export_onnx(tmp_path / "run", tmp_path / "m.onnx", check=False)
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["facecli.head"] == head and meta["facecli.quality"] == "feature-norm"
    # facecli eval / gallery see it, so --quality-threshold does not warn for these models
    from facecli.eval import load_model

    assert load_model(str(tmp_path / "m.onnx")).describe()["quality"] == "feature-norm"
    assert load_model(str(tmp_path / "run")).describe()["quality"] == "feature-norm"


def test_loader_errors_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="no such model file"):
        load_backbone(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CorruptFileError, match="weights-only"):
        load_backbone(tmp_path / "junk.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CorruptFileError):
        load_backbone(tmp_path / "evil.pt")
    with pytest.raises(UsageError, match="not a finished facecli run"):
        load_backbone(tmp_path)
