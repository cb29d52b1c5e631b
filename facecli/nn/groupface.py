"""GroupFace: a group-aware neck on top of any backbone, composing with any margin head.

The embedding is the sum of an instance representation and group-aware representations weighted by how likely the
face belongs to each of K latent groups:

    v_x     = W_inst · f(x)                         (instance-based representation)
    p(G|x)  = softmax(GDN(f(x)))                    (group decision network, an MLP)
    v_G_k   = W_k · f(x),   k = 1..K                (group-aware representations)
    v̄_x    = v_x + Σ_k p(G_k|x) · v_G_k            (the final embedding, fed to the classifier + margin head)

Groups are learned without labels by *self-distributed grouping*: the group label of a face is the argmax of its
probabilities after removing the batch's expected probability, p̃_k = (p_k - E_batch[p_k]) / K + 1/K, which
spreads faces evenly over the groups; the GDN is trained with cross-entropy towards those labels and the total loss
is L_margin + λ · L_GDN (paper: K = 32 groups, λ = 0.1).

Deviation from the paper: the shared feature f(x) is the wrapped backbone's embedding output (so any registered
backbone works unchanged), not the backbone's internal pooled feature map.

Contract for the trainer (``NECKS``): ``forward(images) -> (B, E)`` like any backbone; after a training-mode
forward, :meth:`auxiliary_loss` returns λ·L_GDN of that batch (``None`` in eval mode), to be added to the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facecli.errors import UsageError
from facecli.nn.backbones import NECKS


def self_distributed_labels(probs: torch.Tensor) -> torch.Tensor:
    """Group labels argmax_k ((p_k - E_batch[p_k]) / K + 1/K) for (B, K) probabilities."""
    groups = probs.shape[1]
    unbiased = (probs - probs.mean(dim=0, keepdim=True)) / groups + 1.0 / groups
    return unbiased.argmax(dim=1)


@NECKS.register("groupface")
class GroupFace(nn.Module):
    """Wrap ``backbone`` (images → (B, E)) with GroupFace's group-aware representation."""

    paper = "GroupFace: Learning Latent Groups and Constructing Group-based Representations for Face Recognition"
    year = 2020

    def __init__(
        self, backbone: nn.Module, embedding_size: int, groups: int = 32, lambda_group: float = 0.1,
        hidden_size: int = 256,
    ) -> None:
        super().__init__()
        if groups < 2:
            raise UsageError(f"groupface needs at least 2 groups, got {groups}")
        self.backbone = backbone
        self.groups = int(groups)
        self.lambda_group = float(lambda_group)
        size = int(embedding_size)
        self.instance = nn.Linear(size, size)
        self.group_fc = nn.Linear(size, size * self.groups)  # the K group-aware layers, stacked
        self.decision = nn.Sequential(
            nn.Linear(size, hidden_size), nn.BatchNorm1d(hidden_size), nn.ReLU(inplace=True),
            nn.Linear(hidden_size, self.groups),
        )
        self._aux: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feature = self.backbone(images)
        logits = self.decision(feature)
        probs = logits.float().softmax(dim=1)
        grouped = self.group_fc(feature).view(feature.shape[0], self.groups, -1)
        embedding = self.instance(feature) + torch.einsum("bk,bke->be", probs.to(grouped.dtype), grouped)
        if self.training:
            labels = self_distributed_labels(probs.detach())
            self._aux = self.lambda_group * F.cross_entropy(logits.float(), labels)
        else:
            self._aux = None
        return embedding

    def auxiliary_loss(self) -> torch.Tensor | None:
        """λ·L_GDN of the last training-mode forward (None after an eval-mode forward)."""
        return self._aux

    def group_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """p(G|x) for inspection (which latent group a face falls in)."""
        return self.decision(self.backbone(images)).float().softmax(dim=1)
