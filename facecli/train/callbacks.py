"""Trainer callbacks: what happens around the steps (metrics file, TensorBoard, validation) lives here.

A callback overrides any of ``on_train_start(trainer)``, ``on_step_end(trainer, metrics)`` and
``on_train_end(trainer, summary)``; ``metrics`` is a dict that earlier callbacks may extend (validation adds its
accuracies before the metrics file writes the row). The trainer calls them on every rank; callbacks that write
files check ``trainer.is_main``.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from facecli.fileio import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.tensorboard import SummaryWriter

    from facecli.train.trainer import Trainer


class Callback(Protocol):
    """The hooks; subclasses inherit no-op defaults, and any object with the three methods is a callback too (the
    CLI's progress bar is one, so that the CLI need not import torch to define it)."""

    def on_train_start(self, trainer: "Trainer") -> None:
        return None

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        return None

    def on_train_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        return None


class MetricsFile(Callback):
    """``RUN/metrics.csv``: one row per logged step (rewritten atomically; rows after a resumed step dropped)."""

    base_columns = ["step", "epoch", "loss", "lr", "samples_per_s"]

    def __init__(self, path: Path, val_names: list[str]) -> None:
        self.path = path
        self.columns = self.base_columns + [f"val_{n}" for n in val_names]
        self.rows: list[dict[str, Any]] = []

    def on_train_start(self, trainer: "Trainer") -> None:
        """Rows of a resumed run up to its step; for a new run with validation, a step-0 row (before training)."""
        if trainer.is_main and self.path.is_file() and trainer.step > 0:
            with open(self.path, newline="", encoding="utf-8") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= trainer.step]
        if trainer.is_main and trainer.step == 0 and trainer.initial_accuracy:
            self._write({"step": 0, "epoch": 0.0, **{f"val_{k}": v for k, v in trainer.initial_accuracy.items()}})

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        if not trainer.is_main or not metrics.get("logged"):
            return
        self._write(metrics)

    def _write(self, metrics: dict[str, Any]) -> None:
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

    def on_train_start(self, trainer: "Trainer") -> None:
        if not trainer.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            trainer.warn("tensorboard=true but the tensorboard package is not installed (pip install tensorboard)")
            return
        self.writer = SummaryWriter(str(self.log_dir))

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        if self.writer is None or not metrics.get("logged"):
            return
        for key, value in metrics.items():
            if isinstance(value, float) and math.isfinite(value) and key not in ("step", "epoch"):
                self.writer.add_scalar(key, value, metrics["step"])

    def on_train_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()


class Verification(Callback):
    """10-fold verification accuracy on ``.bin`` benchmarks every ``every`` steps and at the end; keeps best.pt.

    Embeddings are computed as insightface's ``verification.py`` does: the image and its mirror, the two
    embeddings summed before L2 normalisation (facecli's ``eval.verify`` with ``embeddings_flip``).
    """

    def __init__(self, bins: list[str], every: int, batch_size: int,
                 extra: dict[str, tuple[list, np.ndarray]] | None = None) -> None:
        """``bins``: ``.bin`` files; ``extra``: more sets by name, as (images: encoded bytes or RGB arrays, issame)."""
        from facecli.data.benchmarks import load_bin

        self.sets = {Path(b).stem: load_bin(b) for b in bins}
        self.sets.update(extra or {})
        self.every = every
        self.batch_size = batch_size
        self.best = -1.0
        self.last: dict[str, float] = {}

    @staticmethod
    def names(bins: list[str], extra: list[str] | None = None) -> list[str]:
        return [Path(b).stem for b in bins] + list(extra or [])

    def on_train_start(self, trainer: "Trainer") -> None:
        """At step 0, the accuracy before training: what a fine-tuned model has to beat."""
        self.best = float(trainer.resumed.get("best_accuracy", -1.0))
        if trainer.step == 0 and trainer.is_main:
            for name, (images, issame) in self.sets.items():
                trainer.initial_accuracy[name] = self.evaluate(trainer, images, issame)

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        final = trainer.step >= trainer.total_steps
        if not (final or (self.every > 0 and trainer.step % self.every == 0)):
            return
        if not trainer.is_main:
            return
        for name, (images, issame) in self.sets.items():
            acc = self.evaluate(trainer, images, issame)
            metrics[f"val_{name}"] = acc
            self.last[name] = acc
        metrics["logged"] = True
        mean_acc = float(np.mean(list(self.last.values())))
        if mean_acc > self.best:
            self.best = mean_acc
            trainer.best_accuracy = mean_acc
            trainer.save_backbone_file("best.pt", {"val_accuracy": dict(self.last), "step": trainer.step})

    @torch.no_grad()
    def evaluate(self, trainer: "Trainer", images: list, issame: np.ndarray) -> float:
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
