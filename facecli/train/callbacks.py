"""Trainer callbacks: what happens around the steps (metrics file, TensorBoard, best.pt) lives here.

A callback implements any of the named stages below; the trainer calls them, on every rank, in this order:

- ``on_train_start(trainer)``: after setup, with ``trainer.step`` at 0 or at the resumed step, and
  ``trainer.initial_accuracy`` filled (the validation before the first step of a new run);
- ``on_validation_end(trainer, result)``: after each validation during training (rank 0), once the trainer has
  decided whether ``result`` is the best so far;
- ``on_step_end(trainer, metrics)``: after every optimiser step; ``metrics`` is read-only and complete: step,
  epoch, lr, loss, max_logit, ``logged`` (a row is due), samples_per_s on logged steps and ``val_NAME`` after a
  validation;
- ``on_train_end(trainer, summary)``: after the last checkpoint and model.pt are written.

The trainer computes everything a stage hands out before it calls the stage, and no callback reads what another
one writes, so the order of the callbacks does not matter (``tests/test_train_callbacks.py`` shuffles them).
Callbacks that write files check ``trainer.is_main``. The module imports neither torch nor numpy, so the CLI's
progress bar can be a callback without paying for them at start-up.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from facecli.fileio import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.tensorboard import SummaryWriter

    from facecli.train.trainer import Trainer
    from facecli.train.validation import ValidationResult

#: The stages, in the order the trainer reaches them in a run.
Stage = Literal["on_train_start", "on_validation_end", "on_step_end", "on_train_end"]
STAGES: tuple[Stage, ...] = get_args(Stage)


class Callback(Protocol):
    """The stages; subclasses inherit no-op defaults, and any object with some of these methods is a callback
    too (the trainer calls the ones it has)."""

    def on_train_start(self, trainer: Trainer) -> None:
        return None

    def on_validation_end(self, trainer: Trainer, result: ValidationResult) -> None:
        return None

    def on_step_end(self, trainer: Trainer, metrics: Mapping[str, Any]) -> None:
        return None

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        return None


class MetricsFile(Callback):
    """``RUN/metrics.csv``: one row per logged step (rewritten atomically; rows after a resumed step dropped)."""

    base_columns = ["step", "epoch", "loss", "lr", "samples_per_s"]

    def __init__(self, path: Path, val_names: list[str]) -> None:
        self.path = path
        self.columns = self.base_columns + [f"val_{n}" for n in val_names]
        self.rows: list[dict[str, Any]] = []

    def on_train_start(self, trainer: Trainer) -> None:
        """Rows of a resumed run up to its step; for a new run with validation, a step-0 row (before training)."""
        if trainer.is_main and self.path.is_file() and trainer.step > 0:
            with open(self.path, newline="", encoding="utf-8") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= trainer.step]
        if trainer.is_main and trainer.step == 0 and trainer.initial_accuracy:
            self._write({"step": 0, "epoch": 0.0, **{f"val_{k}": v for k, v in trainer.initial_accuracy.items()}})

    def on_step_end(self, trainer: Trainer, metrics: Mapping[str, Any]) -> None:
        if not trainer.is_main or not metrics.get("logged"):
            return
        self._write(metrics)

    def _write(self, metrics: Mapping[str, Any]) -> None:
        self.rows.append({k: _fmt(metrics.get(k)) for k in self.columns})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class TensorBoard(Callback):
    """TensorBoard event files in ``RUN/tensorboard`` (needs the optional ``tensorboard`` package)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.writer: SummaryWriter | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            trainer.warn("tensorboard=true but the tensorboard package is not installed (pip install tensorboard)")
            return
        self.writer = SummaryWriter(str(self.log_dir))

    def on_step_end(self, trainer: Trainer, metrics: Mapping[str, Any]) -> None:
        if self.writer is None or not metrics.get("logged"):
            return
        for key, value in metrics.items():
            if isinstance(value, float) and math.isfinite(value) and key not in ("step", "epoch"):
                self.writer.add_scalar(key, value, metrics["step"])

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()


class BestModel(Callback):
    """``RUN/best.pt``: the backbone at the best validation so far, which the trainer decides (``result.is_best``)."""

    def on_validation_end(self, trainer: Trainer, result: ValidationResult) -> None:
        if result.is_best and trainer.is_main:
            trainer.save_backbone_file("best.pt", {"val_accuracy": dict(result.accuracies), "step": result.step})
