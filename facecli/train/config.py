"""The training configuration: typed sections, TOML/YAML files anywhere on disk, ``key=value`` overrides.

Precedence, lowest first: the defaults below (a laptop-CPU smoke run), ``--config FILE``, command-line options,
``key=value`` overrides (dotted: ``optim.lr=0.05``, ``head.m=0.4``). Unknown keys under ``head.`` are head
options (every head parameter is settable); any other unknown key is an error that lists the valid ones. The
resolved configuration is written to ``RUN/config.toml`` and shown by ``--dry-run``.

GPU recipe (arcface_torch's MS1MV3 / r50): ``model.backbone=iresnet50 batch_size=128 optim.lr=0.1
schedule.warmup_steps=<1 epoch> amp=fp16 data.workers=8 epochs=20`` on 8 GPUs with torchrun.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from facecli.errors import UsageError
from facecli.registry import Registry
from facecli.train.optimizers import OPTIMIZERS
from facecli.train.schedule import SCHEDULES


@dataclass
class DataConfig:
    path: str = ""
    workers: int = 2
    flip: bool = True
    val: list[str] = field(default_factory=list)
    #: Fraction of the identities held out of training for validation pairs (facecli.train.heldout); 0 = none.
    val_split: float = 0.0
    val_every: int = 500
    val_batch_size: int = 64


@dataclass
class ModelConfig:
    backbone: str = "mobilefacenet"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    embedding_size: int = 512
    dropout: float = 0.0
    neck: str = ""
    neck_options: dict[str, Any] = field(default_factory=dict)
    init: str = ""
    #: ``--init MODEL.onnx``: the network's own input normalisation (0–255 units, R, G, B) and colour order;
    #: empty = from the file (facecli metadata, else insightface's rule), as ``facecli eval`` decides.
    init_mean: list[float] = field(default_factory=list)
    init_std: list[float] = field(default_factory=list)
    init_color: str = ""
    freeze_backbone_steps: int = 0
    backbone_lr_scale: float = 1.0
    #: Fraction of the backbone's parameters, counted from the embedding end, that train (1 = all).
    unfreeze: float = 1.0
    #: "train": BatchNorm layers use and update batch statistics; "frozen": they keep their running statistics.
    batchnorm: str = "train"
    #: Weight of the distillation loss 1 - cos(embedding of the augmented image, the initial backbone's embedding
    #: of the clean image); 0 = off. Needs --init.
    distill: float = 0.0


@dataclass
class HeadConfig:
    name: str = "arcface"
    options: dict[str, Any] = field(default_factory=dict)
    #: 0 = full classifier in every process; (0, 1] = Partial FC with that sample rate.
    partial_fc: float = 0.0
    #: Weight decay of the class centres and head parameters; negative = the optimiser's.
    weight_decay: float = -1.0
    #: An auxiliary embedding loss with its own optimiser step (e.g. "center"), its weight and learning rate.
    aux: str = ""
    aux_weight: float = 0.003  # center loss λ of Wen et al.
    aux_lr: float = 0.5
    aux_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad_norm: float = 5.0
    accumulate: int = 1


@dataclass
class ScheduleConfig:
    name: str = "poly"
    warmup_steps: int = 0
    power: float = 2.0
    min_lr: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class AugmentConfig:
    """``--augment lowres,crop,photometric,grayscale`` and each one's probability and options (facecli.data.augment)."""

    names: list[str] = field(default_factory=list)
    lowres_p: float = 0.5
    lowres_min: int = 12
    lowres_max: int = 32
    crop_p: float = 0.5
    crop_scale: float = 0.8
    photometric_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    grayscale_p: float = 0.2


@dataclass
class TrainConfig:
    out: str = ""
    batch_size: int = 32
    #: Optimiser steps; ``epochs`` > 0 overrides it.
    steps: int = 100
    epochs: float = 0.0
    seed: int = 0
    amp: str = "none"
    device: str = "auto"
    compile: bool = False
    channels_last: bool = False
    grad_checkpoint: bool = False
    nonfinite: str = "stop"
    log_every: int = 10
    checkpoint_every: int = 500
    tensorboard: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Keys with a fixed set of values; ``optim.name`` and ``schedule.name`` are checked against their registries.
CHOICES = {
    "amp": ("none", "fp16", "bf16"),
    "nonfinite": ("stop", "skip"),
    "model.batchnorm": ("train", "frozen"),
    "model.init_color": ("", "RGB", "BGR"),
}
#: Keys whose value names an entry of a registry (their choices are the registry's names).
NAMED: dict[str, Registry] = {"optim.name": OPTIMIZERS, "schedule.name": SCHEDULES}


def parse_value(text: str) -> Any:
    """A ``key=value`` right-hand side: TOML literal (number, bool, list, quoted string) or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.05", "head.m=0.4"]`` → ``{"optim.lr": 0.05, "head.m": 0.4}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"expected key=value, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A nested dict from a ``.toml`` or ``.yaml``/``.yml`` file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UsageError("YAML configs need PyYAML (pip install pyyaml); or use TOML") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: invalid YAML: {exc}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path}: invalid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of sections")
    return data


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` → ``{"optim.lr": 1}``; dict-typed fields (options) stay whole."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in _DICT_FIELDS:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


_DICT_FIELDS = {"model.backbone_options", "model.neck_options", "head.options", "head.aux_options"}


def _field_types(cls: Any) -> dict[str, Any]:
    return get_type_hints(cls)


def valid_keys() -> list[str]:
    keys = []
    for name, typ in _field_types(TrainConfig).items():
        if dataclasses.is_dataclass(typ):
            keys += [f"{name}.{sub}" for sub in _field_types(typ)]
        else:
            keys.append(name)
    return keys


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() in ("true", "yes", "1", "on"):
            return True
        if value.lower() in ("false", "no", "0", "off"):
            return False
        raise ValueError(value)
    return bool(value)


def _to_int(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


#: How a scalar field's value is read from a file, an option or a ``key=value`` string.
_SCALARS: dict[Any, Callable[[Any], Any]] = {bool: _to_bool, int: _to_int, float: float, str: str}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """``value`` as the field type ``typ`` (scalars, lists of them, option dicts); a one-line error otherwise."""
    origin = getattr(typ, "__origin__", None)
    try:
        if typ in _SCALARS:
            return _SCALARS[typ](value)
        if origin is list:
            items = value if isinstance(value, (list, tuple)) else [value]
            return [_coerce(key, v, typ.__args__[0]) for v in items]
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
        return value
    except (TypeError, ValueError):
        raise UsageError(f"config key {key}: {value!r} is not a valid {getattr(typ, '__name__', typ)}") from None


def build_config(*layers: dict[str, Any]) -> TrainConfig:
    """Merge flat or nested layers (later wins) onto the defaults, validate, and return the config."""
    cfg = TrainConfig()
    given: set[str] = set()
    sections = {name for name, typ in _field_types(TrainConfig).items() if dataclasses.is_dataclass(typ)}
    for layer in layers:
        for key, value in flatten(layer).items():
            given.add(key)
            section, _, leaf = key.partition(".")
            if section in sections and leaf:
                target = getattr(cfg, section)
                types = _field_types(type(target))
                if leaf not in types:
                    if section == "head":  # any other head.X is a parameter of the chosen head
                        cfg.head.options[leaf.replace("-", "_")] = value
                        continue
                    raise UsageError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")
                if f"{section}.{leaf}" in _DICT_FIELDS:
                    getattr(target, leaf).update(_coerce(key, value, types[leaf]))
                else:
                    setattr(target, leaf, _coerce(key, value, types[leaf]))
            elif key in _field_types(TrainConfig) and key not in sections:
                setattr(cfg, key, _coerce(key, value, _field_types(TrainConfig)[key]))
            else:
                raise UsageError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")
    if cfg.model.init:
        from facecli.train.finetune import apply_finetune_defaults

        apply_finetune_defaults(cfg, given)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Range and choice checks with one-line messages."""
    flat = flatten(cfg.to_dict())
    _check_choices(flat)
    _check_ranges(cfg, flat)
    _check_model(cfg)
    from facecli.data.augment import check_augment

    check_augment(cfg.augment)


def _check_choices(flat: dict[str, Any]) -> None:
    """Fixed choices, and names that a registry knows (spelled as it lists them: the config file keeps them)."""
    choices = {**CHOICES, **{key: tuple(registry.names()) for key, registry in NAMED.items()}}
    for key, allowed in choices.items():
        if flat[key] not in allowed:
            raise UsageError(f"{key} must be one of {', '.join(allowed)}, got {flat[key]!r}")


def _check_ranges(cfg: TrainConfig, flat: dict[str, Any]) -> None:
    for key in ("batch_size", "optim.accumulate", "log_every", "checkpoint_every", "data.val_batch_size"):
        if flat[key] <= 0:
            raise UsageError(f"{key} must be positive, got {flat[key]}")
    if not 0.0 <= cfg.head.partial_fc <= 1.0:
        raise UsageError(f"head.partial_fc (--partial-fc) must be a sample rate in (0, 1], got {cfg.head.partial_fc}")
    if cfg.steps < 0 or cfg.epochs < 0:
        raise UsageError("steps and epochs must not be negative")
    if cfg.steps == 0 and cfg.epochs == 0:
        raise UsageError("set steps or epochs to a positive number")
    if cfg.optim.lr <= 0:
        raise UsageError(f"optim.lr must be positive, got {cfg.optim.lr}")
    if not 0.0 <= cfg.data.val_split < 1.0:
        raise UsageError(f"data.val_split must be a fraction of the identities in [0, 1), got {cfg.data.val_split}")


def _check_model(cfg: TrainConfig) -> None:
    """Fine-tuning options: distillation needs --init; the unfrozen fraction; --init's normalisation."""
    if cfg.model.distill < 0:
        raise UsageError(f"model.distill must not be negative, got {cfg.model.distill}")
    if cfg.model.distill > 0 and not cfg.model.init:
        raise UsageError("model.distill needs a pretrained teacher: give --init")
    if not 0.0 < cfg.model.unfreeze <= 1.0:
        raise UsageError(f"model.unfreeze must be a fraction in (0, 1], got {cfg.model.unfreeze}")
    for key in ("init_mean", "init_std"):
        if len(getattr(cfg.model, key)) not in (0, 3):
            raise UsageError(f"model.{key} needs 3 values (R, G, B), got {getattr(cfg.model, key)}")
    from facecli.normalisation import check_normalisation, parse_channels

    # the same rules as eval's --mean/--std, whichever layer (option, config file, key=value) set them
    check_normalisation(parse_channels(cfg.model.init_mean or None, "mean"),
                        parse_channels(cfg.model.init_std or None, "std"))


#: What ``--resume`` may change: how long the run goes on and how it is watched, never what a step computes.
#: ``data.path`` may point at the same data moved elsewhere (the checkpoint's class count still has to fit).
RESUMABLE_KEYS = frozenset({
    "out", "steps", "epochs", "device", "compile", "nonfinite", "log_every", "checkpoint_every", "tensorboard",
    "data.path", "data.workers", "data.val", "data.val_every", "data.val_batch_size",
})


def check_resume_changes(stored: TrainConfig, requested: TrainConfig) -> None:
    """Refuse, in one line, a ``--resume`` that changes a setting the saved state depends on.

    A different head, batch size, seed, backbone, optimiser or schedule would not continue the run but start a
    different one on top of the saved weights, optimiser moments and data order, and write that into
    ``config.toml`` as if it had always been so.
    """
    before, after = flatten(stored.to_dict()), flatten(requested.to_dict())
    for key, value in after.items():
        if key not in RESUMABLE_KEYS and before.get(key) != value:
            raise UsageError(
                f"--resume cannot change {key} (the run has {before.get(key)!r}, asked {value!r}): the saved state "
                "belongs to the old setting; start a new run (--out, --init to reuse the weights) instead")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(cfg: TrainConfig) -> str:
    """The resolved config as TOML that :func:`read_config_file` reads back to the same config."""
    data = cfg.to_dict()
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
