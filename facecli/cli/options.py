"""The options several verbs share, defined once: the same name, short flag and help text wherever they appear.

A command declares ``model: ModelOpt = None`` instead of spelling out ``typer.Option(...)``; the help a user reads in
``facecli eval --help`` and ``facecli gallery build --help`` is then the same sentence, and a short flag means one
thing across the tool (``-b`` is ``--bench``; ``--batch-size`` has no short flag).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail (repeat for more).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors; no progress bar or table.")]

MODEL_HELP = "ONNX model, facecli checkpoint or run directory."
ModelOpt = Annotated[Optional[Path], typer.Option("--model", "-m", help=MODEL_HELP)]
ModelsOpt = Annotated[
    Optional[List[Path]], typer.Option("--model", "-m", help=MODEL_HELP + " Repeat to compare models.")
]
MeanOpt = Annotated[
    Optional[str],
    typer.Option("--mean", help="The model's input mean in 0-255 pixel units: one value or R,G,B (default: from the model)."),
]
StdOpt = Annotated[
    Optional[str],
    typer.Option("--std", help="The model's input std in 0-255 pixel units: one value or R,G,B (default: from the model)."),
]
BgrOpt = Annotated[
    Optional[bool],
    typer.Option("--bgr/--rgb", show_default=False, help="Colour order the model expects (default: from the model, else RGB)."),
]
BatchSizeOpt = Annotated[
    Optional[int],
    typer.Option("--batch-size", min=1, show_default=False, help="Faces per network call (default: 8 on CPU, 64 on GPU)."),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="Where the network runs: cpu, cuda, cuda:N (eval: also tensorrt for ONNX).")
]
