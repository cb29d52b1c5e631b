"""Every margin head of the registry against a naive reference written plainly from its paper's formula.

The heads are enumerated from ``HEADS``: a registered margin head without an entry in ``REFERENCES`` fails, so a new
head cannot be added without its reference. The references loop over rows and columns with float64 scalars
(autograd through them gives the reference gradients). Each head is compared with float32 cosines, with
half-precision cosines, and under bfloat16 autocast, logits and gradients, plus the edge cases θ = 0 and θ = π
(exactly and nearly), the easy-margin and th/mm branches, a batch whose rows all share one label, a single sample,
and a row whose target lives on another Partial FC rank (-1).

As in pytorch-metric-learning's test suite, the environment chooses where the heads run: ``FACECLI_TEST_DEVICE``
(default ``cpu``, e.g. ``cuda``) and ``FACECLI_TEST_DTYPE`` (the cosines' dtype, default ``float32``, e.g.
``float16``), so the same comparisons run in half precision on a GPU. The references stay float64 on the CPU, fed
the very values the head saw after rounding.
"""

from __future__ import annotations

import copy
import math
import os
import statistics

import pytest
import torch

from facecli.nn.heads import HEADS, build_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C = 7
DEVICE = torch.device(os.environ.get("FACECLI_TEST_DEVICE", "cpu"))
DTYPE = getattr(torch, os.environ.get("FACECLI_TEST_DTYPE", "float32"))
#: gradients come back in the cosines' dtype: the least absolute and relative tolerance each precision allows
GRAD_TOLERANCE = {torch.float32: (0.0, 1e-3), torch.float16: (0.05, 1e-3), torch.bfloat16: (0.05, 1e-2)}

# ------------------------------------------------------------------------------------------------ references


def _f(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def _theta(c):
    return torch.acos(c)


def _arc(c, m, easy_margin=False):
    """cos(θ+m) with ArcFace's guards, one scalar."""
    if easy_margin:
        return torch.cos(_theta(c) + m) if c > 0 else c
    if c > math.cos(math.pi - _f(m)):
        return torch.cos(_theta(c) + m)
    return c - math.sin(math.pi - _f(m)) * m


def _rows(cos, labels, target_fn, other_fn, scale):
    """Assemble logits[i][j] = scale * (target_fn(i) if j is i's target else other_fn(i, j))."""
    out = []
    for i in range(cos.shape[0]):
        row = []
        for j in range(cos.shape[1]):
            value = target_fn(i) if int(labels[i]) == j else other_fn(i, j)
            row.append(value * scale)
        out.append(torch.stack(row))
    return torch.stack(out)


def ref_softmax(head, cos, labels, norms, state):
    return _rows(cos, labels, lambda i: cos[i, labels[i]], lambda i, j: cos[i, j], head.s)


def ref_cosface(head, cos, labels, norms, state):
    return _rows(cos, labels, lambda i: cos[i, labels[i]] - head.m, lambda i, j: cos[i, j], head.s)


def ref_arcface(head, cos, labels, norms, state):
    return _rows(cos, labels, lambda i: _arc(cos[i, labels[i]], head.m, head.easy_margin),
                 lambda i, j: cos[i, j], head.s)


def ref_combined(head, cos, labels, norms, state):
    return _rows(cos, labels, lambda i: torch.cos(head.m1 * _theta(cos[i, labels[i]]) + head.m2) - head.m3,
                 lambda i, j: cos[i, j], head.s)


def ref_sphereface(head, cos, labels, norms, state):
    """(λ·cos θ + ψ(θ)) / (1 + λ), ψ = (-1)^k cos(mθ) - 2k, k = ⌊mθ/π⌋; a training forward counts itself first."""
    it = int(state["iteration"]) + 1
    lam = max(head.lambda_min, head.lambda_base * (1 + head.lambda_gamma * it) ** (-head.lambda_power))

    def target(i):
        c = cos[i, labels[i]]
        k = min(int(head.m * math.acos(_f(c)) // math.pi), head.m - 1)
        psi = (-1) ** k * torch.cos(head.m * _theta(c)) - 2 * k
        return (lam * c + psi) / (1 + lam)

    return _rows(cos, labels, target, lambda i, j: cos[i, j], head.s)


def ref_airface(head, cos, labels, norms, state):
    s, m = head.s, head.m
    return _rows(cos, labels, lambda i: (math.pi - 2 * (_theta(cos[i, labels[i]]) + m)) / math.pi,
                 lambda i, j: (math.pi - 2 * _theta(cos[i, j])) / math.pi, s)


def ref_adacos_fixed(head, cos, labels, norms, state):
    s = math.sqrt(2) * math.log(C - 1)
    return _rows(cos, labels, lambda i: cos[i, labels[i]], lambda i, j: cos[i, j], s)


def ref_adacos(head, cos, labels, norms, state):
    s_old = float(state["scale"])
    targets = [i for i in range(len(labels)) if labels[i] >= 0]
    b_avg = sum(math.exp(s_old * _f(cos[i, j])) for i in targets for j in range(C) if j != labels[i]) / len(targets)
    angles = sorted(math.acos(_f(cos[i, labels[i]])) for i in targets)
    theta_med = angles[(len(angles) - 1) // 2]  # torch.median's lower median
    s = math.log(b_avg) / math.cos(min(math.pi / 4, theta_med))
    return _rows(cos, labels, lambda i: cos[i, labels[i]], lambda i, j: cos[i, j], s)


def ref_mv_softmax(head, cos, labels, norms, state):
    m, t = head.m, head.t

    def f(i):
        c = cos[i, labels[i]]
        return c - m if head.margin_type == "am" else _arc(c, m)

    def other(i, j):
        if labels[i] >= 0 and _f(cos[i, j]) > _f(f(i)):
            return t * cos[i, j] + t - 1
        return cos[i, j]

    return _rows(cos, labels, f, other, head.s)


def ref_curricularface(head, cos, labels, norms, state):
    targets = [_f(cos[i, labels[i]]) for i in range(len(labels)) if labels[i] >= 0]
    t = head.alpha * (sum(targets) / len(targets)) + (1 - head.alpha) * float(state["t"])

    def other(i, j):
        if labels[i] >= 0 and _f(torch.cos(_theta(cos[i, labels[i]]) + head.m)) < _f(cos[i, j]):
            return cos[i, j] * (t + cos[i, j])
        return cos[i, j]

    return _rows(cos, labels, lambda i: _arc(cos[i, labels[i]], head.m), other, head.s)


def ref_subcenter(head, cos, labels, norms, state):
    return _rows(cos, labels, lambda i: _arc(cos[i, labels[i]], head.m, head.easy_margin),
                 lambda i, j: cos[i, j], head.s)


def ref_magface(head, cos, labels, norms, state):
    def target(i):
        a = min(max(norms[i], head.l_a), head.u_a)  # autograd through min/max picks the active branch
        margin = (head.u_m - head.l_m) / (head.u_a - head.l_a) * (a - head.l_a) + head.l_m
        return _arc(cos[i, labels[i]], margin, head.easy_margin)

    return _rows(cos, labels, target, lambda i, j: cos[i, j], head.s)


def ref_elasticface(head, cos, labels, norms, state):
    targets = [i for i in range(len(labels)) if labels[i] >= 0]
    drawn = head.draw_margins(int(state["draws"]), len(targets)).double().tolist()
    margin_of = {}
    if head.plus:
        ranked = sorted(targets, key=lambda i: -_f(cos[i, labels[i]]))  # closest to its centre first
        for rank, i in enumerate(ranked):
            margin_of[i] = sorted(drawn)[rank]  # ... gets the smallest margin
    else:
        margin_of = dict(zip(targets, drawn, strict=True))

    def target(i):
        c = cos[i, labels[i]]
        return torch.cos(_theta(c) + margin_of[i]) if head.margin_form == "arc" else c - margin_of[i]

    return _rows(cos, labels, target, lambda i, j: cos[i, j], head.s)


def ref_adaface(head, cos, labels, norms, state):
    values = [min(max(_f(n), 0.001), 100.0) for n in norms]
    mean = head.t_alpha * statistics.fmean(values) + (1 - head.t_alpha) * float(state["batch_mean"])
    std = float(state["batch_std"])
    if len(values) >= 2:
        std = head.t_alpha * statistics.stdev(values) + (1 - head.t_alpha) * std
    eps = 1e-3

    def target(i):
        z = max(-1.0, min(1.0, (values[i] - mean) / (std + eps) * head.h))
        c = min(max(_f(cos[i, labels[i]]), -1 + eps), 1 - eps)
        theta = _theta(cos[i, labels[i]]) if -1 + eps < _f(cos[i, labels[i]]) < 1 - eps else torch.tensor(
            math.acos(c), dtype=torch.float64)
        theta_m = theta - head.m * z
        theta_m = min(max(theta_m, torch.tensor(eps, dtype=torch.float64)), torch.tensor(math.pi - eps,
                                                                                          dtype=torch.float64))
        return torch.cos(theta_m) - (head.m + head.m * z)

    return _rows(cos, labels, target, lambda i, j: cos[i, j].clamp(-1 + eps, 1 - eps), head.s)


def ref_adaptiveface(head, cos, labels, norms, state, margins=None):
    return _rows(cos, labels, lambda i: cos[i, labels[i]] - margins[labels[i]], lambda i, j: cos[i, j], head.s)


#: the reference of every registered margin head: name → (constructor options, reference formula)
REFERENCES = {
    "softmax": ({}, ref_softmax),
    "cosface": ({}, ref_cosface),
    "arcface": ({}, ref_arcface),
    "combined": ({}, ref_combined),
    "sphereface": ({}, ref_sphereface),
    "airface": ({}, ref_airface),
    "adacos-fixed": ({}, ref_adacos_fixed),
    "adacos": ({}, ref_adacos),
    "mv-softmax": ({}, ref_mv_softmax),
    "curricularface": ({}, ref_curricularface),
    "subcenter-arcface": ({}, ref_subcenter),
    "magface": ({}, ref_magface),
    "elasticface-arc": ({"seed": 3}, ref_elasticface),
    "elasticface-cos": ({"seed": 3}, ref_elasticface),
    "elasticface-arc+": ({"seed": 3}, ref_elasticface),
    "elasticface-cos+": ({"seed": 3}, ref_elasticface),
    "adaface": ({}, ref_adaface),
    "adaptiveface": ({}, ref_adaptiveface),
}
#: other branches of some formulas: case → (head, constructor options, reference formula)
VARIANTS = {
    "arcface-easy": ("arcface", {"easy_margin": True}, ref_arcface),
    "mv-softmax-arc": ("mv-softmax", {"margin_type": "arc", "m": 0.5}, ref_mv_softmax),
    "subcenter-arcface-easy": ("subcenter-arcface", {"easy_margin": True}, ref_subcenter),
    "magface-fallback": ("magface", {"easy_margin": False}, ref_magface),
}
MARGIN_HEADS = [name for name in HEADS.names() if HEADS.get(name).kind == "margin"]
CASES = sorted([*MARGIN_HEADS, *VARIANTS])


def test_every_registered_head_has_a_reference():
    """Margin heads are compared here; embedding losses and auxiliary losses in tests/test_heads_embedding.py."""
    from test_heads_embedding import REFERENCES as EMBEDDING_REFERENCES

    missing = [name for name in MARGIN_HEADS if name not in REFERENCES]
    missing += [name for name in HEADS.names() if name not in MARGIN_HEADS and name not in EMBEDDING_REFERENCES]
    assert not missing, f"registered heads without a reference formula: {', '.join(missing)}"
    assert len(MARGIN_HEADS) >= 18 and {"arcface", "adaface", "sphereface"} <= set(MARGIN_HEADS)


def make_head(case: str):
    if case in VARIANTS:
        name, options, ref = VARIANTS[case]
    elif case in REFERENCES:
        name, (options, ref) = case, REFERENCES[case]
    else:
        pytest.fail(f"head {case!r} is registered but has no reference formula in REFERENCES")
    torch.manual_seed(0)
    head = build_head(name, num_classes=C, embedding_size=16, **options).to(DEVICE)
    if name == "adaface":  # statistics near the test norms so that ẑ is not saturated everywhere
        head.batch_mean.fill_(25.0)
        head.batch_std.fill_(12.0)
    if name == "curricularface":
        head.t.fill_(0.3)
    return head.train(), ref


# ------------------------------------------------------------------------------------------------ harness


def batch(seed: int = 0, size: int = 6):
    gen = torch.Generator().manual_seed(seed)
    cos = torch.rand(size, C, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    labels = torch.tensor([0, 3, 3, 6, 1, -1, 2, 5][:size])
    cos[0, 0] = -0.95  # θ + m > π: ArcFace's th/mm fallback
    if size >= 3:
        cos[1, 3] = -0.3  # easy-margin branch (target cos < 0)
        cos[2, 3] = 0.85
    norms = torch.tensor([5.0, 18.0, 30.0, 55.0, 120.0, 40.0, 22.0, 9.0][:size], dtype=torch.float64)
    return cos, labels, norms


def run_impl(head, cos, labels, norms, dtype=DTYPE):
    """The head on :data:`DEVICE` with cosines in ``dtype``; everything it returns is back on the CPU."""
    cos_in = cos.to(DEVICE, dtype).detach().requires_grad_(True)
    norms_in = norms.to(DEVICE, torch.float32).detach().requires_grad_(True)
    logits = head(cos_in, labels.to(DEVICE), norms_in)
    weights = torch.linspace(-1, 1, logits.numel(), dtype=torch.float32, device=DEVICE).view_as(logits)
    (logits.float() * weights).sum().backward()
    norms_grad = norms_in.grad.cpu() if norms_in.grad is not None else None
    return logits.detach().cpu(), cos_in.grad.cpu(), norms_grad, weights.cpu()


def run_ref(head, ref, cos, labels, norms, state, weights, margins=None):
    cos_ref = cos.double().detach().requires_grad_(True)
    norms_ref = norms.double().detach().requires_grad_(True)
    kwargs = {"margins": margins} if margins is not None else {}
    logits = ref(head, cos_ref, labels, norms_ref, state, **kwargs)
    (logits * weights.double()).sum().backward()
    norms_grad = norms_ref.grad if norms_ref.grad is not None else torch.zeros_like(norms_ref)
    return logits.detach(), cos_ref.grad, norms_grad


def reference_margins(case, head):
    """AdaptiveFace's learnable margins as the reference's float64 leaf (None for every other head)."""
    if case != "adaptiveface":
        return None
    return head.margins.detach().cpu().clamp(0, 1).double().clone().requires_grad_(True)


def compare(case, cos, labels, norms, dtype=DTYPE, atol=2e-4, grad_atol=2e-3):
    head, ref = make_head(case)
    state = {k: v.cpu() for k, v in copy.deepcopy(head.state_dict()).items()}
    margins = reference_margins(case, head)
    logits, cos_grad, norms_grad, weights = run_impl(head, cos, labels, norms, dtype)
    ref_cos = cos.to(dtype).double()  # the reference sees exactly the rounded inputs the head saw
    ref_logits, ref_cos_grad, ref_norms_grad = run_ref(head, ref, ref_cos, labels, norms, state, weights, margins)
    floor, rtol = GRAD_TOLERANCE[dtype]
    grad_atol = max(grad_atol, floor)
    torch.testing.assert_close(logits.double(), ref_logits, atol=atol, rtol=1e-4)
    torch.testing.assert_close(cos_grad.double(), ref_cos_grad, atol=grad_atol, rtol=rtol)
    if norms_grad is not None:
        torch.testing.assert_close(norms_grad.double(), ref_norms_grad, atol=grad_atol, rtol=1e-3)
    if margins is not None:
        torch.testing.assert_close(head.margins.grad.cpu().double(), margins.grad, atol=grad_atol, rtol=1e-3)
    return head, logits


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case):
    """Cosines in FACECLI_TEST_DTYPE (float32 by default)."""
    cos, labels, norms = batch()
    compare(case, cos, labels, norms)


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_with_float16_cosines(case):
    """Half-precision cosines (what an fp16 classifier produces) give float32 logits equal to the reference on the
    same rounded values; the gradient comes back in float16."""
    cos, labels, norms = batch(seed=1)
    head, logits = compare(case, cos, labels, norms, dtype=torch.float16, grad_atol=0.05)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_under_bfloat16_autocast(case):
    """The cosine matrix comes out of a bfloat16 autocast matmul; the head's logits and gradients follow the
    reference evaluated on those very cosines."""
    head, ref = make_head(case)
    state = {k: v.cpu() for k, v in copy.deepcopy(head.state_dict()).items()}
    margins = reference_margins(case, head)
    gen = torch.Generator().manual_seed(5)
    emb = torch.nn.functional.normalize(torch.randn(6, 16, generator=gen), dim=1).to(DEVICE).requires_grad_(True)
    centres = torch.nn.functional.normalize(torch.randn(C, 16, generator=gen), dim=1).to(DEVICE)
    labels = torch.tensor([0, 3, 3, 6, 1, -1])
    norms = torch.tensor([5.0, 18.0, 30.0, 55.0, 120.0, 40.0])
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        cosine = (emb @ centres.T).clamp(-1, 1)
        assert cosine.dtype == torch.bfloat16
        cosine.retain_grad()
        norms_in = norms.to(DEVICE).requires_grad_(True)
        logits = head(cosine, labels.to(DEVICE), norms_in)
    weights = torch.linspace(-1, 1, logits.numel(), device=DEVICE).view_as(logits)
    (logits.float() * weights).sum().backward()
    ref_logits, ref_cos_grad, _ = run_ref(head, ref, cosine.detach().cpu().double(), labels, norms.double(), state,
                                          weights.cpu(), margins)
    torch.testing.assert_close(logits.detach().cpu().double(), ref_logits, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(cosine.grad.cpu().double(), ref_cos_grad, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("where", ["near-zero", "near-pi"])
def test_edge_angles_near_zero_and_pi(case, where):
    """Targets and negatives at θ ≈ 0 and θ ≈ π (1e-4 inside the domain, or the first value of a half-precision
    dtype that is inside: 1 - 1e-4 rounds to 1 in float16): logits and gradients match."""
    cos, labels, norms = batch(seed=2)
    inside = max(1e-4, torch.finfo(DTYPE).eps)
    value = 1 - inside if where == "near-zero" else -1 + inside
    cos[:, :] = value
    cos[:, 1] = 0.2  # one ordinary column so rows are not degenerate
    compare(case, cos, labels, norms, atol=1e-3, grad_atol=0.05)


@pytest.mark.parametrize("case", CASES)
def test_exact_unit_cosines_give_finite_logits_and_gradients(case):
    """cos = ±1 exactly (what a clamped fp16 matmul produces): no inf/NaN; logits still equal the reference."""
    cos, labels, norms = batch(seed=3)
    cos[::2, :] = 1.0
    cos[1::2, :] = -1.0
    head, _ = make_head(case)
    logits, cos_grad, norms_grad, _ = run_impl(head, cos, labels, norms)
    assert torch.isfinite(logits).all() and torch.isfinite(cos_grad).all()
    assert norms_grad is None or torch.isfinite(norms_grad).all()


@pytest.mark.parametrize("case", CASES)
def test_all_same_label_batch(case):
    cos, _, norms = batch(seed=4)
    labels = torch.full((6,), 2)
    compare(case, cos, labels, norms)


@pytest.mark.parametrize("case", CASES)
def test_single_sample(case):
    cos, labels, norms = batch(seed=6, size=1)
    head, logits = compare(case, cos, labels, norms)
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(buffer).all() for buffer in head.buffers())


def test_subcenter_max_pooling_follows_the_classifier_layout():
    """Row c·K + j of the centres is sub-centre j of class c; the class cosine is the max over its K (a loop)."""
    from facecli.nn.classifier import cosine_matrix

    k = 3
    gen = torch.Generator().manual_seed(9)
    emb, weight = torch.randn(4, 16, generator=gen), torch.randn(C * k, 16, generator=gen)
    pooled = cosine_matrix(emb, weight, k)
    for i in range(4):
        for c in range(C):
            expected = max(float(torch.dot(emb[i] / emb[i].norm(), weight[c * k + j] / weight[c * k + j].norm()))
                           for j in range(k))
            assert float(pooled[i, c]) == pytest.approx(expected, abs=1e-6)
    assert build_head("subcenter-arcface", C, 16, k=k).num_subcenters == k
