"""SphereFace / A-Softmax (Liu et al. 2017): a multiplicative angular margin ``ψ(θ) = (-1)^k cos(mθ) - 2k``.

``k = ⌊mθ/π⌋`` makes ψ monotonically decreasing on [0, π]. A margin of m=4 does not train from scratch, so the
paper blends the target logit with the plain one, ``(λ·cos θ + ψ(θ)) / (1 + λ)``, and anneals λ with the training
iteration as the official Caffe layer does: ``λ = max(λ_min, base·(1 + γ·iter)^(-power))`` with base 1000,
γ 0.12, power 1, λ_min 5. Caffe's ``MarginInnerProductLayer`` counts the forward pass before computing λ, so the
first training step already uses iter = 1 (λ = 1000/1.12 ≈ 892.9), and so does this head. The iteration counter is
a buffer, so ``--resume`` continues the annealing.

The logits are scaled by ``s`` on normalised features (as in the normalised SphereFace of later work) rather than
by the raw feature norm, so all heads share one scale convention.
"""

from __future__ import annotations

import math

import torch

from facecli.nn.heads._angles import safe_angle
from facecli.nn.heads.base import HEADS, MarginHead


def multiplicative_angular(cos_t: torch.Tensor, m: int) -> torch.Tensor:
    """ψ(θ) = (-1)^k cos(mθ) - 2k with k = ⌊mθ/π⌋."""
    theta = safe_angle(cos_t)
    k = torch.floor(m * theta / math.pi).clamp(0, m - 1).detach()
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * torch.cos(m * theta) - 2.0 * k


@HEADS.register("sphereface")
class SphereFace(MarginHead):
    paper = "SphereFace: Deep Hypersphere Embedding for Face Recognition"
    year = 2017

    def __init__(self, num_classes: int, s: float = 64.0, m: int = 4, lambda_base: float = 1000.0,
                 lambda_gamma: float = 0.12, lambda_power: float = 1.0, lambda_min: float = 5.0) -> None:
        super().__init__(num_classes, s=s)
        self.m = int(m)
        self.lambda_base, self.lambda_gamma = float(lambda_base), float(lambda_gamma)
        self.lambda_power, self.lambda_min = float(lambda_power), float(lambda_min)
        self.iteration: torch.Tensor
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> float:
        """λ at the current iteration count (a training forward counts itself first, as Caffe does)."""
        it = float(self.iteration.item())
        return max(self.lambda_min, self.lambda_base * (1.0 + self.lambda_gamma * it) ** (-self.lambda_power))

    def target_logit(self, cos_t: torch.Tensor, norms_t: torch.Tensor | None) -> torch.Tensor:
        if self.training:
            self.iteration += 1
        lam = self.current_lambda()
        return (lam * cos_t + multiplicative_angular(cos_t, self.m)) / (1.0 + lam)
