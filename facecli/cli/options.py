"""The options several verbs share, defined once: the same name, short flag and help text wherever they appear.

A command declares ``model: ModelOpt = None`` instead of spelling out ``typer.Option(...)``; the help a user reads in
``facecli eval --help`` and ``facecli gallery build --help`` is then the same sentence, and a short flag means one
thing across the tool. Short flags: ``-o`` is ``--out``, ``-m`` ``--model``, ``-b`` ``--bench`` (eval),
``-g`` ``--gallery``, ``-k`` ``--top-k``, ``-c`` ``--config`` (train), ``-v``/``-q`` verbosity; ``--batch-size``
has none. An option whose wording must name the command's own file or default (``--out``, ``--workers``,
``--select``) comes from a factory that fixes its name, short flag and the common part of its help.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperOption

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail (repeat for more).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors; no progress bar or table.")]

MODEL_HELP = "ONNX model, facecli checkpoint or run directory."
ModelOpt = Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_HELP)]
ModelsOpt = Annotated[
    list[Path] | None, typer.Option("--model", "-m", help=MODEL_HELP + " Repeat to compare models.")
]
#: ``--model`` where a gallery already names the model it was built with (gallery calibrate/search/evaluate/add).
GalleryModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help=MODEL_HELP + " Default: the gallery's own model.")
]
#: ``--model`` where there is no default to fall back on (gallery build).
RequiredModelOpt = Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)]
MeanOpt = Annotated[
    str | None,
    typer.Option(
        "--mean", help="The model's input mean in 0-255 pixel units: one value or R,G,B (default: from the model)."
    ),
]
StdOpt = Annotated[
    str | None,
    typer.Option(
        "--std", help="The model's input std in 0-255 pixel units: one value or R,G,B (default: from the model)."
    ),
]
BgrOpt = Annotated[
    bool | None,
    typer.Option(
        "--bgr/--rgb", show_default=False, help="Colour order the model expects (default: from the model, else RGB)."
    ),
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size", min=1, show_default=False, help="Faces per network call (default: 8 on CPU, 64 on GPU)."
    ),
]
DEVICE_HELP = "Where the network runs: cpu, cuda, cuda:N"
DeviceOpt = Annotated[str, typer.Option("--device", help=DEVICE_HELP + " (eval: also tensorrt for ONNX).")]
#: ``--device`` of the face detector (align), which can also choose for itself.
DetectorDeviceOpt = Annotated[str, typer.Option("--device", help=DEVICE_HELP + " or auto (CUDA if present).")]

QualityOpt = Annotated[
    int, typer.Option("--quality", min=1, max=100, help="JPEG quality (1-100) of the images facecli encodes.")
]
ResizeOpt = Annotated[
    str | None,
    typer.Option("--resize", help="Resize images of another size to N or WxH (e.g. 112) and re-encode them."),
]
#: ``--align`` of the gallery verbs: detect and align raw photos while embedding them.
AlignFacesOpt = Annotated[
    bool | None,
    typer.Option(
        "--align/--no-align",
        show_default=False,
        help="Detect and align faces in raw photos on the fly (default: off in build, else as the gallery was built).",
    ),
]


def out_option(what: str) -> Any:
    """``--out``/``-o``; ``what`` names what the command writes there."""
    return typer.Option("--out", "-o", help=what)


def workers_option(default: str) -> Any:
    """``--workers``: processes whose output is the one-worker output byte for byte; ``default`` says what no
    value means for the command."""
    return typer.Option(
        "--workers", min=1, show_default=False, help=f"Worker processes, output identical to 1 (default: {default})."
    )


def select_option(choices: str) -> Any:
    """``--select``: which detected face a photo contributes; ``choices`` lists what the command accepts."""
    return typer.Option("--select", help=f"Face to keep per photo: {choices}.")


class _RegistryHelpCommand(TyperCommand):
    """A command whose option help lists a registry's names, read when the help is shown."""

    helps: dict[str, Callable[[], str]] = {}

    def format_help(self, ctx: Any, formatter: Any) -> None:  # click's Context and HelpFormatter (vendored by typer)
        for param in self.params:
            if isinstance(param, TyperOption) and param.name in self.helps:
                param.help = self.helps[param.name]()
        super().format_help(ctx, formatter)


def registry_help(**helps: Callable[[], str]) -> type[TyperCommand]:
    """The command class (``app.command(cls=...)``) that writes these options' help when ``--help`` is shown.

    Choice lists come from the registries (backbones, heads, detectors), so a new entry is listed without editing
    the CLI; the registries are filled by importing torch or onnxruntime, which ``facecli --version`` and every
    other command's start should not wait for, hence the help is made only when asked for.
    """
    return type("RegistryHelpCommand", (_RegistryHelpCommand,), {"helps": helps})
