"""The import graph stays as docs/development.md draws it: the CLI on top, then the stages, then shared ground.

Every ``import`` in facecli, lazy ones inside functions included, is read with ``ast``: a stage may use only the
stages below it, the top-level modules (errors, fileio, parallel, onnxsession, ...) use no stage at all, and only
the CLI and ``__main__`` reach the CLI. A shortcut that points back up fails here, not in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facecli"
STAGES = ("align", "cli", "data", "eval", "gallery", "nn", "train")
#: the stages each stage may import (the shared top-level modules are open to all)
ALLOWED = {
    "align": set(),
    "data": set(),
    "nn": set(),
    "eval": {"align", "data", "nn"},
    "train": {"data", "eval", "nn"},
    "gallery": {"align", "data", "eval", "nn"},
    "cli": set(STAGES) - {"cli"},
}


def imported_parts(tree: ast.AST) -> set[str]:
    """The first component under ``facecli`` of every module ``tree`` imports (``eval`` for ``facecli.eval.x``)."""
    parts: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "facecli" else [f"facecli.{a.name}" for a in node.names]
        else:
            continue
        parts.update(name.split(".")[1] for name in names if name.startswith("facecli."))
    return parts


def owner(path: Path) -> str:
    """The stage a module belongs to, or its own name for a top-level module."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_point_down(path: Path) -> None:
    source = owner(path)
    stages = imported_parts(ast.parse(path.read_text(encoding="utf-8"))) & set(STAGES) - {source}
    if source == "__main__":
        allowed = {"cli"}
    elif source in STAGES:
        allowed = ALLOWED[source]
    else:  # shared ground: errors, fileio, imageio, registry, parallel, onnxsession, progress, ...
        allowed = set()
    assert stages <= allowed, f"{path.relative_to(PACKAGE.parent)} imports {sorted(stages - allowed)}"


def test_the_reader_sees_every_import_form() -> None:
    tree = ast.parse(
        "import facecli.eval.models\nfrom facecli import train\nfrom facecli.nn.heads import HEADS\n"
        "def f():\n    from facecli.align import run\nfrom . import sibling\nimport numpy\n"
    )
    assert imported_parts(tree) == {"eval", "train", "nn", "align"}
