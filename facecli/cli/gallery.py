"""``facecli gallery``: enrol people, calibrate the accept threshold on strangers, search, evaluate, add, remove.

Each command turns its options into a request of :mod:`facecli.gallery.verbs`, runs it with the UI as feedback and
renders the result; the verbs write every file themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from facecli.cli.common import UI
from facecli.cli.options import (
    AlignFacesOpt,
    BatchSizeOpt,
    BgrOpt,
    DeviceOpt,
    GalleryModelOpt,
    JsonOpt,
    MeanOpt,
    QuietOpt,
    RequiredModelOpt,
    StdOpt,
    VerboseOpt,
    out_option,
    select_option,
)

if TYPE_CHECKING:  # the gallery stack (numpy, the models) is imported when a command runs, not at start-up
    from facecli.gallery.verbs import CalibrateRequest, SearchRequest, VerbResult

sub = typer.Typer(
    help="Open-set identification: enrol identities, calibrate a threshold on strangers, search, evaluate.",
    no_args_is_help=True,
)

GalleryOpt = Annotated[Path, typer.Option("--gallery", "-g", help="The gallery file (.npz).")]
SELECT_CHOICES = "center (nearest the centre) or largest"
ProbeSelectOpt = Annotated[str | None, select_option(SELECT_CHOICES + " (default: as the gallery was built)")]
Render = Callable[[Console], None]


def _ui(json_: bool, verbose: int, quiet: bool) -> UI:
    return UI(json=json_, verbose=verbose, quiet=quiet)


def build(
    images: Annotated[Path, typer.Argument(help="One folder per identity: IMAGES/NAME/*.jpg.")],
    out: Annotated[Path, out_option("Gallery file to write (.npz).")],
    model: RequiredModelOpt,
    mean: MeanOpt = None,
    std: StdOpt = None,
    bgr: BgrOpt = None,
    align: AlignFacesOpt = False,
    select: Annotated[str, select_option(SELECT_CHOICES)] = "center",
    flip: Annotated[str, typer.Option("--flip", help="Flip fusion: sum, concat or none.")] = "sum",
    weighting: Annotated[
        str, typer.Option("--weighting", help="Template weights: none, or norm (MagFace/AdaFace quality).")
    ] = "none",
    dtype: Annotated[
        str, typer.Option("--dtype", help="Stored precision: float32 or float16 (half the memory).")
    ] = "float32",
    quality_threshold: Annotated[
        float | None,
        typer.Option(
            "--quality-threshold",
            help="Skip faces whose quality (norm of the raw unflipped embedding, MagFace/AdaFace) is below Q.",
        ),
    ] = None,
    device: DeviceOpt = "cpu",
    batch_size: BatchSizeOpt = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Enrol every identity folder: one template per identity (mean of unit embeddings), model fingerprint stored."""
    from facecli.gallery.verbs import BuildRequest, ModelChoice
    from facecli.gallery.verbs import build as run

    ui = _ui(json_, verbose, quiet)
    request = BuildRequest(images, out, ModelChoice(model, mean, std, bgr, device, batch_size), bool(align), select,
                           flip, weighting, dtype, quality_threshold)
    data = run(request, ui).data
    ui.result(data, lambda console: console.print(
        f"enrolled {data['identities']} identities from {data['images']} images ({data['skipped']} skipped) -> {out}\n"
        "next: choose the accept threshold on strangers with `facecli gallery calibrate`", highlight=False))


def _render_calibration(request: CalibrateRequest, done: VerbResult) -> Render:
    result = done.calibration
    assert result is not None
    far = request.far

    def ci(interval: Any) -> str:
        return f"[{interval[0]:.2g}, {interval[1]:.2g}]"

    def render(console: Console) -> None:
        source = f"{result.n_probes} strangers" if not request.pairs else f"{result.n_comparisons} impostor pairs"
        table = Table(title=f"threshold for {request.metric.upper()} {far:g} on {source}")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("cosine threshold", f"{result.threshold:.6f}")
        if result.fpir is not None:
            table.add_row("FPIR (per probe) achieved",
                          f"{result.fpir:.4g}  {ci(result.fpir_ci95)}  ({result.n_probes} probes)")
        table.add_row(
            "FAR (per comparison) achieved",
            f"{result.far:.4g}  {ci(result.far_ci95)}  ({result.n_comparisons} comparisons)",
        )
        if result.fpir_threshold is not None:
            table.add_row(f"threshold for FPIR {far:g}", f"{result.fpir_threshold:.6f}")
        table.add_row(f"threshold for FAR {far:g}", f"{result.far_threshold:.6f}")
        console.print(table)
        console.print(f"stored in {request.gallery} (95% intervals in brackets)", highlight=False)

    return render


def calibrate(
    gallery: GalleryOpt,
    impostors: Annotated[
        Path,
        typer.Option(
            "--impostors",
            help=(
                "Photos of people NOT in the gallery (one folder per person, or flat), or a pairs .bin (FAR only)."
            ),
        ),
    ],
    far: Annotated[float, typer.Option("--far", help="Target false-accept rate.")] = 1e-3,
    metric: Annotated[
        str,
        typer.Option(
            "--metric", help="fpir: per probe, over the whole gallery (search decisions); far: per comparison."
        ),
    ] = "fpir",
    model: GalleryModelOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    bgr: BgrOpt = None,
    align: AlignFacesOpt = None,
    select: ProbeSelectOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: BatchSizeOpt = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Choose the cosine threshold that gives the target false-accept rate on strangers, and store it in the gallery.

    IMPOSTORS is a folder of strangers (FPIR and FAR), or a verification .bin whose impostor pairs give FAR only.
    """
    from facecli.gallery.verbs import CalibrateRequest, ModelChoice, ProbeAlignment
    from facecli.gallery.verbs import calibrate as run

    ui = _ui(json_, verbose, quiet)
    request = CalibrateRequest(gallery, impostors, far, metric, ModelChoice(model, mean, std, bgr, device, batch_size),
                               ProbeAlignment(align, select))
    done = run(request, ui)
    ui.result(done.data, _render_calibration(request, done))


def _render_search(request: SearchRequest, done: VerbResult) -> Render:
    def render(console: Console) -> None:
        threshold = done.data["threshold"]
        title = f"search in {request.gallery.name} ({done.gallery.size} identities, threshold {threshold:.4f})"
        table = Table(title=title)
        table.add_column("probe")
        table.add_column("decision")
        table.add_column("score", justify="right")
        table.add_column(f"top {request.top_k}")
        for r in done.data["results"]:
            if r["status"] != "ok":
                table.add_row(r["probe"], f"[red]{r['status']}[/red]", "", r["reason"])
                continue
            style = "yellow" if r["decision"] == "unknown" else "green"
            tops = ", ".join(f"{m['identity']} {m['score']:.3f}" for m in r["top_k"])
            table.add_row(r["probe"], f"[{style}]{r['decision']}[/{style}]", f"{r['score']:.4f}", tops)
        console.print(table)

    return render


def search(
    probes: Annotated[Path, typer.Argument(help="A probe image, a flat folder, or one folder per identity.")],
    gallery: GalleryOpt,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Matches listed per probe.")] = 5,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Cosine accept threshold (default: the calibrated one).")
    ] = None,
    index: Annotated[
        str,
        typer.Option(
            "--index",
            help=(
                "exact; faiss (IVF-Flat above 100k), faiss-pq (all PQ codes scanned), faiss-ivfpq (PQ codes in cells) "
                "or faiss-hnsw (graph): need faiss-cpu, cached beside the gallery, recall vs exact and memory reported."
            ),
        ),
    ] = "exact",
    search_width: Annotated[
        int | None,
        typer.Option(
            "--search-width",
            help=(
                "FAISS: IVF cells scanned (nprobe, default 64), HNSW beam (efSearch, default 128) or, for faiss-pq, "
                "candidates re-scored exactly (default 256); wider = higher recall, slower."
            ),
        ),
    ] = None,
    out: Annotated[Path | None, out_option("Also write the results to a .csv or .json file.")] = None,
    model: GalleryModelOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    bgr: BgrOpt = None,
    align: AlignFacesOpt = None,
    select: ProbeSelectOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: BatchSizeOpt = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Identify each probe: its top-k identities with cosine scores, or `unknown` below the threshold."""
    from facecli.gallery.verbs import ModelChoice, ProbeAlignment, SearchRequest
    from facecli.gallery.verbs import search as run

    ui = _ui(json_, verbose, quiet)
    request = SearchRequest(probes, gallery, top_k, threshold, index, search_width, out,
                            ModelChoice(model, mean, std, bgr, device, batch_size), ProbeAlignment(align, select))
    done = run(request, ui)
    ui.result(done.data, _render_search(request, done))


def _render_evaluation(done: VerbResult) -> Render:
    report = done.report
    assert report is not None

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    def render(console: Console) -> None:
        table = Table(title=f"open-set identification: {report.n_mated} mated, {report.n_nonmated} non-mated probes")
        for column in ("operating point", "threshold", "FPIR", "DIR", "FNIR"):
            table.add_column(column, justify="right")
        for p in report.at_fpir:
            table.add_row(f"FPIR {p.target_fpir:g}", f"{p.threshold:.4f}", fmt(p.fpir), fmt(p.dir), fmt(p.fnir))
        if report.at_threshold is not None:
            p = report.at_threshold
            table.add_row("gallery threshold", f"{p.threshold:.4f}", fmt(p.fpir), fmt(p.dir), fmt(p.fnir))
        console.print(table)
        console.print(f"closed-set rank-1 {fmt(report.rank1)}, rank-5 {fmt(report.rank5)}", highlight=False)

    return render


def evaluate(
    gallery: GalleryOpt,
    probes: Annotated[
        Path,
        typer.Option("--probes", help="One folder per identity; enrolled names are mated probes, others strangers."),
    ],
    fpir: Annotated[str, typer.Option("--fpir", help="FPIR operating points, comma separated.")] = "1e-3,1e-2,1e-1",
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Also report this threshold (default: the calibrated one)."),
    ] = None,
    out: Annotated[Path | None, out_option("Folder for report.json and det.png.")] = None,
    model: GalleryModelOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    bgr: BgrOpt = None,
    align: AlignFacesOpt = None,
    select: ProbeSelectOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: BatchSizeOpt = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Open-set metrics: DIR and FNIR at FPIR, rank-1/5, the calibrated operating point, a DET plot."""
    from facecli.gallery.verbs import EvaluateRequest, ModelChoice, ProbeAlignment, parse_rates
    from facecli.gallery.verbs import evaluate as run

    ui = _ui(json_, verbose, quiet)
    request = EvaluateRequest(gallery, probes, parse_rates(fpir), threshold, out,
                              ModelChoice(model, mean, std, bgr, device, batch_size), ProbeAlignment(align, select))
    done = run(request, ui)
    ui.result(done.data, _render_evaluation(done))


def add(
    images: Annotated[
        Path, typer.Argument(help="One folder per identity: new people, or more photos of enrolled ones.")
    ],
    gallery: GalleryOpt,
    model: GalleryModelOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    bgr: BgrOpt = None,
    align: AlignFacesOpt = None,
    select: ProbeSelectOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: BatchSizeOpt = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Enrol more images into an existing gallery (files already enrolled are skipped); written atomically."""
    from facecli.gallery.verbs import AddRequest, ModelChoice, ProbeAlignment
    from facecli.gallery.verbs import add as run

    ui = _ui(json_, verbose, quiet)
    request = AddRequest(images, gallery, ModelChoice(model, mean, std, bgr, device, batch_size),
                         ProbeAlignment(align, select))
    data = run(request, ui).data
    ui.result(data, lambda console: console.print(
        f"added {data['added']} images ({data['already_enrolled']} already enrolled, {data['skipped']} skipped); "
        f"{data['identities']} identities in {gallery}", highlight=False))


def remove(
    identities: Annotated[list[str], typer.Argument(help="Identity names to remove.")],
    gallery: GalleryOpt,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Remove identities (all their images) from the gallery; written atomically."""
    from facecli.gallery.verbs import remove as run

    ui = _ui(json_, verbose, quiet)
    data = run(gallery, identities, ui).data
    ui.result(data, lambda console: console.print(
        f"removed {len(set(identities))} identities; {data['identities']} left in {gallery}", highlight=False))


def register(app: typer.Typer) -> None:
    """Add ``facecli gallery build|calibrate|search|evaluate|add|remove``."""
    for name, fn in (("build", build), ("calibrate", calibrate), ("search", search), ("evaluate", evaluate),
                     ("add", add), ("remove", remove)):
        sub.command(name)(fn)
    app.add_typer(sub, name="gallery")
