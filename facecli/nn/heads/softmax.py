"""Normalised softmax (NormFace, Wang et al. 2017): scaled cosine logits, no margin — the baseline of the family."""

from __future__ import annotations

from facecli.nn.heads.base import HEADS, MarginHead


@HEADS.register("softmax")
class SoftmaxHead(MarginHead):
    """``s·cos θ_j`` for every class; with Partial FC at rate 1.0 it is exactly the full softmax."""

    paper = "NormFace: L2 Hypersphere Embedding for Face Verification"
    year = 2017

    def __init__(self, num_classes: int, s: float = 64.0) -> None:
        super().__init__(num_classes, s=s)
