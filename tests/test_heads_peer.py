"""Cross-checks against pytorch-metric-learning (the DESIGN's model for margin heads), when it is installed.

Its SubCenterArcFaceLoss uses the same class-major sub-centre layout as facecli's classifier and implements the
paper's outlier rule (``get_outliers``): the same centres and embeddings must give the same loss, gradients,
dominant sub-centres and outliers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facecli.nn.classifier import cosine_matrix
from facecli.nn.heads import build_head
from facecli.train.clean import find_noisy

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def problem(seed=0, classes=6, k=3, dim=16, batch=24):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes * k, dim, generator=gen)  # facecli layout: row c·K + j
    labels = torch.randint(0, classes, (batch,), generator=gen)
    emb = weight[labels * k] + 0.9 * torch.randn(batch, dim, generator=gen)  # near sub-centre 0 of their class
    return weight, emb, labels


def test_subcenter_arcface_loss_and_gradients_equal_pytorch_metric_learning():
    weight, emb, labels = problem()
    ours_emb = emb.clone().requires_grad_(True)
    head = build_head("subcenter-arcface", 6, 16)
    logits = head(cosine_matrix(ours_emb, weight, 3), labels)
    ours = F.cross_entropy(logits, labels)
    ours.backward()

    peer = pml_losses.SubCenterArcFaceLoss(num_classes=6, embedding_size=16, margin=np.degrees(0.5), scale=64,
                                           sub_centers=3)
    with torch.no_grad():
        peer.W.copy_(weight.T)  # PML keeps (dim, classes·K), same column order
    peer_emb = emb.clone().requires_grad_(True)
    theirs = peer(peer_emb, labels)
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    torch.testing.assert_close(ours_emb.grad, peer_emb.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("threshold", [40.0, 75.0])
def test_cleaning_finds_the_outliers_pytorch_metric_learning_finds(threshold):
    weight, emb, labels = problem(seed=1, batch=60)
    emb[::7] = torch.randn(len(emb[::7]), 16)  # some mislabelled faces
    peer = pml_losses.SubCenterArcFaceLoss(num_classes=6, embedding_size=16, sub_centers=3)
    with torch.no_grad():
        peer.W.copy_(weight.T)
    outliers, dominant = peer.get_outliers(emb, labels, threshold=threshold)
    report = find_noisy(weight.view(6, 3, 16).numpy(), emb.numpy(), labels.numpy(), threshold)
    assert sorted(np.nonzero(report.suspicious)[0].tolist()) == sorted(outliers.tolist())
    for c in range(6):
        expected = F.normalize(weight[c * 3 + report.dominant[c]], dim=0)
        torch.testing.assert_close(F.normalize(dominant[:, c], dim=0), expected)
