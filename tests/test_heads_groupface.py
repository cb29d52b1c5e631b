"""GroupFace neck: self-distributed grouping against a loop reference, the embedding formula, composition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facecli.errors import UsageError
from facecli.nn.backbones import NECKS
from facecli.nn.groupface import GroupFace, self_distributed_labels
from facecli.nn.heads import build_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Features(nn.Module):
    """A stand-in backbone: images are already feature vectors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_self_distributed_labels_match_the_formula():
    probs = torch.softmax(torch.randn(10, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    expected = []
    for i in range(10):
        scores = [(probs[i, k] - probs[:, k].mean()) / 4 + 1 / 4 for k in range(4)]
        expected.append(max(range(4), key=lambda k: scores[k]))
    assert self_distributed_labels(probs).tolist() == expected
    skewed = torch.tensor([[0.7, 0.3]] * 3 + [[0.9, 0.1]] * 3)  # argmax alone would put everyone in group 0
    assert set(self_distributed_labels(skewed).tolist()) == {0, 1}


def test_embedding_is_instance_plus_probability_weighted_groups():
    neck = GroupFace(Features(), embedding_size=6, groups=3).eval()
    x = torch.randn(5, 6)
    out = neck(x)
    probs = torch.softmax(neck.decision(x), dim=1)
    expected = neck.instance(x).clone()
    for k in range(3):
        weight = neck.group_fc.weight[k * 6:(k + 1) * 6]
        bias = neck.group_fc.bias[k * 6:(k + 1) * 6]
        expected += probs[:, k:k + 1] * (x @ weight.T + bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert neck.auxiliary_loss() is None


def test_groupface_composes_with_a_margin_head_and_learns_its_groups():
    torch.manual_seed(0)
    neck = NECKS.build("groupface", backbone=Features(), embedding_size=8, groups=4)
    head = build_head("curricularface", 5, 8).train()
    centres = nn.Parameter(torch.randn(5, 8))
    labels = torch.arange(5).repeat(4)
    x = torch.randn(5, 8)[labels] + 0.3 * torch.randn(20, 8)
    optimiser = torch.optim.SGD(list(neck.parameters()) + [centres], lr=0.1)
    losses = []
    for _ in range(30):
        neck.train()
        emb = neck(x)
        cosine = nn.functional.normalize(emb) @ nn.functional.normalize(centres).T
        loss = nn.functional.cross_entropy(head(cosine, labels, emb.norm(dim=1)), labels) + neck.auxiliary_loss()
        optimiser.zero_grad()
        loss.backward()
        assert neck.decision[0].weight.grad.abs().sum() > 0
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_groupface_state_round_trips_and_rejects_one_group():
    neck = NECKS.build("groupface", backbone=Features(), embedding_size=8, groups=4).eval()
    other = NECKS.build("groupface", backbone=Features(), embedding_size=8, groups=4).eval()
    other.load_state_dict(neck.state_dict())
    x = torch.randn(3, 8)
    assert torch.equal(neck(x), other(x))
    with pytest.raises(UsageError, match="at least 2 groups"):
        GroupFace(Features(), 8, groups=1)
