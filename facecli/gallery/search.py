"""Nearest templates by cosine similarity: exact search by one matrix multiply per probe batch, or FAISS.

Templates and probes are unit vectors, so the cosine is a dot product and a batch of probes against the whole
gallery is one GEMM. Exact search on float32 uses numpy's BLAS; on float16 it uses torch, whose CPU half-precision
kernels read half the memory (numpy has no half-precision BLAS and would be ~20x slower). For galleries too large
for that, ``--index faiss`` builds a FAISS index (``faiss-cpu`` package), caches it beside the gallery, and the
search reports its recall against exact search.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol

import numpy as np

from facecli.errors import UsageError
from facecli.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Upper bound on the size of one probe-batch x gallery score matrix (entries), i.e. 256 MB of float32.
SCORE_BLOCK = 64 * 1024 * 1024
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
    """Brute-force cosine search: exact, one matmul per probe batch, in the templates' dtype."""

    templates: np.ndarray
    cache: Path | None = None  # nothing to cache: exact search has no build step

    def __post_init__(self) -> None:
        if self.templates.dtype not in (np.float32, np.float16):
            self.templates = self.templates.astype(np.float32)
        self._torch_templates: torch.Tensor | None = None

    def scores(self, probes: np.ndarray) -> np.ndarray:
        """Cosine of every probe (rows, unit length) with every template: (P, G) float32."""
        if self.templates.dtype != np.float16:
            return np.ascontiguousarray(probes, dtype=np.float32) @ self.templates.T
        import torch

        if self._torch_templates is None:
            self._torch_templates = torch.from_numpy(np.ascontiguousarray(self.templates))
        half = self._torch_templates
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
        out_scores = np.empty((len(probes), min(k, len(self.templates))), np.float32)
        out_idx = np.empty(out_scores.shape, np.int64)
        for batch in probe_batches(len(probes), len(self.templates)):
            out_scores[batch], out_idx[batch] = top_k(self.scores(probes[batch]), k)
        return out_scores, out_idx


@INDEXES.register("faiss")
class FaissIndex:
    """FAISS inner-product index: flat (exact) up to ``ivf_above`` templates, IVF-Flat above.

    IVF-Flat clusters the templates into ~4·sqrt(N) k-means cells and scans the ``nprobe`` cells nearest to each
    probe: it builds in seconds to minutes (HNSW needs far longer at a million templates) and its recall is
    reported against exact search. With ``cache`` (a file path) the trained index is saved there together with a
    hash of the templates and reused while the gallery is unchanged.
    """

    def __init__(
        self, templates: np.ndarray, cache: Path | None = None, ivf_above: int = 100_000, nprobe: int = 64
    ) -> None:
        try:
            import faiss
        except ImportError:
            raise UsageError("--index faiss needs the faiss-cpu package: pip install 'facecli[faiss]'") from None
        data = np.ascontiguousarray(templates, dtype=np.float32)
        key = hashlib.sha256(data.tobytes()).hexdigest() + f"|{ivf_above}"
        self.index: Any = _load_cached(cache, key) if cache is not None else None  # faiss is untyped
        if self.index is None:
            if len(data) > ivf_above:
                cells = int(4 * np.sqrt(len(data)))
                self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(data.shape[1]), data.shape[1], cells,
                                                faiss.METRIC_INNER_PRODUCT)
                sample = np.random.default_rng(0).choice(len(data), min(len(data), 40 * cells), replace=False)
                self.index.train(data[np.sort(sample)])
            else:
                self.index = faiss.IndexFlatIP(data.shape[1])
            self.index.add(data)
            if cache is not None:
                _save_cached(cache, key, self.index)
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = nprobe

    def search(self, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, idx = self.index.search(np.ascontiguousarray(probes, dtype=np.float32), k)
        return scores.astype(np.float32), idx.astype(np.int64)


def _load_cached(path: Path, key: str):
    """The FAISS index saved at ``path`` if it was built from the same templates, else None."""
    import faiss

    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != key:
                return None
            return faiss.deserialize_index(npz["index"])
    except (OSError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile):
        return None


def _save_cached(path: Path, key: str, index) -> None:
    import faiss

    from facecli.fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, key=np.asarray(key), index=faiss.serialize_index(index))


def build_index(name: str, templates: np.ndarray, cache: Path | None = None) -> Index:
    """The index registered as ``name`` over ``templates``; ``cache`` is where an index that is slow to build
    may keep itself between runs (exact search needs none)."""
    return INDEXES.build(name, templates=templates, cache=cache)


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Fraction of the exact top-k that the approximate top-k also returns (averaged over probes)."""
    k = exact_idx.shape[1]
    hits = sum(len(np.intersect1d(a[:k], e)) for a, e in zip(approx_idx, exact_idx))
    return hits / exact_idx.size if exact_idx.size else 1.0
