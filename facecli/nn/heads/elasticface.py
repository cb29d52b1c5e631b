"""ElasticFace: the margin of every sample is drawn afresh from N(m, σ) at every training step.

    ElasticFace-Arc:  logit_y = s · cos(θ_y + m_i)       m_i ~ N(m, σ)   (m = 0.5, σ = 0.05)
    ElasticFace-Cos:  logit_y = s · (cos θ_y - m_i)                       (m = 0.35, σ = 0.05)

The ``+`` variants hand the drawn margins out by how close each sample is to its class centre: the margins are
sorted, the batch is ranked by target cosine, and the sample *closest* to its centre (largest cos θ_y) receives the
*smallest* margin, the hardest sample the largest (Arc+: σ = 0.0175, Cos+: σ = 0.02). The released reference code
indexes the sorted margins with the sort permutation (a gather, ``margin[order]``), which gives row i the margin at
the rank position of another row; the paper's assignment is the inverse permutation (a scatter,
``margin_of_row[order] = sorted``), which is what this module does and what its tests check.

Randomness is reproducible and resumable: the margins of a step come from a private ``torch.Generator`` seeded from
the ``seed`` and ``draws`` buffers (and the DDP rank), so a checkpoint restores exactly the next margins. In eval
mode the mean margin m is used.
"""

from __future__ import annotations

import numpy as np
import torch

from facecli.nn import distributed
from facecli.nn.heads._angles import cos_add_angle
from facecli.nn.heads.base import HEADS, MarginHead

PAPER = "ElasticFace: Elastic Margin Loss for Deep Face Recognition, Boutros et al."
_PLUS_INCOMPATIBLE = "the + variant ranks the whole batch by target cosine, which Partial FC spreads over ranks"


class ElasticFace(MarginHead):
    """Shared machinery; the registered subclasses fix the margin form and the defaults."""

    paper = PAPER
    year = 2022
    margin_form: str = "arc"
    plus: bool = False

    seed: torch.Tensor
    draws: torch.Tensor

    def __init__(self, num_classes: int, s: float, m: float, std: float, seed: int) -> None:
        super().__init__(num_classes, s=s)
        self.m = float(m)
        self.std = float(std)
        self.register_buffer("seed", torch.tensor(int(seed), dtype=torch.int64))
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64))

    def draw_margins(self, step: int, count: int) -> torch.Tensor:
        """The ``count`` margins of training step ``step`` (float32, CPU): a pure function of seed, rank, step."""
        entropy = np.random.SeedSequence([int(self.seed), distributed.rank(), int(step)]).generate_state(1)[0]
        generator = torch.Generator(device="cpu").manual_seed(int(entropy))
        return torch.normal(self.m, self.std, (count,), generator=generator)

    def sample_margins(self, cos_t: torch.Tensor) -> torch.Tensor:
        """Margins for the rows of ``cos_t``: drawn (training) or the mean m (eval); assigned by rank for ``+``."""
        if not self.training:
            return torch.full_like(cos_t, self.m)
        drawn = self.draw_margins(int(self.draws), cos_t.numel()).to(cos_t.device)
        self.draws += 1
        if not self.plus:
            return drawn
        ascending, _ = torch.sort(drawn)
        order = torch.argsort(cos_t.detach(), descending=True)  # order[r] = row with the r-th largest cosine
        assigned = torch.empty_like(ascending)
        assigned[order] = ascending  # scatter: the r-th closest sample gets the r-th smallest margin
        return assigned

    def target_logit(self, cos_t: torch.Tensor, norms_t: torch.Tensor | None) -> torch.Tensor:
        margins = self.sample_margins(cos_t).to(cos_t.dtype)
        if self.margin_form == "arc":
            return cos_add_angle(cos_t, margins)
        return cos_t - margins


@HEADS.register("elasticface-arc")
class ElasticFaceArc(ElasticFace):
    """ElasticFace-Arc: cos(θ + m_i), m_i ~ N(0.5, 0.05), s = 64."""

    def __init__(self, num_classes: int, s: float = 64.0, m: float = 0.5, std: float = 0.05, seed: int = 0) -> None:
        super().__init__(num_classes, s, m, std, seed)


@HEADS.register("elasticface-cos")
class ElasticFaceCos(ElasticFace):
    """ElasticFace-Cos: cos θ - m_i, m_i ~ N(0.35, 0.05), s = 64."""

    margin_form = "cos"

    def __init__(self, num_classes: int, s: float = 64.0, m: float = 0.35, std: float = 0.05, seed: int = 0) -> None:
        super().__init__(num_classes, s, m, std, seed)


@HEADS.register("elasticface-arc+")
class ElasticFaceArcPlus(ElasticFace):
    """ElasticFace-Arc+: sorted margins N(0.5, 0.0175) handed out by target-cosine rank, s = 64."""

    plus = True
    partial_fc_incompatible = _PLUS_INCOMPATIBLE

    def __init__(
        self, num_classes: int, s: float = 64.0, m: float = 0.5, std: float = 0.0175, seed: int = 0
    ) -> None:
        super().__init__(num_classes, s, m, std, seed)


@HEADS.register("elasticface-cos+")
class ElasticFaceCosPlus(ElasticFace):
    """ElasticFace-Cos+: sorted margins N(0.35, 0.02) handed out by target-cosine rank, s = 64."""

    margin_form = "cos"
    plus = True
    partial_fc_incompatible = _PLUS_INCOMPATIBLE

    def __init__(self, num_classes: int, s: float = 64.0, m: float = 0.35, std: float = 0.02, seed: int = 0) -> None:
        super().__init__(num_classes, s, m, std, seed)
