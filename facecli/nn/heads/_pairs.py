"""Pairwise distances and same-identity masks on a batch of embeddings (shared by the metric-learning losses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_distances(embeddings: torch.Tensor, squared: bool) -> torch.Tensor:
    """(B, B) Euclidean (or squared) distances between L2-normalised embeddings, float32, exact zeros on the diagonal.

    On the unit sphere ‖a - b‖² = 2 - 2 a·b; the square root gets a tiny floor so its gradient stays finite for
    identical embeddings. The Gram matrix is computed in float32 even under autocast: 2 - 2·a·b in bfloat16 loses
    every digit that separates two images of one person.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        unit = F.normalize(embeddings.float(), dim=1)
        squared_dist = (2.0 - 2.0 * unit @ unit.T).clamp(min=0.0)
    eye = torch.eye(len(unit), dtype=torch.bool, device=unit.device)
    squared_dist = squared_dist.masked_fill(eye, 0.0)
    if squared:
        return squared_dist
    return torch.sqrt(squared_dist.clamp(min=1e-12)).masked_fill(eye, 0.0)


def identity_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive, negative)`` boolean (B, B) masks: same identity (excluding the diagonal), other identity."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same
