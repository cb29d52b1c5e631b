"""CosFace / AM-Softmax (Wang et al. 2018): an additive cosine margin, target logit ``s·(cos θ - m)``."""

from __future__ import annotations

import torch

from facecli.nn.heads.base import HEADS, MarginHead


@HEADS.register("cosface")
class CosFace(MarginHead):
    paper = "CosFace: Large Margin Cosine Loss for Deep Face Recognition"
    year = 2018

    def __init__(self, num_classes: int, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(num_classes, s=s)
        self.m = float(m)

    def target_logit(self, cos_t: torch.Tensor, norms_t: torch.Tensor | None) -> torch.Tensor:
        return cos_t - self.m
