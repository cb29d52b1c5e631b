"""Training speed options: precision, channels-last, gradient checkpointing (same numbers, less memory)."""

from __future__ import annotations

import math

import pytest
import torch
from test_train_resume import run_split
from train_support import centre_crops, tiny_config

from facecli.errors import UsageError
from facecli.nn.backbones import BACKBONES
from facecli.train import acceleration
from facecli.train.trainer import Trainer


@pytest.fixture(scope="module")
def faces(shared_dir, tmp_path_factory):
    return centre_crops(shared_dir / "data" / "lfw-sample", tmp_path_factory.mktemp("lfw112"))


def test_iresnet_grad_checkpoint_same_gradients_and_batchnorm_statistics():
    torch.manual_seed(0)
    plain = BACKBONES.build("iresnet18", embedding_size=16)
    ckpt = BACKBONES.build("iresnet18", embedding_size=16)
    ckpt.load_state_dict(plain.state_dict())
    acceleration.prepare_backbone(ckpt, tiny_cfg_flags(grad_checkpoint=True))
    assert ckpt.grad_checkpoint
    x = torch.randn(2, 3, 112, 112)
    for model in (plain, ckpt):
        model(x).pow(2).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    # the recomputation in backward does not move the running statistics a second time
    one, two = plain.state_dict(), ckpt.state_dict()
    for key in one:
        if "running" in key or "num_batches" in key:
            torch.testing.assert_close(one[key], two[key], rtol=1e-5, atol=1e-7, msg=key)


def tiny_cfg_flags(**flags):
    from facecli.train.config import build_config

    return build_config({"data.path": "x", "out": "y", **flags})


def test_grad_checkpoint_needs_a_checkpointable_backbone():
    model = BACKBONES.build("mobilefacenet", blocks=(1, 1, 1, 1), scale=1)
    with pytest.raises(UsageError, match="iresnet and vit"):
        acceleration.prepare_backbone(model, tiny_cfg_flags(grad_checkpoint=True))


def test_fp16_on_cpu_is_a_one_line_usage_error(faces, tmp_path, run_cli):
    with pytest.raises(UsageError, match="fp16 training needs a CUDA GPU"):
        Trainer(tiny_config(faces, tmp_path / "run", amp="fp16", device="cpu")).fit()
    res = run_cli("train", faces, "--out", tmp_path / "cli", "--precision", "fp16", "--device", "cpu",
                  "--steps", "1")
    assert res.returncode == 2 and "fp16 training needs a CUDA GPU" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cli("train", faces, "--out", tmp_path / "cli", "--precision", "fp8")
    assert res.returncode == 2 and "--precision must be one of fp32, fp16, bf16" in res.stderr


def test_precision_flags_resolve_to_the_amp_key(faces, tmp_path, run_cli):
    res = run_cli("train", faces, "--out", tmp_path / "r", "--precision", "bf16", "--channels-last",
                  "--grad-checkpoint", "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    cfg = res.json()
    assert (cfg["amp"], cfg["channels_last"], cfg["grad_checkpoint"]) == ("bf16", True, True)
    res = run_cli("train", faces, "--out", tmp_path / "r", "--precision", "fp32", "--dry-run", "--json")
    assert res.json()["amp"] == "none"
    res = run_cli("train", faces, "--out", tmp_path / "r", "--precision", "bf16", "--fp16", "--dry-run")
    assert res.returncode == 2 and "one of --precision, --fp16, --bf16" in res.stderr


def test_bf16_channels_last_grad_checkpoint_trains_and_resumes_bit_identically(faces, tmp_path):
    """bf16 autocast on CPU, NHWC batches, checkpointed blocks: finite losses, and 2 + 2 steps equal 4 straight."""
    run_split(faces, tmp_path, 4, amp="bf16", channels_last=True, grad_checkpoint=True, model__backbone="iresnet18",
              model__embedding_size=32, batch_size=2)
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    assert straight["config"]["amp"] == "bf16" and straight["config"]["channels_last"]
    rows = (tmp_path / "straight" / "metrics.csv").read_text().splitlines()[1:]
    assert all(math.isfinite(float(r.split(",")[2])) for r in rows)
