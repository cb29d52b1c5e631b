"""Plain JSON values from what results hold (numpy scalars and arrays, paths, NaN), for ``--json`` and reports."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, paths and non-finite floats (to null) into plain JSON values."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
