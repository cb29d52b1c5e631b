"""Gradient checkpointing for the deep backbones, with BatchNorm statistics updated once per step, not twice.

``torch.utils.checkpoint`` frees a block's activations after its forward pass and recomputes them during
backward. The recomputation runs the block's BatchNorm layers a second time in training mode, which would move
their running statistics twice per step (arcface_torch accepts that). Here the recomputation runs with every
BatchNorm's momentum at 0 and its batch counter restored afterwards, so a checkpointed run ends with the same
weights, gradients and running statistics as one without checkpointing; only memory and time differ.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Checkpointable:
    """Mixin of the backbones that can checkpoint their blocks: ``grad_checkpoint = True`` turns it on."""

    grad_checkpoint: bool = False


@contextlib.contextmanager
def _frozen_batchnorm(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` normalise with batch statistics but leave their running statistics alone."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def run_block(block: nn.Module, x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``block(x)``, checkpointed when ``enabled`` and gradients are being recorded in training mode."""
    if not (enabled and block.training and torch.is_grad_enabled()):
        return block(x)
    return checkpoint(block, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _frozen_batchnorm(block)))
