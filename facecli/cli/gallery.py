"""``facecli gallery``: enrol people, calibrate the accept threshold on strangers, search, evaluate, add, remove."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from facecli.cli.common import UI, to_jsonable
from facecli.cli.options import BatchSizeOpt, BgrOpt, DeviceOpt, JsonOpt, MeanOpt, QuietOpt, StdOpt, VerboseOpt

sub = typer.Typer(
    help="Open-set identification: enrol identities, calibrate a threshold on strangers, search, evaluate.",
    no_args_is_help=True,
)

GalleryOpt = Annotated[Path, typer.Option("--gallery", "-g", help="The gallery file (.npz).")]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="ONNX model or facecli run/checkpoint. Default: the gallery's own model."),
]
AlignOpt = Annotated[
    Optional[bool],
    typer.Option("--align/--no-align", help="Detect and align faces in raw photos (default: as the gallery was built)."),
]
SelectOpt = Annotated[Optional[str], typer.Option("--select", help="Face to keep per photo: center or largest.")]


def _ui(json_: bool, verbose: int, quiet: bool) -> UI:
    return UI(json=json_, verbose=verbose, quiet=quiet)


def _rates(text: str) -> tuple[float, ...]:
    from facecli.errors import UsageError

    try:
        rates = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise UsageError(f"--fpir expects rates like 1e-3,1e-2, got {text!r}") from None
    if not rates or not all(0 < r < 1 for r in rates):
        raise UsageError(f"--fpir rates must be between 0 and 1, got {text!r}")
    return rates


def _report_failures(ui: UI, failures: list[dict[str, str]], what: str) -> None:
    if not failures:
        return
    counts: dict[str, int] = {}
    for failure in failures:
        counts[failure["status"]] = counts.get(failure["status"], 0) + 1
    ui.warn(f"{len(failures)} {what} images skipped (" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ")")
    for failure in failures:
        ui.detail(f"  {failure['path']}: {failure['reason']}")


def _load(gallery: Path):
    from facecli.gallery.store import Gallery

    return Gallery.load(gallery)


def _model(ui: UI, gallery, model, mean, std, bgr, device, batch_size):
    from facecli.gallery.workflow import open_model

    loaded, spec = open_model(gallery, model, mean, std, bgr, device, batch_size)
    ui.detail(f"model {spec} (fingerprint {loaded.fingerprint})")
    return loaded


def _probes(ui: UI, gallery, root: Path, model, align, select, batch_size, what: str, strangers: bool = False):
    from facecli.gallery.faces import list_images
    from facecli.gallery.workflow import embed_probes, resolve_align

    settings = resolve_align(gallery, align, select)
    total = len(list_images(root))
    with ui.progress(f"embedding {what}", total) as advance:
        probes = embed_probes(gallery, root, model, settings, batch_size, advance, strangers)
    _report_failures(ui, probes.failures, what)
    return probes


def _stale_warning(ui: UI, gallery) -> None:
    if gallery.threshold_is_stale():
        ui.warn(
            f"the gallery changed since calibration ({gallery.threshold['gallery_size']} -> {gallery.size} identities); "
            "FPIR grows with the gallery: re-run `facecli gallery calibrate`"
        )


def build(
    images: Annotated[Path, typer.Argument(help="One folder per identity: IMAGES/NAME/*.jpg.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Gallery file to write (.npz).")],
    model: Annotated[str, typer.Option("--model", "-m", help="ONNX model or facecli run/checkpoint.")],
    mean: MeanOpt = None,
    std: StdOpt = None,
    bgr: BgrOpt = None,
    align: Annotated[bool, typer.Option("--align/--no-align", help="Detect and align raw photos on the fly.")] = False,
    select: Annotated[str, typer.Option("--select", help="Face to keep per photo: center or largest.")] = "center",
    flip: Annotated[str, typer.Option("--flip", help="Flip fusion: sum, concat or none.")] = "sum",
    weighting: Annotated[str, typer.Option("--weighting", help="Template weights: none, or norm (MagFace/AdaFace quality).")] = "none",
    dtype: Annotated[str, typer.Option("--dtype", help="Stored precision: float32 or float16 (half the memory).")] = "float32",
    quality_threshold: Annotated[
        Optional[float],
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
    from facecli.errors import UsageError
    from facecli.gallery.faces import AlignSettings, list_images
    from facecli.gallery.workflow import build_gallery

    ui = _ui(json_, verbose, quiet)
    if dtype not in ("float32", "float16"):
        raise UsageError(f"--dtype must be float32 or float16, got {dtype!r}")
    if flip not in ("sum", "concat", "none"):
        raise UsageError(f"--flip must be sum, concat or none, got {flip!r}")
    loaded = _model(ui, None, model, mean, std, bgr, device, batch_size)
    if quality_threshold is not None and not loaded.describe().get("quality"):
        ui.warn(f"{model} has no facecli.quality metadata: its embedding norm may not encode face quality; "
                f"--quality-threshold {quality_threshold:g} is applied anyway")
    total = len(list_images(images))
    with ui.progress("enrolling", total) as advance:
        result = build_gallery(
            images, loaded, model, AlignSettings(align, select), flip, weighting, dtype, batch_size, advance,
            quality_threshold,
        )
    _report_failures(ui, result.failures, "gallery")
    result.gallery.save(out)
    summary = {
        "gallery": str(out),
        "identities": result.gallery.size,
        "images": result.added,
        "skipped": len(result.failures),
        "embedding_size": result.gallery.dim,
        "dtype": dtype,
        "model": result.gallery.model,
        "failures": result.failures,
    }

    def render(console: Console) -> None:
        console.print(
            f"enrolled {result.gallery.size} identities from {result.added} images "
            f"({len(result.failures)} skipped) -> {out}\n"
            "next: choose the accept threshold on strangers with `facecli gallery calibrate`",
            highlight=False,
        )

    ui.result(summary, render)


def calibrate(
    gallery: GalleryOpt,
    impostors: Annotated[Path, typer.Option("--impostors", help="Photos of people NOT in the gallery (one folder per person, or flat), or a pairs .bin (FAR only).")],
    far: Annotated[float, typer.Option("--far", help="Target false-accept rate.")] = 1e-3,
    metric: Annotated[str, typer.Option("--metric", help="fpir: per probe, over the whole gallery (search decisions); far: per comparison.")] = "fpir",
    model: ModelOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    bgr: BgrOpt = None,
    align: AlignOpt = None,
    select: SelectOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: BatchSizeOpt = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Choose the cosine threshold that gives the target false-accept rate on strangers, and store it in the gallery.

    IMPOSTORS is a folder of strangers (FPIR and FAR), or a verification .bin whose impostor pairs give FAR only.
    """
    from facecli.errors import UsageError
    from facecli.gallery.workflow import calibrate_gallery, calibrate_gallery_on_pairs

    ui = _ui(json_, verbose, quiet)
    g = _load(gallery)
    pairs = impostors.is_file() and impostors.suffix.lower() == ".bin"
    if pairs and metric != "far":
        raise UsageError(
            "impostor pairs (.bin) measure the per-comparison FAR only: pass --metric far, "
            "or give a folder of strangers to calibrate FPIR"
        )
    loaded = _model(ui, g, model, mean, std, bgr, device, batch_size)
    skipped = 0
    if pairs:
        with ui.progress("embedding impostor pairs", None) as advance:
            updated, result = calibrate_gallery_on_pairs(g, impostors, loaded, far, batch_size, advance)
    else:
        probes = _probes(ui, g, impostors, loaded, align, select, batch_size, "impostor", strangers=True)
        updated, result = calibrate_gallery(g, probes, far, metric)
        skipped = len(probes.failures)
    for warning in result.warnings:
        ui.warn(warning)
    updated.save(gallery)
    data = {"gallery": str(gallery), "gallery_size": g.size, **result.as_dict(), "skipped": skipped}

    def ci(interval) -> str:
        return f"[{interval[0]:.2g}, {interval[1]:.2g}]"

    def render(console: Console) -> None:
        source = f"{result.n_probes} strangers" if not pairs else f"{result.n_comparisons} impostor pairs"
        table = Table(title=f"threshold for {metric.upper()} {far:g} on {source}")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("cosine threshold", f"{result.threshold:.6f}")
        if result.fpir is not None:
            table.add_row("FPIR (per probe) achieved", f"{result.fpir:.4g}  {ci(result.fpir_ci95)}  ({result.n_probes} probes)")
        table.add_row(
            "FAR (per comparison) achieved",
            f"{result.far:.4g}  {ci(result.far_ci95)}  ({result.n_comparisons} comparisons)",
        )
        if result.fpir_threshold is not None:
            table.add_row(f"threshold for FPIR {far:g}", f"{result.fpir_threshold:.6f}")
        table.add_row(f"threshold for FAR {far:g}", f"{result.far_threshold:.6f}")
        console.print(table)
        console.print(f"stored in {gallery} (95% intervals in brackets)", highlight=False)

    ui.result(data, render)


def _score_text(score: float) -> str:
    """A float32 score written with the digits of its exact value, so that comparing the CSV's score with the
    gallery's threshold (also a float32) gives the search's decision, even one float32 step away from it. Fewer
    digits (``%.6f``, or even the shortest text that reads back as the same float32) can land on the wrong side."""
    import numpy as np

    return repr(float(np.float32(score)))


def _write_results(path: Path, records: list[dict[str, Any]]) -> None:
    from facecli.fileio import atomic_write_text

    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps(to_jsonable(records), indent=2, ensure_ascii=False) + "\n")
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    k = max((len(r["top_k"]) for r in records), default=0)
    writer.writerow(["probe", "status", "decision", "score"] + [f"{c}{i + 1}" for i in range(k) for c in ("match", "score")])
    for r in records:
        row = [r["probe"], r["status"], r["decision"] or "", "" if r["score"] is None else _score_text(r["score"])]
        for match in r["top_k"]:
            row += [match["identity"], _score_text(match["score"])]
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def search(
    probes: Annotated[Path, typer.Argument(help="A probe image, a flat folder, or one folder per identity.")],
    gallery: GalleryOpt,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Matches listed per probe.")] = 5,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Cosine accept threshold (default: the calibrated one).")] = None,
    index: Annotated[str, typer.Option("--index", help="exact; faiss (IVF-Flat above 100k), faiss-ivfpq (PQ codes) or faiss-hnsw (graph): need faiss-cpu, cached beside the gallery, recall vs exact and memory reported.")] = "exact",
    search_width: Annotated[Optional[int], typer.Option("--search-width", help="FAISS: IVF cells scanned (nprobe, default 64) or HNSW beam (efSearch, default 128); wider = higher recall, slower.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the results to a .csv or .json file.")] = None,
    model: ModelOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    bgr: BgrOpt = None,
    align: AlignOpt = None,
    select: SelectOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: BatchSizeOpt = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Identify each probe: its top-k identities with cosine scores, or `unknown` below the threshold."""
    from facecli.gallery.workflow import search_gallery, threshold_of

    ui = _ui(json_, verbose, quiet)
    g = _load(gallery)
    accept = threshold_of(g, threshold)
    if threshold is None:
        _stale_warning(ui, g)
    loaded = _model(ui, g, model, mean, std, bgr, device, batch_size)
    embedded = _probes(ui, g, probes, loaded, align, select, batch_size, "probe")
    cache = gallery.with_name(gallery.name + f".{index}.npz") if index != "exact" else None
    result = search_gallery(g, embedded, accept, top_k, index, cache, search_width)
    if result.recall_at_k is not None:
        memory = (f"; {result.index_bytes_per_template:.0f} bytes per template"
                  if result.index_bytes_per_template is not None else "")
        ui.info(f"{index} index: recall@1 {result.recall_at_1:.4f}, recall@{top_k} {result.recall_at_k:.4f} "
                f"against exact search{memory}")
    if out is not None:
        _write_results(out, result.records)
    data = {
        "gallery": str(gallery),
        "threshold": accept,
        "index": index,
        "recall_at_k": result.recall_at_k,
        "recall_at_1": result.recall_at_1,
        "index_bytes_per_template": result.index_bytes_per_template,
        "results": result.records,
    }

    def render(console: Console) -> None:
        table = Table(title=f"search in {gallery.name} ({g.size} identities, threshold {accept:.4f})")
        table.add_column("probe")
        table.add_column("decision")
        table.add_column("score", justify="right")
        table.add_column(f"top {top_k}")
        for r in result.records:
            if r["status"] != "ok":
                table.add_row(r["probe"], f"[red]{r['status']}[/red]", "", r["reason"])
                continue
            style = "yellow" if r["decision"] == "unknown" else "green"
            tops = ", ".join(f"{m['identity']} {m['score']:.3f}" for m in r["top_k"])
            table.add_row(r["probe"], f"[{style}]{r['decision']}[/{style}]", f"{r['score']:.4f}", tops)
        console.print(table)

    ui.result(data, render)


def evaluate(
    gallery: GalleryOpt,
    probes: Annotated[Path, typer.Option("--probes", help="One folder per identity; enrolled names are mated probes, others strangers.")],
    fpir: Annotated[str, typer.Option("--fpir", help="FPIR operating points, comma separated.")] = "1e-3,1e-2,1e-1",
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Also report this threshold (default: the calibrated one).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for report.json and det.png.")] = None,
    model: ModelOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    bgr: BgrOpt = None,
    align: AlignOpt = None,
    select: SelectOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: BatchSizeOpt = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Open-set metrics: DIR and FNIR at FPIR, rank-1/5, the calibrated operating point, a DET plot."""
    from facecli.fileio import atomic_write_text
    from facecli.gallery.metrics import plot_det
    from facecli.gallery.workflow import evaluate_gallery

    ui = _ui(json_, verbose, quiet)
    g = _load(gallery)
    targets = _rates(fpir)
    accept = threshold if threshold is not None else (g.threshold or {}).get("threshold")
    if threshold is None:
        _stale_warning(ui, g)
    loaded = _model(ui, g, model, mean, std, bgr, device, batch_size)
    embedded = _probes(ui, g, probes, loaded, align, select, batch_size, "probe")
    report, left_out = evaluate_gallery(g, embedded, accept, targets)
    if left_out:
        ui.warn(f"{left_out} probe images are enrolled in the gallery and were left out")
    for note in report.notes:
        ui.warn(note)
    data = {"gallery": str(gallery), "gallery_size": g.size, **report.as_dict(), "left_out": left_out,
            "skipped": len(embedded.failures)}
    if out is not None:
        atomic_write_text(out / "report.json", json.dumps(to_jsonable(data), indent=2) + "\n")
        if len(report.det_fpir):
            plot_det(report, out / "det.png", label=gallery.stem)
        ui.info(f"wrote {out / 'report.json'}" + (f" and {out / 'det.png'}" if len(report.det_fpir) else ""))

    def render(console: Console) -> None:
        table = Table(title=f"open-set identification: {report.n_mated} mated, {report.n_nonmated} non-mated probes")
        for column in ("operating point", "threshold", "FPIR", "DIR", "FNIR"):
            table.add_column(column, justify="right")

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        for p in report.at_fpir:
            table.add_row(f"FPIR {p.target_fpir:g}", f"{p.threshold:.4f}", fmt(p.fpir), fmt(p.dir), fmt(p.fnir))
        if report.at_threshold is not None:
            p = report.at_threshold
            table.add_row("gallery threshold", f"{p.threshold:.4f}", fmt(p.fpir), fmt(p.dir), fmt(p.fnir))
        console.print(table)
        console.print(f"closed-set rank-1 {fmt(report.rank1)}, rank-5 {fmt(report.rank5)}", highlight=False)

    ui.result(data, render)


def add(
    images: Annotated[Path, typer.Argument(help="One folder per identity: new people, or more photos of enrolled ones.")],
    gallery: GalleryOpt,
    model: ModelOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    bgr: BgrOpt = None,
    align: AlignOpt = None,
    select: SelectOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: BatchSizeOpt = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Enrol more images into an existing gallery (files already enrolled are skipped); written atomically."""
    from facecli.gallery.faces import list_images
    from facecli.gallery.workflow import add_to_gallery, resolve_align

    ui = _ui(json_, verbose, quiet)
    g = _load(gallery)
    loaded = _model(ui, g, model, mean, std, bgr, device, batch_size)
    with ui.progress("enrolling", len(list_images(images))) as advance:
        result = add_to_gallery(g, images, loaded, resolve_align(g, align, select), batch_size, advance)
    _report_failures(ui, result.failures, "gallery")
    if result.added:
        result.gallery.save(gallery)
        _stale_warning(ui, result.gallery)
    data = {"gallery": str(gallery), "added": result.added, "already_enrolled": result.already_enrolled,
            "skipped": len(result.failures), "identities": result.gallery.size, "failures": result.failures}
    ui.result(data, lambda console: console.print(
        f"added {result.added} images ({result.already_enrolled} already enrolled, {len(result.failures)} skipped); "
        f"{result.gallery.size} identities in {gallery}", highlight=False))


def remove(
    identities: Annotated[list[str], typer.Argument(help="Identity names to remove.")],
    gallery: GalleryOpt,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Remove identities (all their images) from the gallery; written atomically."""
    ui = _ui(json_, verbose, quiet)
    g = _load(gallery)
    updated = g.remove(identities)
    updated.save(gallery)
    _stale_warning(ui, updated)
    data = {"gallery": str(gallery), "removed": sorted(set(identities)), "identities": updated.size,
            "images": len(updated.paths)}
    ui.result(data, lambda console: console.print(
        f"removed {len(set(identities))} identities; {updated.size} left in {gallery}", highlight=False))


def register(app: typer.Typer) -> None:
    """Add ``facecli gallery build|calibrate|search|evaluate|add|remove``."""
    for name, fn in (("build", build), ("calibrate", calibrate), ("search", search), ("evaluate", evaluate),
                     ("add", add), ("remove", remove)):
        sub.command(name)(fn)
    app.add_typer(sub, name="gallery")
