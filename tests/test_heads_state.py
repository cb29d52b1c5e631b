"""Adaptive state of the heads: buffers in the state dict, exact resume, DDP-global statistics, declared limits."""

from __future__ import annotations

import io
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from facecli.errors import UsageError
from facecli.nn.heads import HEADS, build_head
from facecli.nn.heads.magface import magface_lambda_lower_bound

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C = 9
ADAPTIVE = {
    "adacos": ["scale"],
    "curricularface": ["t"],
    "adaface": ["batch_mean", "batch_std"],
    "elasticface-arc": ["seed", "draws"],
    "elasticface-cos+": ["seed", "draws"],
}


def step_batch(step: int, size: int = 8):
    gen = torch.Generator().manual_seed(100 + step)
    cos = torch.rand(size, C, generator=gen) * 1.6 - 0.8
    labels = torch.randint(0, C, (size,), generator=gen)
    norms = torch.rand(size, generator=gen) * 40 + 5
    return cos, labels, norms


def train_steps(head, steps: range) -> list[torch.Tensor]:
    return [head(*step_batch(step)) for step in steps]


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_adaptive_state_is_buffers_and_resume_equals_uninterrupted(name):
    straight = build_head(name, C, 16).train()
    straight_logits = train_steps(straight, range(6))

    first = build_head(name, C, 16).train()
    train_steps(first, range(3))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    for key in ADAPTIVE[name]:
        assert key in first.state_dict()
    buffer.seek(0)
    resumed = build_head(name, C, 16).train()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    resumed_logits = train_steps(resumed, range(3, 6))

    for a, b in zip(straight_logits[3:], resumed_logits):
        assert torch.equal(a, b)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    fresh = build_head(name, C, 16).train()
    assert not all(torch.equal(a, b) for a, b in zip(train_steps(fresh, range(3, 6)), resumed_logits)), \
        "without the restored state the continuation must differ (otherwise this test proves nothing)"


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_eval_mode_does_not_touch_the_state(name):
    head = build_head(name, C, 16).train()
    train_steps(head, range(2))
    before = {k: v.clone() for k, v in head.state_dict().items()}
    head.eval()
    first = head(*step_batch(7))
    second = head(*step_batch(7))
    assert torch.equal(first, second)
    for key, value in head.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_curricularface_t_is_the_ema_of_target_cosines():
    head = build_head("curricularface", C, 16).train()
    expected = 0.0
    for step in range(4):
        cos, labels, norms = step_batch(step)
        head(cos, labels, norms)
        expected = 0.01 * cos[torch.arange(len(labels)), labels].mean().item() + 0.99 * expected
    assert head.t.item() == pytest.approx(expected, rel=1e-5)


def test_adacos_starts_from_the_fixed_scale_and_adapts():
    head = build_head("adacos", C, 16).train()
    assert head.scale.item() == pytest.approx(math.sqrt(2) * math.log(C - 1))
    head(*step_batch(0))
    assert head.scale.item() != pytest.approx(math.sqrt(2) * math.log(C - 1))


def test_adacos_two_forwards_then_one_backward():
    """Gradient accumulation: the second forward updates the scale while the first graph is still alive."""
    head = build_head("adacos", C, 16).train()
    cos_a, labels_a, _ = step_batch(0)
    cos_b, labels_b, _ = step_batch(1)
    a, b = cos_a.clone().requires_grad_(True), cos_b.clone().requires_grad_(True)
    scale_a = head.scale.item()
    logits_a = head(a, labels_a)
    scale_used_a = head.scale.item()
    logits_b = head(b, labels_b)
    assert head.scale.item() != scale_used_a != scale_a
    (logits_a.sum() + logits_b.sum()).backward()
    torch.testing.assert_close(a.grad, torch.full_like(a, scale_used_a))  # d(s·cos)/dcos with the step's own s


def test_adaface_clamps_the_non_target_cosines_like_the_official_head():
    head = build_head("adaface", C, 16).eval()
    cos = torch.zeros(2, C)
    cos[0, 4], cos[1, 5] = 1.0, -1.0  # non-target cosines at the ends of the range
    logits = head(cos, torch.tensor([0, 1]), torch.tensor([20.0, 20.0])) / head.s
    assert logits[0, 4].item() == pytest.approx(1 - 1e-3) and logits[1, 5].item() == pytest.approx(-1 + 1e-3)
    assert logits[0, 3].item() == 0.0


def test_adaface_low_norm_gets_the_arcface_margin_and_high_norm_the_additive_one():
    head = build_head("adaface", C, 16, h=1.0).eval()
    head.batch_mean.fill_(20.0)
    head.batch_std.fill_(1.0)
    theta = 1.0
    cos = torch.full((2, C), 0.1)
    cos[:, 0] = math.cos(theta)
    logits = head(cos, torch.tensor([0, 0]), torch.tensor([5.0, 50.0])) / head.s  # ẑ = -1 and +1
    assert logits[0, 0].item() == pytest.approx(math.cos(theta + head.m), abs=1e-5)  # ArcFace: cos(θ + m)
    assert logits[1, 0].item() == pytest.approx(math.cos(theta - head.m) - 2 * head.m, abs=1e-5)


def test_adaface_single_norm_keeps_the_std():
    head = build_head("adaface", C, 16).train()
    head(torch.zeros(1, C), torch.tensor([2]), torch.tensor([30.0]))
    assert head.batch_std.item() == pytest.approx(100.0)
    assert head.batch_mean.item() == pytest.approx(0.01 * 30 + 0.99 * 20)


# ----------------------------------------------------------------------------------------- ElasticFace(+)


@pytest.mark.parametrize("name", ["elasticface-arc+", "elasticface-cos+"])
def test_elasticface_plus_gives_the_smallest_margin_to_the_sample_closest_to_its_centre(name):
    """The paper's rule (a scatter by rank), not the reference code's gather."""
    head = build_head(name, C, 16, std=0.1).train()
    cos_t = torch.tensor([0.1, 0.9, -0.3, 0.5, 0.7, 0.2])
    drawn = head.draw_margins(0, len(cos_t))
    margins = head.sample_margins(cos_t)
    assert torch.equal(torch.sort(margins).values, torch.sort(drawn).values)
    by_closeness = torch.argsort(cos_t, descending=True)
    assert torch.all(margins[by_closeness][1:] >= margins[by_closeness][:-1])  # closer → smaller margin
    gathered = torch.sort(drawn).values[by_closeness]  # what the released code computes
    assert not torch.equal(gathered, margins)


def test_elasticface_margins_follow_the_normal_distribution_and_eval_uses_the_mean():
    head = build_head("elasticface-arc", C, 16).train()
    draws = torch.cat([head.draw_margins(step, 1000) for step in range(5)])
    assert draws.mean().item() == pytest.approx(0.5, abs=0.005)
    assert draws.std().item() == pytest.approx(0.05, rel=0.05)
    assert torch.equal(head.eval().sample_margins(torch.zeros(4)), torch.full((4,), 0.5))


# ----------------------------------------------------------------------------------------- MagFace


def test_magface_lambda_lower_bound_is_checked():
    # g'(l_a) = 1/u_a² - 1/l_a²; the bound is s·k / -g'(l_a) with k the margin slope.
    s, l_a, u_a, l_m, u_m = 64.0, 10.0, 110.0, 0.45, 0.8
    expected = s * ((u_m - l_m) / (u_a - l_a)) / (1 / l_a**2 - 1 / u_a**2)
    assert magface_lambda_lower_bound(s, l_a, u_a, l_m, u_m) == pytest.approx(expected)
    assert expected == pytest.approx(22.587, abs=1e-3)
    build_head("magface", C, 16, lambda_g=expected + 1e-6)
    with pytest.raises(UsageError, match=r"lambda_g=20.0 is below its lower bound 22.59"):
        build_head("magface", C, 16, lambda_g=20.0)


def test_magface_regulariser_and_quality_flags():
    head = build_head("magface", C, 16)
    norms = torch.tensor([5.0, 50.0, 200.0], requires_grad=True)
    reg = head.regularizer(norms)
    a = torch.tensor([10.0, 50.0, 110.0])
    assert reg.item() == pytest.approx(35 * (1 / a + a / 110**2).mean().item())
    reg.backward()
    assert norms.grad[0] == 0 and norms.grad[2] == 0 and norms.grad[1] < 0  # clamped ends carry no gradient
    assert HEADS.get("magface").quality_from_norm and HEADS.get("adaface").quality_from_norm
    assert not getattr(HEADS.get("airface"), "quality_from_norm", False)
    with pytest.raises(UsageError, match="norms"):
        head(torch.zeros(2, C), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------------------- declarations


def test_partial_fc_compatibility_is_declared_for_every_head():
    incompatible = {"adacos", "curricularface", "mv-softmax", "adaptiveface", "elasticface-arc+", "elasticface-cos+",
                    "contrastive", "triplet"}
    for name in ["airface", "adacos", "adacos-fixed", "mv-softmax", "curricularface", "subcenter-arcface", "magface",
                 "elasticface-arc", "elasticface-cos", "elasticface-arc+", "elasticface-cos+", "adaface",
                 "adaptiveface", "contrastive", "triplet", "center"]:
        reason = HEADS.get(name).partial_fc_incompatible
        assert (reason is not None) == (name in incompatible), name
        head_cls = HEADS.get(name)
        assert head_cls.paper and 2000 < head_cls.year < 2030, name


# ----------------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        results = {}
        for name in ["adacos", "curricularface", "adaface"]:
            head = build_head(name, C, 16).train()
            for step in range(3):
                cos, labels, norms = step_batch(step, size=8)
                part = slice(rank * 4, rank * 4 + 4)
                head(cos[part], labels[part], norms[part])
            results[name] = {k: v.clone() for k, v in head.state_dict().items()}
        center = build_head("center", C, 4).train()
        for step in range(2):
            gen = torch.Generator().manual_seed(step)
            emb, labels = torch.randn(8, 4, generator=gen), torch.randint(0, C, (8,), generator=gen)
            center(emb[rank * 4: rank * 4 + 4], labels[rank * 4: rank * 4 + 4])
        results["center"] = {"centers": center.centers.clone()}
        out[rank] = results
    finally:
        dist.destroy_process_group()


def test_global_statistics_are_synchronised_across_ddp_ranks():
    """Two gloo ranks with half a batch each end with the statistics of one process seeing the whole batch."""
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    for name in ["adacos", "curricularface", "adaface"]:
        single = build_head(name, C, 16).train()
        for step in range(3):
            single(*step_batch(step, size=8))
        for rank in range(2):
            for key, value in single.state_dict().items():
                torch.testing.assert_close(out[rank][name][key], value, rtol=1e-5, atol=1e-6)
    center = build_head("center", C, 4).train()
    for step in range(2):
        gen = torch.Generator().manual_seed(step)
        center(torch.randn(8, 4, generator=gen), torch.randint(0, C, (8,), generator=gen))
    for rank in range(2):
        torch.testing.assert_close(out[rank]["center"]["centers"], center.centers)


PAPER_DEFAULTS = {
    "airface": {"s": 64.0, "m": 0.45},
    "adacos": {"theta_zero": math.pi / 4},
    "mv-softmax": {"s": 32.0, "m": 0.35, "t": 1.2, "margin_type": "am"},
    "curricularface": {"s": 64.0, "m": 0.5, "alpha": 0.01},
    "subcenter-arcface": {"s": 64.0, "m": 0.5, "k": 3, "easy_margin": False},
    "magface": {"s": 64.0, "l_a": 10.0, "u_a": 110.0, "l_m": 0.45, "u_m": 0.8, "lambda_g": 35.0, "easy_margin": True},
    "elasticface-arc": {"s": 64.0, "m": 0.5, "std": 0.05, "seed": 0},
    "elasticface-cos": {"s": 64.0, "m": 0.35, "std": 0.05, "seed": 0},
    "elasticface-arc+": {"s": 64.0, "m": 0.5, "std": 0.0175, "seed": 0},
    "elasticface-cos+": {"s": 64.0, "m": 0.35, "std": 0.02, "seed": 0},
    "adaface": {"s": 64.0, "m": 0.4, "h": 0.333, "t_alpha": 0.01},
    "triplet": {"margin": 0.2, "mining": "semi-hard", "squared": True, "samples_per_identity": 4},
    "center": {"alpha": 0.5},
}


@pytest.mark.parametrize("name", sorted(PAPER_DEFAULTS))
def test_defaults_are_the_papers(name):
    """What ``facecli train --list-heads`` shows is what the constructor uses."""
    assert HEADS.get(name).defaults() == PAPER_DEFAULTS[name]
    head = build_head(name, C, 16)
    for key, value in PAPER_DEFAULTS[name].items():
        if key not in ("seed", "k", "theta_zero"):
            assert getattr(head, key) == value, key


def test_mv_softmax_refuses_t_below_one_and_unknown_margins():
    with pytest.raises(UsageError, match="t >= 1"):
        build_head("mv-softmax", C, 16, t=0.8)
    with pytest.raises(UsageError, match="'am' or 'arc'"):
        build_head("mv-softmax", C, 16, margin_type="sphere")


def test_adaptiveface_regulariser_rewards_larger_margins():
    head = build_head("adaptiveface", C, 16)
    with torch.no_grad():
        head.margins.fill_(0.25)
    reg = head.regularizer(None)
    assert reg.item() == pytest.approx(70 * (1 - 0.25))
    reg.backward()
    torch.testing.assert_close(head.margins.grad, torch.full((C,), -70.0 / C))
