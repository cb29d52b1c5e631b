"""Triplet loss with in-batch mining on P×K batches: batch-hard (Hermans et al.) or semi-hard (FaceNet).

Distances are between L2-normalised embeddings (squared Euclidean by default, as FaceNet).

- ``semi-hard`` (FaceNet): every anchor-positive pair (a, p) is used with the *closest negative that is still
  farther than the positive*, d(a,p) < d(a,n); where no negative is farther, the farthest negative is taken (the
  rule of TensorFlow's ``triplet_semihard_loss``). loss = mean over (a, p) of max(0, d(a,p) - d(a,n) + margin).
- ``batch-hard`` (Hermans et al.): every anchor with its *farthest* positive and *closest* negative;
  loss = mean over anchors of max(0, max_p d(a,p) - min_n d(a,n) + margin).

Anchors without a positive or without a negative in the batch contribute nothing, so batches must hold P ≥ 2
identities with K ≥ 2 images each: ``facecli train`` builds them with K = ``samples_per_identity``; in your own
loop use ``facecli.data.samplers.PKSampler``.
"""

from __future__ import annotations

import torch

from facecli.errors import UsageError
from facecli.nn.heads._pairs import identity_masks, pairwise_distances
from facecli.nn.heads.base import HEADS, EmbeddingLoss

MININGS = ("semi-hard", "batch-hard")


@HEADS.register("triplet")
class TripletLoss(EmbeddingLoss):
    """Triplet loss, margin 0.2 (FaceNet), semi-hard mining by default."""

    paper = "FaceNet (Schroff et al.) semi-hard; In Defense of the Triplet Loss (Hermans et al.) batch-hard"
    year = 2015

    def __init__(
        self, margin: float = 0.2, mining: str = "semi-hard", squared: bool = True, samples_per_identity: int = 4
    ) -> None:
        super().__init__()
        if mining not in MININGS:
            raise UsageError(f"triplet mining must be one of {', '.join(MININGS)}, got {mining!r}")
        self.margin = float(margin)
        self.mining = mining
        self.squared = bool(squared)
        #: K of the P×K batches the trainer must build for this loss.
        self.samples_per_identity = int(samples_per_identity)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist = pairwise_distances(embeddings, squared=self.squared)
        positive, negative = identity_masks(labels)
        if self.mining == "batch-hard":
            terms = self._batch_hard(dist, positive, negative)
        else:
            terms = self._semi_hard(dist, positive, negative)
        if terms.numel() == 0:  # no valid triplet in the batch
            return embeddings.sum() * 0.0
        return terms.clamp(min=0.0).mean()

    def _batch_hard(self, dist: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        valid = positive.any(dim=1) & negative.any(dim=1)
        hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(dim=1)
        hardest_neg = dist.masked_fill(~negative, float("inf")).amin(dim=1)
        return (hardest_pos - hardest_neg + self.margin)[valid]

    def _semi_hard(self, dist: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        anchors, positives = torch.nonzero(positive & negative.any(dim=1, keepdim=True), as_tuple=True)
        d_ap = dist[anchors, positives]  # (T,)
        d_an = dist[anchors]  # (T, B)
        neg = negative[anchors]
        farther = neg & (d_an > d_ap[:, None])
        closest_farther = d_an.masked_fill(~farther, float("inf")).amin(dim=1)
        farthest = d_an.masked_fill(~neg, float("-inf")).amax(dim=1)
        chosen = torch.where(farther.any(dim=1), closest_farther, farthest)
        return d_ap - chosen + self.margin
