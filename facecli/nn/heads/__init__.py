"""Margin heads and embedding losses, one module per family, all registered in :data:`HEADS`.

Every module in this package is imported here so its ``@HEADS.register`` runs; adding a head is adding a file.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from torch import nn

from facecli.nn.heads.base import HEADS, EmbeddingLoss, MarginHead, constructor_defaults

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def build_head(name: str, num_classes: int, embedding_size: int, **options: Any) -> nn.Module:
    """Build head ``name``; the sizes are passed only to heads whose constructor takes them."""
    builder = HEADS.get(name)
    accepted = inspect.signature(builder).parameters
    sizes = {"num_classes": num_classes, "embedding_size": embedding_size}
    kwargs = {k: v for k, v in sizes.items() if k in accepted}
    return builder(**kwargs, **options)


__all__ = ["HEADS", "EmbeddingLoss", "MarginHead", "build_head", "constructor_defaults"]
