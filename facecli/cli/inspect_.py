"""``facecli inspect`` (what is in a .rec, .bin or image folder; ``--check``; ``--grid``) and ``facecli unpack``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facecli.cli.common import UI
from facecli.cli.options import JsonOpt, QuietOpt, VerboseOpt
from facecli.progress import no_progress


def inspect(
    path: Annotated[Path, typer.Argument(help="A .rec (or the folder holding it), a .bin, or an image folder.")],
    check: Annotated[bool, typer.Option("--check", help="Read and decode everything; list every bad record.")] = False,
    grid: Annotated[Path | None, typer.Option(help="Write a contact sheet PNG of sample images with labels.")] = None,
    samples: Annotated[int, typer.Option(min=1, help="Images on the --grid sheet.")] = 48,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Summarise a dataset: counts, identities, images per identity, sizes, labels, layout; optionally check it."""
    from facecli.data import inspect as inspection
    from facecli.errors import FacecliError

    ui = UI(json=json_, verbose=verbose, quiet=quiet)
    total = inspection.work_for_check(path) if check else None
    with (ui.progress if check else no_progress)("checking", total) as advance:
        info, sampled = inspection.inspect_path(path, check=check, samples=samples if grid else 0, advance=advance)
    if grid is not None:
        inspection.contact_sheet(sampled, grid)
        info["grid"] = str(grid)
    ui.result(info, lambda console: _render(console, info))
    result = info.get("check")
    if result is not None:
        for item in result["bad"][: 100 if verbose else 10]:
            ui.warn(f"{_where(item)}: {item['error']}")
        problems = len(result["bad"]) + len(result.get("scan", []))
        if problems:
            raise FacecliError(f"{path}: {problems} problem(s) found by --check")


def _where(item: dict) -> str:
    if "key" in item:
        return f"key {item['key']} (byte offset {item['offset']})"
    if "pair" in item:
        return f"image {item['image']} (pair {item['pair']})"
    return item.get("path", "?")


def _render(console, info: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{info['kind']}: {info['path']}", show_header=False)
    for key, value in info.items():
        if key in ("kind", "path", "check"):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        table.add_row(key.replace("_", " "), str(value))
    check = info.get("check")
    if check is not None:
        table.add_row("check", "ok" if check["ok"] and not check.get("scan") else
                      f"{len(check['bad'])} bad, {len(check.get('scan', []))} scan problem(s)")
    console.print(table)


def unpack(
    rec: Annotated[Path, typer.Argument(help="A .rec file or the folder holding train.rec.")],
    out: Annotated[Path, typer.Argument(help="Output folder: one subfolder per identity.")],
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Write the images of a record file back to identity folders (stored bytes, no re-encoding)."""
    from dataclasses import asdict

    from facecli.data.recordio import RecordReader
    from facecli.data.unpack import find_record_file, unpack_records
    from facecli.errors import FacecliError

    ui = UI(json=json_, verbose=verbose, quiet=quiet)
    rec_file = find_record_file(rec)
    with ui.progress("unpacking", len(RecordReader(rec_file))) as advance:
        result = unpack_records(rec_file, out, advance=advance)
    for bad in result.bad[:20]:
        ui.warn(f"record {bad['key']} at byte {bad['offset']}: {bad['error']}")

    def render(console) -> None:
        console.print(f"wrote {result.images} images of {result.identities} identities to {out} "
                      f"({result.layout} layout)")

    ui.result(asdict(result), render)
    if result.bad:
        raise FacecliError(f"{len(result.bad)} damaged record(s) skipped ({result.images} written)")


def register(app: typer.Typer) -> None:
    """Add ``facecli inspect`` and ``facecli unpack`` to the root app."""
    app.command("inspect", no_args_is_help=True)(inspect)
    app.command("unpack", no_args_is_help=True)(unpack)
