"""Nearest templates by cosine similarity: exact search by one matrix multiply per probe batch, or FAISS.

Templates and probes are unit vectors, so the cosine is a dot product and a batch of probes against the whole
gallery is one GEMM. Exact search on float32 uses numpy's BLAS; on float16 it uses torch, whose CPU half-precision
kernels read half the memory (numpy has no half-precision BLAS and would be ~20x slower). For galleries too large
for that, ``--index faiss`` builds a FAISS index (``faiss-cpu`` package), caches it beside the gallery, and the
search reports its recall against exact search.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol

import numpy as np

from facecli.archives import check_npz
from facecli.errors import CorruptFileError, UsageError
from facecli.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Upper bound on the size of one probe-batch x gallery-block score matrix (entries), i.e. 256 MB of float32.
SCORE_BLOCK = 64 * 1024 * 1024
#: Probes searched together by exact search (each template block is read once per chunk).
PROBE_CHUNK = 1024
#: Probe batches up to this size use the half-precision matrix-vector kernel on float16 templates.
HALF_GEMV_MAX_PROBES = 4
#: Template rows widened to float32 at a time for larger float16 batches.
HALF_BLOCK = 65536
#: Rows wider than this use torch.topk, several times faster than numpy's argpartition on long rows.
TORCH_TOPK_MIN_WIDTH = 65536


class Index(Protocol):
    def search(self, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, template indices) per probe, best first; both (P, k)."""


INDEXES: Registry[Index] = Registry("index")


def probe_batches(n_probes: int, gallery_size: int) -> Iterator[slice]:
    """Slices of probes small enough that one batch's score matrix stays within :data:`SCORE_BLOCK`."""
    step = max(1, min(n_probes, SCORE_BLOCK // max(1, gallery_size)))
    for start in range(0, n_probes, step):
        yield slice(start, min(n_probes, start + step))


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row, sorted best first (ties: lower index first on narrow rows)."""
    k = min(k, scores.shape[1])
    if scores.shape[1] >= TORCH_TOPK_MIN_WIDTH:
        import torch

        top_values, top_idx = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k, dim=1)
        return top_values.numpy().astype(np.float32), top_idx.numpy().astype(np.int64)
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(scores, idx, axis=1).astype(np.float32), idx


@INDEXES.register("exact")
@dataclass
class ExactIndex:
    """Brute-force cosine search: exact, one matmul per chunk of probes and block of templates, in the templates'
    dtype."""

    templates: np.ndarray
    cache: Path | None = None  # nothing to cache: exact search has no build step

    def __post_init__(self) -> None:
        if self.templates.dtype not in (np.float32, np.float16):
            self.templates = self.templates.astype(np.float32)
        self._torch_templates: torch.Tensor | None = None

    def scores(self, probes: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
        """Cosine of every probe (rows, unit length) with the templates ``rows``: (P, G) float32."""
        if self.templates.dtype != np.float16:
            return np.ascontiguousarray(probes, dtype=np.float32) @ self.templates[rows].T
        import torch

        if self._torch_templates is None:
            self._torch_templates = torch.from_numpy(np.ascontiguousarray(self.templates))
        half = self._torch_templates[rows]
        if len(probes) <= HALF_GEMV_MAX_PROBES:  # memory-bound: the half-precision kernel reads half the bytes
            q = torch.from_numpy(np.ascontiguousarray(probes, dtype=np.float16))
            return (q @ half.T).float().numpy()
        # compute-bound: CPU half GEMM is slow, so widen the templates block by block and use float32 GEMM
        q = torch.from_numpy(np.ascontiguousarray(probes, dtype=np.float32))
        out = torch.empty((len(probes), len(half)), dtype=torch.float32)
        for start in range(0, len(half), HALF_BLOCK):
            out[:, start : start + HALF_BLOCK] = q @ half[start : start + HALF_BLOCK].float().T
        return out.numpy()

    def search(self, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Probes in chunks of up to :data:`PROBE_CHUNK`, each against the gallery in blocks whose score matrix
        fits :data:`SCORE_BLOCK`, keeping a running top-``k``: every block of templates is read (and, in float16,
        widened) once per chunk of probes, not once per handful of probes, which on a 10M gallery is the
        difference between seconds and minutes for a thousand probes."""
        n, k = len(self.templates), min(k, len(self.templates))
        out_scores = np.empty((len(probes), k), np.float32)
        out_idx = np.empty(out_scores.shape, np.int64)
        for chunk_start in range(0, len(probes), PROBE_CHUNK):
            chunk = probes[chunk_start : chunk_start + PROBE_CHUNK]
            rows = max(1, SCORE_BLOCK // len(chunk))
            best_scores, best_idx = top_k(self.scores(chunk, slice(0, rows)), k)
            for start in range(rows, n, rows):
                scores, idx = top_k(self.scores(chunk, slice(start, start + rows)), k)
                best_scores, best_idx = merge_top_k((best_scores, best_idx), (scores, idx + start), k)
            out_scores[chunk_start : chunk_start + len(chunk)] = best_scores
            out_idx[chunk_start : chunk_start + len(chunk)] = best_idx
        return out_scores, out_idx


def merge_top_k(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray],
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of two per-row top lists, best first; on equal scores ``first``'s entries come first."""
    scores = np.concatenate([first[0], second[0]], axis=1)
    idx = np.concatenate([first[1], second[1]], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(idx, order, axis=1)


#: Galleries smaller than this get an exact flat FAISS index whatever the kind asked: approximation saves nothing
#: there, and IVF-PQ/HNSW training needs thousands of vectors.
FAISS_MIN_APPROXIMATE = 10_000
#: Templates added to a FAISS index per call (each block is widened to float32 on its own, not the whole gallery).
FAISS_ADD_BLOCK = 65536
#: Probes re-ranked per block (the gathered candidate templates of a block are P x R x D floats).
RERANK_BLOCK = 64


class FaissIndex:
    """FAISS over the gallery's unit templates: ``kind`` says which structure.

    * ``auto`` (``--index faiss``): flat inner product (exact) up to ``ivf_above`` templates, IVF-Flat above it:
      ~4·sqrt(N) k-means cells, the ``nprobe`` nearest scanned per probe; 4·D bytes per template.
    * ``pq`` (``--index faiss-pq``): every template scanned, as product-quantised 4-bit codes (D/8 sub-quantisers:
      32 bytes at 512-d) that FAISS's fast-scan kernels compare 32 at a time in SIMD registers. The ``rerank``
      best candidates by code (256 by default) are re-scored exactly against the gallery's own templates, which
      facecli holds anyway, so the scores are exact and recall is only lost when the codes rank a true neighbour
      below ``rerank`` others. No cells, so no cell can be missed: time grows linearly (~2.5 ms per million
      templates and probe on two cores), the build takes seconds.
    * ``ivfpq`` (``--index faiss-ivfpq``): the same codes in IVF cells, only the ``nprobe`` nearest cells scanned,
      re-ranked the same way; sub-linear time, recall@1 limited by the cells scanned; the k-means of the cells makes
      the build minutes to hours.
    * ``hnsw`` (``--index faiss-hnsw``): a navigable small-world graph (32 links per node, ``ef_search`` 128)
      over 8-bit scalar-quantised vectors (D bytes + ~256 bytes of links), its 64 best re-ranked the same way.
      Slowest to build (hours at 10M on two cores).

    Galleries below :data:`FAISS_MIN_APPROXIMATE` templates use the exact flat index. With ``cache`` (a file path)
    the built index is saved together with a hash of the templates and its settings, and reused while they match.
    """

    KINDS = ("auto", "pq", "ivfpq", "hnsw")

    def __init__(self, templates: np.ndarray, cache: Path | None = None, kind: str = "auto",
                 ivf_above: int = 100_000, nprobe: int = 64, ef_search: int = 128, rerank: int | None = None) -> None:
        try:
            import faiss
        except ImportError:
            raise UsageError("--index faiss needs the faiss-cpu package: pip install 'facecli[faiss]'") from None
        if kind not in self.KINDS:
            raise ValueError(f"unknown FAISS index kind {kind!r}; choose one of {', '.join(self.KINDS)}")
        self.templates = np.ascontiguousarray(templates)
        key = f"{templates_digest(self.templates)}|{self.templates.dtype}|{kind}|{ivf_above}|recipe {BUILD_RECIPE}"
        cached = _load_cached(cache, key) if cache is not None else None
        self.index: Any = cached if cached is not None else _build_faiss(faiss, self.templates, kind, ivf_above)
        if cache is not None and cached is None:
            _save_cached(cache, key, self.index)
        self.structure = _structure(faiss, faiss.downcast_index(self.index))
        self.rerank = (rerank or RERANK[self.structure]) if self.structure in RERANK else 0
        width = {"ivf-flat": nprobe, "ivf-pq": nprobe, "hnsw-sq8": ef_search, "pq-fastscan": self.rerank}
        if self.structure in width:
            self.set_search_width(width[self.structure])

    def set_search_width(self, value: int) -> None:
        """How wide a search looks: IVF cells scanned (``nprobe``), the HNSW beam (``efSearch``), or for the
        exhaustive PQ scan the candidates re-scored exactly; nothing for the exact flat index."""
        import faiss

        structure: Any = faiss.downcast_index(self.index)  # FAISS types its downcasts as the base Index
        if self.structure.startswith("ivf"):
            structure.nprobe = value
        elif self.structure == "hnsw-sq8":
            structure.hnsw.efSearch = value
        elif self.structure == "pq-fastscan":
            self.rerank = value

    def search(self, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(probes, dtype=np.float32)
        if not self.rerank:
            scores, idx = self.index.search(queries, k)
            return scores.astype(np.float32), idx.astype(np.int64)
        _, candidates = self.index.search(queries, max(k, self.rerank))
        out_scores = np.empty((len(queries), k), np.float32)
        out_idx = np.empty((len(queries), k), np.int64)
        for start in range(0, len(queries), RERANK_BLOCK):
            block = slice(start, start + RERANK_BLOCK)
            cand = candidates[block].astype(np.int64)
            rows = self.templates[np.maximum(cand, 0)].astype(np.float32, copy=False)
            exact = np.einsum("prd,pd->pr", rows, queries[block])
            exact[cand < 0] = -np.inf  # fewer candidates than asked (tiny cells): padded with -1
            best, order = top_k(exact, k)
            out_scores[block] = best
            out_idx[block] = np.where(np.isfinite(best), np.take_along_axis(cand, order, axis=1), -1)
        return out_scores, out_idx

    def bytes_per_template(self) -> float:
        """Memory of the index itself per template (codes, ids, links, cell centroids); the gallery's templates,
        used for re-ranking, are counted by the gallery, not here."""
        import faiss

        index: Any = faiss.downcast_index(self.index)  # FAISS types its downcasts as the base Index
        n = max(1, index.ntotal)
        if self.structure in ("ivf-flat", "ivf-pq"):
            ivf = faiss.extract_index_ivf(index)
            return (ivf.code_size + 8) + ivf.nlist * ivf.d * 4 / n
        if self.structure == "pq-fastscan":  # codes only (no ids), stored in blocks of 32 templates
            return index.codes.size() / n
        if self.structure == "hnsw-sq8":
            links = index.hnsw.neighbors.size() * 4 + index.hnsw.offsets.size() * 8 + index.hnsw.levels.size() * 4
            return index.storage.sa_code_size() + links / n
        return float(index.d * 4)


def templates_digest(templates: np.ndarray) -> str:
    """SHA-256 over the SHA-256 of each :data:`DIGEST_BLOCK` of the templates' bytes, hashed on all cores (hashlib
    releases the GIL): one core hashes ~1.4 GB/s, 7 s for the 10 GB of a 10M float16 gallery at every search."""
    data = np.ascontiguousarray(templates).reshape(-1).view(np.uint8)
    blocks = [data[start : start + DIGEST_BLOCK] for start in range(0, len(data), DIGEST_BLOCK)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        digests = list(pool.map(lambda block: hashlib.sha256(block).digest(), blocks))
    return hashlib.sha256(b"".join(digests)).hexdigest()


#: Bytes hashed per task by :func:`templates_digest`.
DIGEST_BLOCK = 64 * 1024 * 1024
#: Structures whose candidates are re-scored exactly against the gallery's templates, and how many candidates they
#: re-score by default: 4-bit PQ codes rank a near neighbour of a crowded region lower than 8-bit SQ codes do, and
#: re-scoring 256 instead of 64 costs next to nothing beside the scan.
RERANK = {"pq-fastscan": 256, "ivf-pq": 256, "hnsw-sq8": 64}
#: Part of a cached index's key, raised whenever an index kind is built differently (2: IVF-PQ's 8-bit codes became
#: 4-bit fast-scan codes), so that a cache written by an older facecli is rebuilt rather than reused.
BUILD_RECIPE = 2


def _structure(faiss: Any, index: Any) -> str:
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw-sq8"
    if isinstance(index, faiss.IndexPQFastScan):
        return "pq-fastscan"
    if isinstance(index, faiss.IndexIVFPQFastScan):
        return "ivf-pq"
    if isinstance(index, faiss.IndexIVF):
        return "ivf-flat"
    return "flat"


def pq_subquantizers(dim: int) -> int:
    """Sub-quantisers of the PQ codes: the smallest divisor of ``dim`` with at most 8 dimensions each."""
    return next(m for m in range(max(1, dim // 8), dim + 1) if dim % m == 0)


def _build_faiss(faiss: Any, templates: np.ndarray, kind: str, ivf_above: int) -> Any:
    """A trained and filled FAISS index over ``templates`` (added block by block as float32)."""
    n, dim = templates.shape
    rng = np.random.default_rng(0)
    cells = max(1, int(4 * np.sqrt(n)))

    def sample(count: int) -> np.ndarray:
        rows = np.sort(rng.choice(n, min(n, count), replace=False))
        return np.ascontiguousarray(templates[rows], dtype=np.float32)

    if (kind == "auto" and n <= ivf_above) or (kind != "auto" and n < FAISS_MIN_APPROXIMATE):
        index = faiss.IndexFlatIP(dim)
    elif kind == "auto":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(sample(40 * cells))
    elif kind == "pq":
        index = faiss.IndexPQFastScan(dim, pq_subquantizers(dim), 4, faiss.METRIC_INNER_PRODUCT)
        index.train(sample(16 * 4096))  # the k-means of each sub-quantiser's 16 centroids
    elif kind == "ivfpq":
        index = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(dim), dim, cells, pq_subquantizers(dim), 4,
                                         faiss.METRIC_INNER_PRODUCT)
        index.train(sample(max(40 * cells, 16 * 4096)))  # k-means of the cells and of each sub-quantiser
    else:
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT)
        index.train(sample(100_000))  # the per-dimension ranges of the 8-bit codes
    for start in range(0, n, FAISS_ADD_BLOCK):
        index.add(np.ascontiguousarray(templates[start : start + FAISS_ADD_BLOCK], dtype=np.float32))
    return index


def _width(search_width: int | None) -> dict[str, int]:
    return {} if search_width is None else {"nprobe": search_width, "ef_search": search_width}


@INDEXES.register("faiss")
def faiss_auto(templates: np.ndarray, cache: Path | None = None, search_width: int | None = None) -> FaissIndex:
    """FAISS flat (exact) up to 100k templates, IVF-Flat above."""
    return FaissIndex(templates, cache, kind="auto", **_width(search_width))


@INDEXES.register("faiss-pq")
def faiss_pq(templates: np.ndarray, cache: Path | None = None, search_width: int | None = None) -> FaissIndex:
    """FAISS exhaustive scan of 4-bit PQ codes, candidates re-ranked exactly (``search_width`` of them)."""
    return FaissIndex(templates, cache, kind="pq", **({} if search_width is None else {"rerank": search_width}))


@INDEXES.register("faiss-ivfpq")
def faiss_ivfpq(templates: np.ndarray, cache: Path | None = None, search_width: int | None = None) -> FaissIndex:
    """FAISS IVF cells of 4-bit PQ codes, candidates re-ranked exactly."""
    return FaissIndex(templates, cache, kind="ivfpq", **_width(search_width))


@INDEXES.register("faiss-hnsw")
def faiss_hnsw(templates: np.ndarray, cache: Path | None = None, search_width: int | None = None) -> FaissIndex:
    """FAISS HNSW over 8-bit codes, candidates re-ranked exactly."""
    return FaissIndex(templates, cache, kind="hnsw", **_width(search_width))


def _load_cached(path: Path, key: str) -> Any:
    """The FAISS index saved at ``path`` if it was built from the same templates, else None."""
    import faiss

    try:
        check_npz(path, "index cache")
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != key:
                return None
            return faiss.deserialize_index(npz["index"])
    except (OSError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile, CorruptFileError):
        return None  # rebuilt


def _save_cached(path: Path, key: str, index: Any) -> None:
    import faiss

    from facecli.fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, key=np.asarray(key), index=faiss.serialize_index(index))


def build_index(name: str, templates: np.ndarray, cache: Path | None = None, search_width: int | None = None) -> Index:
    """The index registered as ``name`` over ``templates``; ``cache`` is where an index that is slow to build
    may keep itself between runs (exact search needs none); ``search_width`` (FAISS only) is the IVF ``nprobe`` or
    the HNSW ``efSearch``: wider finds more true neighbours and takes longer."""
    if search_width is None:
        return INDEXES.build(name, templates=templates, cache=cache)
    if not name.startswith("faiss"):
        raise UsageError(f"--search-width applies to the FAISS indexes, not --index {name}")
    if search_width < 1:
        raise UsageError(f"--search-width must be at least 1, got {search_width}")
    return INDEXES.build(name, templates=templates, cache=cache, search_width=search_width)


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Fraction of the exact top-k that the approximate top-k also returns (averaged over probes)."""
    k = exact_idx.shape[1]
    hits = sum(len(np.intersect1d(a[:k], e)) for a, e in zip(approx_idx, exact_idx))
    return hits / exact_idx.size if exact_idx.size else 1.0
