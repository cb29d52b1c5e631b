"""How fast a training step runs on the hardware: precision, memory layout, compilation, gradient checkpointing.

None of these change what is learned beyond rounding; they trade numerics, memory and compile time for speed:

* ``precision`` (config key ``amp``: ``none`` = fp32, ``fp16``, ``bf16``): the forward pass under
  ``torch.autocast``. fp16 needs a CUDA GPU and a ``GradScaler`` (its state is in every checkpoint, so
  ``--resume`` continues bit for bit); bf16 has float32's range, needs no scaler and runs on CPUs too. The
  embedding layers of every backbone stay float32 either way (``facecli.nn.backbones.precision``).
* ``channels_last``: NHWC weights and input batches, which cuDNN's tensor-core convolutions prefer under AMP.
* ``compile``: ``torch.compile`` of the backbone (minutes of compilation, then faster steps; state-dict keys stay).
* ``grad_checkpoint``: recompute each residual/transformer block's activations in backward instead of keeping
  them, for iresnet100/200 and the ViTs at large batches (``facecli.nn.backbones.checkpointing``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from facecli.errors import UsageError
from facecli.nn.backbones.checkpointing import Checkpointable
from facecli.train.config import TrainConfig

#: ``--precision`` names and the ``amp`` config values they stand for.
PRECISIONS = {"fp32": "none", "fp16": "fp16", "bf16": "bf16"}


def autocast_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting (None: float32, no autocast)."""
    return {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[amp]


def check_precision(amp: str, device: torch.device) -> None:
    """A one-line error for a precision the device cannot train in (fp16 on CPU has no loss-scaled kernels)."""
    if amp == "fp16" and device.type != "cuda":
        raise UsageError(f"fp16 training needs a CUDA GPU (device is {device.type}); on CPU use --precision bf16 "
                         "or fp32")


def tune_device(device: torch.device) -> None:
    """Let cuDNN pick the fastest convolution algorithms for the (fixed) training input shape, as arcface_torch
    does; the choice is not bit-reproducible, which GPU training is not anyway (CPU runs are untouched)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's precision context."""
    dtype = autocast_dtype(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (a disabled scaler otherwise, so checkpoints always hold a scaler state)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def checkpointable_parts(backbone: nn.Module) -> list[Checkpointable]:
    """The modules inside ``backbone`` (itself, or the one a neck wraps) that can checkpoint their blocks."""
    return [m for m in backbone.modules() if isinstance(m, Checkpointable)]


def prepare_backbone(backbone: nn.Module, cfg: TrainConfig) -> None:
    """Apply ``grad_checkpoint``, ``channels_last`` and ``compile`` to a backbone already on its device."""
    if cfg.grad_checkpoint:
        parts = checkpointable_parts(backbone)
        if not parts:
            raise UsageError(f"--grad-checkpoint is for the iresnet and vit backbones, not {cfg.model.backbone}")
        for part in parts:
            part.grad_checkpoint = True
    if cfg.channels_last:
        backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # documented, not in stubs
    if cfg.compile:
        backbone.compile()


def input_batch(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on ``device`` (asynchronously from pinned memory) in the backbone's memory format."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images
