"""``facecli eval``: benchmark numbers as insightface's protocols compute them, for one or several models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    out_option,
)

FLIP_HELP = (
    "Flip fusion: sum (default, as insightface: embedding of the face + of its mirror image), concat, or none. "
    "IJB takes sum (F1) or none (F0)."
)
BENCH_HELP = (
    "lfw, cfp_fp, cfp_ff, agedb_30, calfw, cplfw, vgg2_fp, ijbb, ijbc (comma list; hyphens ok) or a path to a .bin."
)
FEATURES_HELP = (
    "IJB per-image features .npy (insightface layout: each row is the embedding followed by the flipped image's)."
)
QUALITY_HELP = (
    "Face quality = norm of the raw embedding (MagFace/AdaFace). Pairs with an image below Q are counted and left "
    "out of TAR@FAR/AUC/EER; the 10-fold accuracy stays on all pairs."
)
IJB_MODE_HELP = "IJB 1:N: open (per gallery, FNIR at FPIR; ijb_evals.py) or closed (G1+G2 joined; ijb_1n.py)."

# eval's own options, declared here so the command's signature reads as one line per option
BenchOpt = Annotated[list[str] | None, typer.Option("--bench", "-b", help=BENCH_HELP)]
DataRootOpt = Annotated[
    Path | None,
    typer.Option("--data-root", help="Folder with NAME.bin files / the IJB meta/ folder (default: $FACECLI_DATA)."),
]
PairsOpt = Annotated[
    Path | None, typer.Option("--pairs", help="LFW-style pairs file (pairs.txt) for photos under --images.")
]
ImagesOpt = Annotated[Path | None, typer.Option("--images", help="Photo folder for --pairs (NAME/NAME_0001.jpg).")]
AlignOpt = Annotated[
    bool, typer.Option("--align", help="Detect and align each photo (face nearest the centre) before embedding.")
]
EmbeddingsOpt = Annotated[
    Path | None, typer.Option("--embeddings", help="Precomputed embeddings .npy (pairs = rows 2i, 2i+1).")
]
EmbeddingsFlipOpt = Annotated[
    Path | None,
    typer.Option("--embeddings-flip", help="Embeddings of the flipped images .npy, summed with --embeddings."),
]
IssameOpt = Annotated[Path | None, typer.Option("--issame", help="Pair labels .npy (bool, one per pair).")]
FeaturesOpt = Annotated[Path | None, typer.Option("--features", help=FEATURES_HELP)]
FacenessOpt = Annotated[
    Path | None,
    typer.Option("--faceness", help="IJB detector scores .npy (default: last field of *_name_5pts_score.txt)."),
]
NormScoreOpt = Annotated[
    bool, typer.Option("--norm-score/--no-norm-score", help="IJB: keep the feature norm as a quality weight (N1).")
]
DetectorScoreOpt = Annotated[
    bool, typer.Option("--detector-score/--no-detector-score", help="IJB: weight by the detector score (D1).")
]
FlipOpt = Annotated[str | None, typer.Option("--flip", help=FLIP_HELP)]
NoFlipOpt = Annotated[bool, typer.Option("--no-flip", help="Same as --flip none.")]
IjbModeOpt = Annotated[str, typer.Option("--ijb-mode", help=IJB_MODE_HELP)]
NfoldsOpt = Annotated[
    int | None, typer.Option("--nfolds", help="Verification folds (default 10, or the pairs file's header).")
]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Threads decoding/aligning images.")]
CacheOpt = Annotated[Path | None, typer.Option("--cache", help="Folder for per-image features: reused and resumed.")]
OutOpt = Annotated[Path | None, out_option("Write report.json, report.csv, roc.png, pairs.csv here.")]
WorstOpt = Annotated[
    int, typer.Option("--worst", min=0, help="With --out: contact sheet of the N hardest false accepts/rejects.")
]
BootstrapOpt = Annotated[
    int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples for 95% intervals (0 = off).")
]
QualityOpt = Annotated[float | None, typer.Option("--quality-threshold", help=QUALITY_HELP)]


def eval_command(
    model: ModelsOpt = None,
    bench: BenchOpt = None,
    data_root: DataRootOpt = None,
    pairs: PairsOpt = None,
    images: ImagesOpt = None,
    align: AlignOpt = False,
    embeddings: EmbeddingsOpt = None,
    embeddings_flip: EmbeddingsFlipOpt = None,
    issame: IssameOpt = None,
    features: FeaturesOpt = None,
    faceness: FacenessOpt = None,
    norm_score: NormScoreOpt = True,
    detector_score: DetectorScoreOpt = True,
    flip: FlipOpt = None,
    no_flip: NoFlipOpt = False,
    ijb_mode: IjbModeOpt = "open",
    nfolds: NfoldsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    bgr: BgrOpt = None,
    batch_size: BatchSizeOpt = None,
    workers: WorkersOpt = 4,
    device: DeviceOpt = "cpu",
    cache: CacheOpt = None,
    out: OutOpt = None,
    worst: WorstOpt = 0,
    bootstrap: BootstrapOpt = 0,
    quality_threshold: QualityOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate face-recognition models on verification benchmarks (.bin, LFW pairs) and IJB-B/C."""
    from facecli.eval import EvalRequest, run

    ui = UI(json=json_out, verbose=verbose, quiet=quiet)
    request = EvalRequest(
        models=model or (),
        benchmarks=bench or (),
        data_root=data_root,
        pairs=pairs,
        images=images,
        align=align,
        embeddings=embeddings,
        embeddings_flip=embeddings_flip,
        issame=issame,
        features=features,
        faceness=faceness,
        norm_score=norm_score,
        detector_score=detector_score,
        flip="none" if no_flip else (flip or "sum"),
        ijb_mode=ijb_mode,
        nfolds=nfolds,
        mean=mean,
        std=std,
        bgr=bgr,
        device=device,
        batch_size=batch_size,
        workers=workers,
        cache=cache,
        out=out,
        worst=worst,
        bootstrap=bootstrap,
        quality_threshold=quality_threshold,
    )
    result = run(request, feedback=ui)
    if result.written:
        ui.info("wrote " + ", ".join(str(p) for p in result.written))
    ui.result(result.to_dict(), result.render)


def register(app: typer.Typer) -> None:
    """Add ``facecli eval`` to the root app."""
    app.command("eval", no_args_is_help=True)(eval_command)
