"""softmax, sphereface, cosface, arcface, combined against naive per-element references (fp32 and bf16, grads)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facecli.nn.heads import build_head
from facecli.nn.heads.sphereface import multiplicative_angular


def naive_logits(cosine: torch.Tensor, labels: torch.Tensor, s: float, target_fn) -> torch.Tensor:
    """Loop over every element; the target column of a labelled row goes through ``target_fn(cos)``."""
    rows = []
    for i in range(cosine.shape[0]):
        row = []
        for j in range(cosine.shape[1]):
            c = cosine[i, j]
            row.append(s * (target_fn(c) if int(labels[i]) == j else c))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def arcface_ref(m: float, easy: bool):
    def f(c):
        theta = torch.acos(c)
        if easy:
            return torch.cos(theta + m) if c > 0 else c
        if theta + m <= math.pi:
            return torch.cos(theta + m)
        return c - m * math.sin(m)  # insightface's fallback: cos θ - sin(π - m)·m
    return f


def sphere_ref(m: int, lam: float):
    def f(c):
        theta = torch.acos(c)
        k = int(m * float(theta.detach()) // math.pi)
        psi = (-1) ** k * torch.cos(m * theta) - 2 * k
        return (lam * c + psi) / (1 + lam)
    return f


CASES = {
    "softmax": ({}, lambda: (lambda c: c), 64.0),
    "cosface": ({}, lambda: (lambda c: c - 0.35), 64.0),
    "arcface": ({}, lambda: arcface_ref(0.5, False), 64.0),
    "arcface-easy": ({"easy_margin": True}, lambda: arcface_ref(0.5, True), 64.0),
    "arcface-m0.3-s30": ({"m": 0.3, "s": 30.0}, lambda: arcface_ref(0.3, False), 30.0),
    "combined-cosface": ({"m2": 0.0, "m3": 0.35}, lambda: (lambda c: c - 0.35), 64.0),
    "combined-mixed": ({"m1": 1.0, "m2": 0.3, "m3": 0.2}, lambda: (lambda c: torch.cos(torch.acos(c) + 0.3) - 0.2), 64.0),
    "combined-sphere": ({"m1": 1.35, "m2": 0.0}, lambda: (lambda c: torch.cos(1.35 * torch.acos(c))), 64.0),
    "sphereface": ({}, lambda: sphere_ref(4, 1000.0), 64.0),
}


def make_batch(seed: int = 0, edge: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cosine = torch.rand(7, 6, generator=g) * 1.96 - 0.98
    labels = torch.tensor([0, 1, 2, 3, 4, 5, -1])
    if edge:  # θ near 0, θ near π (θ + m > π: the fallback branch), cos exactly 0, negative cos (easy margin)
        cosine[0, 0], cosine[1, 1], cosine[2, 2], cosine[3, 3] = 0.9999, -0.9999, 0.0, -0.3
        cosine[4, 4] = math.cos(math.pi - 0.5) - 1e-3  # just past the arcface threshold
    return cosine, labels


def head_for(case: str):
    name = case.split("-")[0]
    options, ref, s = CASES[case]
    return build_head(name, 6, 16, **options), ref(), s


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_gradients_match_naive_reference_fp32(case):
    head, ref, s = head_for(case)
    head.eval()  # sphereface: keep λ at its initial value for the comparison
    cosine, labels = make_batch()
    a = cosine.clone().requires_grad_(True)
    b = cosine.clone().requires_grad_(True)
    got = head(a, labels)
    want = naive_logits(b, labels, s, ref)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    weights = torch.randn_like(got)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-3)
    # the loss the trainer uses is finite and has gradients
    assert torch.isfinite(F.cross_entropy(got, labels.clamp(min=0)))


@pytest.mark.parametrize("case", ["softmax", "cosface", "arcface", "arcface-easy", "combined-mixed", "sphereface"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float32(case, dtype):
    """Under autocast the classifier hands half-precision cosines over; the head's maths stays float32."""
    head, ref, s = head_for(case)
    head.eval()
    cosine, labels = make_batch(1, edge=False)
    half = cosine.to(dtype)
    x = half.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(x, labels)
    assert got.dtype == torch.float32
    y = half.float().requires_grad_(True)
    want = naive_logits(y, labels, s, ref)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)
    F.cross_entropy(got, labels.clamp(min=0)).backward()
    F.cross_entropy(want, labels.clamp(min=0)).backward()
    torch.testing.assert_close(x.grad.float(), y.grad, rtol=2e-2, atol=2e-3)


def test_arcface_target_logit_is_monotonic_over_the_whole_angle_range():
    head = build_head("arcface", 1, 4)
    theta = torch.linspace(0, math.pi, 2001)
    target = head(torch.cos(theta)[:, None], torch.zeros(2001, dtype=torch.long))[:, 0]
    assert (target[1:] <= target[:-1] + 1e-4).all()  # without th/mm, cos(θ+m) rises again past π - m


def test_sphereface_lambda_anneals_with_a_buffer_counter():
    head = build_head("sphereface", 6, 16)
    assert head.current_lambda() == 1000.0
    cosine, labels = make_batch()
    cosine[0, labels[0]] = 0.3  # ψ(θ) far from cos θ: the blend shows which λ was used
    head.train()
    lambdas = []
    for _ in range(3):
        out = head(cosine, labels)
        lambdas.append(head.current_lambda())
    assert int(head.iteration) == 3
    # Caffe's MarginInnerProductLayer counts the forward first: the first training step uses λ = 1000/1.12
    assert lambdas == pytest.approx([1000.0 / (1 + 0.12 * k) for k in (1, 2, 3)])
    assert lambdas[0] == pytest.approx(892.857, abs=1e-3)
    expect = (lambdas[-1] * cosine[0, labels[0]] + multiplicative_angular(cosine[0, labels[0]], 4)) / (1 + lambdas[-1])
    assert out[0, labels[0]].item() == pytest.approx(64.0 * expect.item(), rel=1e-5)
    assert "iteration" in head.state_dict()
    head.iteration.fill_(10**6)
    assert head.current_lambda() == 5.0  # λ_min
    fresh = build_head("sphereface", 6, 16)
    fresh.load_state_dict(head.state_dict())
    assert fresh.current_lambda() == 5.0
    # ψ is monotonically decreasing in θ (k = ⌊mθ/π⌋ pieces join up)
    fresh.eval()
    theta = torch.linspace(0, math.pi, 1001)
    target = fresh(torch.cos(theta)[:, None], torch.zeros(1001, dtype=torch.long))[:, 0]
    assert (target[1:] <= target[:-1] + 1e-3).all()


def test_combined_straight_through_reproduces_arcface_torch_gradient():
    """arcface_torch applies the margin in place under no_grad: the gradient w.r.t. cos is that of s·cos."""
    head = build_head("combined", 6, 16, straight_through=True)
    plain = build_head("combined", 6, 16)
    cosine, labels = make_batch(2, edge=False)
    a, b = cosine.clone().requires_grad_(True), cosine.clone().requires_grad_(True)
    la, lb = head(a, labels), plain(b, labels)
    torch.testing.assert_close(la, lb)  # same values
    F.cross_entropy(la[:6], labels[:6]).backward()
    probs = torch.softmax(la[:6].detach(), dim=1) - F.one_hot(labels[:6], 6)
    torch.testing.assert_close(a.grad[:6], 64.0 * probs / 6, rtol=1e-4, atol=1e-5)


def test_combined_interclass_filtering_zeroes_dirty_negatives_only():
    head = build_head("combined", 6, 16, m2=0.0, interclass_filtering_threshold=0.5)
    cosine, labels = make_batch(3, edge=False)
    cosine[0, 3] = 0.9  # a dirty negative in a labelled row
    cosine[6, 2] = 0.9  # a row labelled -1 (its target on another Partial FC rank) is filtered too, as arcface_torch
    out = head(cosine, labels) / 64.0
    assert out[0, 3] == 0.0 and out[6, 2] == 0.0
    expect = cosine.clone()
    mask = cosine > 0.5
    mask[torch.arange(6), labels[:6]] = False
    expect[mask] = 0.0
    torch.testing.assert_close(out, expect)


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_unit_cosines_give_finite_logits_and_gradients(case):
    """cosine_matrix clamps to exactly ±1; acos/sqrt there must not turn the gradient into inf/NaN."""
    head, ref, s = head_for(case)
    head.eval()
    cosine, labels = make_batch(4, edge=False)
    cosine[0::2, :] = 1.0
    cosine[1::2, :] = -1.0
    x = cosine.clone().requires_grad_(True)
    logits = head(x, labels)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits[:6], labels[:6]).backward()
    assert torch.isfinite(x.grad).all()
    # the clamp just inside [-1, 1] moves θ by at most ~5e-4 rad (float32 acos next to 1): values barely change
    want = naive_logits(cosine.double(), labels, s, ref).float()
    torch.testing.assert_close(logits / s, want / s, rtol=0, atol=1e-3)
