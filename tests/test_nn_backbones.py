"""Backbones: arcface_torch's layouts (key names, parameter counts), shapes, gradients, fp16-safe neck."""

from __future__ import annotations

import pytest
import torch

from facecli.nn.backbones import BACKBONES
from facecli.nn.backbones.iresnet import DEPTHS
from facecli.nn.inference import infer_architecture

# Parameter counts arcface_torch reports for its 512-d models (README / flops tables), in millions.
ARCFACE_TORCH_PARAMS_M = {"iresnet50": 43.6, "iresnet100": 65.2}


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_iresnet_keys_and_depth_match_arcface_torch(name):
    model = BACKBONES.build(name)
    state = model.state_dict()
    # the names arcface_torch's backbone.pth files carry
    for key in ("conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight",
                "layer1.0.bn2.weight", "layer1.0.prelu.weight", "layer1.0.conv2.weight", "layer1.0.bn3.weight",
                "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean", "bn2.weight", "fc.weight",
                "fc.bias", "features.weight", "features.running_mean", "features.num_batches_tracked"):
        assert key in state, key
    assert state["fc.weight"].shape == (512, 512 * 7 * 7)
    assert not model.features.weight.requires_grad  # the fixed-scale BatchNorm1d of the neck
    assert infer_architecture(state) == (name, 512)
    if name in ARCFACE_TORCH_PARAMS_M:
        millions = sum(t.numel() for k, t in state.items() if not k.endswith(("running_mean", "running_var",
                                                                             "num_batches_tracked"))) / 1e6
        assert millions == pytest.approx(ARCFACE_TORCH_PARAMS_M[name], abs=0.05)


def test_mobilefacenet_layout():
    state = BACKBONES.build("mobilefacenet").state_dict()
    assert state["layers.0.layers.0.weight"].shape == (128, 3, 3, 3)  # width scale 2
    assert state["conv_sep.layers.0.weight"].shape == (512, 256, 1, 1)
    assert state["features.layers.0.layers.0.weight"].shape == (512, 1, 7, 7)  # GDC
    assert state["features.layers.2.weight"].shape == (512, 512)
    assert infer_architecture(state) == ("mobilefacenet", 512)
    assert infer_architecture(BACKBONES.build("mobilefacenet-large", embedding_size=256).state_dict()) == (
        "mobilefacenet-large", 256)


@pytest.mark.parametrize("name,options", [("iresnet18", {}), ("mobilefacenet", {}),
                                          ("mobilefacenet", {"blocks": (1, 1, 1, 1), "scale": 1})])
def test_shapes_and_gradients(name, options):
    torch.manual_seed(0)
    model = BACKBONES.build(name, embedding_size=64, **options)
    x = torch.randn(3, 3, 112, 112, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 64) and out.dtype == torch.float32
    out.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


def test_embedding_layers_stay_float32_under_autocast():
    """fp16-safety: the FC and BatchNorm1d of the neck run in float32 even inside autocast."""
    model = BACKBONES.build("iresnet18", embedding_size=32).eval()
    seen = {}
    model.fc.register_forward_hook(lambda m, i, o: seen.update(fc_in=i[0].dtype, fc_out=o.dtype))
    x = torch.randn(2, 3, 112, 112)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert seen == {"fc_in": torch.float32, "fc_out": torch.float32}
    assert out.dtype == torch.float32
    ref = model(x)
    cos = torch.nn.functional.cosine_similarity(out, ref)
    assert (cos > 0.99).all()


def test_dropout_option_and_unknown_backbone():
    model = BACKBONES.build("iresnet18", dropout=0.4)
    assert model.dropout.p == 0.4
    from facecli.errors import UsageError

    with pytest.raises(UsageError, match="iresnet50"):
        BACKBONES.build("resnet9000")
