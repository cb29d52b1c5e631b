"""``facecli eval``: benchmark numbers as insightface's protocols compute them, for one or several models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from facecli.cli.common import UI
from facecli.cli.options import (
    BatchSizeOpt,
    BgrOpt,
    DeviceOpt,
    JsonOpt,
    MeanOpt,
    ModelsOpt,
    QuietOpt,
    StdOpt,
    VerboseOpt,
)
from facecli.errors import UsageError

FLIP_HELP = (
    "Flip fusion: sum (default, as insightface: embedding of the face + of its mirror image), concat, or none. "
    "IJB takes sum (F1) or none (F0)."
)


def eval_command(
    model: ModelsOpt = None,
    bench: Annotated[
        Optional[List[str]],
        typer.Option(
            "--bench", "-b",
            help=(
                "lfw, cfp_fp, cfp_ff, agedb_30, calfw, cplfw, vgg2_fp, ijbb, ijbc (comma list; hyphens ok) "
                "or a path to a .bin."
            ),
        ),
    ] = None,
    data_root: Annotated[
        Optional[Path],
        typer.Option(
            "--data-root",
            help="Folder with NAME.bin files / the IJB meta/ folder (default: $FACECLI_DATA).",
        ),
    ] = None,
    pairs: Annotated[
        Optional[Path],
        typer.Option("--pairs", help="LFW-style pairs file (pairs.txt) for photos under --images."),
    ] = None,
    images: Annotated[
        Optional[Path],
        typer.Option("--images", help="Photo folder for --pairs (NAME/NAME_0001.jpg)."),
    ] = None,
    align: Annotated[
        bool,
        typer.Option("--align", help="Detect and align each photo (face nearest the centre) before embedding."),
    ] = False,
    embeddings: Annotated[
        Optional[Path],
        typer.Option("--embeddings", help="Precomputed embeddings .npy (pairs = rows 2i, 2i+1)."),
    ] = None,
    embeddings_flip: Annotated[
        Optional[Path],
        typer.Option("--embeddings-flip", help="Embeddings of the flipped images .npy, summed with --embeddings."),
    ] = None,
    issame: Annotated[Optional[Path], typer.Option("--issame", help="Pair labels .npy (bool, one per pair).")] = None,
    features: Annotated[
        Optional[Path],
        typer.Option(
            "--features",
            help=(
                "IJB per-image features .npy (insightface layout: each row is the embedding followed by the "
                "flipped image's)."
            ),
        ),
    ] = None,
    faceness: Annotated[
        Optional[Path],
        typer.Option("--faceness", help="IJB detector scores .npy (default: last field of *_name_5pts_score.txt)."),
    ] = None,
    norm_score: Annotated[
        bool,
        typer.Option("--norm-score/--no-norm-score", help="IJB: keep the feature norm as a quality weight (N1)."),
    ] = True,
    detector_score: Annotated[
        bool,
        typer.Option("--detector-score/--no-detector-score", help="IJB: weight by the detector score (D1)."),
    ] = True,
    flip: Annotated[Optional[str], typer.Option("--flip", help=FLIP_HELP)] = None,
    no_flip: Annotated[bool, typer.Option("--no-flip", help="Same as --flip none.")] = False,
    ijb_mode: Annotated[
        str,
        typer.Option(
            "--ijb-mode",
            help="IJB 1:N: open (per gallery, FNIR at FPIR; ijb_evals.py) or closed (G1+G2 joined; ijb_1n.py).",
        ),
    ] = "open",
    nfolds: Annotated[
        Optional[int],
        typer.Option("--nfolds", help="Verification folds (default 10, or the pairs file's header)."),
    ] = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    bgr: BgrOpt = None,
    batch_size: BatchSizeOpt = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Threads decoding/aligning images.")] = 4,
    device: DeviceOpt = "cpu",
    cache: Annotated[
        Optional[Path],
        typer.Option("--cache", help="Folder for per-image features: reused and resumed."),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="Write report.json, report.csv, roc.png, pairs.csv here."),
    ] = None,
    worst: Annotated[
        int,
        typer.Option("--worst", min=0, help="With --out: contact sheet of the N hardest false accepts/rejects."),
    ] = 0,
    bootstrap: Annotated[
        int,
        typer.Option("--bootstrap", min=0, help="Bootstrap resamples for 95% intervals (0 = off)."),
    ] = 0,
    quality_threshold: Annotated[
        Optional[float],
        typer.Option(
            "--quality-threshold",
            help=(
                "Face quality = norm of the raw embedding (MagFace/AdaFace). Pairs with an image below Q are "
                "counted and left out of TAR@FAR/AUC/EER; the 10-fold accuracy stays on all pairs."
            ),
        ),
    ] = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate face-recognition models on verification benchmarks (.bin, LFW pairs) and IJB-B/C."""
    from facecli.eval import ijb, report, runner
    from facecli.eval.embed import FLIP_MODES
    from facecli.eval.models import load_model
    from facecli.normalisation import check_normalisation, parse_channels

    ui = UI(json=json_out, verbose=verbose, quiet=quiet)
    flip_mode = "none" if no_flip else (flip or "sum")
    if flip_mode not in FLIP_MODES:
        raise UsageError(f"--flip must be one of {', '.join(FLIP_MODES)}, got {flip_mode!r}")
    if worst and not out:
        raise UsageError("--worst needs --out DIR (the contact sheets are written there)")
    if (pairs is None) != (images is None):
        raise UsageError("--pairs and --images go together")
    if embeddings_flip is not None and embeddings is None:
        raise UsageError("--embeddings-flip needs --embeddings")
    if (embeddings is None) != (issame is None):
        raise UsageError("--embeddings and --issame go together")
    benches = runner.resolve_benchmarks(bench or [], data_root)
    if features is not None and not any(b.kind == "ijb" for b in benches):
        raise UsageError("--features is for IJB: add --bench ijbc (or ijbb) and --data-root")
    needs_model = pairs is not None or any(b.kind == "bin" for b in benches) or (
        any(b.kind == "ijb" for b in benches) and features is None
    )
    if not (benches or pairs or embeddings):
        raise UsageError("nothing to evaluate: give --bench, --pairs/--images or --embeddings/--issame")
    if needs_model and not model:
        raise UsageError("--model is required to embed images")
    check_normalisation(parse_channels(mean, "mean"), parse_channels(std, "std"))  # fail before any model loads
    if any(b.kind == "ijb" for b in benches):
        if flip_mode == "concat":
            raise UsageError("IJB uses --flip sum or --flip none (insightface sums the two halves)")
        if ijb_mode not in ijb.IDENTIFICATION_MODES:
            raise UsageError(f"--ijb-mode must be one of {', '.join(ijb.IDENTIFICATION_MODES)}, got {ijb_mode!r}")

    entries: list[report.Entry] = []
    if embeddings is not None:
        assert issame is not None
        result, quality = runner.evaluate_embeddings(
            embeddings, issame, embeddings_flip, 10 if nfolds is None else nfolds, bootstrap, quality_threshold
        )
        flip_used = "sum" if embeddings_flip else "none"
        info = {"flip": flip_used, "quality": quality.to_dict()}
        entries.append(report.Entry(embeddings.stem, issame.stem, verification=result, info=info))
        _report_quality(ui, f"{embeddings.stem} · {issame.stem}", quality)

    flags = ijb.IJBFlags(norm_score=norm_score, detector_score=detector_score, flip=flip_mode != "none")
    if features is not None:
        feats = runner.load_npy(features, "features")
        scores = runner.load_npy(faceness, "faceness") if faceness else None
        for b in (b for b in benches if b.kind == "ijb"):
            entries.append(_ijb_entry(ui, features.stem, b, feats, scores, flags, ijb_mode))

    loaded_bins = {b.name: runner.load_benchmark_bin(b) for b in benches if b.kind == "bin"}  # fail fast
    models_info = []
    for spec in model or []:
        if not needs_model:
            break
        m = load_model(spec, mean=mean, std=std, bgr=bgr, device=device, batch_size=batch_size)
        models_info.append(m.describe())
        ui.detail(f"{spec}: {m.color}, mean {m.mean}, std {m.std} ({m.preprocessing_from}), {m.fingerprint}")
        label = _model_label(spec, model)
        if quality_threshold is not None and not models_info[-1].get("quality"):
            ui.warn(f"{label} has no facecli.quality metadata: its embedding norm may not encode face quality; "
                    f"--quality-threshold {quality_threshold:g} is applied anyway")
        for b in benches:
            if b.kind == "bin":
                data = loaded_bins[b.name]
                with ui.progress(f"{label} · {b.name}", len(data[0])) as advance:
                    run = runner.evaluate_bin(
                        m, b, data, flip_mode, 10 if nfolds is None else nfolds, workers, cache, advance, bootstrap,
                        quality_threshold,
                    )
                entries.append(_verification_entry(ui, label, run))
            elif b.kind == "ijb" and features is None:
                protocol = ijb.read_protocol(b.path, b.name)
                with ui.progress(f"{label} · {b.name} images", protocol.n_images) as advance:
                    feats = runner.ijb_image_features(m, protocol, workers, cache, advance)
                scores = runner.load_npy(faceness, "faceness") if faceness else None
                entries.append(_ijb_entry(ui, label, b, feats, scores, flags, ijb_mode, protocol))
        if pairs is not None:
            with ui.progress(f"{label} · {pairs.name}", None) as advance:
                run = runner.evaluate_pairs(
                    m, pairs, images, align, flip_mode, nfolds, workers, cache, advance, bootstrap,  # type: ignore[arg-type]
                    quality_threshold,
                )
            entries.append(_verification_entry(ui, label, run))
            if run.resized:
                ui.warn(f"{run.resized} photo(s) are not {m.input_size}x{m.input_size} face crops and were resized; "
                        "pass --align for unaligned photos")
            if run.no_face:
                ui.warn(f"no face found in {len(run.no_face)} photo(s); their centre crop was used (see the report)")

    if out is not None:
        written = report.write_outputs(out, entries, models_info, worst)
        ui.info("wrote " + ", ".join(str(p) for p in written))
    ui.result(report.report_dict(entries, models_info), lambda console: report.render(console, entries))


def _verification_entry(ui: UI, label: str, run):
    """The report entry of a verification run, with its face-quality summary."""
    from facecli.eval import report

    info = {"quality": run.quality.to_dict()} if run.quality is not None else {}
    if run.quality is not None:
        _report_quality(ui, f"{label} · {run.benchmark.name}", run.quality)
    return report.Entry(label, run.benchmark.name, verification=run.result, run=run, info=info)


def _report_quality(ui: UI, label: str, quality) -> None:
    """One line on the norms, and on the pairs ``--quality-threshold`` left out of the pooled metrics."""
    q = quality.to_dict()
    ui.detail(f"{label}: embedding norm min {q['norm_min']:.3f}, median {q['norm_median']:.3f}, max {q['norm_max']:.3f}")
    if quality.threshold is not None:
        ui.info(
            f"{label}: {quality.n_low_pairs} pair(s) have an image with quality < {quality.threshold:g}; "
            "left out of TAR@FAR/AUC/EER (10-fold accuracy uses all pairs)"
        )


def _model_label(spec: Path, all_specs: list[Path] | None) -> str:
    """The model's file name, or its path when two models share a name."""
    names = [s.name for s in all_specs or []]
    return spec.name if names.count(spec.name) == 1 else str(spec)


def _ijb_entry(ui: UI, label: str, bench, feats, scores, flags, mode: str, protocol=None):
    """Score one IJB benchmark from per-image features, with a progress bar over the pairs."""
    from facecli.eval import ijb, report, runner

    protocol = protocol or ijb.read_protocol(bench.path, bench.name)
    with ui.progress(f"{label} · {bench.name} pairs", len(protocol.pair_t1)) as advance:
        run = runner.evaluate_ijb(protocol, feats, scores, flags, mode, advance)
    return report.Entry(label, bench.name, ijb=run)


def register(app: typer.Typer) -> None:
    """Add ``facecli eval`` to the root app."""
    app.command("eval", no_args_is_help=True)(eval_command)
