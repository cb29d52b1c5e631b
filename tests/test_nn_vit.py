"""arcface_torch's ViTs: state-dict names and shapes of its backbones/vit.py, forward, masking, ONNX export."""

from __future__ import annotations

import pytest
import torch

from facecli.nn.backbones import BACKBONES
from facecli.nn.inference import infer_architecture, load_backbone, model_info
from facecli.train import checkpoint
from facecli.train.export import export_onnx

#: arcface_torch get_model(name): (embed_dim, depth), all with patch_size=9, img_size=112, num_heads=8.
REFERENCE = {"vit_t": (256, 12), "vit_s": (512, 12), "vit_b": (512, 24)}


def reference_keys(width: int, depth: int, embedding: int) -> dict[str, tuple[int, ...]]:
    """The state dict of arcface_torch's VisionTransformer(norm_layer="ln", qkv_bias=False, mlp_ratio=4), as its
    module tree builds it: patch_embed.proj (Conv2d 3→D, 9x9), pos_embed over 12x12 tokens, mask_token, blocks
    (LayerNorm, Attention(qkv, proj), LayerNorm, Mlp(fc1, fc2)), norm, and the 4-layer ``feature`` Sequential."""
    tokens = (112 // 9) ** 2
    keys: dict[str, tuple[int, ...]] = {
        "pos_embed": (1, tokens, width), "mask_token": (1, 1, width),
        "patch_embed.proj.weight": (width, 3, 9, 9), "patch_embed.proj.bias": (width,),
        "norm.weight": (width,), "norm.bias": (width,), "feature.0.weight": (width, width * tokens),
        "feature.2.weight": (embedding, width),
    }
    for i in (1, 3):
        n = width if i == 1 else embedding
        keys.update({f"feature.{i}.{p}": (n,) for p in ("weight", "bias", "running_mean", "running_var")})
        keys[f"feature.{i}.num_batches_tracked"] = ()
    for b in range(depth):
        p = f"blocks.{b}."
        keys.update({p + "norm1.weight": (width,), p + "norm1.bias": (width,), p + "norm2.weight": (width,),
                     p + "norm2.bias": (width,), p + "attn.qkv.weight": (3 * width, width),
                     p + "attn.proj.weight": (width, width), p + "attn.proj.bias": (width,),
                     p + "mlp.fc1.weight": (4 * width, width), p + "mlp.fc1.bias": (4 * width,),
                     p + "mlp.fc2.weight": (width, 4 * width), p + "mlp.fc2.bias": (width,)})
    return keys


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_state_dict_matches_arcface_torch(name):
    with torch.device("meta"):  # shapes only: vit_b has 114M parameters
        state = BACKBONES.build(name, embedding_size=512).state_dict()
    expected = reference_keys(*REFERENCE[name], 512)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert infer_architecture(state) == (name, 512)


def test_infer_architecture_reads_embedding_size_and_rejects_unknown_sizes():
    with torch.device("meta"):
        state = BACKBONES.build("vit_t", embedding_size=128).state_dict()
    assert infer_architecture(state) == ("vit_t", 128)
    from facecli.errors import CorruptFileError

    del state["blocks.11.norm1.weight"], state["blocks.11.norm1.bias"]  # still 12 blocks by index
    state = {k: v for k, v in state.items() if not k.startswith("blocks.11.")}
    with pytest.raises(CorruptFileError, match="width 256 and 11 blocks"):
        infer_architecture(state)


def test_forward_training_regularisers_and_gradients():
    torch.manual_seed(0)
    model = BACKBONES.build("vit_t", embedding_size=32)
    x = torch.randn(4, 3, 112, 112, requires_grad=True)
    out = model(x)  # training: 10% of the 144 tokens masked, stochastic depth
    assert out.shape == (4, 32) and out.dtype == torch.float32
    out.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0  # masked tokens used it
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)  # eval: no masking, no drop path
    unmasked = BACKBONES.build("vit_t", embedding_size=32, mask_ratio=0.0, drop_path_rate=0.0)
    unmasked(x).sum().backward()
    assert unmasked.mask_token.grad is None


def test_grad_checkpoint_gives_the_same_gradients():
    torch.manual_seed(1)
    plain = BACKBONES.build("vit_t", embedding_size=16)
    ckpt = BACKBONES.build("vit_t", embedding_size=16)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.grad_checkpoint = True
    x = torch.randn(2, 3, 112, 112)
    for model in (plain, ckpt):
        torch.manual_seed(7)  # same masking and drop-path draws; checkpoint replays them in the recomputation
        model(x).pow(2).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(plain.feature[1].running_mean, ckpt.feature[1].running_mean)


def test_onnx_export_and_loading(tmp_path):
    torch.manual_seed(0)
    model = BACKBONES.build("vit_t", embedding_size=64)
    model(torch.randn(4, 3, 112, 112))  # non-trivial BatchNorm statistics
    source = checkpoint.save_backbone(tmp_path / "model.pt", model.state_dict(), model_info("vit_t", 64))
    summary = export_onnx(source, tmp_path / "vit.onnx")  # runs onnxruntime against PyTorch (error above 1e-4)
    assert summary["facecli.architecture"] == "vit_t" and summary["max_abs_diff"] <= 1e-4
    torch.save(model.state_dict(), tmp_path / "backbone.pth")  # an arcface_torch-style bare state dict
    loaded, info = load_backbone(tmp_path / "backbone.pth")
    assert (info["architecture"], info["embedding_size"]) == ("vit_t", 64)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
