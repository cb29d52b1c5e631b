"""ArcFace (Deng et al. 2019): an additive angular margin, target logit ``s·cos(θ + m)``.

``cos(θ+m)`` stops decreasing once ``θ + m > π``; like insightface's original implementation the target logit then
falls back to the CosFace-like ``cos θ - m·sin m`` (``th = cos(π - m)``, ``mm = sin(π - m)·m``), which keeps the
target logit monotonic in θ. ``easy_margin`` instead applies the margin only where ``cos θ > 0``.
"""

from __future__ import annotations

import torch

from facecli.nn.heads._angles import arc_margin
from facecli.nn.heads.base import HEADS, MarginHead


@HEADS.register("arcface")
class ArcFace(MarginHead):
    paper = "ArcFace: Additive Angular Margin Loss for Deep Face Recognition"
    year = 2019

    def __init__(self, num_classes: int, s: float = 64.0, m: float = 0.5, easy_margin: bool = False) -> None:
        super().__init__(num_classes, s=s)
        self.m = float(m)
        self.easy_margin = bool(easy_margin)

    def target_logit(self, cos_t: torch.Tensor, norms_t: torch.Tensor | None) -> torch.Tensor:
        return arc_margin(cos_t, self.m, self.easy_margin)
