"""``facecli align RAW OUT``: options in, :func:`facecli.align.align_folder` called, a summary table out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from facecli.cli.common import UI
from facecli.cli.options import JsonOpt, QuietOpt, VerboseOpt
from facecli.errors import UsageError

_HELP = """Detect faces under RAW (a folder, any depth, or one image) and write insightface-exact ArcFace crops into
the mirrored tree OUT, with OUT/manifest.csv recording every file. Reruns resume; bad files are skipped and
recorded. Try it: facecli align --example out/"""


def _example_image() -> Path:
    """insightface's bundled six-face photo, the quick-start input."""
    import importlib.util

    spec = importlib.util.find_spec("insightface")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / "data" / "images" / "t1.jpg" if folders else None
    if path is None or not path.is_file():
        raise UsageError(
            "the example photo ships with insightface, which is not installed: pip install 'facecli[insightface]'"
        )
    return path


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
        Optional[str], typer.Argument(help="Input folder (walked recursively) or one image; or a URL (s3://, gs://).")
    ] = None,
    out: Annotated[
        Optional[str], typer.Argument(help="Output folder (created; must not be inside RAW); or a URL (s3://, gs://).")
    ] = None,
    size: Annotated[
        int, typer.Option(help="Crop size: 112, 128, or a multiple of either (insightface scaling).")
    ] = 112,
    select: Annotated[
        str, typer.Option(help="Which faces: largest | center | all (all → stem_0, stem_1, ...).")
    ] = "largest",
    min_face: Annotated[
        float, typer.Option("--min-face", help="Skip faces whose box is smaller (px, shorter side).")
    ] = 0.0,
    min_score: Annotated[float, typer.Option("--min-score", help="Skip faces with a lower detector score.")] = 0.0,
    fmt: Annotated[str, typer.Option("--format", help="Output format: jpg | png.")] = "jpg",
    quality: Annotated[int, typer.Option(help="JPEG quality.")] = 95,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", help="Refuse larger images (decompression bombs).")
    ] = 100_000_000,
    detector: Annotated[str, typer.Option(help="Face detector: mtcnn | scrfd.")] = "mtcnn",
    det_model: Annotated[
        Optional[Path], typer.Option("--det-model", help="ONNX file for --detector scrfd (SCRFD or RetinaFace).")
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="Where the detector runs: cpu, cuda, cuda:N or auto (CUDA if present).")
    ] = "cpu",
    mtcnn_min_size: Annotated[float, typer.Option("--mtcnn-min-size", help="MTCNN smallest face, px.")] = 20.0,
    mtcnn_thresholds: Annotated[
        str, typer.Option("--mtcnn-thresholds", help="MTCNN P,R,O-net thresholds.")
    ] = "0.6,0.7,0.7",
    mtcnn_factor: Annotated[float, typer.Option("--mtcnn-factor", help="MTCNN pyramid scale factor.")] = 0.709,
    landmarks: Annotated[
        Optional[Path], typer.Option(help="CSV path,x1,y1,...,x5,y5: use these landmarks instead of detecting.")
    ] = None,
    assume_aligned: Annotated[bool, typer.Option("--assume-aligned", help="Inputs are aligned: only resize.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo files whose crops already exist.")] = False,
    workers: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            show_default=False,
            help="Worker processes, output identical to 1 (default: one per core from 64 files or 1 MiB on, else 1).",
        ),
    ] = None,
    shard: Annotated[
        Optional[str], typer.Option(help="Do shard I/N (0-based) of the sorted files; default RANK/WORLD_SIZE.")
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
    ui = UI(json=json_, verbose=verbose, quiet=quiet)
    if merge_manifests or example:
        target = out or raw
        if target is None or (raw is not None and out is not None):
            flag = "--merge-manifests" if merge_manifests else "--example"
            raise UsageError(f"{flag} takes exactly one folder: facecli align {flag} OUT")
        if merge_manifests:
            from facecli.align.manifest import merge_manifests as merge

            summary = merge(target)
            ui.result(summary, _render_summary(summary))
            return
        raw, out, select = str(_example_image()), target, "all"
    if raw is None or out is None:
        raise UsageError("align needs RAW and OUT: facecli align RAW OUT (or facecli align --example OUT)")
    try:
        thresholds = tuple(float(t) for t in mtcnn_thresholds.split(","))
    except ValueError:
        raise UsageError(f"--mtcnn-thresholds must be numbers like 0.6,0.7,0.7, got {mtcnn_thresholds!r}") from None
    from facecli.align.pipeline import align_folder

    summary = align_folder(
        raw,
        out,
        size=size,
        select=select,
        min_face=min_face,
        min_score=min_score,
        fmt=fmt,
        quality=quality,
        max_pixels=max_pixels,
        detector=detector,
        detector_options={
            "min_face_size": mtcnn_min_size,
            "thresholds": thresholds,
            "factor": mtcnn_factor,
            "model_path": det_model,
            "device": device,
        },
        landmarks=landmarks,
        assume_aligned=assume_aligned,
        overwrite=overwrite,
        workers=workers,
        shard=shard,
        progress=lambda total: ui.progress("align", total),
    )
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
    ui.result(summary, _render_summary(summary))


def register(app: typer.Typer) -> None:
    """Add ``facecli align`` to the root app."""
    app.command("align", help=_HELP)(align_command)
