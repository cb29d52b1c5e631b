"""``facecli pack``: folder datasets → insightface record files; ``facecli pack pairs``: verification ``.bin`` files.

``facecli pack SRC OUT`` is shorthand for ``facecli pack dataset SRC OUT``: the group inserts the ``dataset``
command when the first word is not one of its commands, so both verbs share the ``pack`` name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from facecli.cli.common import UI
from facecli.cli.options import JsonOpt, QualityOpt, QuietOpt, ResizeOpt, VerboseOpt, workers_option


class _DefaultDatasetGroup(TyperGroup):
    """Routes ``pack SRC OUT ...`` to ``pack dataset SRC OUT ...``; ``pack pairs ...`` stays ``pairs``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["dataset", *args]
        return super().parse_args(ctx, args)


pack_app = typer.Typer(
    cls=_DefaultDatasetGroup,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help=(
        "Images → training records (pack SRC OUT) or verification pairs → .bin (pack pairs).\n\n"
        "[bold]facecli pack SRC OUT[/bold] (= [bold]pack dataset[/bold]): a folder of aligned faces → "
        "train.rec/.idx/property (insightface MS1M layout), labels.csv, records.csv, pack.json.\n\n"
        "[bold]facecli pack pairs[/bold]: a pairs list (LFW pairs.txt, CSV) or --make-pairs → a verification .bin."
    ),
)


@pack_app.command("dataset", no_args_is_help=True)
def dataset(
    src: Annotated[Path, typer.Argument(help="Source folder (or, with --merge, the folder holding the parts).")],
    out: Annotated[Path | None, typer.Argument(help="Output folder for train.rec/.idx/property.")] = None,
    layout: Annotated[str, typer.Option(help="Source layout: folders, kface or csv.")] = "folders",
    labels: Annotated[Path | None, typer.Option(help="--layout csv: CSV with path,label columns.")] = None,
    identity_depth: Annotated[int, typer.Option(help="Folder level that names the identity (1 = top).")] = 1,
    kface_accessories: Annotated[str | None, typer.Option(help="K-Face S### to keep, e.g. 1 or 1-3.")] = None,
    kface_lights: Annotated[str | None, typer.Option(help="K-Face L## to keep, e.g. 1-10.")] = None,
    kface_expressions: Annotated[str | None, typer.Option(help="K-Face E## to keep, e.g. 1-3.")] = None,
    kface_cameras: Annotated[str | None, typer.Option(help="K-Face C## to keep, e.g. 4-10.")] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(help="Keep only paths/identities matching this glob (repeatable)."),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="Drop paths/identities matching this glob, e.g. '김민준/*' (repeatable)."),
    ] = None,
    exclude_list: Annotated[
        Path | None,
        typer.Option(help="CSV of paths to drop (a 'path' column), e.g. from facecli clean."),
    ] = None,
    min_images: Annotated[int, typer.Option(help="Drop identities with fewer images.")] = 1,
    max_images: Annotated[int | None, typer.Option(help="Keep at most N images per identity (seeded sample).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for --max-images.")] = 0,
    no_manifest: Annotated[
        bool,
        typer.Option("--no-manifest", help="Ignore SRC/manifest.csv from facecli align."),
    ] = False,
    layout_out: Annotated[
        str,
        typer.Option(help="ms1m (insightface, header record 0) or flat (im2rec style)."),
    ] = "ms1m",
    resize: ResizeOpt = None,
    quality: QualityOpt = 95,
    verify: Annotated[str, typer.Option(help="header: check headers (fast); decode: decode every image.")] = "header",
    workers: Annotated[int, workers_option("1")] = 1,
    shard: Annotated[str | None, typer.Option(help="Write part I of N (I/N); combine with --merge.")] = None,
    merge: Annotated[
        bool,
        typer.Option("--merge", help="Merge the --shard parts in SRC (OUT defaults to SRC)."),
    ] = False,
    lst: Annotated[
        Path | None,
        typer.Option(
            help="Pack an im2rec .lst (paths relative to SRC) in its order and keys, like im2rec --pass-through.",
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Base name of the record files.")] = "train",
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Pack a folder of aligned faces into insightface record files (facecli pack SRC OUT)."""
    from facecli.data.pack_request import PackRequest, pack_dataset, parse_shard, parse_size

    ui = UI(json=json_, verbose=verbose, quiet=quiet)
    request = PackRequest(
        src=src, out=out, layout=layout, labels=labels, identity_depth=identity_depth,
        kface_accessories=kface_accessories, kface_lights=kface_lights, kface_expressions=kface_expressions,
        kface_cameras=kface_cameras, include=tuple(include or ()), exclude=tuple(exclude or ()),
        exclude_list=exclude_list, min_images=min_images, max_images=max_images, seed=seed,
        use_manifest=not no_manifest, layout_out=layout_out, resize=parse_size(resize), quality=quality,
        verify=verify, workers=workers, shard=parse_shard(shard), merge=merge, lst=lst, name=name,
    )
    _report(ui, pack_dataset(request, ui))


def _report(ui: UI, result) -> None:
    data = result.as_dict()
    for item in result.skipped[:20] if ui.verbose else result.skipped[:5]:
        ui.warn(f"skipped {item['path']}: {item['status']} ({item['reason']})")
    if len(result.skipped) > (20 if ui.verbose else 5):
        ui.warn(f"... {len(result.skipped)} images skipped in all (listed in pack.json / --json)")

    def render(console) -> None:
        from rich.table import Table

        title = f"packed {result.out}" + (f" (shard {result.shard[0]}/{result.shard[1]})" if result.shard else "")
        table = Table(title=title, show_header=False)
        table.add_row("identities", str(result.num_classes))
        table.add_row("images", str(result.num_images))
        if result.image_size:
            table.add_row("image size", "{}x{}".format(*result.image_size))
        table.add_row("layout", result.layout_out if not result.shard else "part (merge with --merge)")
        for status, count in result.statuses.items():
            table.add_row(f"  {status}", str(count))
        if result.dropped_identities:
            table.add_row("identities dropped", str(result.dropped_identities))
        for fname, info in result.files.items():
            table.add_row(fname, f"{info['size']:,} bytes  sha256 {info['sha256'][:16]}…")
        console.print(table)

    ui.result(data, render)


@pack_app.command("pairs", no_args_is_help=True)
def pairs(
    source: Annotated[
        Path,
        typer.Argument(help="pairs.txt (LFW), a CSV (path1,path2,same), or with --make-pairs an identity-folder tree."),
    ],
    out: Annotated[Path, typer.Argument(help="The .bin file to write.")],
    root: Annotated[
        Path | None,
        typer.Option(help="Folder the listed images are in (default: beside the pairs file)."),
    ] = None,
    make_pairs: Annotated[
        int | None,
        typer.Option(help="Generate N pairs (multiple of 20) from SOURCE's identity folders."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for --make-pairs.")] = 0,
    ext: Annotated[str, typer.Option(help="pairs.txt: image file extension (name/name_NNNN.EXT).")] = "jpg",
    resize: ResizeOpt = None,
    quality: QualityOpt = 95,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Fail instead of warning about missing or suspicious images."),
    ] = False,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Build an insightface verification .bin (pair i = images 2i, 2i+1) and check it for common mistakes."""
    from facecli.data.pack_request import PairsRequest, pack_pairs, parse_size

    ui = UI(json=json_, verbose=verbose, quiet=quiet)
    request = PairsRequest(source=source, out=out, root=root, make_pairs=make_pairs, seed=seed, ext=ext,
                           resize=parse_size(resize), quality=quality, strict=strict)
    report = pack_pairs(request, ui)

    def render(console) -> None:
        from rich.table import Table

        table = Table(title=f"wrote {out}", show_header=False)
        for label, value in (("pairs", report.pairs), ("genuine", report.genuine), ("impostor", report.impostor),
                             ("images", report.images),
                             ("sizes", ", ".join(f"{k} ({v})" for k, v in sorted(report.sizes.items()))),
                             ("warnings", len(report.warnings))):
            table.add_row(label, str(value))
        console.print(table)

    from dataclasses import asdict

    ui.result(asdict(report), render)


def register(app: typer.Typer) -> None:
    """Add ``facecli pack`` (dataset + pairs) to the root app."""
    app.add_typer(pack_app, name="pack")
