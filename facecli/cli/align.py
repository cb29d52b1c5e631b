"""``facecli align RAW OUT``: options in, an :class:`~facecli.align.request.AlignRequest` run, a summary table out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facecli.cli.common import UI
from facecli.cli.options import (
    DetectorDeviceOpt,
    JsonOpt,
    QualityOpt,
    QuietOpt,
    VerboseOpt,
    registry_help,
    select_option,
    workers_option,
)

_HELP = """Detect faces under RAW (a folder, any depth, or one image) and write insightface-exact ArcFace crops into
the mirrored tree OUT, with OUT/manifest.csv recording every file. Reruns resume; bad files are skipped and
recorded. Try it: facecli align --example out/"""


def _render_summary(summary: dict):
    def render(console) -> None:
        from rich.table import Table

        title = "facecli align" if "rows" not in summary else "facecli align --merge-manifests"
        table = Table(title=title, show_edge=False)
        table.add_column("status")
        table.add_column("files", justify="right")
        for status, count in summary["counts"].items():
            style = "green" if status == "ok" else ("" if status == "skipped_existing" else "yellow")
            table.add_row(f"[{style}]{status}[/]" if style else status, str(count))
        console.print(table)
        if "rows" in summary:
            console.print(f"{summary['files']} files from {summary['shards']} shards → {summary['manifest']}")
            return
        console.print(
            f"{summary['crops_written']} crops from {summary['processed']} images in {summary['seconds']:.1f}s "
            f"({summary['images_per_s'] or 0:.1f} images/s) → {summary['out']}"
        )
        console.print(f"manifest: {summary['manifest']}")

    return render


def align_command(
    raw: Annotated[
        str | None, typer.Argument(help="Input folder (walked recursively) or one image; or a URL (s3://, gs://).")
    ] = None,
    out: Annotated[
        str | None, typer.Argument(help="Output folder (created; must not be inside RAW); or a URL (s3://, gs://).")
    ] = None,
    size: Annotated[
        int, typer.Option(help="Crop size: 112, 128, or a multiple of either (insightface scaling).")
    ] = 112,
    select: Annotated[
        str, select_option("largest, center (nearest the centre) or all (stem_0, stem_1, ...)")
    ] = "largest",
    min_face: Annotated[
        float, typer.Option("--min-face", help="Skip faces whose box is smaller (px, shorter side).")
    ] = 0.0,
    min_score: Annotated[float, typer.Option("--min-score", help="Skip faces with a lower detector score.")] = 0.0,
    fmt: Annotated[str, typer.Option("--format", help="Output format: jpg | png.")] = "jpg",
    quality: QualityOpt = 95,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", help="Refuse larger images (decompression bombs).")
    ] = 100_000_000,
    detector: Annotated[str, typer.Option(help="Face detector.")] = "mtcnn",
    det_model: Annotated[
        Path | None, typer.Option("--det-model", help="ONNX file for --detector scrfd (SCRFD or RetinaFace).")
    ] = None,
    device: DetectorDeviceOpt = "cpu",
    mtcnn_min_size: Annotated[float, typer.Option("--mtcnn-min-size", help="MTCNN smallest face, px.")] = 20.0,
    mtcnn_thresholds: Annotated[
        str, typer.Option("--mtcnn-thresholds", help="MTCNN P,R,O-net thresholds.")
    ] = "0.6,0.7,0.7",
    mtcnn_factor: Annotated[float, typer.Option("--mtcnn-factor", help="MTCNN pyramid scale factor.")] = 0.709,
    landmarks: Annotated[
        Path | None, typer.Option(help="CSV path,x1,y1,...,x5,y5: use these landmarks instead of detecting.")
    ] = None,
    assume_aligned: Annotated[bool, typer.Option("--assume-aligned", help="Inputs are aligned: only resize.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo files whose crops already exist.")] = False,
    workers: Annotated[int | None, workers_option("one per core from 64 files or 1 MiB on, else 1")] = None,
    shard: Annotated[
        str | None, typer.Option(help="Do shard I/N (0-based) of the sorted files; default RANK/WORLD_SIZE.")
    ] = None,
    merge_manifests: Annotated[
        bool, typer.Option("--merge-manifests", help="Join OUT's shard manifests into manifest.csv, then stop.")
    ] = False,
    example: Annotated[
        bool, typer.Option("--example", help="Align the six faces of insightface's sample photo t1.jpg into OUT.")
    ] = False,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Align faces: detect, choose, warp to ArcFace crops, write OUT/manifest.csv."""
    from facecli.align.request import AlignRequest, parse_thresholds, run

    ui = UI(json=json_, verbose=verbose, quiet=quiet)
    request = AlignRequest(
        raw=raw, out=out, size=size, select=select, min_face=min_face, min_score=min_score, fmt=fmt,
        quality=quality, max_pixels=max_pixels, detector=detector, det_model=det_model, device=device,
        mtcnn_min_size=mtcnn_min_size, mtcnn_thresholds=parse_thresholds(mtcnn_thresholds),
        mtcnn_factor=mtcnn_factor, landmarks=landmarks, assume_aligned=assume_aligned, overwrite=overwrite,
        workers=workers, shard=shard, merge_manifests=merge_manifests, example=example,
    )
    summary = run(request, ui)
    if not merge_manifests:
        _warn_about(ui, summary)
    ui.result(summary, _render_summary(summary))


def _warn_about(ui: UI, summary: dict) -> None:
    """What the user should look at after an alignment run: redone crops, files without a crop, unlisted folders."""
    if summary["stale_redone"]:
        ui.warn(
            f"{summary['stale_redone']} files had crops made with other settings (size, format, quality, detector, "
            "selection or landmarks); they were redone"
        )
    if summary["warnings"]:
        ui.warn(f"{summary['warnings']} of {summary['files']} files gave no crop; see {summary['manifest']}")
    if summary["folders_unlisted"]:
        ui.warn(f"{len(summary['folders_unlisted'])} folders could not be listed, their files were not aligned: "
                + "; ".join(summary["folders_unlisted"][:5]))


def _detector_help() -> str:
    from facecli.align.detectors import DETECTORS

    return f"Face detector, one of: {', '.join(DETECTORS.names())}."


def register(app: typer.Typer) -> None:
    """Add ``facecli align`` to the root app."""
    app.command("align", help=_HELP, cls=registry_help(detector=_detector_help))(align_command)
