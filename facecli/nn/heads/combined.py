"""The combined margin of insightface/arcface_torch: target logit ``s·(cos(m1·θ + m2) - m3)``.

(m1, m2, m3) = (1, 0.5, 0) is ArcFace, (1, 0, 0.35) CosFace, (1.35, 0, 0) a SphereFace-like multiplicative margin;
insightface's MS1M recipes also used (1, 0.3, 0.2). ``interclass_filtering_threshold`` > 0 zeroes the non-target
cosines above it (arcface_torch's filter against label noise: "dirty" negatives) in every row, as arcface_torch
does: rows labelled -1 (their target is held by another Partial FC rank) have only negatives here and are filtered
whole; in the other rows the target column is kept.

Gradient: true derivative of the formula. arcface_torch applies its ArcFace branch in-place under ``no_grad``, so
its gradient ignores the margin's derivative (a straight-through estimate); ``straight_through=True`` reproduces
that exactly.
"""

from __future__ import annotations

import torch

from facecli.nn.heads._angles import safe_angle
from facecli.nn.heads.base import HEADS, MarginHead


@HEADS.register("combined")
class CombinedMargin(MarginHead):
    paper = "ArcFace: Additive Angular Margin Loss for Deep Face Recognition (combined margin, Sec. 3.3)"
    year = 2019

    def __init__(self, num_classes: int, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                 interclass_filtering_threshold: float = 0.0, straight_through: bool = False) -> None:
        super().__init__(num_classes, s=s)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.interclass_filtering_threshold = float(interclass_filtering_threshold)
        self.straight_through = bool(straight_through)

    def target_logit(self, cos_t: torch.Tensor, norms_t: torch.Tensor | None) -> torch.Tensor:
        theta = safe_angle(cos_t)
        target = torch.cos(self.m1 * theta + self.m2) - self.m3
        if self.straight_through:
            return cos_t + (target - cos_t).detach()
        return target

    def non_target_logits(self, cosine: torch.Tensor, cos_t: torch.Tensor, new_t: torch.Tensor,
                          rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        if self.interclass_filtering_threshold <= 0:
            return cosine
        dirty = cosine > self.interclass_filtering_threshold
        dirty[rows, cols] = False
        return cosine.masked_fill(dirty, 0.0)
