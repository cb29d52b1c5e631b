"""The training loop: one process on a CPU or GPU, or many under ``torchrun`` (DDP: nccl on GPU, gloo on CPU).

The trainer does the step (forward, backward, non-finite guard, clipping, optimiser, LR) and owns what the run's
state depends on: the full checkpoints (periodic, final, and the state before a non-finite step), written before
any callback sees the step so that a callback that stops the run never loses it, and validation with the best
accuracy so far. What only observes the run — metrics.csv, TensorBoard, best.pt, the progress display — is a
callback at a named stage (``facecli.train.callbacks``). Everything that decides the numbers — data order and
flips, LR, RNG states, optimiser and scaler — is either a function of the step or saved in the checkpoint, which
is what makes ``--resume`` continue bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from facecli.data.augment import Augmenter
from facecli.data.datasets import FaceDataset, collate, open_dataset
from facecli.errors import FacecliError, UsageError
from facecli.fileio import atomic_write_text
from facecli.nn import distributed
from facecli.nn.heads import EmbeddingLoss
from facecli.train import acceleration, checkpoint
from facecli.train.callbacks import BestModel, Callback, MetricsFile, Stage, TensorBoard
from facecli.train.config import TrainConfig, build_config, check_resume_changes, read_config_file, to_toml
from facecli.train.finetune import freeze_batchnorm, unfreeze_last
from facecli.train.heldout import split_people
from facecli.train.model import FaceModel, build_model
from facecli.train.optimizers import OPTIMIZERS
from facecli.train.sampling import EpochPlan, ResumableBatchSampler
from facecli.train.schedule import lr_factor
from facecli.train.validation import PairSet, Validation, ValidationResult

CONFIG_FILE = "config.toml"
#: The validation set name (metrics column ``val_heldout_people``) of ``data.val_split``.
HELDOUT = "heldout_people"


class NonFiniteError(FacecliError):
    """The loss or a gradient became NaN/Inf; the message says where and which file holds the state before."""


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every floating-point value of ``tensors`` is finite.

    One L2 norm per tensor (the fastest reduction ``_foreach_norm`` has) and one sync; only when a norm is not
    finite, which huge but finite values can also cause by overflow, is the exact max-abs check run.
    """
    floats = [t.detach() for t in tensors if t.is_floating_point()]
    if not floats:
        return True
    for order in (2.0, float("inf")):
        if bool(torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(floats, order)])).all()):
            return True
    return False


def init_distributed() -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def pick_device(name: str) -> torch.device:
    """``auto``: this process's GPU (``LOCAL_RANK`` under torchrun) when there is one, else the CPU."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {name} requested but no CUDA GPU is available")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name == "auto":
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None


def resolve_run_config(run_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The config of an existing run (``RUN/config.toml``) with ``overrides`` applied, for ``--resume``."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a facecli run (no {CONFIG_FILE}); nothing to resume")
    stored = read_config_file(path)
    cfg = build_config(stored, overrides, {"out": str(run_dir)})
    check_resume_changes(build_config(stored, {"out": str(run_dir)}), cfg)
    return cfg


class _LogWindow:
    """The loss and speed over the steps since the last logged one: what a metrics row reports."""

    def __init__(self, samples_per_step: int) -> None:
        self.samples_per_step = samples_per_step
        self.loss, self.steps, self.started = 0.0, 0, time.perf_counter()
        #: The mean loss of the last logged window (the summary's ``final_loss``).
        self.last_loss = float("nan")

    def add(self, loss: float, logged: bool) -> dict[str, float]:
        """Count a step; on a logged step, its row's ``loss`` (the window's mean) and ``samples_per_s``."""
        self.loss += loss
        self.steps += 1
        if not logged:
            return {}
        elapsed = time.perf_counter() - self.started
        self.last_loss = self.loss / self.steps
        row = {"loss": self.last_loss, "samples_per_s": self.samples_per_step * self.steps / max(elapsed, 1e-9)}
        self.loss, self.steps, self.started = 0.0, 0, time.perf_counter()
        return row


class Trainer:
    """Trains ``cfg``; ``resume=True`` continues from ``cfg.out/checkpoint.pt``.

    The trainer owns the run's state and every decision about it: the steps, the checkpoints that make resume
    exact, validation and the best accuracy so far. Callbacks (``facecli.train.callbacks``) observe it at named
    stages; the built-in ones write metrics.csv, TensorBoard events and best.pt.
    """

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[Callback] | None = None, resume: bool = False,
                 log: Callable[[str], None] | None = None, detail: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.resume = resume
        self.extra_callbacks = list(callbacks or [])
        self._log = log or (lambda msg: None)
        self._detail = detail or (lambda msg: None)
        self.run_dir = Path(cfg.out)
        self.step = 0
        #: The best mean validation accuracy of the run so far (-1: none yet); see :meth:`report_validation`.
        self.best_accuracy = -1.0
        self.skipped_batches = 0
        #: Validation accuracy per set before the first step of a new run (what a fine-tuned model has to beat).
        self.initial_accuracy: dict[str, float] = {}

    # -- small services for callbacks -------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        if self.is_main:
            self._log(f"warning: {message}")

    def detail(self, message: str) -> None:
        if self.is_main:
            self._detail(message)

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    def autocast(self) -> contextlib.AbstractContextManager:
        return acceleration.autocast(self.cfg.amp, self.device)

    def call_hook(self, stage: Stage, *args: Any) -> None:
        """Call ``stage`` of every callback that has it."""
        for callback in self.callbacks:
            hook = getattr(callback, stage, None)
            if hook is not None:
                hook(self, *args)

    def report_validation(self, accuracies: dict[str, float]) -> ValidationResult:
        """Record a validation of the current step: the trainer alone decides whether it is the best so far."""
        mean = float(np.mean(list(accuracies.values())))
        is_best = mean > self.best_accuracy
        if is_best:
            self.best_accuracy = mean
        return ValidationResult(self.step, dict(accuracies), mean, is_best)

    # -- setup --------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        init_distributed()
        self.world_size, self.rank = distributed.world_size(), distributed.rank()
        self.is_main = self.rank == 0
        self.device = pick_device(cfg.device)
        acceleration.check_precision(cfg.amp, self.device)
        acceleration.tune_device(self.device)
        heldout = self._open_data()
        torch.manual_seed(cfg.seed)
        if cfg.augment.names:
            self.dataset.augment = Augmenter(cfg.augment)
        # the teacher sees the clean image; without augmentation that is the training image itself, so the
        # loader converts and ships it once
        self.dataset.clean_view = cfg.model.distill > 0 and bool(cfg.augment.names)
        self._build_model()
        self.pk = int(getattr(self.model.head, "samples_per_identity", 0)) if isinstance(
            self.model.head, EmbeddingLoss) else 0
        self.plan = EpochPlan(self.dataset.labels, cfg.batch_size, self.world_size, self.rank, cfg.seed,
                              cfg.data.flip, pk=self.pk, augment=bool(cfg.augment.names))
        micro_per_epoch = self.plan.batches_per_epoch
        if cfg.epochs > 0:
            self.total_steps = max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.optim.accumulate))
        else:
            self.total_steps = cfg.steps
        self._build_optimizers()
        self._wrap_ddp()
        self._prepare_run_dir()
        self.validation = (Validation(cfg.data.val, cfg.data.val_every, cfg.data.val_batch_size, heldout)
                           if cfg.data.val or heldout else None)
        self.callbacks: list[Callback] = [*self._builtin_callbacks(), *self.extra_callbacks]

    def _open_data(self) -> dict[str, PairSet]:
        """The training data (less the held-out people of ``data.val_split``); returns the held-out pairs."""
        cfg = self.cfg
        self.dataset: FaceDataset = open_dataset(cfg.data.path)
        heldout: dict[str, PairSet] = {}
        if cfg.data.val_split > 0:
            self.dataset, heldout[HELDOUT] = split_people(self.dataset, cfg.data.val_split, cfg.seed)
            self.detail(f"held out {cfg.data.val_split:g} of the people: {len(heldout[HELDOUT][1])} validation pairs; "
                        f"training on {self.dataset.num_classes} people, {len(self.dataset)} photos")
        identities = len(set(self.dataset.labels.tolist()))
        if identities < 2:  # softmax over one class: loss 0 from the first step, nothing is learned
            raise UsageError(f"{cfg.data.path} holds {identities} identity to train on; training a face model needs "
                             "at least 2 (every loss here compares identities)")
        return heldout

    def _build_model(self) -> None:
        """The model on its device, the distillation teacher, and which backbone layers train."""
        cfg = self.cfg
        model, self.info = build_model(cfg, self.dataset.num_classes)
        # distillation's teacher: the initial backbone, frozen (rebuilt from --init on resume, never saved)
        self.teacher = copy.deepcopy(model.backbone).eval().requires_grad_(False) if cfg.model.distill > 0 else None
        trainable, total = unfreeze_last(model.backbone, cfg.model.unfreeze)
        if trainable < total:
            self.detail(f"training the last {trainable:,} of the backbone's {total:,} parameters "
                        f"(model.unfreeze={cfg.model.unfreeze:g})")
        self.model: FaceModel = model.to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device)

    def _build_optimizers(self) -> None:
        cfg = self.cfg
        self.optimizer = OPTIMIZERS.get(cfg.optim.name)(self._param_groups(), cfg.optim)
        self.aux_optimizer = None
        if self.model.aux is not None and any(True for _ in self.model.aux.parameters()):
            self.aux_optimizer = torch.optim.SGD(self.model.aux.parameters(), lr=cfg.head.aux_lr)
        self.scaler = acceleration.grad_scaler(cfg.amp, self.device)
        acceleration.prepare_backbone(self.model.backbone, cfg)

    def _param_groups(self) -> list[dict[str, Any]]:
        """Backbone, head parameters without weight decay (if any) and the rest of the head with the centres."""
        cfg = self.cfg
        head_wd = cfg.head.weight_decay if cfg.head.weight_decay >= 0 else cfg.optim.weight_decay
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        undecayed = {id(p) for p in self.model.head.no_weight_decay_parameters()}
        head = [p for p in self.model.head.parameters() if p.requires_grad and id(p) not in undecayed]
        head_no_decay = [p for p in self.model.head.parameters() if p.requires_grad and id(p) in undecayed]
        if self.model.classifier is not None:
            head = list(self.model.classifier.parameters()) + head
        groups = [{"params": backbone, "base_lr": cfg.optim.lr * cfg.model.backbone_lr_scale,
                   "weight_decay": cfg.optim.weight_decay, "name": "backbone"}]
        if head_no_decay:
            groups.append({"params": head_no_decay, "base_lr": cfg.optim.lr, "weight_decay": 0.0,
                           "name": "head-no-decay"})
        if head:  # last: its LR is the one logged
            groups.append({"params": head, "base_lr": cfg.optim.lr, "weight_decay": head_wd, "name": "head"})
        for g in groups:
            g["lr"] = g["base_lr"]
        return groups

    def _wrap_ddp(self) -> None:
        """Under torchrun, DDP over the model; a sharded classifier's centres stay out of its averaging."""
        self.ddp_model: nn.Module = self.model
        if self.world_size == 1:
            return
        classifier = self.model.classifier
        if classifier is not None and classifier.sharded:
            ignore = [f"classifier.{n}" for n, _ in classifier.named_parameters()]
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, ignore)
        self.ddp_model = nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.cfg.model.freeze_backbone_steps > 0,
        )

    def _builtin_callbacks(self) -> list[Callback]:
        cfg = self.cfg
        names = self.validation.names if self.validation is not None else []
        callbacks: list[Callback] = [MetricsFile(self.run_dir / "metrics.csv", names), BestModel()]
        if cfg.tensorboard:
            callbacks.append(TensorBoard(self.run_dir / "tensorboard"))
        return callbacks

    def _prepare_run_dir(self) -> None:
        ckpt = self.run_dir / checkpoint.CHECKPOINT
        if self.resume:
            self._load(ckpt)
        elif ckpt.is_file():
            raise UsageError(f"{self.run_dir} already holds a run; continue it with --resume or choose another --out")
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / CONFIG_FILE, to_toml(self.cfg))

    # -- checkpoints --------------------------------------------------------------------------------------------
    def _state(self, rank_only: bool) -> dict[str, Any]:
        m = self.model
        state: dict[str, Any] = {
            "format": checkpoint.FORMAT, "version": 1, "step": self.step, "world_size": self.world_size,
            "rank": self.rank, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": checkpoint.rng_state(), "sampler": {"position": self.step * self.cfg.optim.accumulate},
            "classifier": m.classifier.state_dict() if m.classifier is not None else {},
            "head": m.head.state_dict(),
        }
        if not rank_only:
            state.update({
                "config": self.cfg.to_dict(), "info": self.info, "backbone": m.backbone.state_dict(),
                "aux": m.aux.state_dict() if m.aux is not None else {},
                "aux_optimizer": self.aux_optimizer.state_dict() if self.aux_optimizer else {},
                "best_accuracy": self.best_accuracy, "skipped_batches": self.skipped_batches,
            })
        return state

    def save_checkpoint(self, name: str = checkpoint.CHECKPOINT) -> Path:
        """Full state of every rank (rank 0: ``name``; rank r: ``name`` with ``.rank{r}`` before the suffix)."""
        path = self.run_dir / name
        if self.rank > 0:
            path = path.with_name(f"{path.stem}.rank{self.rank}{path.suffix}")
        checkpoint.save(path, self._state(rank_only=self.rank > 0))
        return path

    def save_backbone_file(self, name: str, extra: dict[str, Any] | None = None) -> Path:
        return checkpoint.save_backbone(self.run_dir / name, self.model.backbone.state_dict(), self.info,
                                        {"step": self.step, **(extra or {})})

    def _load(self, path: Path) -> None:
        main = checkpoint.load(path)
        classifier = self.model.classifier
        if main["world_size"] != self.world_size and classifier is not None and classifier.sharded:
            raise UsageError(f"{path} was written by {main['world_size']} process(es) with Partial FC; "
                             f"resume it with the same number of processes (now {self.world_size})")
        own = main if self.rank == 0 else checkpoint.load(checkpoint.rank_file(self.run_dir, self.rank))
        m = self.model
        try:
            m.backbone.load_state_dict(main["backbone"])
            if m.classifier is not None:
                m.classifier.load_state_dict(own["classifier"])
            m.head.load_state_dict(own["head"])
            if m.aux is not None:
                m.aux.load_state_dict(main["aux"])
        except RuntimeError as exc:  # e.g. data.path now names data with another number of classes
            first = str(exc).strip().splitlines()[-1].strip()
            raise UsageError(f"{path} does not fit this model and data ({first})") from None
        if self.aux_optimizer is not None:
            self.aux_optimizer.load_state_dict(main["aux_optimizer"])
        self.optimizer.load_state_dict(own["optimizer"])
        self.scaler.load_state_dict(own["scaler"])
        checkpoint.set_rng_state(own["rng"])
        self.step = int(main["step"])
        self.best_accuracy = float(main.get("best_accuracy", -1.0))
        self.skipped_batches = int(main.get("skipped_batches", 0))

    # -- the loop -----------------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        sampler = ResumableBatchSampler(self.plan, start=self.step * self.cfg.optim.accumulate)
        workers = self.cfg.data.workers
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
            pin_memory=self.device.type == "cuda", generator=torch.Generator(),
            prefetch_factor=4 if workers > 0 else None,
        )
        return iter(loader)

    def _set_lr(self) -> float:
        s = self.cfg.schedule
        factor = lr_factor(s.name, self.step, self.total_steps, warmup_steps=s.warmup_steps, power=s.power,
                           min_lr=s.min_lr, milestones=tuple(s.milestones), gamma=s.gamma)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return self.optimizer.param_groups[-1]["lr"]

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; returns the summary (also what ``--json`` prints)."""
        self.setup()
        if self.validation is not None and self.step == 0 and self.is_main:
            self.initial_accuracy = self.validation.run(self)
        self.call_hook("on_train_start")
        batches = self._batches()
        window = _LogWindow(self.cfg.batch_size * self.world_size * self.cfg.optim.accumulate)
        started, start_step = time.perf_counter(), self.step
        try:
            while self.step < self.total_steps:
                self._step(batches, window)
        finally:
            del batches
        self.save_checkpoint()
        if self.is_main:
            self.save_backbone_file("model.pt")
        elapsed = time.perf_counter() - started
        summary = {
            "run": str(self.run_dir), "steps": self.step, "total_steps": self.total_steps,
            "epochs": self.step * self.cfg.optim.accumulate / self.plan.batches_per_epoch,
            "final_loss": window.last_loss,
            "samples_per_s": window.samples_per_step * (self.step - start_step) / max(elapsed, 1e-9),
            "elapsed_s": elapsed, "world_size": self.world_size, "num_classes": self.dataset.num_classes,
            "num_images": len(self.dataset), "skipped_batches": self.skipped_batches,
            "best_accuracy": self.best_accuracy if self.best_accuracy >= 0 else None,
            "initial_accuracy": dict(self.initial_accuracy) or None,
            "model": str(self.run_dir / "model.pt"), "checkpoint": str(self.run_dir / checkpoint.CHECKPOINT),
        }
        self.call_hook("on_train_end", summary)
        return summary

    def _step(self, batches: Iterator, window: _LogWindow) -> None:
        """One optimiser step, then what follows it: the periodic checkpoint, validation, the callbacks."""
        cfg = self.cfg
        loss, max_logit, lr = self._train_step(batches, cfg.optim.accumulate)
        self.step += 1
        logged = self.step % cfg.log_every == 0 or self.step == self.total_steps
        epoch = self.step * cfg.optim.accumulate / self.plan.batches_per_epoch
        metrics: dict[str, Any] = {"step": self.step, "epoch": epoch, "lr": lr, "loss": loss, "logged": logged,
                                   "max_logit": max_logit}
        metrics.update(window.add(loss, logged))
        if self.step % cfg.checkpoint_every == 0 and self.step < self.total_steps:
            self.save_checkpoint()
        result = self._validate()
        if result is not None:
            metrics.update({f"val_{name}": acc for name, acc in result.accuracies.items()}, logged=True)
            self.call_hook("on_validation_end", result)
        self.call_hook("on_step_end", MappingProxyType(metrics))

    def _validate(self) -> ValidationResult | None:
        """Validation on rank 0 when it is due (every ``data.val_every`` steps and at the last step)."""
        if self.validation is None or not self.is_main or not self.validation.due(self.step, self.total_steps):
            return None
        return self.report_validation(self.validation.run(self))

    def _train_step(self, batches: Iterator, accumulate: int) -> tuple[float, float, float]:
        """One optimiser step over ``accumulate`` micro-batches; returns (mean loss, largest |logit|, lr).

        A step with a non-finite loss, gradient or buffer on any rank is rejected as a whole (see
        :meth:`_handle_nonfinite`); an update that makes the weights non-finite stops the run.
        """
        lr = self._set_lr()
        freeze = self.step < self.cfg.model.freeze_backbone_steps
        self._start_step(freeze)
        buffers = list(self.model.buffers())
        before = [b.clone() for b in buffers]  # running statistics and head state the forward passes update
        rng_before = checkpoint.rng_state()  # dropout and heads draw from it: "the state before" includes it
        loss, max_logit = self._accumulate_gradients(batches, accumulate, freeze)
        self.scaler.unscale_(self.optimizer)
        grad_norm = self._clip_and_measure(freeze)
        stats_ok = _all_finite(buffers)
        bad = (not bool(torch.isfinite(loss)) or (not self.scaler.is_enabled() and not math.isfinite(grad_norm))
               or not stats_ok)
        if self.world_size > 1:
            flags = torch.tensor([float(bad)], device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            bad = bool(flags.item())
            loss = distributed.all_reduce_mean(loss)
        if bad:
            torch._foreach_copy_(buffers, before)  # a rejected step leaves no trace, in BatchNorm or head state
            self._handle_nonfinite(float(loss), float(max_logit), grad_norm, rng_before, stats_ok)
            return float("nan"), float(max_logit), lr
        self._apply_update(lr, grad_norm)
        return float(loss), float(max_logit), lr

    def _start_step(self, freeze: bool) -> None:
        """Training mode (a frozen backbone, or frozen BatchNorm, keeps its statistics) and cleared gradients."""
        self.model.train()
        if freeze:
            self.model.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics too
        elif self.cfg.model.batchnorm == "frozen":
            freeze_batchnorm(self.model.backbone)
        self.optimizer.zero_grad(set_to_none=True)
        if self.aux_optimizer is not None:
            self.aux_optimizer.zero_grad(set_to_none=True)

    def _accumulate_gradients(self, batches: Iterator, accumulate: int,
                              freeze: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of ``accumulate`` micro-batches (DDP syncs on the last); (mean loss, max |logit|)."""
        cfg = self.cfg
        losses, extremes = [], []
        for micro in range(accumulate):
            images, labels, *clean = next(batches)
            images = acceleration.input_batch(images, self.device, cfg.channels_last)
            labels = labels.to(self.device, non_blocking=True)
            teacher = None
            if self.teacher is not None and not freeze:
                with torch.no_grad(), self.autocast():
                    clean_images = (acceleration.input_batch(clean[0], self.device, cfg.channels_last) if clean
                                    else images)
                    teacher = self.teacher(clean_images)
            sync = micro == accumulate - 1 or self.world_size == 1
            ddp = self.ddp_model
            ctx = (ddp.no_sync() if isinstance(ddp, nn.parallel.DistributedDataParallel) and not sync
                   else contextlib.nullcontext())
            with ctx:
                with self.autocast():
                    out = self.ddp_model(images, labels, freeze, teacher, cfg.model.distill)
                self.scaler.scale(out.loss.float() / accumulate).backward()
            losses.append(out.loss.detach().float())
            extremes.append(out.max_logit.float())
        return torch.stack(losses).mean(), torch.stack(extremes).max()

    def _apply_update(self, lr: float, grad_norm: float) -> None:
        """The optimiser steps; refuses (raises) an update that made any weight non-finite."""
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.aux_optimizer is not None and self.model.aux is not None:
            for p in self.model.aux.parameters():  # the centre LR is aux_lr whatever the loss weight (Wen et al.)
                if p.grad is not None:
                    p.grad.div_(max(self.cfg.head.aux_weight, 1e-12))
            self.aux_optimizer.step()
        weights_bad = torch.tensor([float(not _all_finite(list(self.model.parameters())))], device=self.device)
        if self.world_size > 1:
            dist.all_reduce(weights_bad, op=dist.ReduceOp.MAX)
        if weights_bad.item():
            raise NonFiniteError(
                f"the update of step {self.step + 1} made the weights non-finite (lr {lr:.4g}, gradient norm "
                f"{grad_norm:.4g}); nothing of this step was saved: resume from the last checkpoint with a lower "
                "learning rate or more warm-up")

    def _clip_and_measure(self, freeze: bool) -> float:
        """Clip the backbone's gradient norm (arcface_torch clips the backbone only); return the total norm."""
        clip = self.cfg.optim.clip_grad_norm
        backbone = [p for p in self.model.backbone.parameters() if p.grad is not None]
        others = [p.grad for n, p in self.model.named_parameters()
                  if p.grad is not None and not n.startswith("backbone.")]
        total = torch.zeros((), device=self.device)
        if backbone:
            norm = torch.nn.utils.clip_grad_norm_(backbone, clip if clip > 0 else float("inf"))
            total = total + norm.float() ** 2
        for grad in others:
            total = total + grad.detach().float().pow(2).sum()
        return float(total.sqrt())

    def _handle_nonfinite(self, loss: float, max_logit: float, grad_norm: float, rng_before: dict[str, Any],
                          stats_ok: bool) -> None:
        what = "loss" if not math.isfinite(loss) else "gradient" if stats_ok else "running statistics or head state"
        lr = self.optimizer.param_groups[-1]["lr"]
        where = (f"non-finite {what} at step {self.step + 1} (head {self.cfg.head.name}, largest |logit| "
                 f"{max_logit:.4g}, loss {loss:.4g}, gradient norm {grad_norm:.4g}, lr {lr:.4g})")
        if self.cfg.nonfinite == "skip":
            self.skipped_batches += 1
            self.warn(f"{where}; batch skipped")
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()
            return
        name = f"nonfinite-step{self.step + 1}.pt"
        self.optimizer.zero_grad(set_to_none=True)
        checkpoint.set_rng_state(rng_before)
        path = self.save_checkpoint(name)
        raise NonFiniteError(
            f"{where}. The state before this step is in {path if self.rank == 0 else self.run_dir / name}. "
            "Lower the learning rate or raise warm-up, use bf16 instead of fp16, or pass --skip-bad-batches."
        )
