"""Angle arithmetic on cosines that stays finite at θ = 0 and θ = π (shared by the angular-margin heads).

``arccos`` and ``sqrt(1 - cos²)`` have infinite derivatives at cos = ±1, which a confident network reaches in
float16/bfloat16. Clamping the argument just inside the domain turns those points into zero-gradient plateaus
instead of NaN, while leaving every interior value unchanged.
"""

from __future__ import annotations

import math

import torch

#: How far inside [-1, 1] cosines are clamped before arccos/sqrt; tiny enough to be invisible in float32 logits.
DOMAIN_EPS = 1e-7


def safe_sine(cos: torch.Tensor) -> torch.Tensor:
    """sin θ from cos θ, with a finite gradient everywhere."""
    return torch.sqrt(torch.clamp(1.0 - cos * cos, min=DOMAIN_EPS * DOMAIN_EPS))


def safe_angle(cos: torch.Tensor) -> torch.Tensor:
    """θ = arccos(cos) in [0, π], with a finite gradient everywhere."""
    return torch.acos(torch.clamp(cos, -1.0 + DOMAIN_EPS, 1.0 - DOMAIN_EPS))


def cos_add_angle(cos: torch.Tensor, margin: torch.Tensor | float) -> torch.Tensor:
    """cos(θ + m) = cos θ cos m - sin θ sin m, with ``margin`` a float or a tensor broadcastable to ``cos``."""
    margin = torch.as_tensor(margin, dtype=cos.dtype, device=cos.device)
    return cos * torch.cos(margin) - safe_sine(cos) * torch.sin(margin)


def arc_margin(
    cos: torch.Tensor, margin: torch.Tensor | float, easy_margin: bool = False
) -> torch.Tensor:
    """ArcFace's target logit cos(θ + m) with its two guards against θ + m > π (where cos(θ + m) rises again).

    ``easy_margin``: apply the margin only where cos θ > 0 and keep cos θ elsewhere. Otherwise insightface's
    ``th``/``mm`` fallback: where θ > π - m use the CosFace-like ``cos θ - sin(π - m)·m`` so the logit keeps falling.
    """
    margin = torch.as_tensor(margin, dtype=cos.dtype, device=cos.device)
    shifted = cos_add_angle(cos, margin)
    if easy_margin:
        return torch.where(cos > 0, shifted, cos)
    threshold = torch.cos(math.pi - margin)
    fallback = cos - torch.sin(math.pi - margin) * margin
    return torch.where(cos > threshold, shifted, fallback)
