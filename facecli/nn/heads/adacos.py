"""AdaCos: the cosine softmax without a margin whose scale s is set from the data instead of tuned.

Fixed AdaCos uses s = √2 · log(C - 1). Dynamic AdaCos re-estimates s at every training step from the batch:

    B_avg = (1/N) Σ_i Σ_{k ≠ y_i} exp(s_old · cos θ_{i,k})
    θ_med = median_i θ_{i,y_i}
    s     = log(B_avg) / cos(min(π/4, θ_med))

and the step's logits use the new s. The current s is a registered buffer (``scale``), so checkpoints and
``--resume`` restore it. The logits are multiplied by a copy of s, never by the buffer itself: the next training
forward overwrites the buffer, and a graph that still held it (two forwards, then one backward, as gradient
accumulation does) could not be differentiated. Under DDP the statistics are taken over the global batch (B_avg
averaged over ranks, the median over the gathered target angles), as the paper's batch is the whole mini-batch.
"""

from __future__ import annotations

import math

import torch

from facecli.errors import UsageError
from facecli.nn import distributed
from facecli.nn.heads._angles import safe_angle
from facecli.nn.heads.base import HEADS, MarginHead

PAPER = "AdaCos: Adaptively Scaling Cosine Logits for Effectively Learning Deep Face Representations, Zhang et al."


def fixed_adacos_scale(num_classes: int) -> float:
    """The paper's fixed scale √2 · log(C - 1)."""
    if num_classes < 3:
        raise UsageError(f"AdaCos needs at least 3 classes (its scale is √2·log(C-1)), got {num_classes}")
    return math.sqrt(2.0) * math.log(num_classes - 1)


@HEADS.register("adacos-fixed")
class FixedAdaCos(MarginHead):
    """Cosine logits with the fixed AdaCos scale √2·log(C-1); no margin, nothing adaptive."""

    paper = PAPER
    year = 2019

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes, s=fixed_adacos_scale(num_classes))


@HEADS.register("adacos")
class AdaCos(MarginHead):
    """Dynamic AdaCos: s starts at √2·log(C-1) and follows the median target angle of each training batch."""

    paper = PAPER
    year = 2019
    partial_fc_incompatible = (
        "dynamic AdaCos sums exp(s·cos) over all non-target classes of every row, but Partial FC holds only a "
        "sampled shard of the classes on each rank; use adacos-fixed with Partial FC"
    )

    scale: torch.Tensor

    def __init__(self, num_classes: int, theta_zero: float = math.pi / 4) -> None:
        super().__init__(num_classes, s=fixed_adacos_scale(num_classes))
        self.theta_zero = float(theta_zero)
        self.register_buffer("scale", torch.tensor(self.s, dtype=torch.float32))

    def scale_logits(
        self, logits: torch.Tensor, cos_t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        if self.training and rows.numel() > 0:
            self._update_scale(logits, cos_t, rows, cols)
        return logits * self.scale.detach().clone().to(logits.dtype)

    @torch.no_grad()
    def _update_scale(self, cosine: torch.Tensor, cos_t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
        exp = torch.exp(self.scale * cosine[rows].float())
        exp[torch.arange(rows.numel(), device=exp.device), cols] = 0.0  # non-target classes only
        b_avg = distributed.all_reduce_mean(exp.sum(dim=1).mean())
        theta_t = distributed.all_gather_cat(safe_angle(cos_t.float()))
        theta_med = torch.median(theta_t)  # the lower median for an even count, as torch.median defines it
        cap = torch.tensor(self.theta_zero, device=theta_med.device)
        self.scale.copy_(torch.log(b_avg) / torch.cos(torch.minimum(cap, theta_med)))
