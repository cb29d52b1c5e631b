"""Helpers shared by the backbones: a float32 island inside autocast, so the embedding layers are fp16-safe."""

from __future__ import annotations

import contextlib

import torch


def full_precision(x: torch.Tensor) -> tuple[torch.Tensor, contextlib.AbstractContextManager]:
    """``x`` as float32 and a context that disables autocast, for the FC/BN layers that produce the embedding.

    arcface_torch runs its convolutional body in fp16 but the final fully connected layer and the BatchNorm1d in
    float32: the 25088-wide dot products of the FC overflow or lose the embedding's small components in fp16.
    """
    return x.float(), torch.autocast(device_type=x.device.type, enabled=False)
