"""``facecli clean``: list (and optionally drop) noisy training images with a Sub-center ArcFace run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facecli.cli.common import UI
from facecli.cli.options import JsonOpt, QuietOpt, VerboseOpt, out_option

DataArg = Annotated[Path, typer.Argument(
    help="The training data of the run: an image folder (ROOT/identity/*.jpg) or a .rec.")]
RunOpt = Annotated[Path, typer.Option("--run", help="A finished `facecli train --head subcenter-arcface` run.")]
HeadOpt = Annotated[str, typer.Option(help="The head the run was trained with (only subcenter-arcface can clean).")]
OutOpt = Annotated[Path | None, out_option("CSV of suspicious images (default RUN/suspicious.csv).")]
ThresholdOpt = Annotated[float, typer.Option(
    help="Angle (degrees) to the identity's dominant sub-centre above which an image is suspicious (paper: 75).")]
PackOpt = Annotated[Path | None, typer.Option(
    "--pack", help="Also write a new pack of DATA (an image folder) without the suspicious images here.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Faces per network call.")]


def clean(
    data: DataArg,
    run: RunOpt,
    head: HeadOpt = "subcenter-arcface",
    out: OutOpt = None,
    threshold: ThresholdOpt = 75.0,
    pack: PackOpt = None,
    batch_size: BatchOpt = 64,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Find images far from their identity's dominant sub-centre (noisy labels) and write them to a CSV that
    `facecli pack dataset --exclude-list` consumes."""
    from facecli.errors import UsageError
    from facecli.nn.heads import HEADS
    from facecli.train.clean import clean_run

    ui = UI(json=json_, verbose=verbose, quiet=quiet)
    if HEADS.get(head) is not HEADS.get("subcenter-arcface"):
        raise UsageError(f"--head {head}: only subcenter-arcface runs have the sub-centres cleaning needs")
    if not run.is_dir():
        raise UsageError(f"run directory not found: {run}")
    target = out or run / "suspicious.csv"
    summary = clean_run(run, data, target, threshold, pack, batch_size, progress=ui.progress)

    def render(console) -> None:
        from rich.table import Table

        table = Table(title=f"Sub-centre cleaning of {summary.data}")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("images", str(summary.images))
        table.add_row("identities × sub-centres", f"{summary.classes} × {summary.subcenters}")
        for share, count in summary.classes_by_dominant_share.items():
            table.add_row(f"identities with {share} of images at the dominant sub-centre", str(count))
        table.add_row(f"suspicious (> {summary.threshold_deg:g}°)", str(summary.suspicious))
        table.add_row("CSV", summary.csv)
        if summary.pack:
            table.add_row("new pack", summary.pack)
        console.print(table)

    ui.result(summary.as_dict(), render)


def register(app: typer.Typer) -> None:
    """Add ``facecli clean`` to the root app."""
    app.command("clean", no_args_is_help=True)(clean)
