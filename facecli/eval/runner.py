"""One evaluation run: which benchmarks the user named, where their files are, and model × benchmark → result.

Benchmarks are named (``lfw``, ``cfp-fp`` ... found as ``NAME.bin`` under ``--data-root`` or ``$FACECLI_DATA``;
``ijbb``/``ijbc`` as the official folder layout there), given as a path to a ``.bin``, or built from an LFW pairs
file and a photo folder. How each run is done (flip fusion, folds, workers, cache, bootstrap, quality threshold)
travels as one :class:`RunOptions`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from facecli.archives import check_npy
from facecli.errors import CorruptFileError, UsageError
from facecli.eval import ijb
from facecli.eval.embed import FeatureCache, dataset_key, embed_stream, split_flip
from facecli.eval.models import EmbeddingModel
from facecli.eval.verification import VerificationResult, as_issame, verify

VERIFICATION_BENCHMARKS = ("lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw", "vgg2_fp")
DATA_ENV = "FACECLI_DATA"


@dataclass(frozen=True)
class RunOptions:
    """The settings every model × benchmark run of one evaluation shares (``facecli eval``'s options of that name).

    ``nfolds`` None means the protocol's default: 10, or the count in a pairs file's header.
    """

    flip: str = "sum"
    nfolds: int | None = None
    workers: int = 4
    cache: Path | None = None
    bootstrap: int = 0
    quality_threshold: float | None = None

    @property
    def flipped(self) -> bool:
        """Whether the mirror image of every face is embedded too."""
        return self.flip != "none"

    def folds(self, default: int = 10) -> int:
        """The number of verification folds: the user's, else ``default``."""
        return default if self.nfolds is None else self.nfolds

    def feature_cache(self, model: EmbeddingModel, n_items: int, *key_parts: str) -> FeatureCache | None:
        """The ``--cache`` of this model's features for the data ``key_parts`` identify, or None without a cache."""
        if self.cache is None:
            return None
        return FeatureCache(self.cache, model.fingerprint, dataset_key(*key_parts), n_items)


@dataclass
class Benchmark:
    """A resolved benchmark: ``kind`` names its entry in :data:`facecli.eval.kinds.BENCHMARK_KINDS`."""

    name: str
    kind: str
    path: Path  # the .bin, the pairs file, or the IJB data root
    images: Path | None = None  # photo folder for ``pairs``
    align: bool = False


def data_root_or_env(data_root: str | Path | None) -> Path | None:
    if data_root:
        return Path(data_root)
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else None


def resolve_benchmarks(names: Sequence[str], data_root: str | Path | None) -> list[Benchmark]:
    """Turn ``--bench`` entries (comma lists allowed) into benchmarks whose files exist."""
    root = data_root_or_env(data_root)
    resolved: list[Benchmark] = []
    for entry in (n.strip() for raw in names for n in raw.split(",")):
        if not entry:
            continue
        key = entry.lower().replace("-", "_")
        if key in ("ijbb", "ijbc", "ijb_b", "ijb_c"):
            if root is None:
                raise UsageError(f"--bench {entry} needs --data-root (or ${DATA_ENV}) holding the IJB meta/ folder")
            target = key.replace("_", "")
            ijb.find_meta_dir(root, target)  # fails early with a clear message
            resolved.append(Benchmark(target, "ijb", root))
        elif key in VERIFICATION_BENCHMARKS:
            if root is None:
                raise UsageError(f"--bench {entry}: say where {key}.bin is with --data-root or ${DATA_ENV}")
            path = root / f"{key}.bin"
            if not path.is_file():
                raise UsageError(f"benchmark file not found: {path}")
            resolved.append(Benchmark(key, "bin", path))
        elif entry.endswith(".bin") or Path(entry).is_file():
            path = Path(entry)
            if not path.is_file():
                raise UsageError(f"benchmark file not found: {path}")
            resolved.append(Benchmark(path.stem, "bin", path))
        else:
            known = ", ".join(VERIFICATION_BENCHMARKS + ("ijbb", "ijbc"))
            raise UsageError(f"unknown benchmark {entry!r}: use one of {known}, or a path to a .bin file")
    return resolved


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def fit_to_input(image: np.ndarray, size: int) -> np.ndarray:
    """A face crop at the model's input size: unchanged if it already is, else short side resized and centre-cut
    (what insightface's ``load_bin`` does with ``resize_short`` for benchmark images of another size)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    import cv2

    scale = size / min(h, w)
    target = (max(size, round(w * scale)), max(size, round(h * scale)))
    resized = cv2.resize(image, target, interpolation=cv2.INTER_CUBIC)
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    return np.ascontiguousarray(resized[top : top + size, left : left + size])


@dataclass
class QualityReport:
    """Face quality of the evaluated images and what ``--quality-threshold`` did with it.

    MagFace and AdaFace train the L2 norm of the raw embedding to grow with how recognisable the face is, so the
    norm of each image's unflipped embedding, before normalisation, is its quality. With a threshold, pairs where
    either image falls below it are counted and left out of the pooled metrics (TAR@FAR, AUC, EER, deployment
    threshold). The 10-fold protocol accuracy and VAL stay on *all* pairs: the folds are fixed blocks of the pair
    list, and dropping pairs from them would silently change a number people compare with published results.
    """

    norms: np.ndarray = field(repr=False)  # per image row
    threshold: float | None = None
    low_pairs: np.ndarray | None = field(default=None, repr=False)  # per pair: min(norm a, norm b) < threshold
    kept_genuine: int = 0
    kept_impostor: int = 0

    @property
    def n_low_pairs(self) -> int:
        return 0 if self.low_pairs is None else int(np.count_nonzero(self.low_pairs))

    def to_dict(self) -> dict:
        out: dict = {
            "score": "L2 norm of the raw unflipped embedding",
            "norm_min": float(self.norms.min()),
            "norm_median": float(np.median(self.norms)),
            "norm_max": float(self.norms.max()),
            "threshold": self.threshold,
        }
        if self.threshold is not None:
            out.update(
                low_quality_images=int(np.count_nonzero(self.norms < self.threshold)),
                low_quality_pairs=self.n_low_pairs,
                pooled_metrics_pairs="pairs with both images at or above the threshold",
                pooled_genuine=self.kept_genuine,
                pooled_impostor=self.kept_impostor,
                protocol_accuracy_pairs="all pairs (10-fold accuracy and VAL are not filtered)",
            )
        return out


def verify_with_quality(
    embeddings: np.ndarray,
    issame: np.ndarray,
    embeddings_flip: np.ndarray | None,
    options: RunOptions,
) -> tuple[VerificationResult, QualityReport]:
    """The verification protocol on raw embeddings, plus their quality, optionally pooling only good pairs.

    ``options.flip``: ``sum`` adds ``embeddings_flip``, ``concat`` joins it, ``none`` ignores it; folds
    ``options.folds()``. See :class:`QualityReport` for which numbers ``options.quality_threshold`` changes.
    """
    issame = as_issame(issame)
    flip, bootstrap, quality_threshold = options.flip, options.bootstrap, options.quality_threshold

    def run(rows: np.ndarray, rows_flip: np.ndarray | None, labels: np.ndarray, folds: int) -> VerificationResult:
        if flip == "concat" and rows_flip is not None:
            return verify(np.concatenate([rows, rows_flip], axis=1), labels, nfolds=folds, bootstrap=bootstrap)
        return verify(rows, labels, rows_flip if flip != "none" else None, nfolds=folds, bootstrap=bootstrap)

    result = run(embeddings, embeddings_flip, issame, options.folds())
    quality = QualityReport(np.linalg.norm(np.asarray(embeddings, dtype=np.float64), axis=1))
    if quality_threshold is None:
        return result, quality
    pair_quality = np.minimum(quality.norms[0::2], quality.norms[1::2])
    low = pair_quality < quality_threshold
    keep_rows = np.repeat(~low, 2)
    kept = issame[~low]
    quality = replace(
        quality,
        threshold=float(quality_threshold),
        low_pairs=low,
        kept_genuine=int(np.count_nonzero(kept)),
        kept_impostor=int(np.count_nonzero(~kept)),
    )
    if not low.any():
        return result, quality
    if quality.kept_genuine == 0 or quality.kept_impostor == 0:
        raise UsageError(
            f"--quality-threshold {quality_threshold:g} leaves {quality.kept_genuine} genuine and "
            f"{quality.kept_impostor} impostor pairs (image norms range {quality.norms.min():.3g} to "
            f"{quality.norms.max():.3g}): pooled metrics need both kinds"
        )
    flip_rows = embeddings_flip[keep_rows] if embeddings_flip is not None else None
    pooled = run(embeddings[keep_rows], flip_rows, kept, 1)
    result = replace(
        result,
        tar_at_far=pooled.tar_at_far,
        auc=pooled.auc,
        eer=pooled.eer,
        threshold=pooled.threshold,
        threshold_cosine=pooled.threshold_cosine,
        intervals=pooled.intervals,
    )
    return result, quality


@dataclass
class VerificationRun:
    """A model's result on one verification benchmark, with what error analysis needs to show the faces."""

    benchmark: Benchmark
    result: VerificationResult
    flip: str
    image_labels: list[str]  # per image row (pair i = rows 2i, 2i+1): file path or ".bin index"
    load_face: Callable[[int], np.ndarray]  # image row -> the aligned face the model saw
    no_face: list[str] = field(default_factory=list)  # photos where --align found no face (centre crop used)
    resized: int = 0  # photos of another size than the model input, used without alignment
    quality: QualityReport | None = None


def _verify_rows(
    rows: np.ndarray, issame: np.ndarray, options: RunOptions
) -> tuple[VerificationResult, QualityReport]:
    emb, emb_flip = split_flip(rows, options.flipped)
    return verify_with_quality(emb, issame, emb_flip, options)


def load_benchmark_bin(bench: Benchmark) -> tuple[list[bytes], np.ndarray]:
    """The encoded images and labels of a ``.bin`` benchmark, read with the safe unpickler."""
    from facecli.data.benchmarks import load_bin

    return load_bin(bench.path)


def evaluate_bin(
    model: EmbeddingModel,
    bench: Benchmark,
    data: tuple[list[bytes], np.ndarray] | None = None,
    options: RunOptions = RunOptions(),
    progress: Callable[[int], None] | None = None,
) -> VerificationRun:
    """Embed every image of a ``.bin`` (and its mirror) and run the 10-fold protocol (``data``: already loaded)."""
    from facecli.imageio import ImageReadError, decode_image

    bins, issame = data if data is not None else load_benchmark_bin(bench)

    def load(i: int) -> np.ndarray:
        try:
            return fit_to_input(decode_image(bins[i]), model.input_size)
        except ImageReadError as exc:
            raise CorruptFileError(f"{bench.path}: image {i} cannot be used ({exc.reason})") from None

    cache = options.feature_cache(model, len(bins), _file_identity(bench.path), str(options.flipped))
    rows = embed_stream(
        model, len(bins), load, flip=options.flipped, workers=options.workers, progress=progress, cache=cache
    )
    result, quality = _verify_rows(rows, issame, options)
    labels = [f"{bench.path.name}#{i}" for i in range(len(bins))]
    return VerificationRun(bench, result, options.flip, labels, load, quality=quality)


def evaluate_pairs(
    model: EmbeddingModel,
    pairs_file: str | Path,
    images: str | Path,
    align: bool = False,
    options: RunOptions = RunOptions(),
    progress: Callable[[int], None] | None = None,
) -> VerificationRun:
    """Verification on photos listed in an LFW-style pairs file; ``align`` runs facecli align (centre face).

    The folds are ``options.nfolds``, else the pairs file's header."""
    from facecli.eval.pairs import read_pairs
    from facecli.imageio import ImageReadError, read_image

    pairs = read_pairs(pairs_file, images)
    unique = pairs.unique_paths
    index_of = {p: i for i, p in enumerate(unique)}
    no_face: dict[int, str] = {}
    resized: set[int] = set()  # photos that were not crops of the model's input size (no --align)
    aligner = _aligner() if align else None

    def load(i: int) -> np.ndarray:
        try:
            image = read_image(unique[i])
        except ImageReadError as exc:
            raise CorruptFileError(f"{unique[i]}: {exc.reason}") from None
        if aligner is None:
            if image.shape[:2] != (model.input_size, model.input_size):
                resized.add(i)
            return fit_to_input(image, model.input_size)
        crop = aligner(image, model.input_size)
        if crop is None:  # the protocol scores every pair: fall back to the centre of the photo, and say so
            no_face[i] = str(unique[i])
            return centre_crop(image, model.input_size)
        return crop

    key_parts = [str(pairs_file), str(align), str(options.flipped)] + [_file_identity(p) for p in unique]
    cache = options.feature_cache(model, len(unique), *key_parts)
    rows = embed_stream(
        model, len(unique), load, flip=options.flipped, workers=options.workers, progress=progress, cache=cache
    )
    order = np.array([index_of[p] for p in pairs.paths])
    bench = Benchmark(Path(pairs_file).stem, "pairs", Path(pairs_file), Path(images), align)
    result, quality = _verify_rows(rows[order], pairs.issame, replace(options, nfolds=options.folds(pairs.nfolds)))
    return VerificationRun(
        bench,
        result,
        options.flip,
        [str(p) for p in pairs.paths],
        lambda row: load(int(order[row])),
        [no_face[i] for i in sorted(no_face)],
        len(resized),
        quality,
    )


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central square of a photo at ``size``: the stand-in face for a photo where no face was found."""
    h, w = image.shape[:2]
    side = min(h, w) // 2 if min(h, w) >= 2 * size else min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return fit_to_input(image[top : top + side, left : left + side], size)


def _aligner() -> Callable[[np.ndarray, int], np.ndarray | None]:
    """facecli align's face selection + ArcFace crop, selecting the face nearest the image centre."""
    try:
        from facecli.align import align_image
    except ImportError:
        raise UsageError("--align needs facecli.align.align_image, which this installation lacks") from None

    lock = threading.Lock()  # one shared detector: its networks are not safe to run from several threads

    def run(image: np.ndarray, size: int) -> np.ndarray | None:
        with lock:
            crop, _face = align_image(image, select="center", size=size)
        return crop

    return run


def evaluate_embeddings(
    embeddings: str | Path,
    issame: str | Path,
    embeddings_flip: str | Path | None = None,
    options: RunOptions = RunOptions(),
) -> tuple[VerificationResult, QualityReport]:
    """Verification of precomputed embeddings (``.npy``, pairs = rows 2i, 2i+1); flipped ones are summed whatever
    ``options.flip`` says (there is nothing to concatenate them with)."""
    emb = load_npy(embeddings, "embeddings")
    flags = load_npy(issame, "issame")
    flip = load_npy(embeddings_flip, "flip embeddings") if embeddings_flip else None
    if emb.ndim != 2:
        raise UsageError(f"embeddings must be a 2-D array (images x dims), got shape {emb.shape}")
    return verify_with_quality(emb, flags, flip, replace(options, flip="sum" if flip is not None else "none"))


def load_npy(path: str | Path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} file not found: {path}")
    check_npy(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CorruptFileError(f"{path}: not a readable .npy array ({exc})") from None


@dataclass
class IJBRun:
    benchmark: Benchmark
    verification: ijb.IJBVerificationResult
    identification: ijb.IJBIdentificationResult | None


def ijb_image_features(
    model: EmbeddingModel,
    protocol: ijb.IJBProtocol,
    options: RunOptions = RunOptions(),
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``[embedding | flipped embedding]`` of every loose crop, aligned with the protocol's 5 landmarks (the mirror
    is always embedded: the IJB flags decide later whether it counts)."""
    from facecli.align.transform import align
    from facecli.imageio import ImageReadError, read_image

    ijb.read_landmarks(protocol)
    names, landmarks = protocol.image_names, protocol.landmarks
    assert names is not None and landmarks is not None
    crops = protocol.meta_dir.parent / "loose_crop"
    if not crops.is_dir():
        raise UsageError(f"no loose_crop/ folder beside {protocol.meta_dir} (needed to embed IJB images)")

    def load(i: int) -> np.ndarray:
        path = crops / names[i]
        try:
            image = read_image(path)
        except ImageReadError as exc:
            raise CorruptFileError(f"{path}: {exc.reason}") from None
        return align(image, landmarks[i], model.input_size)

    meta_file = protocol.meta_dir / f"{protocol.target}_name_5pts_score.txt"
    cache = options.feature_cache(model, protocol.n_images, _file_identity(meta_file))
    return embed_stream(
        model, protocol.n_images, load, flip=True, workers=options.workers, progress=progress, cache=cache
    )


def evaluate_ijb(
    protocol: ijb.IJBProtocol,
    img_feats: np.ndarray,
    faceness: np.ndarray | None,
    flags: ijb.IJBFlags,
    mode: str = "open",
    progress: Callable[[int], None] | None = None,
) -> IJBRun:
    """1:1 (and 1:N when the gallery/probe files exist) from per-image ``[emb | flipped emb]`` features."""
    if img_feats.shape[0] != protocol.n_images:
        raise UsageError(
            f"{img_feats.shape[0]} image features but {protocol.target}_face_tid_mid.txt lists "
            f"{protocol.n_images} images"
        )
    if faceness is None and flags.detector_score:
        faceness = ijb.read_faceness(protocol)
    if faceness is not None and len(faceness) != protocol.n_images:
        raise UsageError(f"{len(faceness)} faceness scores for {protocol.n_images} images")
    feats = ijb.image_input_features(img_feats, faceness, flags)
    template_feats, unique_templates = ijb.pool_templates(feats, protocol.templates, protocol.medias)
    verification = ijb.verify_templates(protocol, template_feats, unique_templates, flags, progress=progress)
    identification = (
        ijb.identify(protocol, template_feats, unique_templates, flags, mode) if protocol.has_identification() else None
    )
    bench = Benchmark(protocol.target, "ijb", protocol.meta_dir.parent)
    return IJBRun(bench, verification, identification)
