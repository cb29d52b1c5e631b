"""What every request object shares: paths may be given as ``str`` or :class:`~pathlib.Path`.

The CLI hands requests ``Path`` objects; a Python caller writes ``PackRequest(src="aligned", out="packed")`` just
as naturally. A request dataclass that inherits :class:`PathFields` turns each ``str`` (or ``os.PathLike``) given for a field annotated
``Path`` (or ``Path | None``) into a ``Path`` when it is made, so the library code behind it sees one type.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


class PathFields:
    """Mixin for request dataclasses (frozen or not): ``str`` (or other path-like) values of ``Path`` fields become
    ``Path``. A subclass with checks of its own calls ``super().__post_init__()`` first."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            if not field.init:  # derived by the subclass, not given
                continue
            value = getattr(self, field.name)
            is_path_field = str(field.type).replace(" ", "").startswith("Path")
            if is_path_field and isinstance(value, (str, os.PathLike)) and not isinstance(value, Path):
                object.__setattr__(self, field.name, Path(value))
