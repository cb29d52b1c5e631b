"""Li-ArcFace, the loss of AirFace: the target logit is linear in the angle instead of its cosine.

    logit_j = s · (π - 2θ_j) / π            for every class j ≠ y
    logit_y = s · (π - 2(θ_y + m)) / π       for the target class

Being linear in θ, the target logit keeps decreasing for θ + m > π, so ArcFace's ``th``/``mm`` fallback is not
needed, and the gradient with respect to θ does not vanish near θ = 0 or π. Note that *all* logits, not only the
target, are mapped to the linear angle scale.
"""

from __future__ import annotations

import math

import torch

from facecli.nn.heads._angles import safe_angle
from facecli.nn.heads.base import HEADS, MarginHead


def linear_angle_logit(cos: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """(π - 2(θ + m)) / π: 1 at θ = 0, -1 at θ = π (for m = 0)."""
    return (math.pi - 2.0 * (safe_angle(cos) + margin)) / math.pi


@HEADS.register("airface")
class AirFace(MarginHead):
    """Li-ArcFace (AirFace), s = 64, m = 0.45 as in the paper."""

    paper = "AirFace: Lightweight and Efficient Model for Face Recognition (Li-ArcFace), Li et al."
    year = 2019

    def __init__(self, num_classes: int, s: float = 64.0, m: float = 0.45) -> None:
        super().__init__(num_classes, s=s)
        self.m = float(m)

    def target_logit(self, cos_t: torch.Tensor, norms_t: torch.Tensor | None) -> torch.Tensor:
        return linear_angle_logit(cos_t, self.m)

    def non_target_logits(
        self, cosine: torch.Tensor, cos_t: torch.Tensor, new_t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        return linear_angle_logit(cosine)
