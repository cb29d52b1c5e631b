"""IJB-B / IJB-C template verification (1:1) and identification (1:N), as insightface's scripts compute them.

References (deepinsight/insightface): ``recognition/arcface_torch/eval_ijbc.py`` for 1:1,
``recognition/_evaluation_/ijb/ijb_1n.py`` and ``ijb_evals.py`` for 1:N. The rules, restated:

- Image features are ``[embedding | embedding of the flipped image]``. F1 adds the halves, F0 keeps the first.
  N0 L2-normalises each image feature (N1 keeps the norm as a quality weight); D1 multiplies by the detector
  score (the last field of ``*_name_5pts_score.txt``). All of this in float32.
- A template is pooled in three steps: its rows are grouped by media id *inside the template* (ascending media
  id; several frames of one video become their mean), the media features are summed (not normalised), and the
  sum is L2-normalised. Rows are matched to features by position only.
- 1:1 score = cosine of the two template features. The ROC is ``sklearn.metrics.roc_curve``; TAR at each FAR is
  read off at the ROC point with the *nearest* FPR (ties: the largest TPR), never interpolated.
- 1:N ``closed`` (``ijb_1n.py``): galleries G1+G2 joined; every probe has a mate; "TPIR@FAR" thresholds on the
  pooled non-mated scores at rank ``ceil(n_probes * far)`` and counts mated scores strictly above it.
- 1:N ``open`` (``ijb_evals.py``, the default): each gallery on its own; probes whose subject is absent are
  non-mated searches; TPIR at FPIR counts mated probes that are rank-1 *and* above the threshold taken from the
  sorted top scores of non-mated searches at index ``max(int(n_nonmated * fpir) - 1, 0)``. FNIR = 1 - TPIR.

Pooling is vectorised (one lexsort, two ``reduceat``), summing rows in the same order and dtype as the
reference's per-template loop. Pair scoring groups pairs by their first template and computes blocks of the
template similarity matrix with one GEMM each, so 15.6 M IJB-C pairs cost about one matrix product and bounded
memory instead of 15.6 M gathered dot products.

Deviation, on purpose: the reference silently gives a pair whose template id is not in the template file the
features of the smallest template (``template2id`` defaults to 0). Here that is an error naming the id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facecli.errors import CorruptFileError, UsageError
from facecli.eval import roc as roc_lib

IJB_FAR_TARGETS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
IJB_TARGETS = ("ijbb", "ijbc")
FPIR_TARGETS: tuple[float, ...] = (0.01, 0.1)
RANKS: tuple[int, ...] = (1, 5, 10)
# ijb_evals.py evaluates FPIR at 10 ** arange(-4, 0, 0.04); its "0.01" and "0.1" are these two floats.
_IJB_EVALS_FPIR = {0.01: float(10 ** np.arange(-4, 0, 4 / 100)[50]), 0.1: float(10 ** np.arange(-4, 0, 4 / 100)[75])}


@dataclass(frozen=True)
class IJBFlags:
    """insightface's TestMode: N (keep the feature norm), D (detector-score weights), F (flip sum)."""

    norm_score: bool = True
    detector_score: bool = True
    flip: bool = True

    @property
    def name(self) -> str:
        return f"N{int(self.norm_score)}D{int(self.detector_score)}F{int(self.flip)}"


@dataclass
class IJBProtocol:
    """The meta files of one IJB target, read as the reference reads them."""

    target: str  # "ijbb" or "ijbc"
    meta_dir: Path
    templates: np.ndarray  # per image row
    medias: np.ndarray
    pair_t1: np.ndarray
    pair_t2: np.ndarray
    pair_label: np.ndarray
    image_names: list[str] | None = None  # loaded by read_landmarks()
    landmarks: np.ndarray | None = None  # (n, 5, 2) float32
    faceness: np.ndarray | None = None  # (n,) float32

    @property
    def n_images(self) -> int:
        return len(self.templates)

    def gallery_files(self) -> dict[str, Path]:
        names = ("G1", "G2") if self.target == "ijbc" else ("S1", "S2")
        return {name: self.meta_dir / f"{self.target}_1N_gallery_{name}.csv" for name in names}

    @property
    def probe_file(self) -> Path:
        return self.meta_dir / f"{self.target}_1N_probe_mixed.csv"

    def has_identification(self) -> bool:
        return self.probe_file.is_file() and all(p.is_file() for p in self.gallery_files().values())


def find_meta_dir(data_root: str | Path, target: str) -> Path:
    """``DIR/meta`` or the official ``DIR/IJBC/meta`` (``IJBB`` for IJB-B), whichever holds the target's files."""
    root = Path(data_root)
    for meta in (root / "meta", root / target.upper() / "meta", root):
        if (meta / f"{target}_face_tid_mid.txt").is_file():
            return meta
    raise UsageError(
        f"no {target.upper()} protocol under {root}: expected {root}/meta/{target}_face_tid_mid.txt "
        f"(or {root}/{target.upper()}/meta/...)"
    )


def _read_table(path: Path, sep: str, skiprows: int = 0, dtype=None):
    import pandas as pd

    if not path.is_file():
        raise UsageError(f"IJB meta file not found: {path}")
    try:
        return pd.read_csv(path, sep=sep, header=None, skiprows=skiprows, dtype=dtype).values
    except Exception as exc:
        raise CorruptFileError(f"{path}: cannot parse ({type(exc).__name__}: {exc})") from None


def _int_columns(table: np.ndarray, columns: Sequence[int], path: Path) -> list[np.ndarray]:
    try:
        return [table[:, c].astype(np.int64) for c in columns]
    except (ValueError, IndexError, TypeError) as exc:
        raise CorruptFileError(f"{path}: expected integer columns {list(columns)} ({exc})") from None


def read_protocol(data_root: str | Path, target: str = "ijbc") -> IJBProtocol:
    """Read ``*_face_tid_mid.txt`` and ``*_template_pair_label.txt`` of ``target`` under ``data_root``."""
    target = target.lower().replace("-", "")
    if target not in IJB_TARGETS:
        raise UsageError(f"unknown IJB target {target!r}; choose ijbb or ijbc")
    meta = find_meta_dir(data_root, target)
    tid_path = meta / f"{target}_face_tid_mid.txt"
    pair_path = meta / f"{target}_template_pair_label.txt"
    templates, medias = _int_columns(_read_table(tid_path, " "), (1, 2), tid_path)
    t1, t2, label = _int_columns(_read_table(pair_path, " "), (0, 1, 2), pair_path)
    return IJBProtocol(target, meta, templates, medias, t1, t2, label)


def read_landmarks(protocol: IJBProtocol) -> IJBProtocol:
    """Add image names, 5-point landmarks and detector scores from ``*_name_5pts_score.txt`` (same row order)."""
    path = protocol.meta_dir / f"{protocol.target}_name_5pts_score.txt"
    table = _read_table(path, " ", dtype=str)
    if table.shape[1] != 12:
        raise CorruptFileError(f"{path}: expected 12 fields per line (name, 10 landmark values, score)")
    if len(table) != protocol.n_images:
        raise CorruptFileError(
            f"{path}: {len(table)} lines but the template file has {protocol.n_images} image rows"
        )
    try:
        protocol.landmarks = table[:, 1:11].astype(np.float64).astype(np.float32).reshape(-1, 5, 2)
        protocol.faceness = table[:, 11].astype(str).astype(np.float32)
    except ValueError as exc:
        raise CorruptFileError(f"{path}: non-numeric landmark or score ({exc})") from None
    protocol.image_names = [str(n) for n in table[:, 0]]
    return protocol


def read_faceness(protocol: IJBProtocol) -> np.ndarray:
    """The detector scores of the protocol's images (reads the landmark file once)."""
    if protocol.faceness is None:
        read_landmarks(protocol)
    assert protocol.faceness is not None
    return protocol.faceness


# --------------------------------------------------------------------------------------------------- pooling
def image_input_features(
    img_feats: np.ndarray, faceness: np.ndarray | None, flags: IJBFlags
) -> np.ndarray:
    """Per-image features after flip fusion, optional normalisation and detector weighting (float32 throughout)."""
    img_feats = np.asarray(img_feats, dtype=np.float32)
    if img_feats.ndim != 2 or img_feats.shape[1] % 2:
        raise UsageError(
            f"IJB image features must be (images, 2*D) = [embedding | flipped embedding], got {img_feats.shape}"
        )
    half = img_feats.shape[1] // 2
    feats = img_feats[:, :half] + img_feats[:, half:] if flags.flip else img_feats[:, :half]
    if not flags.norm_score:
        feats = feats / np.sqrt(np.sum(feats**2, -1, keepdims=True))
    if flags.detector_score:
        if faceness is None:
            raise UsageError("detector-score weighting needs the faceness scores")
        feats = feats * np.asarray(faceness, dtype=np.float32)[:, np.newaxis]
    return feats


def _sequential_group_sums(rows: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sum each group of consecutive rows first to last, in the rows' dtype: the order ``np.sum(axis=0)`` uses.

    (``np.add.reduceat`` sums in another order, which changes float32 results in the last bit.) One vectorised
    step per position inside a group, so the cost is the number of rows, not the number of groups.
    """
    sums = rows[starts].copy()
    for offset in range(1, int(counts.max(initial=1))):
        (longer,) = np.nonzero(counts > offset)
        sums[longer] += rows[starts[longer] + offset]
    return sums


def pool_templates(
    feats: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Template features (L2-normalised float64, ascending template id) and the sorted unique template ids."""
    n = len(templates)
    if feats.shape[0] != n:
        raise UsageError(f"{feats.shape[0]} image features but the template file lists {n} image rows")
    order = np.lexsort((np.arange(n), medias, templates))  # template, then media, then file order
    t_sorted, m_sorted = templates[order], medias[order]
    new_media = np.ones(n, dtype=bool)
    new_media[1:] = (t_sorted[1:] != t_sorted[:-1]) | (m_sorted[1:] != m_sorted[:-1])
    media_starts = np.flatnonzero(new_media)
    media_counts = np.diff(np.append(media_starts, n))
    sums = _sequential_group_sums(feats[order], media_starts, media_counts)
    # np.mean of float32 rows: float32 sum divided by the count (numpy 2 divides in float64 and casts back)
    media_feats = (sums / media_counts[:, np.newaxis]).astype(np.float32)
    media_templates = t_sorted[media_starts]
    new_template = np.ones(len(media_starts), dtype=bool)
    new_template[1:] = media_templates[1:] != media_templates[:-1]
    template_starts = np.flatnonzero(new_template)
    template_counts = np.diff(np.append(template_starts, len(media_starts)))
    template_feats = _sequential_group_sums(media_feats, template_starts, template_counts).astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", template_feats, template_feats))
    norms[norms == 0.0] = 1.0
    return template_feats / norms[:, np.newaxis], media_templates[template_starts]


def template_rows(unique_templates: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    """Row index of each wanted template id in ``unique_templates`` (sorted); unknown ids are an error."""
    rows = np.searchsorted(unique_templates, wanted)
    rows = np.clip(rows, 0, len(unique_templates) - 1)
    missing = unique_templates[rows] != wanted
    if missing.any():
        bad = np.unique(wanted[missing])
        shown = ", ".join(str(b) for b in bad[:5])
        raise CorruptFileError(
            f"{len(bad)} template id(s) in the {what} are not in the template file (e.g. {shown})"
        )
    return rows


# --------------------------------------------------------------------------------------------------- scoring
GATHER_BATCH = 1 << 16  # pairs per direct dot-product batch (bounds the gathered copies to ~0.5 GB at 512-d)
GEMM_PER_GATHER = 32  # one gathered dot product costs about as much as this many GEMM entries


def _smallest_uint(values: np.ndarray, upper: int) -> np.ndarray:
    """``values`` (all < ``upper``) in the narrowest unsigned dtype, so numpy's stable argsort is a radix sort."""
    for dtype in (np.uint8, np.uint16):
        if upper <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values


def score_pairs(
    feats: np.ndarray,
    rows1: np.ndarray,
    rows2: np.ndarray,
    max_block: int = 1 << 24,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Dot product of ``feats[rows1[i]]`` and ``feats[rows2[i]]`` for every pair, in bounded memory.

    The distinct first rows are cut into blocks small enough that a block times the distinct second rows holds at
    most ``max_block`` similarities; each block is one GEMM, and its pairs (bucketed by block with a radix sort,
    kept in file order inside a bucket) pick their entries out of it. A block whose pairs would use only a small
    part of its GEMM gets direct dot products instead.
    """
    n_pairs, n_rows = len(rows1), feats.shape[0]
    scores = np.empty(n_pairs, dtype=np.float64)
    if n_pairs == 0:
        return scores
    used = np.zeros(n_rows, dtype=bool)
    used[rows1] = True
    firsts = np.flatnonzero(used)  # distinct first rows, ascending
    rank_of = np.zeros(n_rows, dtype=np.int64)
    rank_of[firsts] = np.arange(len(firsts))
    used[:] = False
    used[rows2] = True
    rows_per_block = max(1, max_block // int(np.count_nonzero(used)))
    n_blocks = -(-len(firsts) // rows_per_block)
    block_of_pair = rank_of[rows1] // rows_per_block
    order = np.argsort(_smallest_uint(block_of_pair, n_blocks), kind="stable")
    bounds = np.searchsorted(block_of_pair[order], np.arange(n_blocks + 1))
    column_of = np.full(n_rows, -1, dtype=np.int64)
    for block in range(n_blocks):
        pair_idx = order[bounds[block] : bounds[block + 1]]
        if len(pair_idx) == 0:
            continue
        first, second = rows1[pair_idx], rows2[pair_idx]
        block_rows = firsts[block * rows_per_block : (block + 1) * rows_per_block]
        used[:] = False
        used[second] = True
        columns = np.flatnonzero(used)
        if len(pair_idx) * GEMM_PER_GATHER < len(block_rows) * len(columns):
            for s in range(0, len(pair_idx), GATHER_BATCH):
                part = slice(s, s + GATHER_BATCH)
                scores[pair_idx[part]] = np.einsum("ij,ij->i", feats[first[part]], feats[second[part]])
        else:
            column_of[columns] = np.arange(len(columns))
            similarities = feats[block_rows] @ feats[columns].T
            flat_index = (rank_of[first] - block * rows_per_block) * len(columns) + column_of[second]
            scores[pair_idx] = similarities.ravel()[flat_index]
            column_of[columns] = -1
        if progress is not None:
            progress(len(pair_idx))
    return scores


# --------------------------------------------------------------------------------------------------- 1:1
@dataclass
class IJBVerificationResult:
    """1:1 template verification: TAR at each FAR (insightface's read-off), AUC and the ROC."""

    target: str
    flags: IJBFlags
    tar_at_far: dict[float, float]
    auc: float
    eer: float
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    n_pairs: int = 0
    n_genuine: int = 0
    n_impostor: int = 0
    n_templates: int = 0

    def table_row(self) -> list[str]:
        """The row insightface prints: ``'%.2f' % (tar * 100)`` per FAR target."""
        return ["%.2f" % (self.tar_at_far[far] * 100) for far in IJB_FAR_TARGETS]

    def measurable(self, far: float) -> bool:
        """Whether the impostor count can resolve ``far`` (below 1/n_impostor the read-off sits at FPR 0)."""
        return far * self.n_impostor >= 1

    def to_dict(self, curves: bool = False) -> dict:
        out = {
            "target": self.target,
            "config": self.flags.name,
            "norm_score": self.flags.norm_score,
            "detector_score": self.flags.detector_score,
            "flip": self.flags.flip,
            "tar_at_far": [
                {"far": far, "tar": self.tar_at_far[far], "measurable": self.measurable(far)}
                for far in IJB_FAR_TARGETS
            ],
            "tar_printed": self.table_row(),
            "auc": self.auc,
            "eer": self.eer,
            "n_pairs": self.n_pairs,
            "n_genuine": self.n_genuine,
            "n_impostor": self.n_impostor,
            "n_templates": self.n_templates,
        }
        if curves:
            out["fpr"] = self.fpr.tolist()
            out["tpr"] = self.tpr.tolist()
        return out


def verify_templates(
    protocol: IJBProtocol,
    template_feats: np.ndarray,
    unique_templates: np.ndarray,
    flags: IJBFlags,
    progress: Callable[[int], None] | None = None,
) -> IJBVerificationResult:
    """Score every template pair of the protocol and read TAR@FAR off the ROC as eval_ijbc.py does."""
    rows1 = template_rows(unique_templates, protocol.pair_t1, "pair file")
    rows2 = template_rows(unique_templates, protocol.pair_t2, "pair file")
    scores = score_pairs(template_feats, rows1, rows2, progress=progress)
    labels = protocol.pair_label.astype(bool)
    if labels.all() or not labels.any():
        raise CorruptFileError("the IJB pair file needs both genuine (1) and impostor (0) pairs")
    fpr, tpr, _ = roc_lib.roc(scores, labels)
    tars = roc_lib.tar_at_far_nearest(fpr, tpr, IJB_FAR_TARGETS)
    return IJBVerificationResult(
        target=protocol.target,
        flags=flags,
        tar_at_far=dict(zip(IJB_FAR_TARGETS, tars, strict=True)),
        auc=roc_lib.auc(fpr, tpr),
        eer=roc_lib.equal_error_rate(fpr, tpr),
        fpr=fpr,
        tpr=tpr,
        scores=scores,
        labels=labels,
        n_pairs=len(scores),
        n_genuine=int(labels.sum()),
        n_impostor=int((~labels).sum()),
        n_templates=len(unique_templates),
    )


# --------------------------------------------------------------------------------------------------- 1:N
@dataclass
class GalleryResult:
    """Identification against one gallery (or the joined galleries in closed mode)."""

    name: str
    n_gallery: int
    n_mated: int
    n_nonmated: int
    rank_counts: dict[int, int]  # probes whose mate is within rank k
    rank_denominator: int
    tpir: dict[float, float]  # at each FPIR ("FAR" in closed mode)
    thresholds: dict[float, float]
    fpir_achieved: dict[float, float | None]

    def to_dict(self) -> dict:
        return {
            "gallery": self.name,
            "n_gallery_templates": self.n_gallery,
            "n_mated_probes": self.n_mated,
            "n_nonmated_probes": self.n_nonmated,
            "rank": {f"rank{k}": self.rank_counts[k] / self.rank_denominator for k in self.rank_counts},
            "rank_counts": {f"rank{k}": c for k, c in self.rank_counts.items()},
            "rank_denominator": self.rank_denominator,
            "tpir": [
                {
                    "fpir": f,
                    "tpir": self.tpir[f],
                    "fnir": 1.0 - self.tpir[f],
                    "threshold": self.thresholds[f],
                    "fpir_achieved": self.fpir_achieved[f],
                }
                for f in self.tpir
            ],
        }


@dataclass
class IJBIdentificationResult:
    target: str
    mode: str  # "open" or "closed"
    flags: IJBFlags
    galleries: list[GalleryResult]
    n_probes: int

    def mean_rank(self, k: int) -> float:
        """Rank-k over all probes: insightface's "[Mean]" line, (count_G1 + count_G2) / n_probes in open mode."""
        return sum(g.rank_counts[k] for g in self.galleries) / self.n_probes

    def mean_tpir(self, fpir: float) -> float:
        return float(np.mean([g.tpir[fpir] for g in self.galleries]))

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "mode": self.mode,
            "config": self.flags.name,
            "n_probes": self.n_probes,
            "galleries": [g.to_dict() for g in self.galleries],
            "mean": {
                **{f"rank{k}": self.mean_rank(k) for k in RANKS},
                "tpir": {str(f): self.mean_tpir(f) for f in FPIR_TARGETS},
            },
        }


def read_subject_list(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """TEMPLATE_ID and SUBJECT_ID columns of a 1:N csv (header skipped)."""
    table = _read_table(path, ",", skiprows=1)
    templates, subjects = _int_columns(table, (0, 1), path)
    return templates, subjects


def _unique_with_subject(templates: np.ndarray, subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique template ids and the subject id of each template's first csv row."""
    unique, first = np.unique(templates, return_index=True)
    return unique, subjects[first]


def _closed_set(
    probe_feats: np.ndarray, probe_ids: np.ndarray, gallery_feats: np.ndarray, gallery_ids: np.ndarray
) -> GalleryResult:
    """ijb_1n.py: every probe's subject must appear exactly once in the joined gallery."""
    mate_columns = []
    for subject in probe_ids:
        (where,) = np.nonzero(gallery_ids == subject)
        if len(where) != 1:
            raise CorruptFileError(
                f"closed-set 1:N needs each probe subject exactly once in the gallery; subject {subject} "
                f"appears {len(where)} times (use --ijb-mode open)"
            )
        mate_columns.append(where[0])
    mates = np.array(mate_columns, dtype=np.int64)
    n_probe, n_gallery = len(probe_ids), len(gallery_ids)
    similarity = probe_feats @ gallery_feats.T
    mated = similarity[np.arange(n_probe), mates]
    ranks = np.count_nonzero(similarity > mated[:, np.newaxis], axis=1)  # gallery entries ranked above the mate
    nonmated_mask = np.ones((n_probe, n_gallery), dtype=bool)
    nonmated_mask[np.arange(n_probe), mates] = False
    nonmated = similarity[nonmated_mask]
    tpir: dict[float, float] = {}
    thresholds: dict[float, float] = {}
    achieved: dict[float, float | None] = {}
    for far in FPIR_TARGETS:
        k = math.ceil(n_probe * far)
        top = np.partition(nonmated, len(nonmated) - k)[len(nonmated) - k]  # k-th largest
        thresholds[far] = float(top)
        tpir[far] = float(np.count_nonzero(mated > top)) / n_probe
        achieved[far] = float(np.count_nonzero(nonmated > top)) / len(nonmated)
    return GalleryResult(
        name="G1+G2",
        n_gallery=n_gallery,
        n_mated=n_probe,
        n_nonmated=0,
        rank_counts={k: int(np.count_nonzero(ranks < k)) for k in RANKS},
        rank_denominator=n_probe,
        tpir=tpir,
        thresholds=thresholds,
        fpir_achieved=achieved,
    )


def _open_set(
    name: str,
    probe_feats: np.ndarray,
    probe_ids: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_ids: np.ndarray,
) -> GalleryResult:
    """ijb_evals.py ``evaluation_1N``: one gallery; probes without a mate in it are non-mated searches."""
    similarity = probe_feats @ gallery_feats.T
    is_mated = np.isin(probe_ids, gallery_ids)
    sim_mated = similarity[is_mated]
    mated_ids = probe_ids[is_mated]
    same_subject = mated_ids[:, np.newaxis] == gallery_ids[np.newaxis, :]
    mate_column = np.argmax(same_subject, axis=1)  # first gallery template of the subject
    pos = sim_mated[np.arange(len(mated_ids)), mate_column]
    ranks = np.count_nonzero(sim_mated > pos[:, np.newaxis], axis=1)
    best_other = np.where(same_subject, -np.inf, sim_mated).max(axis=1)
    rank1_correct = pos > best_other
    nonmated_top = np.sort(similarity[~is_mated].max(axis=1))[::-1]
    n_pos, n_nm = len(pos), len(nonmated_top)
    tpir: dict[float, float] = {}
    thresholds: dict[float, float] = {}
    achieved: dict[float, float | None] = {}
    for fpir in FPIR_TARGETS:
        if n_nm == 0:
            thresholds[fpir], achieved[fpir] = -math.inf, None
            tpir[fpir] = float(np.count_nonzero(rank1_correct)) / n_pos if n_pos else math.nan
            continue
        index = max(int(n_nm * _IJB_EVALS_FPIR[fpir]) - 1, 0)
        threshold = float(nonmated_top[index])
        thresholds[fpir] = threshold
        tpir[fpir] = float(np.count_nonzero(rank1_correct & (pos > threshold))) / n_pos if n_pos else math.nan
        achieved[fpir] = float(np.count_nonzero(nonmated_top > threshold)) / n_nm
    return GalleryResult(
        name=name,
        n_gallery=len(gallery_ids),
        n_mated=n_pos,
        n_nonmated=n_nm,
        rank_counts={k: int(np.count_nonzero(ranks < k)) for k in RANKS},
        rank_denominator=n_pos,
        tpir=tpir,
        thresholds=thresholds,
        fpir_achieved=achieved,
    )


IDENTIFICATION_MODES = ("open", "closed")


def identify(
    protocol: IJBProtocol,
    template_feats: np.ndarray,
    unique_templates: np.ndarray,
    flags: IJBFlags,
    mode: str = "open",
) -> IJBIdentificationResult:
    """1:N identification on the protocol's gallery and probe csv files (``open`` or ``closed``, see module doc)."""
    if mode not in IDENTIFICATION_MODES:
        raise UsageError(f"unknown 1:N mode {mode!r}; choose open or closed")
    if not protocol.has_identification():
        raise UsageError(f"no 1:N gallery/probe files for {protocol.target} in {protocol.meta_dir}")
    probe_t, probe_s = _unique_with_subject(*read_subject_list(protocol.probe_file))
    probe_feats = template_feats[template_rows(unique_templates, probe_t, "probe file")]
    galleries = {name: read_subject_list(path) for name, path in protocol.gallery_files().items()}
    if mode == "closed":
        joined_t = np.concatenate([g[0] for g in galleries.values()])
        joined_s = np.concatenate([g[1] for g in galleries.values()])
        g_t, g_s = _unique_with_subject(joined_t, joined_s)
        g_feats = template_feats[template_rows(unique_templates, g_t, "gallery files")]
        results = [_closed_set(probe_feats, probe_s, g_feats, g_s)]
    else:
        results = []
        for name, (templates, subjects) in galleries.items():
            g_t, g_s = _unique_with_subject(templates, subjects)
            g_feats = template_feats[template_rows(unique_templates, g_t, f"gallery {name}")]
            results.append(_open_set(name, probe_feats, probe_s, g_feats, g_s))
    return IJBIdentificationResult(protocol.target, mode, flags, results, n_probes=len(probe_t))
