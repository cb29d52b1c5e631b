"""How a recognition network wants its input: colour order and per-channel normalisation, in 0-255 pixel units.

Both ``eval`` (running a model) and ``nn`` (importing an ONNX network to fine-tune it) must read a model's input
convention the same way, so the rules live here, below both stages:

1. ``--mean/--std/--bgr`` given by the user win;
2. else a facecli export's ``facecli.color``/``facecli.mean``/``facecli.std`` metadata;
3. else insightface's rule for recognition ONNX models (``ArcFaceONNX``): if one of the graph's first 8 nodes is
   named ``Sub*``/``_minus*`` and one ``Mul*``/``_mul*``, the graph normalises itself (mean 0, std 1); otherwise
   mean 127.5, std 127.5, RGB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from facecli.errors import UsageError

INSIGHTFACE_MEAN = 127.5
INSIGHTFACE_STD = 127.5
SELF_NORMALISING_PREFIXES = (("Sub", "_minus"), ("Mul", "_mul"))
Channels = tuple[float, float, float]


def parse_channels(value: str | float | Sequence[float] | None, what: str) -> tuple[float, float, float] | None:
    """``"127.5"`` or ``"123.7,116.3,103.5"`` (or numbers) as three per-channel values; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parts = [float(p) for p in value.replace(" ", "").split(",") if p]
        except ValueError:
            raise UsageError(f"{what} must be one number or three comma-separated numbers, got {value!r}") from None
    elif isinstance(value, (int, float)):
        parts = [float(value)]
    else:
        parts = [float(v) for v in value]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise UsageError(f"{what} needs one value or one per channel (3), got {len(parts)}")
    if not all(math.isfinite(p) for p in parts):
        raise UsageError(f"{what} must be finite numbers, got {value!r}")
    if what == "std" and any(p <= 0 for p in parts):
        raise UsageError(f"std must be positive (pixel units, e.g. 127.5), got {value!r}")
    if what == "mean" and any(not 0.0 <= p <= 255.0 for p in parts):
        raise UsageError(f"mean is in pixel units (0-255, e.g. 127.5), got {value!r}")
    return (parts[0], parts[1], parts[2])


def check_normalisation(mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
    """Refuse statistics given in 0-1 units: facecli subtracts and divides on 0-255 pixel values.

    ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) or arcface's 0.5 / 0.5 would otherwise be accepted and
    feed the network values around ±500 instead of ±1: every embedding silently wrong.
    """
    if std is not None and max(std) < 1.0 and (mean is None or max(mean) <= 1.0):
        hint = ", ".join(f"{v * 255:g}" for v in std)
        raise UsageError(f"std {', '.join(f'{v:g}' for v in std)} looks like statistics of 0-1 pixels; facecli's "
                         f"--mean/--std are in 0-255 pixel units (std {hint}; mean x255 too)")


def insightface_normalisation(graph_nodes: Sequence[Any]) -> tuple[float, float]:
    """insightface's ArcFaceONNX rule: (0, 1) if the first 8 nodes include Sub and Mul by name, else 127.5."""
    names = [node.name for node in graph_nodes[:8]]
    found = [any(n.startswith(prefixes) for n in names) for prefixes in SELF_NORMALISING_PREFIXES]
    if all(found):
        return 0.0, 1.0
    return INSIGHTFACE_MEAN, INSIGHTFACE_STD


def onnx_preprocessing(proto: Any) -> tuple[Channels, Channels, str, str]:
    """``(mean, std, colour, where it came from)`` an ONNX model declares: facecli metadata, else insightface's rule."""
    meta = {p.key: p.value for p in proto.metadata_props}
    if "facecli.mean" in meta and "facecli.std" in meta:
        mean, std = parse_channels(meta["facecli.mean"], "mean"), parse_channels(meta["facecli.std"], "std")
        assert mean is not None and std is not None
        return mean, std, meta.get("facecli.color", "RGB").upper(), "facecli metadata"
    rule_mean, rule_std = insightface_normalisation(proto.graph.node)
    found = "insightface rule (graph normalises itself)" if rule_mean == 0.0 else "insightface rule"
    return (rule_mean,) * 3, (rule_std,) * 3, "RGB", found


def resolve_onnx_preprocessing(proto: Any, mean: Sequence[float] | None, std: Sequence[float] | None,
                               bgr: bool | None) -> tuple[Channels, Channels, str, str]:
    """Rule 1 over rules 2-3: the user's ``mean``/``std``/``bgr`` (each where given) over what the ONNX model
    declares; returns ``(mean, std, colour, where they came from)``. Eval and ``train --init`` both use it."""
    found_mean, found_std, color, found_from = onnx_preprocessing(proto)
    if mean is not None or std is not None or bgr is not None:
        found_from = "user options"
    color = color if bgr is None else ("BGR" if bgr else "RGB")
    return _given_or(mean, found_mean), _given_or(std, found_std), color, found_from


def _given_or(given: Sequence[float] | None, found: Channels) -> Channels:
    return (float(given[0]), float(given[1]), float(given[2])) if given else found
