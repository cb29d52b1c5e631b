"""``--init MODEL.onnx``: the importer against onnxruntime and PyTorch, the fine-tuning defaults, partial unfreezing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from train_support import centre_crops, tiny_config

from facecli.errors import UsageError
from facecli.nn.backbones import BACKBONES
from facecli.nn.inference import load_backbone, model_info
from facecli.nn.onnx_import import compare_with_onnxruntime, import_onnx
from facecli.train import checkpoint
from facecli.train.export import export_onnx
from facecli.train.finetune import FINETUNE_DEFAULTS, unfreeze_last
from facecli.train.trainer import Trainer

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _faces_batch(n: int, seed: int = 0) -> torch.Tensor:
    """facecli's standard input: RGB (x - 127.5) / 127.5."""
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 3, 112, 112)).astype(np.float32)
    return torch.from_numpy((pixels - 127.5) / 127.5)


def _randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Trained-looking BatchNorm statistics and affine parameters, so folding them is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.weight.requires_grad:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _iresnet18() -> torch.nn.Module:
    """An IResNet-18 whose activations stay O(1) (arcface_torch's N(0, 0.1) init overflows without training)."""
    torch.manual_seed(0)
    model = BACKBONES.build("iresnet18", embedding_size=32)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, a=1.0)
    model.fc.weight.data.mul_(0.1)
    _randomise_batchnorm(model)
    return model.eval()


def _tiny_mbf() -> torch.nn.Module:
    torch.manual_seed(0)
    model = BACKBONES.build("mobilefacenet", embedding_size=32, blocks=[1, 1, 1, 1], scale=1)
    _randomise_batchnorm(model)
    return model.eval()


def test_bundled_model_equals_onnxruntime_for_batches(shared_dir):
    """The real MobileFaceNet (fixed batch 1, folded BN, ReLU6/Clip, ImageNet normalisation) on a batch of 5."""
    from facecli.eval.models import load_model

    path = shared_dir / "models" / "mobilefacenet_foamliu.onnx"
    backbone, info = import_onnx(path, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert info["architecture"] == "onnx" and info["embedding_size"] == 128
    assert info["mean"] == (127.5,) * 3  # the fine-tuned model takes facecli's input; the adapter converts
    pixels = np.random.default_rng(1).integers(0, 256, (5, 112, 112, 3)).astype(np.uint8)
    reference = load_model(path, mean=",".join(map(str, IMAGENET_MEAN)), std=",".join(map(str, IMAGENET_STD)))
    expected = reference.embed_batch(pixels)
    x = torch.from_numpy((pixels.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 127.5)
    with torch.no_grad():
        got = backbone(x).numpy()
    assert got.shape == (5, 128)
    assert np.abs(got - expected).max() < 1e-4
    assert compare_with_onnxruntime(backbone, path, batch=4) < 1e-4


def test_export_then_init_round_trip_is_exact(tmp_path):
    """facecli export → import: facecli's own class, weight by weight, with the original embeddings within 1e-5
    (mobilefacenet and iresnet); the generic graph importer gives them too."""
    for name, model in (("mbf", _tiny_mbf()), ("ir18", _iresnet18())):
        arch = "mobilefacenet" if name == "mbf" else "iresnet18"
        info = model_info(arch, 32, backbone_options={"blocks": [1, 1, 1, 1], "scale": 1} if name == "mbf" else None)
        checkpoint.save_backbone(tmp_path / f"{name}.pt", model.state_dict(), info, {})
        export_onnx(tmp_path / f"{name}.pt", tmp_path / f"{name}.onnx")
        imported, found = import_onnx(tmp_path / f"{name}.onnx")  # facecli metadata: RGB, 127.5
        assert type(imported) is type(model) and found["architecture"] == arch
        assert found.get("backbone_options") == info.get("backbone_options")
        generic, generic_info = import_onnx(tmp_path / f"{name}.onnx", facecli_classes=False)
        assert generic_info["architecture"] == "onnx"
        x = _faces_batch(3)
        with torch.no_grad():
            assert (imported(x) - model(x)).abs().max() < 1e-5, name
            assert (generic(x) - model(x)).abs().max() < 1e-5, name


def test_model_pack_layout_and_normalisation_inside_the_graph(tmp_path):
    """arcface_torch's torch2onnx layout (input "data", opset 11, BN folded, no metadata: insightface's 127.5 rule),
    and a graph that normalises raw pixels itself with leading Sub/Mul nodes (the rule then says mean 0, std 1)."""
    torch.manual_seed(0)
    model = BACKBONES.build("mobilefacenet", embedding_size=512)  # arcface_torch's mbf (w600k_mbf's architecture)
    _randomise_batchnorm(model)
    model.eval()
    path = tmp_path / "pack.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(path), input_names=["data"], opset_version=11,
                      keep_initializers_as_inputs=False, dynamo=False)
    imported, info = import_onnx(path)
    assert type(imported) is type(model) and info["architecture"] == "mobilefacenet"  # found by its layers
    x = _faces_batch(4)
    with torch.no_grad():
        assert (imported(x) - model(x)).abs().max() < 1e-5
    model = _tiny_mbf()

    class RawPixels(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.net((pixels - 127.5) * (1 / 127.5))

    raw = tmp_path / "raw.onnx"
    torch.onnx.export(RawPixels().eval(), torch.zeros(1, 3, 112, 112), str(raw), opset_version=17, dynamo=False)
    proto = onnx.load(str(raw))
    nodes = list(proto.graph.node)
    first = [n for n in nodes if n.op_type in ("Sub", "Mul")][:2]  # insightface finds them by name, first
    for node in first:
        node.name = f"{node.op_type}_norm"
    order = first + [n for n in nodes if n not in first]
    del proto.graph.node[:]
    proto.graph.node.extend(order)
    onnx.save(proto, str(raw))
    imported, info = import_onnx(raw)
    assert info["architecture"] == "onnx"  # the normalisation runs before the first convolution: generic import
    with torch.no_grad():
        assert (imported(x) - model(x)).abs().max() < 1e-5


def test_unsupported_operators_are_named_in_one_line(tmp_path):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"])
    gap = helper.make_node("GlobalAveragePool", ["y"], ["z"])
    lstm = helper.make_node("LSTM", ["z", "w", "r"], ["out"])
    graph = helper.make_graph(
        [node, gap, lstm], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 1, 1])])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(UsageError) as err:
        import_onnx(path)
    message = str(err.value)
    assert "LSTM, Resize" in message and "\n" not in message and "GlobalAveragePool, " not in message.split("(")[0]


def test_partial_unfreezing_of_the_bundled_model(shared_dir):
    """0.3 of MobileFaceNet's parameters from the end = the 7x7 stage and the embedding layers."""
    backbone, _ = import_onnx(shared_dir / "models" / "mobilefacenet_foamliu.onnx", check=False)
    trainable, total = unfreeze_last(backbone, 0.3)
    assert total == 989_952 and 0.25 < trainable / total <= 0.3
    frozen = [p.requires_grad for layer in backbone.parameter_layers() for p in layer]
    assert frozen.index(True) > 0 and all(frozen[frozen.index(True):])  # one frozen prefix, one trainable suffix


def test_finetune_defaults_only_where_the_user_said_nothing(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "run", model__init="x.onnx", optim__lr=0.01)
    assert cfg.optim.lr == 0.01  # given
    for key, value in FINETUNE_DEFAULTS.items():
        if key != "optim.lr":
            section, leaf = key.split(".")
            assert getattr(getattr(cfg, section), leaf) == value, key
    plain = tiny_config(tmp_path, tmp_path / "run")
    assert (plain.optim.name, plain.model.unfreeze, plain.model.batchnorm) == ("sgd", 1.0, "train")


def test_training_from_onnx_freezes_the_start_and_exports(shared_dir, tmp_path):
    """A short fine-tune of an imported graph: early layers and BatchNorm statistics unchanged, late ones moved;
    the run exports and loads like any facecli run, without the original ONNX file."""
    faces = centre_crops(shared_dir / "data" / "lfw-sample", tmp_path / "faces",
                         {"Al_Gore", "Ana_Guevara", "Ana_Palacio", "Ariel_Sharon"})
    # a graph that is not one of facecli's classes (no metadata, not a known size): the generic importer
    torch.onnx.export(_tiny_mbf(), torch.zeros(1, 3, 112, 112), str(tmp_path / "mbf.onnx"), dynamo=False)
    original, _ = import_onnx(tmp_path / "mbf.onnx")
    cfg = tiny_config(faces, tmp_path / "run", model__init=str(tmp_path / "mbf.onnx"), steps=4,
                      model__freeze_backbone_steps=1, optim__lr=0.01, model__backbone_lr_scale=1.0,
                      augment__names=["lowres", "crop", "photometric", "grayscale"])
    Trainer(cfg).fit()
    (tmp_path / "mbf.onnx").unlink()
    tuned, tuned_info = load_backbone(tmp_path / "run")
    assert tuned_info["architecture"] == "onnx"
    before = dict(original.state_dict())
    after = dict(tuned.state_dict())
    layers = original.parameter_layers()
    names = {id(p): n for n, p in original.named_parameters()}
    first, last = names[id(layers[0][0])], names[id(layers[-1][0])]
    assert torch.equal(before[first], after[first])
    assert not torch.equal(before[last], after[last])
    buffers = [n for n, _ in original.named_buffers() if n in before]
    assert buffers and all(torch.equal(before[n], after[n]) for n in buffers)  # BatchNorm statistics kept
    summary = export_onnx(tmp_path / "run", tmp_path / "tuned.onnx")
    assert summary["facecli.architecture"] == "onnx" and summary["max_abs_diff"] < 1e-4


def test_cli_options_reach_the_config(run_cli, tmp_path):
    result = run_cli("train", str(tmp_path), "--out", str(tmp_path / "r"), "--init", "m.onnx", "--mean", "1,2,3",
                     "--std", "4", "--bgr", "--augment", "lowres,crop", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    cfg = result.json()
    assert cfg["model"]["init_mean"] == [1, 2, 3] and cfg["model"]["init_std"] == [4, 4, 4]
    assert cfg["model"]["init_color"] == "BGR" and cfg["augment"]["names"] == ["lowres", "crop"]
    bad = run_cli("train", str(tmp_path), "--out", str(tmp_path / "r"), "--augment", "blur", "--dry-run")
    assert bad.returncode == 2 and "unknown augmentation blur" in bad.stderr


def test_missing_and_corrupt_onnx(tmp_path):
    with pytest.raises(UsageError, match="no such model file"):
        import_onnx(tmp_path / "none.onnx")
    bad = Path(tmp_path / "bad.onnx")
    bad.write_bytes(b"not a model")
    with pytest.raises(Exception, match="not a readable ONNX model"):
        import_onnx(bad)


def test_resume_from_onnx_with_augmentation_and_distillation_is_exact(shared_dir, tmp_path):
    """2 + 2 steps equal 4 straight: augmentation seeds come from the sampler, the teacher from --init."""
    from facecli.train.callbacks import Callback
    from facecli.train.trainer import resolve_run_config

    class Interrupt(Callback):
        def on_step_end(self, trainer, metrics):
            if trainer.step == 2:
                raise KeyboardInterrupt

    faces = centre_crops(shared_dir / "data" / "lfw-sample", tmp_path / "faces",
                         {"Al_Gore", "Ana_Guevara", "Ana_Palacio", "Ariel_Sharon"})
    info = model_info("mobilefacenet", 32, backbone_options={"blocks": [1, 1, 1, 1], "scale": 1})
    checkpoint.save_backbone(tmp_path / "mbf.pt", _tiny_mbf().state_dict(), info, {})
    export_onnx(tmp_path / "mbf.pt", tmp_path / "mbf.onnx")
    options = {"model__init": str(tmp_path / "mbf.onnx"), "steps": 4, "model__freeze_backbone_steps": 1,
               "model__distill": 2.0, "augment__names": ["lowres", "crop", "photometric", "grayscale"],
               "augment__lowres_p": 1.0}
    Trainer(tiny_config(faces, tmp_path / "straight", **options)).fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(faces, tmp_path / "split", checkpoint_every=2, **options), callbacks=[Interrupt()]).fit()
    Trainer(resolve_run_config(tmp_path / "split", {"data.workers": 1}), resume=True).fit()
    one = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    two = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert one["backbone"].keys() == two["backbone"].keys()
    assert all(torch.equal(one["backbone"][k], two["backbone"][k]) for k in one["backbone"])
    assert torch.equal(one["classifier"]["weight"], two["classifier"]["weight"])


def test_augmentations_are_seeded_and_degrade_as_asked(shared_dir):
    from facecli.data.augment import Augmenter, low_resolution
    from facecli.imageio import read_image
    from facecli.train.config import AugmentConfig

    face = cv2_resize(read_image(next((shared_dir / "data" / "lfw-sample" / "Al_Gore").glob("*.jpg"))))
    every = Augmenter(AugmentConfig(names=["crop", "photometric", "grayscale", "lowres"], crop_p=1, photometric_p=1,
                                    grayscale_p=1, lowres_p=1))
    a, b, c = every(face, 7), every(face, 7), every(face, 8)
    assert a.shape == face.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(a[..., 0], a[..., 1])  # grey
    small = low_resolution(face, 16)
    # a 16-px face keeps no fine detail: the Laplacian (edges, texture) nearly vanishes
    sharpness = [cv2.Laplacian(img[..., 1].astype(np.float32), cv2.CV_32F).var() for img in (face, small)]
    assert sharpness[1] < 0.2 * sharpness[0]
    none = Augmenter(AugmentConfig(names=["lowres"], lowres_p=0.0))
    assert np.array_equal(none(face, 1), face)


def cv2_resize(rgb: np.ndarray) -> np.ndarray:
    return cv2.resize(rgb[60:190, 60:190], (112, 112), interpolation=cv2.INTER_AREA)


def test_val_split_holds_people_out_and_reports_step_zero(shared_dir, tmp_path):
    """data.val_split: a seeded fraction of the people leaves training; pairs of them are scored before and after."""
    from facecli.data.datasets import open_dataset
    from facecli.train.heldout import split_people

    people = {"Al_Gore", "Ana_Guevara", "Ana_Palacio", "Ariel_Sharon", "Atal_Bihari_Vajpayee", "Bill_McBride"}
    faces = centre_crops(shared_dir / "data" / "lfw-sample", tmp_path / "faces", people)
    dataset = open_dataset(faces)
    train, (images, issame) = split_people(dataset, 0.34, seed=3)
    held = set(dataset.labels.tolist()) - set(dataset.labels[train.indices].tolist())
    assert len(held) == 2 and train.num_classes == 4 and sorted(set(train.labels.tolist())) == [0, 1, 2, 3]
    assert len(images) == 2 * len(issame) and issame.sum() == (~issame).sum() > 0
    again = split_people(dataset, 0.34, seed=3)
    assert np.array_equal(again[0].indices, train.indices) and np.array_equal(again[1][1], issame)
    with pytest.raises(UsageError, match="holds out"):
        split_people(dataset, 0.1, seed=3)

    info = model_info("mobilefacenet", 32, backbone_options={"blocks": [1, 1, 1, 1], "scale": 1})
    checkpoint.save_backbone(tmp_path / "mbf.pt", _tiny_mbf().state_dict(), info, {})
    cfg = tiny_config(faces, tmp_path / "run", model__init=str(tmp_path / "mbf.pt"), steps=2,
                      data__val_split=0.34, data__val_every=0)
    summary = Trainer(cfg).fit()
    assert summary["num_classes"] == 4 and set(summary["initial_accuracy"]) == {"heldout_people"}
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].endswith("val_heldout_people") and rows[1].startswith("0,")
    assert (tmp_path / "run" / "best.pt").is_file()


def test_default_run_directory_is_new(tmp_path, monkeypatch):
    from facecli.train.request import default_run_dir as _default_run_dir

    monkeypatch.chdir(tmp_path)
    first = Path(_default_run_dir(str(tmp_path / "my_people")))
    assert first.parent == Path("runs") and first.name.startswith("my_people-")
    first.mkdir(parents=True)
    assert Path(_default_run_dir(str(tmp_path / "my_people"))) != first
