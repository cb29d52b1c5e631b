"""MV-Softmax: mis-classified-vector guided softmax. Negatives that beat the margin-adjusted target are emphasised.

    f      = cos θ_y - m            (margin_type "am", the paper's MV-AM-Softmax)
             cos(θ_y + m)           (margin_type "arc", MV-Arc-Softmax; ArcFace's th/mm fallback for θ + m > π)
    I_k    = 1 if cos θ_k > f  (sample is mis-classified w.r.t. class k), else 0
    logit_k = s · (t · cos θ_k + t - 1)   if I_k, else s · cos θ_k        (the adaptive variant, h = e^{s(t-1)(cos+1)})
    logit_y = s · f

t ≈ 1.2 is the paper's setting and trains well; t > 1.4 over-weights the mis-classified negatives so much that
training does **not converge**: keep 1.0 ≤ t ≤ 1.4 (t = 1 is the plain AM/Arc margin loss).
"""

from __future__ import annotations

import torch

from facecli.errors import UsageError
from facecli.nn.heads._angles import arc_margin
from facecli.nn.heads.base import HEADS, MarginHead


@HEADS.register("mv-softmax")
class MVSoftmax(MarginHead):
    """MV-AM-Softmax (default) or MV-Arc-Softmax, adaptive re-weighting; s = 32, m = 0.35, t = 1.2 from the paper."""

    paper = "Mis-classified Vector Guided Softmax Loss for Face Recognition (MV-Softmax), Wang et al."
    year = 2020
    partial_fc_incompatible = (
        "a negative is re-weighted by comparison with its row's target logit, which Partial FC keeps on another rank"
    )

    def __init__(
        self, num_classes: int, s: float = 32.0, m: float = 0.35, t: float = 1.2, margin_type: str = "am"
    ) -> None:
        super().__init__(num_classes, s=s)
        if margin_type not in ("am", "arc"):
            raise UsageError(f"mv-softmax margin_type must be 'am' or 'arc', got {margin_type!r}")
        if t < 1.0:
            raise UsageError(f"mv-softmax needs t >= 1 (t = 1 is the plain margin loss; 1.2 is the paper's), got {t}")
        self.m = float(m)
        self.t = float(t)
        self.margin_type = margin_type

    def target_logit(self, cos_t: torch.Tensor, norms_t: torch.Tensor | None) -> torch.Tensor:
        if self.margin_type == "am":
            return cos_t - self.m
        return arc_margin(cos_t, self.m)

    def non_target_logits(
        self, cosine: torch.Tensor, cos_t: torch.Tensor, new_t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        boundary = torch.full((cosine.shape[0],), float("inf"), device=cosine.device, dtype=cosine.dtype)
        boundary[rows] = new_t.detach()
        misclassified = cosine > boundary[:, None]
        return torch.where(misclassified, self.t * cosine + self.t - 1.0, cosine)
