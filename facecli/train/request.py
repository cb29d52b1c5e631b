"""``facecli train`` as a library call: a :class:`TrainRequest` in the CLI's terms, :func:`resolve` and :func:`run`.

A request holds what a user typed (``--head cosface --steps 200 optim.lr=0.05``); :func:`resolve` maps it onto
the configuration with the precedence of ``facecli.train.config`` (defaults, ``--config`` file, options,
``key=value`` overrides; with ``resume`` the run's own ``config.toml`` instead of the defaults), and :func:`run`
trains it. The CLI does nothing else, so a Python user who calls ``run(TrainRequest(...))`` gets exactly the
CLI's run::

    from facecli.train import TrainRequest, run

    summary = run(TrainRequest(data="pack", out="runs/cosface", head="cosface", steps=200,
                               overrides=["optim.lr=0.05"]))

This module imports torch only when a run starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facecli.errors import UsageError
from facecli.progress import SILENT, Feedback
from facecli.train.config import TrainConfig, build_config, flatten, parse_overrides, read_config_file

if TYPE_CHECKING:  # pragma: no cover
    from facecli.train.callbacks import Callback

#: Request fields that set one config key as they are (None: not given).
_KEYS = {
    "backbone": "model.backbone", "head": "head.name", "batch_size": "batch_size", "steps": "steps",
    "epochs": "epochs", "lr": "optim.lr", "seed": "seed", "partial_fc": "head.partial_fc", "optimizer": "optim.name",
    "schedule": "schedule.name", "warmup_steps": "schedule.warmup_steps", "embedding_size": "model.embedding_size",
    "workers": "data.workers", "val_every": "data.val_every", "val_split": "data.val_split",
    "freeze_backbone_steps": "model.freeze_backbone_steps", "backbone_lr_scale": "model.backbone_lr_scale",
    "neck": "model.neck", "accumulate": "optim.accumulate", "clip_grad": "optim.clip_grad_norm",
    "checkpoint_every": "checkpoint_every", "log_every": "log_every", "device": "device",
}
#: Request flags that set a boolean config key to true (False: not given).
_FLAGS = {"compile": "compile", "channels_last": "channels_last", "grad_checkpoint": "grad_checkpoint",
          "tensorboard": "tensorboard"}


@dataclass
class TrainRequest:
    """One ``facecli train`` call: every option by its CLI name (``--batch-size`` → ``batch_size``).

    ``data`` is DATA (with ``resume``: the run directory unless ``out`` names it); ``overrides`` are the
    ``key=value`` arguments; ``head_opt`` the ``--head-opt key=value`` parameters; ``mean``/``std`` are
    ``--mean``/``--std`` text (one value or R,G,B); ``precision`` is fp32, fp16 or bf16 (or the ``fp16``/``bf16``
    flags). None and False mean "not given": the config file or the defaults decide.
    """

    data: str | None = None
    out: str | None = None
    config: str | None = None
    resume: bool = False
    overrides: list[str] = field(default_factory=list)
    backbone: str | None = None
    head: str | None = None
    batch_size: int | None = None
    steps: int | None = None
    epochs: float | None = None
    lr: float | None = None
    seed: int | None = None
    partial_fc: float | None = None
    precision: str | None = None
    fp16: bool = False
    bf16: bool = False
    channels_last: bool = False
    grad_checkpoint: bool = False
    optimizer: str | None = None
    schedule: str | None = None
    warmup_steps: int | None = None
    embedding_size: int | None = None
    workers: int | None = None
    val: list[str] = field(default_factory=list)
    val_every: int | None = None
    val_split: float | None = None
    init: str | None = None
    mean: str | None = None
    std: str | None = None
    bgr: bool | None = None
    augment: str | None = None
    freeze_backbone_steps: int | None = None
    backbone_lr_scale: float | None = None
    head_opt: list[str] = field(default_factory=list)
    easy_margin: bool = False
    neck: str | None = None
    accumulate: int | None = None
    clip_grad: float | None = None
    compile: bool = False
    skip_bad_batches: bool = False
    checkpoint_every: int | None = None
    log_every: int | None = None
    device: str | None = None
    tensorboard: bool = False

    @classmethod
    def from_arguments(cls, arguments: Sequence[str], /, **options: Any) -> TrainRequest:
        """From the CLI's positional arguments (DATA, then ``key=value`` overrides) and its options by parameter
        name (a trailing underscore, which keeps a name off a Python builtin, is dropped; others are ignored)."""
        options = {k.rstrip("_"): v for k, v in options.items()}
        positional = [a for a in arguments if "=" not in a]
        if len(positional) > 1:
            raise UsageError(f"unexpected argument {positional[1]!r}: give one DATA, then key=value overrides")
        known = {f.name for f in fields(cls)}
        given: dict[str, Any] = {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if k in known}
        val = [str(v) for v in options.get("val") or []]
        return cls(data=positional[0] if positional else None, overrides=[a for a in arguments if "=" in a],
                   **{**given, "val": val, "head_opt": list(options.get("head_opt") or [])})

    def option_layer(self) -> dict[str, Any]:
        """The options as flat config keys (only those given), between the config file and the overrides."""
        if self.steps is not None and self.epochs is not None:
            raise UsageError("give --steps or --epochs, not both")
        layer: dict[str, Any] = {key: getattr(self, name) for name, key in _KEYS.items()}
        layer.update({key: True if getattr(self, name) else None for name, key in _FLAGS.items()})
        layer.update({
            "amp": self._amp(), "data.val": list(self.val) or None, "model.init": self.init,
            "nonfinite": "skip" if self.skip_bad_batches else None,
            "model.init_mean": _channels(self.mean, "mean"), "model.init_std": _channels(self.std, "std"),
            "model.init_color": None if self.bgr is None else ("BGR" if self.bgr else "RGB"),
            "augment.names": _augment_names(self.augment),
        })
        if self.epochs is not None:
            layer["steps"] = 0
        if self.steps is not None:
            layer["epochs"] = 0.0
        return {k: v for k, v in layer.items() if v is not None}

    def head_layer(self) -> dict[str, Any]:
        """``--head-opt key=value`` and ``--easy-margin`` as ``head.KEY`` config keys."""
        layer = {f"head.{k}": v for k, v in parse_overrides(self.head_opt).items()}
        if self.easy_margin:
            layer["head.easy_margin"] = True
        return layer

    def _amp(self) -> str | None:
        from facecli.train.acceleration import PRECISIONS

        if self.fp16 + self.bf16 + (self.precision is not None) > 1:
            raise UsageError("give one of --precision, --fp16, --bf16")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        return PRECISIONS[self.precision] if self.precision else "fp16" if self.fp16 else "bf16" if self.bf16 else None


def resolve(request: TrainRequest, *, dry_run: bool = False, feedback: Feedback = SILENT) -> TrainConfig:
    """The configuration ``request`` asks for (what ``--dry-run`` prints), with its backbone and head checked.

    A new run without ``out`` goes to ``runs/<data>-<date>-<time>`` (said through ``feedback.info``); ``dry_run``
    allows a request without data or output folder, to show the configuration alone.
    """
    overrides = parse_overrides(request.overrides)
    layer, head_layer = request.option_layer(), request.head_layer()
    file_layer = read_config_file(request.config) if request.config else {}
    if request.resume:
        from facecli.train.trainer import resolve_run_config

        run_dir = request.out or request.data
        if run_dir is None:
            raise UsageError("--resume needs the run directory: facecli train --resume RUN")
        cfg = resolve_run_config(Path(run_dir), {**flatten(file_layer), **layer, **head_layer, **overrides})
    else:
        layer.update({k: v for k, v in (("data.path", request.data), ("out", request.out)) if v is not None})
        cfg = build_config(file_layer, layer, head_layer, overrides)
        if not cfg.data.path and not dry_run:
            raise UsageError("missing DATA: facecli train DATA --out RUN (or a config with data.path)")
        if not cfg.out and not dry_run:
            cfg.out = default_run_dir(cfg.data.path)
            feedback.info(f"no --out given: writing the run to {cfg.out}")
    if dry_run:
        check_names(cfg)
    return cfg


def run(request: TrainRequest | TrainConfig, callbacks: Sequence[Callback] = (), *, resume: bool = False,
        feedback: Feedback = SILENT) -> dict[str, Any]:
    """Train what ``request`` asks for (a :class:`TrainRequest`, or a ready config with ``resume``); the summary.

    ``callbacks`` observe the run (``facecli.train.callbacks``; progress is one of them); ``feedback`` receives
    the notices and warnings (``info``) and the verbose messages (``detail``), one line each, like every verb's.
    """
    from facecli.train.trainer import Trainer

    if isinstance(request, TrainRequest):
        cfg, resume = resolve(request, feedback=feedback), request.resume
    else:
        cfg = request
    return Trainer(cfg, callbacks=callbacks, resume=resume, log=feedback.info, detail=feedback.detail).fit()


def check_names(cfg: TrainConfig) -> None:
    """The backbone and head names exist (a one-line error that lists the valid ones otherwise)."""
    from facecli.nn.backbones import BACKBONES
    from facecli.nn.heads import HEADS

    BACKBONES.get(cfg.model.backbone)
    HEADS.get(cfg.head.name)


def head_catalogue() -> list[dict[str, Any]]:
    """What ``--list-heads`` shows: every registered head with its kind, paper, year, whether it composes with
    Partial FC, and its parameters' defaults."""
    from facecli.nn.heads import HEADS

    rows = []
    for name in HEADS.names():
        cls = HEADS.get(name)
        rows.append({"name": name, "kind": getattr(cls, "kind", ""), "paper": getattr(cls, "paper", ""),
                     "year": getattr(cls, "year", 0) or None,
                     "partial_fc": getattr(cls, "partial_fc_incompatible", None) is None,
                     "defaults": cls.defaults() if hasattr(cls, "defaults") else {}})
    return rows


def default_run_dir(data: str) -> str:
    """``runs/<data name>-<date>-<time>`` in the working directory, first free name (ultralytics-style)."""
    base = Path("runs") / f"{Path(data).resolve().name}-{datetime.now():%Y%m%d-%H%M%S}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return str(candidate)


def _channels(value: str | None, what: str) -> list[float] | None:
    from facecli.normalisation import parse_channels

    channels = parse_channels(value, what)
    return None if channels is None else list(channels)


def _augment_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    from facecli.data.augment import parse_names

    return parse_names(text)
