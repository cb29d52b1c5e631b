"""Learning-rate schedules as pure functions of the optimiser step: nothing to save, so resume is exact.

``poly`` is arcface_torch's PolyScheduler: linear warm-up ``base · t/warmup`` for ``t < warmup_steps``, then
``base · (1 - (t - warmup)/(total - warmup))^power`` with power 2. ``cosine`` decays to ``min_lr`` after the
warm-up, ``step`` multiplies by ``gamma`` at each milestone, ``constant`` keeps the base LR after the warm-up.
"""

from __future__ import annotations

import math

from facecli.registry import Registry

#: factor(step, total, cfg) → multiplier of the base learning rate at optimiser step ``step`` (0-based).
SCHEDULES: Registry[float] = Registry("LR schedule")


def _warmup(step: int, warmup: int) -> float | None:
    return step / warmup if step < warmup else None


@SCHEDULES.register("poly")
def poly(step: int, total: int, warmup_steps: int = 0, power: float = 2.0, min_lr: float = 0.0, **_: object) -> float:
    warm = _warmup(step, warmup_steps)
    if warm is not None:
        return warm
    span = max(1, total - warmup_steps)
    return max(0.0, 1.0 - (step - warmup_steps) / span) ** power


@SCHEDULES.register("cosine")
def cosine(step: int, total: int, warmup_steps: int = 0, min_lr: float = 0.0, **_: object) -> float:
    """Returns a factor; ``min_lr`` is a fraction of the base LR here (0 = decay to zero)."""
    warm = _warmup(step, warmup_steps)
    if warm is not None:
        return warm
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return min_lr + (1.0 - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("step")
def step_decay(step: int, total: int, warmup_steps: int = 0, milestones: tuple[int, ...] = (), gamma: float = 0.1,
               **_: object) -> float:
    warm = _warmup(step, warmup_steps)
    if warm is not None:
        return warm
    return gamma ** sum(1 for m in milestones if step >= m)


@SCHEDULES.register("constant")
def constant(step: int, total: int, warmup_steps: int = 0, **_: object) -> float:
    warm = _warmup(step, warmup_steps)
    return 1.0 if warm is None else warm


def lr_factor(name: str, step: int, total: int, **options: object) -> float:
    """The multiplier of every parameter group's base LR at ``step``."""
    return SCHEDULES.get(name)(step, total, **options)
