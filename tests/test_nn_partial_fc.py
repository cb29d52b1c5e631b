"""Classifier and Partial FC: R=1.0 equals the full softmax numerically; sampling keeps every positive."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from facecli.nn.classifier import FullClassifier, init_centres
from facecli.nn.heads import build_head
from facecli.nn.partial_fc import PartialFC, shard_bounds


def _loss(classifier, head, embeddings, labels):
    batch, batch_labels = classifier.gather(embeddings, labels)
    cosine, columns = classifier(batch, batch_labels)
    logits = head(cosine, columns, batch.norm(dim=1))
    return classifier.cross_entropy(logits, columns), cosine


@pytest.mark.parametrize("head_name", ["softmax", "arcface", "cosface"])
def test_partial_fc_rate_one_equals_full_classifier(head_name):
    torch.manual_seed(0)
    embeddings = torch.randn(16, 32)
    labels = torch.randint(0, 50, (16,))
    full, pfc = FullClassifier(50, 32, seed=3), PartialFC(50, 32, sample_rate=1.0, seed=3)
    torch.testing.assert_close(full.weight, pfc.weight, rtol=0, atol=0)
    head = build_head(head_name, 50, 32)
    e1, e2 = embeddings.clone().requires_grad_(True), embeddings.clone().requires_grad_(True)
    loss_full, cos_full = _loss(full, head, e1, labels)
    loss_pfc, cos_pfc = _loss(pfc, head, e2, labels)
    # the plain reference: F.cross_entropy on s·cos with the margin, computed independently
    torch.testing.assert_close(cos_full, cos_pfc, rtol=0, atol=0)
    torch.testing.assert_close(loss_pfc, loss_full, rtol=1e-6, atol=1e-5)
    loss_full.backward()
    loss_pfc.backward()
    torch.testing.assert_close(e2.grad, e1.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pfc.weight.grad, full.weight.grad, rtol=1e-5, atol=1e-7)


def test_distributed_cross_entropy_is_stable_where_probabilities_underflow():
    logits = torch.tensor([[300.0, -300.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([1, 2])
    pfc = PartialFC(3, 4)
    loss = pfc.cross_entropy(logits, labels)
    ref = F.cross_entropy(logits.detach(), labels)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(ref.item(), rel=1e-6)  # 600 nats, not 69 (1e-30)
    loss.backward()
    want = (torch.softmax(logits.detach(), 1) - F.one_hot(labels, 3)) / 2
    torch.testing.assert_close(logits.grad, want)


def test_sampling_keeps_positives_and_samples_the_rate():
    torch.manual_seed(1)
    pfc = PartialFC(100, 8, sample_rate=0.2)
    labels = torch.tensor([3, 97, 3, 50, 11])
    embeddings = torch.randn(5, 8)
    cosine, columns = pfc(embeddings, labels)
    assert cosine.shape == (5, 20)
    kept = pfc._sample(torch.tensor([3, 97, 50, 11]))
    assert set([3, 11, 50, 97]) <= set(kept.tolist()) and len(kept) == 20
    # every label points at its own centre's column
    full = F.linear(F.normalize(embeddings), F.normalize(pfc.weight.detach()))
    for i, label in enumerate(labels.tolist()):
        assert cosine[i, columns[i]].item() == pytest.approx(full[i, label].item(), abs=1e-6)
    # more positives than the sample size: all positives, nothing else
    assert pfc._sample(torch.arange(30)).tolist() == list(range(30))
    # in eval mode the whole shard is scored
    pfc.eval()
    assert pfc(embeddings, labels)[0].shape == (5, 100)


def test_shards_cover_all_classes_and_initialise_like_one_process():
    for world in (1, 2, 3, 8):
        bounds = [shard_bounds(10, world, r) for r in range(world)]
        assert sum(c for _, c in bounds) == 10
        assert [s for s, _ in bounds] == [sum(c for _, c in bounds[:r]) for r in range(world)]
    whole = init_centres(0, 9000, 1, 4, seed=5)
    torch.testing.assert_close(torch.cat([init_centres(0, 4100, 1, 4, 5), init_centres(4100, 9000, 1, 4, 5)]), whole)


def test_subcenters_are_max_pooled():
    full = FullClassifier(5, 8, num_subcenters=3)
    embeddings = torch.randn(4, 8)
    cosine, _ = full(embeddings, torch.zeros(4, dtype=torch.long))
    all_cos = F.linear(F.normalize(embeddings), F.normalize(full.weight.detach())).view(4, 5, 3)
    torch.testing.assert_close(cosine, all_cos.amax(dim=2))
    assert full.class_centres().shape == (5, 3, 8)
    pfc = PartialFC(5, 8, sample_rate=1.0, num_subcenters=3)
    pfc.weight.data.copy_(full.weight.data)
    torch.testing.assert_close(pfc(embeddings, torch.zeros(4, dtype=torch.long))[0], cosine)


def test_both_classifiers_implement_the_protocol_and_say_whether_they_are_sharded():
    """The trainer asks ``sharded`` (DDP must leave the centres alone; one state per rank) instead of the type."""
    from facecli.errors import UsageError
    from facecli.nn.classifier import Classifier

    full, pfc = FullClassifier(6, 4, num_subcenters=2), PartialFC(6, 4, num_subcenters=2)
    assert isinstance(full, Classifier) and isinstance(pfc, Classifier)
    assert (full.sharded, pfc.sharded) == (False, True)
    assert full.class_centres().shape == pfc.class_centres().shape == (6, 2, 4)
    with pytest.raises(TypeError):
        Classifier()  # the protocol alone computes nothing
    for rate in (0.0, 1.5):
        with pytest.raises(UsageError, match="sample rate"):
            PartialFC(6, 4, sample_rate=rate)
