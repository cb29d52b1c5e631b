"""Sub-center ArcFace: K centres per identity; a face only has to be close to the nearest one.

The classifier allocates K × C centres and max-pools the cosines over each class's K sub-centres (it reads
:attr:`num_subcenters`), so by the time the cosine matrix reaches this head it is an ordinary (B, C) matrix and the
margin is ArcFace's. Noisy faces gather around non-dominant sub-centres, which is what ``facecli clean`` uses to
list them (see :mod:`facecli.train.clean`).
"""

from __future__ import annotations

import torch

from facecli.errors import UsageError
from facecli.nn.heads._angles import arc_margin
from facecli.nn.heads.base import HEADS, MarginHead


@HEADS.register("subcenter-arcface")
class SubCenterArcFace(MarginHead):
    """ArcFace on max-pooled sub-centre cosines; K = 3, s = 64, m = 0.5 as in the paper."""

    paper = "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web Faces, Deng et al."
    year = 2020

    def __init__(
        self, num_classes: int, s: float = 64.0, m: float = 0.5, k: int = 3, easy_margin: bool = False
    ) -> None:
        super().__init__(num_classes, s=s)
        if int(k) < 1:
            raise UsageError(f"subcenter-arcface needs k >= 1 sub-centres per class, got {k}")
        self.m = float(m)
        self.easy_margin = bool(easy_margin)
        self.num_subcenters = int(k)

    def target_logit(self, cos_t: torch.Tensor, norms_t: torch.Tensor | None) -> torch.Tensor:
        return arc_margin(cos_t, self.m, self.easy_margin)

