"""The optimisers ``optim.name`` chooses from, by name (a registry, like the heads and LR schedules).

Each entry builds an optimiser over the trainer's parameter groups (each group carries its own ``lr`` and
``weight_decay``); adding one is one decorated function here. torch is imported when an optimiser is built, not
when the names are listed, so the CLI's help and the config checks stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from facecli.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from facecli.train.config import OptimConfig

#: builder(param_groups, optim config) → the optimiser.
OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum (arcface_torch's choice; weight decay per group)."""
    import torch

    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW with ``optim.betas`` (the fine-tuning default)."""
    import torch

    beta1, beta2 = cfg.betas
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(beta1, beta2))
