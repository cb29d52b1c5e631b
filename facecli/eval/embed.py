"""Faces to embeddings: flip fusion, streaming over encoded images, and a resumable on-disk feature cache.

Flip fusion follows insightface: every face is also embedded mirrored left-right, and the two raw outputs are
summed (``sum``, the protocol default), concatenated (``concat``) or the mirror is skipped (``none``). The sum is
returned raw; normalise afterwards.

For large sets (IJB-C: 469,375 faces) images are decoded/aligned by worker threads while the network runs on the
previous batch, and per-image features are written to ``--cache DIR`` in fixed-size chunks, each atomically, so
an interrupted run resumes at the first missing chunk and an identical rerun computes nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facecli.errors import UsageError
from facecli.eval.models import EmbeddingModel
from facecli.fileio import atomic_path, atomic_write_text
from facecli.parallel import Executor

FLIP_MODES = ("sum", "concat", "none")
Progress = Callable[[int], None]


def embed_with_flip(
    model: EmbeddingModel, images: np.ndarray, flip: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw embeddings of the faces and, with ``flip``, of their mirror images (both through one batched pass)."""
    images = np.asarray(images)
    if not flip:
        return model.embed_batch(images), None
    both = model.embed_batch(np.concatenate([images, images[:, :, ::-1]]))
    return both[: len(images)], both[len(images) :]


def fuse(embeddings: np.ndarray, embeddings_flip: np.ndarray | None, flip: str) -> np.ndarray:
    """Combine raw embeddings with their mirror embeddings as ``flip`` says (``sum``/``concat``/``none``)."""
    if flip not in FLIP_MODES:
        raise UsageError(f"unknown flip mode {flip!r}; choose one of {', '.join(FLIP_MODES)}")
    if flip == "none" or embeddings_flip is None:
        return embeddings
    if flip == "sum":
        return embeddings + embeddings_flip
    return np.concatenate([embeddings, embeddings_flip], axis=1)


def embed(
    model: EmbeddingModel,
    images: np.ndarray,
    flip: str = "sum",
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """float32 embeddings of aligned RGB uint8 faces (N, 112, 112, 3) with insightface's flip fusion (raw)."""
    if flip not in FLIP_MODES:
        raise UsageError(f"unknown flip mode {flip!r}; choose one of {', '.join(FLIP_MODES)}")
    images = np.asarray(images)
    step = batch_size or model.batch_size
    parts = []
    for start in range(0, len(images), step):
        emb, emb_flip = embed_with_flip(model, images[start : start + step], flip != "none")
        parts.append(fuse(emb, emb_flip, flip))
        if progress is not None:
            progress(min(step, len(images) - start))
    if not parts:
        width = model.embedding_size * (2 if flip == "concat" else 1)
        return np.zeros((0, width), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


class FeatureCache:
    """Per-image ``[embedding | flipped embedding]`` rows of one dataset under one model, in chunk files.

    Layout: ``DIR/<model fingerprint>/<dataset key>/chunk_000123.npy`` plus ``info.json``. A chunk is written only
    when complete, atomically, so whatever exists is valid; a different model or dataset uses another folder.
    """

    def __init__(self, root: str | Path, fingerprint: str, dataset_key: str, n_items: int, chunk_size: int = 4096):
        self.dir = Path(root) / fingerprint / dataset_key
        self.n_items = n_items
        self.chunk_size = chunk_size
        info = {"fingerprint": fingerprint, "dataset": dataset_key, "n_items": n_items, "chunk_size": chunk_size}
        info_path = self.dir / "info.json"
        if info_path.is_file():
            try:
                existing = json.loads(info_path.read_text())
            except (OSError, ValueError):
                existing = None
            if existing != info:
                raise UsageError(f"feature cache {self.dir} was written for another setup ({existing}); remove it")
        else:
            atomic_write_text(info_path, json.dumps(info, indent=1))

    @property
    def n_chunks(self) -> int:
        return -(-self.n_items // self.chunk_size)

    def chunk_path(self, index: int) -> Path:
        return self.dir / f"chunk_{index:06d}.npy"

    def chunk_range(self, index: int) -> range:
        return range(index * self.chunk_size, min(self.n_items, (index + 1) * self.chunk_size))

    def has(self, index: int) -> bool:
        return self.chunk_path(index).is_file()

    def load(self, index: int) -> np.ndarray:
        return np.load(self.chunk_path(index), allow_pickle=False)

    def save(self, index: int, rows: np.ndarray) -> None:
        with atomic_path(self.chunk_path(index)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, rows, allow_pickle=False)


def dataset_key(*parts: str | bytes) -> str:
    """A short stable name for a dataset (its files' identities), used as a cache folder name."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def embed_stream(
    model: EmbeddingModel,
    n_items: int,
    load: Callable[[int], np.ndarray],
    flip: bool = True,
    batch_size: int | None = None,
    workers: int = 4,
    progress: Progress | None = None,
    cache: FeatureCache | None = None,
) -> np.ndarray:
    """Per-item rows ``[embedding | flipped embedding]`` (float32, (n, 2D) or (n, D) without flip).

    ``load(i)`` returns item ``i`` as an aligned RGB uint8 face; it runs on ``workers`` threads
    (:class:`facecli.parallel.Executor`), and the next batch is loaded while the network runs on the current one.
    With ``cache``, finished chunks are read back and each newly computed chunk is saved as soon as its last batch
    is done.
    """
    step = batch_size or model.batch_size
    width = model.embedding_size * (2 if flip else 1)
    out = np.empty((n_items, width), dtype=np.float32)
    chunk_size = cache.chunk_size if cache is not None else n_items or 1
    chunks = [range(s, min(n_items, s + chunk_size)) for s in range(0, n_items, chunk_size)]
    todo: list[tuple[int, range]] = []  # (chunk index, batch of item indices)
    for index, rows in enumerate(chunks):
        if cache is not None and cache.has(index):
            cached = cache.load(index)
            if cached.shape == (len(rows), width):
                out[rows.start : rows.stop] = cached
                if progress is not None:
                    progress(len(rows))
                continue
        todo += [(index, range(b, min(rows.stop, b + step))) for b in range(rows.start, rows.stop, step)]

    # Threads, not processes: ``load`` is the caller's closure (over the images, a shared detector, the notes it
    # records) and must run in this process; decoding and alignment release the GIL. Two batches are loaded ahead,
    # so the next batch is ready when the network finishes this one.
    items = (i for _, batch in todo for i in batch)
    with Executor(workers, threads=True).map(load, items, in_flight=2 * step) as faces:
        for k, (index, batch) in enumerate(todo):
            images = np.stack(list(itertools.islice(faces, len(batch))))
            emb, emb_flip = embed_with_flip(model, images, flip)
            out[batch.start : batch.stop] = emb if emb_flip is None else np.concatenate([emb, emb_flip], axis=1)
            if progress is not None:
                progress(len(batch))
            chunk_done = k + 1 == len(todo) or todo[k + 1][0] != index
            if cache is not None and chunk_done:
                cache.save(index, out[chunks[index].start : chunks[index].stop])
    return out


def split_flip(rows: np.ndarray, flip: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``(embeddings, flipped embeddings or None)`` from rows written by :func:`embed_stream`."""
    if not flip:
        return rows, None
    half = rows.shape[1] // 2
    return rows[:, :half], rows[:, half:]
