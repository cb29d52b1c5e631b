"""Contrastive loss (Hadsell, Chopra & LeCun): pull same-identity pairs together, push others beyond a margin.

Over every pair (i, j), i < j, of the batch, with d the Euclidean distance of the L2-normalised embeddings:

    L_ij = ½ d²                      same identity
           ½ max(0, margin - d)²     different identities
    loss = mean over all pairs

Meant for fine-tuning on few identities, where a classifier over the identities overfits. It needs P×K batches:
``facecli train`` builds them with K = ``samples_per_identity``; in your own loop use
``facecli.data.samplers.PKSampler``. On the unit sphere d ∈ [0, 2]; the default margin 1.0 asks different people
to be at least 60° apart.
"""

from __future__ import annotations

import torch

from facecli.nn.heads._pairs import pairwise_distances
from facecli.nn.heads.base import HEADS, EmbeddingLoss


@HEADS.register("contrastive")
class ContrastiveLoss(EmbeddingLoss):
    """Hadsell et al.'s contrastive loss over all pairs of the batch."""

    paper = "Dimensionality Reduction by Learning an Invariant Mapping, Hadsell, Chopra & LeCun"
    year = 2006

    def __init__(self, margin: float = 1.0, samples_per_identity: int = 4) -> None:
        super().__init__()
        self.margin = float(margin)
        #: K of the P×K batches the trainer must build for this loss.
        self.samples_per_identity = int(samples_per_identity)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = len(labels)
        if n < 2:  # a single sample: no pair, no loss (but keep the graph for the caller)
            return embeddings.sum() * 0.0
        first, second = torch.triu_indices(n, n, offset=1, device=embeddings.device)
        dist = pairwise_distances(embeddings, squared=False)[first, second]
        same = labels[first] == labels[second]
        terms = torch.where(same, dist.pow(2), (self.margin - dist).clamp(min=0.0).pow(2))
        return 0.5 * terms.mean()
