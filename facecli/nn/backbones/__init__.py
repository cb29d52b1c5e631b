"""Backbones (face image → embedding), one module per family, all registered in :data:`BACKBONES`.

Every module in this package is imported here so its ``@BACKBONES.register`` runs; a builder takes
``embedding_size`` and ``dropout`` keyword arguments (plus its own options, ``model.backbone_options``) and
returns an ``nn.Module`` mapping ``(B, 3, 112, 112)`` RGB inputs normalised as ``(x/255-0.5)/0.5`` to
``(B, embedding_size)`` raw (not L2-normalised) embeddings.
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from facecli.registry import Registry

#: Every backbone by name; ``BACKBONES.build("iresnet50", embedding_size=512, dropout=0.0)``.
BACKBONES: Registry[nn.Module] = Registry("backbone")

#: Optional architecture wrappers around a built backbone (e.g. GroupFace's group-aware neck), chosen with
#: ``model.neck=NAME`` / ``--neck NAME``: ``NECKS.build(name, backbone=module, embedding_size=E, **options)``
#: returns a module with the backbone's contract (images → ``(B, E)`` embeddings).
NECKS: Registry[nn.Module] = Registry("neck")

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

# Necks kept beside the heads they compose with register themselves here too.
for _neck_module in ("facecli.nn.groupface",):
    try:
        importlib.import_module(_neck_module)
    except ModuleNotFoundError as _exc:
        if _exc.name != _neck_module:
            raise

__all__ = ["BACKBONES", "NECKS"]
