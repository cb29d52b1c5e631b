"""Checkpoint files: full training state written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain containers (no pickled objects): model, classifier shard, head buffers,
optimiser, grad scaler, every RNG state, the sampler position and the step. Under Partial FC with N processes,
rank 0 writes ``checkpoint.pt`` and rank r > 0 writes ``checkpoint.rank{r}.pt`` with its own shard, optimiser and
RNG state (arcface_torch likewise keeps one file per GPU for the sharded centres).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facecli.errors import CorruptFileError
from facecli.fileio import atomic_path
from facecli.nn.inference import read_weights

CHECKPOINT = "checkpoint.pt"
FORMAT = "facecli.checkpoint"
BACKBONE_FORMAT = "facecli.backbone"


def rank_file(run_dir: Path, rank: int) -> Path:
    return run_dir / (CHECKPOINT if rank == 0 else f"checkpoint.rank{rank}.pt")


def rng_state() -> dict[str, Any]:
    """Every RNG the training step may touch, as tensors and ints (loadable with weights_only)."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # ("MT19937", keys, pos, has_gauss, cached_gaussian): the global generator
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save`` through a temporary file renamed into place: a crash never leaves half a checkpoint."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load(path: str | os.PathLike) -> dict[str, Any]:
    """A full training checkpoint, read weights-only (see ``read_weights``) and checked to be facecli's."""
    path = Path(path)
    state = read_weights(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CorruptFileError(f"{path} is not a facecli training checkpoint")
    return state


def save_backbone(path: str | os.PathLike, backbone_state: dict[str, torch.Tensor], info: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> Path:
    """A backbone-only file (``model.pt``, ``best.pt``): weights plus the info needed to rebuild and feed them."""
    state = {"format": BACKBONE_FORMAT, "backbone": backbone_state, "info": info}
    state.update(extra or {})
    return save(path, state)
