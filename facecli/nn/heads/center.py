"""Center loss (Wen et al.): pull each embedding towards a running centre of its identity.

    L = L_softmax + λ · L_C,    L_C = ½ · mean_i ‖x_i - c_{y_i}‖²

It is an *auxiliary* loss, added to a classification loss (softmax or any margin head): alone it would collapse
every embedding onto one point. This module returns L_C; the weight λ (the paper's 0.003) is applied by whoever
combines the losses (the trainer: ``head.aux=center head.aux_weight=0.003``). The centres are not trained by the
model's optimiser but by the paper's own update, performed here after each training forward (its "own optimiser
step"):

    Δc_j = Σ_{i: y_i = j} (c_j - x_i) / (1 + n_j),     c_j ← c_j - α · Δc_j

with n_j the number of samples of class j in the batch; under DDP the update uses the gathered global batch, so
every rank holds the same centres. Paper default α = 0.5. The centres are a registered buffer, not a parameter (no
other optimiser touches them; checkpointed and restored on ``--resume``), and act on the raw embeddings, as in the
paper.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from facecli.nn import distributed
from facecli.nn.heads.base import HEADS, EmbeddingLoss


@HEADS.register("center")
class CenterLoss(EmbeddingLoss):
    """L_C with centres updated by the paper's rule; add λ·L_C to a classification head's loss."""

    kind: ClassVar[str] = "auxiliary"
    paper = "A Discriminative Feature Learning Approach for Deep Face Recognition (center loss), Wen et al."
    year = 2016
    partial_fc_incompatible = None  # it needs global labels, not classifier columns: it composes with Partial FC

    centers: torch.Tensor

    def __init__(self, num_classes: int, embedding_size: int, alpha: float = 0.5) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.register_buffer("centers", torch.zeros(int(num_classes), int(embedding_size)))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """L_C of the batch (global class labels); in training mode also updates the centres."""
        labels = labels.long()
        diff = embeddings.float() - self.centers[labels]
        loss = 0.5 * diff.pow(2).sum(dim=1).mean()
        if self.training:
            self.update_centers(embeddings, labels)
        return loss

    @torch.no_grad()
    def update_centers(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """The paper's centre update with the (global) batch."""
        x = distributed.all_gather_cat(embeddings.float())
        y = distributed.all_gather_cat(labels.long())
        classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
        sums = torch.zeros(len(classes), x.shape[1], device=x.device).index_add_(0, inverse, x)
        centers = self.centers[classes]
        delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
        self.centers[classes] = centers - self.alpha * delta
