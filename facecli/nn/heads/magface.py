"""MagFace: the embedding's magnitude a = ‖f‖ learns to measure face quality.

    a      = clamp(‖f‖, l_a, u_a)
    m(a)   = (u_m - l_m) / (u_a - l_a) · (a - l_a) + l_m          (larger margin for larger norms)
    logit_y = s · cos(θ_y + m(a))                                 (ArcFace with a per-sample margin)
    loss   = CE + λ_g · mean g(a),   g(a) = 1/a + a / u_a²

The margin's gradient reaches the norm (pass the *raw* embedding norms with their graph as ``norms``), and g pulls
norms up; together they make ‖f‖ monotonic in recognisability, so the norm of a MagFace model's raw embedding is a
face-quality score (:attr:`quality_from_norm`).

The paper proves the optimal norm is unique only when λ_g is large enough. With g'(l_a) = 1/u_a² - 1/l_a² the
condition reads λ_g ≥ s · k · u_a² l_a² / (u_a² - l_a²), k = (u_m - l_m)/(u_a - l_a) the margin's slope (22.6 for
the defaults; the paper uses 35). A smaller λ_g is refused with a clear error instead of training silently wrong.

The official code defaults to the *easy margin* (keep cos θ where cos θ ≤ 0); ``easy_margin=False`` uses the
ArcFace ``th/mm`` fallback with the per-sample margin.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from facecli.errors import UsageError
from facecli.nn.heads._angles import arc_margin
from facecli.nn.heads.base import HEADS, MarginHead


def magface_lambda_lower_bound(s: float, l_a: float, u_a: float, l_m: float, u_m: float) -> float:
    """The smallest λ_g for which the MagFace loss has a unique optimal norm in [l_a, u_a]."""
    slope = (u_m - l_m) / (u_a - l_a)
    return s * slope * (u_a**2 * l_a**2) / (u_a**2 - l_a**2)


@HEADS.register("magface")
class MagFace(MarginHead):
    """MagFace with the official MS1M settings: s = 64, l_a = 10, u_a = 110, l_m = 0.45, u_m = 0.8, λ_g = 35."""

    paper = "MagFace: A Universal Representation for Face Recognition and Quality Assessment, Meng et al."
    year = 2021
    #: The raw embedding norm is this model's face-quality score.
    quality_from_norm: ClassVar[bool] = True

    def __init__(
        self,
        num_classes: int,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
        easy_margin: bool = True,
    ) -> None:
        super().__init__(num_classes, s=s)
        if not 0 < l_a < u_a:
            raise UsageError(f"magface needs 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        if not l_m < u_m:
            raise UsageError(f"magface needs l_m < u_m, got l_m={l_m}, u_m={u_m}")
        bound = magface_lambda_lower_bound(s, l_a, u_a, l_m, u_m)
        if lambda_g < bound:
            raise UsageError(
                f"magface lambda_g={lambda_g} is below its lower bound {bound:.4g} "
                f"(s·k·u_a²·l_a²/(u_a²-l_a²) for s={s}, l_a={l_a}, u_a={u_a}, l_m={l_m}, u_m={u_m}); "
                "below it the optimal feature norm is not unique and the norm stops measuring quality"
            )
        self.l_a, self.u_a, self.l_m, self.u_m = float(l_a), float(u_a), float(l_m), float(u_m)
        self.lambda_g = float(lambda_g)
        self.easy_margin = bool(easy_margin)

    def margin(self, norms: torch.Tensor) -> torch.Tensor:
        """m(a) for raw norms (clamped to [l_a, u_a] first)."""
        a = norms.clamp(self.l_a, self.u_a)
        return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m

    def target_logit(self, cos_t: torch.Tensor, norms_t: torch.Tensor | None) -> torch.Tensor:
        if norms_t is None:
            raise UsageError("magface needs the raw embedding norms (forward(cosine, labels, norms))")
        return arc_margin(cos_t, self.margin(norms_t), self.easy_margin)

    def regularizer(self, norms: torch.Tensor | None) -> torch.Tensor:
        if norms is None:
            raise UsageError("magface needs the raw embedding norms for its g(a) regulariser")
        a = norms.float().clamp(self.l_a, self.u_a)
        return self.lambda_g * (1.0 / a + a / self.u_a**2).mean()
