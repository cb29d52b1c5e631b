"""``facecli pack``: folder datasets → insightface record files; ``facecli pack pairs``: verification ``.bin`` files.

``facecli pack SRC OUT`` is shorthand for ``facecli pack dataset SRC OUT``: the group inserts the ``dataset``
command when the first word is not one of its commands, so both verbs share the ``pack`` name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from typer.core import TyperGroup

from facecli.cli.common import UI
from facecli.cli.options import JsonOpt, QuietOpt, VerboseOpt
from facecli.errors import UsageError


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


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or int(match.group(2)) < 1:
        raise UsageError(f"--shard {text!r}: expected I/N, e.g. 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    if index >= count:
        raise UsageError(f"--shard {text}: I must be in 0..N-1")
    return index, count


def _parse_size(text: str | None) -> tuple[int, int] | None:
    """``112`` or ``112x96`` (width x height) → (width, height)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not match or int(match.group(1)) < 1:
        raise UsageError(f"--resize {text!r}: expected N or WxH, e.g. 112")
    w = int(match.group(1))
    return w, int(match.group(2) or w)


@pack_app.command("dataset", no_args_is_help=True)
def dataset(
    src: Annotated[Path, typer.Argument(help="Source folder (or, with --merge, the folder holding the parts).")],
    out: Annotated[Optional[Path], typer.Argument(help="Output folder for train.rec/.idx/property.")] = None,
    layout: Annotated[str, typer.Option(help="Source layout: folders, kface or csv.")] = "folders",
    labels: Annotated[Optional[Path], typer.Option(help="--layout csv: CSV with path,label columns.")] = None,
    identity_depth: Annotated[int, typer.Option(help="Folder level that names the identity (1 = top).")] = 1,
    kface_accessories: Annotated[Optional[str], typer.Option(help="K-Face S### to keep, e.g. 1 or 1-3.")] = None,
    kface_lights: Annotated[Optional[str], typer.Option(help="K-Face L## to keep, e.g. 1-10.")] = None,
    kface_expressions: Annotated[Optional[str], typer.Option(help="K-Face E## to keep, e.g. 1-3.")] = None,
    kface_cameras: Annotated[Optional[str], typer.Option(help="K-Face C## to keep, e.g. 4-10.")] = None,
    include: Annotated[Optional[List[str]], typer.Option(help="Keep only paths/identities matching this glob (repeatable).")] = None,
    exclude: Annotated[Optional[List[str]], typer.Option(help="Drop paths/identities matching this glob, e.g. '김민준/*' (repeatable).")] = None,
    exclude_list: Annotated[Optional[Path], typer.Option(help="CSV of paths to drop (a 'path' column), e.g. from facecli clean.")] = None,
    min_images: Annotated[int, typer.Option(help="Drop identities with fewer images.")] = 1,
    max_images: Annotated[Optional[int], typer.Option(help="Keep at most N images per identity (seeded sample).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for --max-images.")] = 0,
    no_manifest: Annotated[bool, typer.Option("--no-manifest", help="Ignore SRC/manifest.csv from facecli align.")] = False,
    layout_out: Annotated[str, typer.Option(help="ms1m (insightface, header record 0) or flat (im2rec style).")] = "ms1m",
    resize: Annotated[Optional[str], typer.Option(help="Resize images of another size to N or WxH (e.g. 112).")] = None,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality for images that must be encoded.")] = 95,
    verify: Annotated[str, typer.Option(help="header: check headers (fast); decode: decode every image.")] = "header",
    workers: Annotated[int, typer.Option(min=1, help="Processes preparing images (output is identical).")] = 1,
    shard: Annotated[Optional[str], typer.Option(help="Write part I of N (I/N); combine with --merge.")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Merge the --shard parts in SRC (OUT defaults to SRC).")] = False,
    lst: Annotated[Optional[Path], typer.Option(help="Pack an im2rec .lst (paths relative to SRC) in its order and keys, like im2rec --pass-through.")] = None,
    name: Annotated[str, typer.Option(help="Base name of the record files.")] = "train",
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Pack a folder of aligned faces into insightface record files (facecli pack SRC OUT)."""
    from facecli.data import pack as packing
    from facecli.data.layouts import Selection, build_layout, parse_ranges, read_exclude_list
    from facecli.data.payloads import VERIFY_MODES

    ui = UI(json=json_, verbose=verbose, quiet=quiet)
    if layout_out not in packing.LAYOUTS_OUT:
        raise UsageError(f"--layout-out {layout_out!r}: choose one of {', '.join(packing.LAYOUTS_OUT)}")
    if merge:
        folder = out or src
        if not folder.is_dir():
            raise UsageError(f"folder not found: {folder}")
        with ui.progress("merging", None) as advance:
            result = packing.merge_parts(folder, name=name, layout_out=layout_out, advance=advance)
        _report(ui, result)
        return
    if out is None:
        raise UsageError("missing argument OUT (the output folder)")
    if verify not in VERIFY_MODES:
        raise UsageError(f"--verify {verify!r}: choose one of {', '.join(VERIFY_MODES)}")
    if lst is not None:
        options = packing.PackOptions(quality=quality, resize=_parse_size(resize), verify=verify, workers=workers,
                                      name=name)
        with ui.progress("packing", None) as advance:
            result = packing.pack_lst(lst, src, out, options, advance=advance)
        _report(ui, result)
        return
    if max_images is not None and max_images < 1:
        raise UsageError("--max-images must be at least 1")
    if src.is_dir() and out.resolve().is_relative_to(src.resolve()):
        raise UsageError(f"OUT ({out}) must not be inside SRC ({src}): it would be packed as an identity")
    shard_spec = _parse_shard(shard)
    size = _parse_size(resize)
    layout_obj = build_layout(
        layout,
        src,
        use_manifest=not no_manifest,
        identity_depth=identity_depth,
        labels=labels,
        accessories=parse_ranges(kface_accessories, "--kface-accessories"),
        lights=parse_ranges(kface_lights, "--kface-lights"),
        expressions=parse_ranges(kface_expressions, "--kface-expressions"),
        cameras=parse_ranges(kface_cameras, "--kface-cameras"),
    )
    if type(layout_obj).__name__ == "ManifestLayout":
        ui.info(f"using {src / 'manifest.csv'} from facecli align (only 'ok' faces)")
    selection = Selection(
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        excluded_paths=read_exclude_list(exclude_list, src) if exclude_list else frozenset(),
        min_images=max(min_images, 1),
        max_images=max_images,
        seed=seed,
    )
    settings = {
        "layout": layout,
        "identity_depth": identity_depth,
        "labels": str(labels) if labels else None,
        "kface": {"accessories": kface_accessories, "lights": kface_lights,
                  "expressions": kface_expressions, "cameras": kface_cameras},
        "include": list(include or ()),
        "exclude": list(exclude or ()),
        "exclude_list": str(exclude_list) if exclude_list else None,
        "min_images": min_images,
        "max_images": max_images,
        "seed": seed,
        "resize": list(size) if size else None,
        "quality": quality,
        "verify": verify,
    }
    options = packing.PackOptions(
        layout_out=layout_out, quality=quality, resize=size, verify=verify, workers=workers,
        shard=shard_spec, name=name,
    )
    total = len(layout_obj.identities()) if shard_spec is None else None
    with ui.progress("packing identities", total) as advance:
        result = packing.write_pack(packing.lazy_plan(layout_obj, selection, size), out, options,
                                    source=str(src.resolve()), advance=advance, settings=settings)
    if result.num_images == 0:
        raise UsageError(f"no images packed from {src} (layout {layout}); check the layout and filters")
    _report(ui, result)


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
    source: Annotated[Path, typer.Argument(help="pairs.txt (LFW), a CSV (path1,path2,same), or with --make-pairs an identity-folder tree.")],
    out: Annotated[Path, typer.Argument(help="The .bin file to write.")],
    root: Annotated[Optional[Path], typer.Option(help="Folder the listed images are in (default: beside the pairs file).")] = None,
    make_pairs: Annotated[Optional[int], typer.Option(help="Generate N pairs (multiple of 20) from SOURCE's identity folders.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for --make-pairs.")] = 0,
    ext: Annotated[str, typer.Option(help="pairs.txt: image file extension (name/name_NNNN.EXT).")] = "jpg",
    resize: Annotated[Optional[str], typer.Option(help="Resize images that are not this size (N or WxH) and re-encode them.")] = None,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality for resized images.")] = 95,
    strict: Annotated[bool, typer.Option("--strict", help="Fail instead of warning about missing or suspicious images.")] = False,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Build an insightface verification .bin (pair i = images 2i, 2i+1) and check it for common mistakes."""
    from facecli.data import pairs as pairlib
    from facecli.errors import FacecliError

    ui = UI(json=json_, verbose=verbose, quiet=quiet)
    if make_pairs is not None:
        if not source.is_dir():
            raise UsageError(f"--make-pairs needs an identity-folder tree; {source} is not a folder")
        pair_list = pairlib.make_pairs(source, make_pairs, seed=seed)
        base = source
    else:
        if not source.is_file():
            raise UsageError(f"pairs file not found: {source}")
        base = root or source.parent
        if source.suffix.lower() == ".csv":
            pair_list = pairlib.read_pairs_csv(source, base)
        else:
            pair_list = pairlib.read_pairs_txt(source, base, ext=ext)
    if not pair_list:
        raise UsageError(f"{source}: no pairs")
    with ui.progress("reading pairs", len(pair_list)) as advance:
        report = pairlib.build_bin(pair_list, out, resize=_parse_size(resize), quality=quality, advance=advance)
    if make_pairs is not None:
        pairlib.write_pairs_csv(pair_list, out.with_suffix(".pairs.csv"), base)
    for warning in report.warnings:
        ui.warn(warning)
    for line in (report.missing + report.unaligned + report.label_mismatch)[: 50 if verbose else 0]:
        ui.detail(line)
    if strict and report.warnings:
        out.unlink(missing_ok=True)
        raise FacecliError(f"--strict: {len(report.warnings)} problem(s) found; {out} not written")

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
