"""What every request object shares: paths may be given as ``str`` or :class:`~pathlib.Path`.

The CLI hands requests ``Path`` objects; a Python caller writes ``PackRequest(src="aligned", out="packed")`` just
as naturally. A request dataclass that inherits :class:`PathFields` turns each ``str`` given for a field annotated
``Path`` (or ``Path | None``) into a ``Path`` when it is made, so the library code behind it sees one type.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


class PathFields:
    """Mixin for request dataclasses (frozen or not): ``str`` values of ``Path`` fields become ``Path``."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, str) and str(field.type).replace(" ", "").startswith("Path"):
                object.__setattr__(self, field.name, Path(value))
