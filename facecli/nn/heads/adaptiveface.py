"""AdaptiveFace's Adaptive Margin Softmax (AdaM-Softmax): every class learns its own CosFace margin.

    logit_y = s · (cos θ_y - m_y),    m_y a learnable parameter of class y
    loss    = CE + λ · L_m,           L_m = 1 - (1/C) Σ_c m_c

Left alone, learnable margins would shrink to 0 (that lowers the cross-entropy); L_m rewards large margins on
average, so classes with few samples, whose centres the cross-entropy moves little, keep large margins. Margins are
projected onto [0, 1] before every use. (The paper writes L_m = -(1/C) Σ m_c; the constant 1 changes no gradient
and keeps the logged loss positive.) The paper's other two parts (hard prototype mining and adaptive data
sampling) are sampling strategies, not part of this head.

Defaults: the paper's text does not fix s and λ; facecli uses the settings of the FaceX-Zoo re-implementation
(s = 30, λ = 70, margins initialised uniformly in [0.3, 0.4]). The margins are exempt from weight decay
(``no_weight_decay_parameters``): decay would add a pull towards 0 that the paper's loss does not have.
"""

from __future__ import annotations

import torch
from torch import nn

from facecli.nn.heads.base import HEADS, MarginHead


@HEADS.register("adaptiveface")
class AdaptiveFace(MarginHead):
    """Learnable per-class CosFace margins with the average-margin regulariser."""

    paper = "AdaptiveFace: Adaptive Margin and Sampling for Face Recognition, Liu et al."
    year = 2019
    partial_fc_incompatible = (
        "its margins are indexed by class, but under Partial FC the head sees column indices of a sampled shard"
    )

    def __init__(
        self,
        num_classes: int,
        s: float = 30.0,
        lambda_m: float = 70.0,
        margin_init_low: float = 0.3,
        margin_init_high: float = 0.4,
    ) -> None:
        super().__init__(num_classes, s=s)
        self.lambda_m = float(lambda_m)
        self.margins = nn.Parameter(torch.empty(self.num_classes).uniform_(margin_init_low, margin_init_high))

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        """CosFace with the margin of each row's class (the base hooks do not see the class, so this overrides)."""
        with torch.no_grad():
            self.margins.clamp_(0.0, 1.0)
        cosine = cosine.float()
        rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
        cols = labels[rows].long()
        logits = cosine.index_put((rows, cols), cosine[rows, cols] - self.margins[cols])
        return logits * self.s

    def regularizer(self, norms: torch.Tensor | None) -> torch.Tensor:
        return self.lambda_m * (1.0 - self.margins.mean())

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        return [self.margins]
