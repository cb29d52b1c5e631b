"""Validation during training: 10-fold verification accuracy on ``.bin`` benchmarks and held-out people.

The trainer owns one :class:`Validation` and asks it when a step is due; the accuracies go to the trainer, which
keeps the best so far (``Trainer.report_validation``) and hands a :class:`ValidationResult` to the callbacks.
Validation itself writes no file and changes no state other than the trainer's, so no callback depends on it
running first.

Embeddings are computed as insightface's ``verification.py`` does: the image and its mirror, the two embeddings
summed before L2 normalisation (facecli's ``eval.verify`` with ``embeddings_flip``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from facecli.train.trainer import Trainer

#: A validation set: its images (encoded bytes or RGB arrays, two per pair) and whether each pair is one person.
PairSet = tuple[list, np.ndarray]


@dataclass(frozen=True)
class ValidationResult:
    """One validation at ``step``: accuracy per set, their mean, and whether the mean is the best so far."""

    step: int
    accuracies: dict[str, float]
    mean: float
    is_best: bool


class Validation:
    """The verification sets of a run, evaluated every ``every`` steps and at the last step."""

    def __init__(self, bins: list[str], every: int, batch_size: int, extra: dict[str, PairSet] | None = None) -> None:
        """``bins``: ``.bin`` files (named by their stem); ``extra``: more sets by name (e.g. held-out people)."""
        from facecli.data.benchmarks import load_bin

        self.sets: dict[str, PairSet] = {Path(b).stem: load_bin(b) for b in bins}
        self.sets.update(extra or {})
        self.every = every
        self.batch_size = batch_size

    @property
    def names(self) -> list[str]:
        """The set names, in the order of the ``val_NAME`` metrics columns."""
        return list(self.sets)

    def due(self, step: int, total_steps: int) -> bool:
        return step >= total_steps or (self.every > 0 and step % self.every == 0)

    def run(self, trainer: Trainer) -> dict[str, float]:
        """The accuracy of the trainer's backbone on every set now."""
        return {name: self.evaluate(trainer, images, issame) for name, (images, issame) in self.sets.items()}

    @torch.no_grad()
    def evaluate(self, trainer: Trainer, images: list, issame: np.ndarray) -> float:
        from facecli.data.datasets import to_input
        from facecli.eval import verify
        from facecli.imageio import decode_image

        backbone = trainer.backbone
        was_training = backbone.training
        backbone.eval()
        plain, flipped = [], []
        started = time.perf_counter()
        for lo in range(0, len(images), self.batch_size):
            rgb = [b if isinstance(b, np.ndarray) else decode_image(b) for b in images[lo : lo + self.batch_size]]
            x = torch.stack([to_input(im) for im in rgb]).to(trainer.device)
            with trainer.autocast():
                plain.append(backbone(x).float().cpu())
                flipped.append(backbone(torch.flip(x, dims=[3])).float().cpu())
        backbone.train(was_training)
        result = verify(torch.cat(plain).numpy(), np.asarray(issame, dtype=bool),
                        embeddings_flip=torch.cat(flipped).numpy(), nfolds=10)
        trainer.detail(f"step {trainer.step}: verification on {len(issame)} pairs: {result.accuracy:.4f} "
                       f"({time.perf_counter() - started:.1f}s)")
        return float(result.accuracy)
