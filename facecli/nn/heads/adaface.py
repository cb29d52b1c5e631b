"""AdaFace: a margin that adapts to image quality, with the feature norm as the quality proxy.

    ẑ        = clip((‖f‖ - μ) / (σ + ε) · h, -1, 1)        μ, σ: EMA of the batch mean/std of the norms
    g_angle  = -m · ẑ,   g_add = m · ẑ + m
    logit_y  = s · (cos(clip(θ_y + g_angle, ε, π - ε)) - g_add)

Low-norm (low-quality) faces, ẑ → -1, get g_angle = +m and g_add = 0: exactly ArcFace's angular margin. High-norm
(high-quality) faces, ẑ → 1, get g_angle = -m and g_add = 2m: a CosFace-like additive margin (on a slightly reduced
angle). In between, the margin moves continuously from the one to the other. As in the official head, every cosine
(the non-target ones too) is clamped to [-1 + ε, 1 - ε], ε = 1e-3, before the margin. The norms are detached (no
gradient through the margin) and clipped to [0.001, 100]. μ and σ are registered buffers (``batch_mean``,
``batch_std``; initial 20 and 100 as in the official code) updated at every training step with μ ← α·mean +
(1-α)·μ, α = ``t_alpha``; under DDP the mean and the (unbiased) std are those of the global batch. A batch of one
norm has no std, so σ is then left unchanged.

Defaults (the official repository disagrees with itself): its ``head.py`` says m=0.4, h=0.333, t_alpha=1.0 (no EMA
at all), its ``config.py`` says m=0.5, h=0.0 (no adaptivity), t_alpha=0.01, and its published training scripts pass
``--m 0.4 --h 0.333`` on top of ``config.py``. facecli follows the paper and the published scripts, i.e. what the
released models were trained with: **m = 0.4, h = 0.333, t_alpha = 0.01** (the paper's EMA momentum 0.99).

As with MagFace, the raw embedding norm of an AdaFace model is a face-quality score (:attr:`quality_from_norm`).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from facecli.errors import UsageError
from facecli.nn import distributed
from facecli.nn.heads.base import HEADS, MarginHead


@HEADS.register("adaface")
class AdaFace(MarginHead):
    """AdaFace with m = 0.4, h = 0.333, s = 64, t_alpha = 0.01 (see the module docstring for why)."""

    paper = "AdaFace: Quality Adaptive Margin for Face Recognition, Kim et al."
    year = 2022
    #: The raw embedding norm is this model's face-quality score.
    quality_from_norm: ClassVar[bool] = True

    batch_mean: torch.Tensor
    batch_std: torch.Tensor

    def __init__(
        self, num_classes: int, s: float = 64.0, m: float = 0.4, h: float = 0.333, t_alpha: float = 0.01
    ) -> None:
        super().__init__(num_classes, s=s)
        if not 0.0 < t_alpha <= 1.0:
            raise UsageError(f"adaface t_alpha must be in (0, 1], got {t_alpha}")
        self.m = float(m)
        self.h = float(h)
        self.t_alpha = float(t_alpha)
        self.eps = 1e-3
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """ẑ for each norm, from the current statistics."""
        z = (norms - self.batch_mean) / (self.batch_std + self.eps) * self.h
        return z.clamp(-1.0, 1.0)

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        if norms is None:
            raise UsageError("adaface needs the raw embedding norms (forward(cosine, labels, norms))")
        # The statistics are taken over every row's norm (targets on other Partial FC ranks included).
        if self.training:
            self._update_statistics(norms.detach().float().clamp(0.001, 100.0))
        return super().forward(cosine, labels, norms)

    def target_logit(self, cos_t: torch.Tensor, norms_t: torch.Tensor | None) -> torch.Tensor:
        assert norms_t is not None
        z = self.margin_scaler(norms_t.detach().clamp(0.001, 100.0))
        theta = torch.acos(cos_t.clamp(-1.0 + self.eps, 1.0 - self.eps))
        theta_m = torch.clamp(theta - self.m * z, self.eps, math.pi - self.eps)
        return torch.cos(theta_m) - (self.m + self.m * z)

    def non_target_logits(
        self, cosine: torch.Tensor, cos_t: torch.Tensor, new_t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """The non-target cosines clamped to ±(1 - ε), as the official head clamps the whole cosine matrix."""
        return cosine.clamp(-1.0 + self.eps, 1.0 - self.eps)

    @torch.no_grad()
    def _update_statistics(self, norms: torch.Tensor) -> None:
        norms = norms.double()
        stats = torch.stack([norms.sum(), (norms * norms).sum(), norms.new_tensor(float(norms.numel()))])
        total, total_sq, count = distributed.all_reduce_mean(stats) * distributed.world_size()
        if count < 1:
            return
        mean = (total / count).float()
        self.batch_mean.copy_(self.t_alpha * mean + (1.0 - self.t_alpha) * self.batch_mean)
        if count >= 2:
            std = torch.sqrt(torch.clamp((total_sq - total * total / count) / (count - 1), min=0.0)).float()
            self.batch_std.copy_(self.t_alpha * std + (1.0 - self.t_alpha) * self.batch_std)
