"""Metric-learning losses (contrastive, triplet batch-hard/semi-hard, center) against naive loops, and P×K sampling."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from facecli.data.samplers import PKSampler
from facecli.errors import UsageError
from facecli.nn.heads import build_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def dist(a: torch.Tensor, b: torch.Tensor, squared: bool) -> torch.Tensor:
    d2 = ((a - b) ** 2).sum()
    return d2 if squared else torch.sqrt(d2)


def ref_contrastive(emb, labels, margin):
    x = unit(emb)
    terms = []
    for i, j in itertools.combinations(range(len(x)), 2):
        d = dist(x[i], x[j], squared=False)
        terms.append(0.5 * d**2 if labels[i] == labels[j] else 0.5 * torch.clamp(margin - d, min=0) ** 2)
    return torch.stack(terms).mean()


def ref_triplet(emb, labels, margin, mining, squared):
    x = unit(emb)
    n = len(x)
    d = [[dist(x[i], x[j], squared) for j in range(n)] for i in range(n)]
    terms = []
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [k for k in range(n) if labels[k] != labels[a]]
        if not pos or not neg:
            continue
        if mining == "batch-hard":
            hardest_pos = max(pos, key=lambda p: d[a][p].item())
            hardest_neg = min(neg, key=lambda k: d[a][k].item())
            terms.append(torch.clamp(d[a][hardest_pos] - d[a][hardest_neg] + margin, min=0))
            continue
        for p in pos:
            farther = [k for k in neg if d[a][k].item() > d[a][p].item()]
            k = min(farther, key=lambda k: d[a][k].item()) if farther else max(neg, key=lambda k: d[a][k].item())
            terms.append(torch.clamp(d[a][p] - d[a][k] + margin, min=0))
    return torch.stack(terms).mean() if terms else emb.sum() * 0.0


def ref_center(emb, labels, centres):
    """L_C = ½ · mean over the batch of ‖x_i − c_{y_i}‖² (the centres before this batch's update)."""
    return 0.5 * sum(((emb[i] - centres[labels[i]]) ** 2).sum() for i in range(len(emb))) / len(emb)


#: the reference of every registered loss that is not a margin head (tests/test_heads_margin.py checks the registry)
REFERENCES = {"contrastive": ref_contrastive, "triplet": ref_triplet, "center": ref_center}


def pk_batch(seed=0, p=3, k=3, dim=8):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(p).repeat_interleave(k)
    centres = torch.randn(p, dim, generator=gen)
    emb = centres[labels] + 0.8 * torch.randn(p * k, dim, generator=gen)
    return emb.double(), labels


def check(loss_fn, ref_fn, emb, labels, atol=1e-6):
    x = emb.clone().float().requires_grad_(True)
    value = loss_fn(x, labels)
    value.backward()
    xr = emb.clone().double().requires_grad_(True)
    ref = ref_fn(xr, labels)
    ref.backward()
    assert value.item() == pytest.approx(ref.item(), abs=atol, rel=1e-4)
    torch.testing.assert_close(x.grad.double(), xr.grad, atol=max(atol, 1e-5), rtol=1e-3)
    return value


@pytest.mark.parametrize("seed", [0, 1])
def test_contrastive_matches_reference(seed):
    emb, labels = pk_batch(seed)
    loss = build_head("contrastive", 3, 8)
    value = check(loss, lambda x, y: ref_contrastive(x, y, 1.0), emb, labels)
    assert value.item() > 0


@pytest.mark.parametrize("mining", ["semi-hard", "batch-hard"])
@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_matches_reference(mining, squared, seed):
    emb, labels = pk_batch(seed, p=4, k=3)
    loss = build_head("triplet", 4, 8, mining=mining, squared=squared)
    value = check(loss, lambda x, y: ref_triplet(x, y, 0.2, mining, squared), emb, labels)
    assert value.item() > 0


@pytest.mark.parametrize("name", ["contrastive", "triplet"])
def test_embedding_losses_under_bfloat16_autocast_and_half_inputs(name):
    emb, labels = pk_batch(3)
    loss = build_head(name, 3, 8)
    reference = loss(emb.float(), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projected = torch.nn.functional.linear(emb.float(), torch.eye(8))
        assert projected.dtype == torch.bfloat16
        value = loss(projected, labels)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference.item(), rel=0.05, abs=0.01)
    assert loss(emb.half(), labels).item() == pytest.approx(reference.item(), rel=0.01, abs=1e-3)


@pytest.mark.parametrize("name", ["contrastive", "triplet"])
def test_embedding_losses_edge_batches(name):
    loss = build_head(name, 3, 8)
    single = torch.randn(1, 8, requires_grad=True)
    value = loss(single, torch.tensor([0]))
    value.backward()
    assert value.item() == 0 and torch.equal(single.grad, torch.zeros_like(single))
    same = torch.randn(4, 8, dtype=torch.float64)
    labels = torch.zeros(4, dtype=torch.long)
    ref = ref_contrastive if name == "contrastive" else (lambda x, y, m: ref_triplet(x, y, m, "semi-hard", True))
    margin = 1.0 if name == "contrastive" else 0.2
    check(loss, lambda x, y: ref(x, y, margin), same, labels)
    identical = torch.ones(4, 8, requires_grad=True)  # θ = 0 between every pair: finite gradient
    loss(identical, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(identical.grad).all()


def test_triplet_rejects_unknown_mining():
    with pytest.raises(UsageError, match="semi-hard, batch-hard"):
        build_head("triplet", 3, 8, mining="hardest")


def test_center_loss_value_and_paper_update():
    loss = build_head("center", num_classes=4, embedding_size=3).train()
    loss.centers.copy_(torch.arange(12, dtype=torch.float32).view(4, 3) / 10)
    old = loss.centers.clone()
    x = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]], requires_grad=True)
    y = torch.tensor([2, 2, 0, 3])
    value = loss(x, y)
    expected = ref_center(x, y, old)
    assert value.item() == pytest.approx(expected.item())
    value.backward()
    torch.testing.assert_close(x.grad, (x.detach() - old[y]) / 4)
    for j in range(4):
        members = [i for i in range(4) if y[i] == j]
        delta = sum((old[j] - x.detach()[i] for i in members), torch.zeros(3)) / (1 + len(members))
        torch.testing.assert_close(loss.centers[j], old[j] - 0.5 * delta)
    assert torch.equal(loss.centers[1], old[1])  # classes absent from the batch stay put
    assert loss.kind == "auxiliary"


def test_center_loss_combined_with_a_margin_head_pulls_embeddings_together():
    """Softmax-family head + λ·center loss on a toy problem: intra-class spread shrinks faster with the center term."""
    def spread_after(lambda_c: float) -> float:
        torch.manual_seed(0)
        labels = torch.arange(4).repeat_interleave(8)
        inputs = torch.randn(4, 16)[labels] + 0.5 * torch.randn(32, 16)
        model = torch.nn.Linear(16, 8)
        centres = torch.nn.Parameter(torch.randn(4, 8))
        head = build_head("airface", 4, 8).train()
        center = build_head("center", 4, 8).train()
        optimiser = torch.optim.SGD(list(model.parameters()) + [centres], lr=0.05)
        for _ in range(60):
            emb = model(inputs)
            cosine = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(centres).T
            loss = torch.nn.functional.cross_entropy(head(cosine, labels, emb.norm(dim=1)), labels)
            loss = loss + lambda_c * center(emb, labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        emb = model(inputs).detach()
        return float(sum((emb[labels == c] - emb[labels == c].mean(0)).norm(dim=1).mean() for c in range(4)))

    assert spread_after(0.5) < 0.8 * spread_after(0.0)


# ----------------------------------------------------------------------------------------- P×K sampler


LABELS = np.repeat(np.arange(10), [5, 1, 3, 8, 2, 4, 6, 2, 3, 7])


def test_pk_batches_hold_p_identities_with_k_images_each():
    sampler = PKSampler(LABELS, p=3, k=4, seed=1)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 3 * 12
    for start in range(0, len(indices), 12):
        batch = LABELS[indices[start:start + 12]]
        values, counts = np.unique(batch, return_counts=True)
        assert len(values) == 3 and set(counts) == {4}
    seen = [LABELS[indices[s]] for s in range(0, len(indices), 4)]
    assert len(set(seen)) == len(seen), "an identity appears at most once per epoch"
    for start in range(0, len(indices), 4):  # identities with >= K images are sampled without replacement
        group = indices[start:start + 4]
        if (LABELS == LABELS[group[0]]).sum() >= 4:
            assert len(set(group)) == 4


def test_pk_sampler_is_deterministic_by_seed_and_epoch():
    a, b = PKSampler(LABELS, 2, 2, seed=7), PKSampler(LABELS, 2, 2, seed=7)
    assert list(a) == list(b)
    assert list(a) == list(b)  # second epoch, same for both ...
    first = PKSampler(LABELS, 2, 2, seed=7)
    assert list(first) != list(a)  # ... and different from the first epoch
    assert list(PKSampler(LABELS, 2, 2, seed=8)) != list(PKSampler(LABELS, 2, 2, seed=7))


def test_pk_sampler_resumes_mid_epoch():
    straight = PKSampler(LABELS, 2, 3, seed=3)
    stream = list(straight) + list(straight)
    interrupted = PKSampler(LABELS, 2, 3, seed=3)
    it = iter(interrupted)
    head = [next(it) for _ in range(2 * 6)]  # two batches
    state = interrupted.state_dict()
    resumed = PKSampler(LABELS, 2, 3, seed=3)
    resumed.load_state_dict(state)
    assert head + list(resumed) + list(resumed) == stream
    with pytest.raises(UsageError, match="differs"):
        PKSampler(LABELS, 2, 4, seed=3).load_state_dict(state)


def test_pk_sampler_ranks_split_the_same_global_order():
    ranks = [PKSampler(LABELS, 2, 2, seed=5, rank=r, world_size=2) for r in range(2)]
    parts = [list(r) for r in ranks]
    assert len(parts[0]) == len(parts[1]) == 4 * 2
    batches = [tuple(p[i:i + 4]) for p in parts for i in range(0, len(p), 4)]
    assert len(set(batches)) == len(batches)


def test_pk_sampler_refuses_impossible_settings():
    with pytest.raises(UsageError, match="at least 11 identities"):
        PKSampler(LABELS, p=11, k=2)
    with pytest.raises(UsageError):
        PKSampler(LABELS, p=0, k=2)
    assert math.isfinite(len(PKSampler(LABELS, 10, 1)))
