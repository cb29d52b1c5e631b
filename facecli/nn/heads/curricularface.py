"""CurricularFace: easy samples first, hard ones later, by re-weighting hard negatives with an adaptive t.

    target:         cos(θ_y + m)  (ArcFace, with its th/mm fallback)
    negative j:     cos θ_j                     if cos(θ_y + m) ≥ cos θ_j    (an easy negative)
                    cos θ_j · (t + cos θ_j)     otherwise                    (a hard negative)
    t ← α · mean_i(cos θ_{i,y_i}) + (1 - α) · t,   t₀ = 0, α = 0.01

Early in training the target cosines are small, t ≈ 0 and hard negatives are damped; as the model learns, t grows
and they are emphasised. ``t`` is a registered buffer (checkpointed, restored on ``--resume``); it is updated
before the hard negatives are re-weighted, at every training step, from the global batch under DDP.
"""

from __future__ import annotations

import torch

from facecli.nn import distributed
from facecli.nn.heads._angles import arc_margin, cos_add_angle
from facecli.nn.heads.base import HEADS, MarginHead


@HEADS.register("curricularface")
class CurricularFace(MarginHead):
    """CurricularFace with the paper's m = 0.5, s = 64, momentum α = 0.01."""

    paper = "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face Recognition, Huang et al."
    year = 2020
    partial_fc_incompatible = (
        "a negative is 'hard' by comparison with its row's target cosine, which Partial FC keeps on another rank"
    )

    t: torch.Tensor

    def __init__(self, num_classes: int, s: float = 64.0, m: float = 0.5, alpha: float = 0.01) -> None:
        super().__init__(num_classes, s=s)
        self.m = float(m)
        self.alpha = float(alpha)
        self.register_buffer("t", torch.zeros((), dtype=torch.float32))

    def target_logit(self, cos_t: torch.Tensor, norms_t: torch.Tensor | None) -> torch.Tensor:
        return arc_margin(cos_t, self.m)

    def non_target_logits(
        self, cosine: torch.Tensor, cos_t: torch.Tensor, new_t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        if self.training:
            self._update_t(cos_t)
        boundary = torch.full((cosine.shape[0],), float("inf"), device=cosine.device, dtype=cosine.dtype)
        boundary[rows] = cos_add_angle(cos_t.detach(), self.m)  # rows without a local target: nothing is hard
        hard = cosine > boundary[:, None]
        return torch.where(hard, cosine * (self.t + cosine), cosine)

    @torch.no_grad()
    def _update_t(self, cos_t: torch.Tensor) -> None:
        stats = torch.stack([cos_t.detach().float().sum(), cos_t.new_tensor(float(cos_t.numel()), dtype=torch.float32)])
        total, count = distributed.all_reduce_mean(stats)
        if count > 0:
            self.t.copy_(self.alpha * (total / count) + (1.0 - self.alpha) * self.t)
