"""Datasets on disk: MXNet RecordIO without MXNet, folder layouts, packing, verification ``.bin`` files.

This stage imports none of the others (align, nn, train, eval); the modules talk to them only through files.

``facecli.data.pack_dataset(PackRequest(...))`` and ``facecli.data.pack_pairs(PairsRequest(...))`` are
``facecli pack`` and ``facecli pack pairs`` as library calls (:mod:`facecli.data.pack_request`); they are loaded
on first use, so that reading a record file does not import the image codecs packing needs.
"""

from __future__ import annotations

from typing import Any

_PACK_REQUEST = ("PackRequest", "PairsRequest", "pack_dataset", "pack_pairs")


def __getattr__(name: str) -> Any:
    if name in _PACK_REQUEST:
        from facecli.data import pack_request

        return getattr(pack_request, name)
    raise AttributeError(f"module 'facecli.data' has no attribute {name!r}")
