"""The gallery file: enrolled identities, their templates, the per-image embeddings behind them, and the model.

A gallery is only meaningful together with the model that produced it (embeddings of two models live in different
spaces) and with the threshold calibrated on it (the false-positive identification rate grows with the number of
enrolled identities). Both are stored inside the file, so ``gallery search`` can refuse a mismatched model and
warn about a stale threshold.

Format: an uncompressed ``.npz`` of plain arrays (no Python objects; it is read with ``allow_pickle=False``), so
any numpy user can inspect it::

    format        str, "facecli-gallery/1"
    meta          str, JSON: model (spec, fingerprint, colour order, mean/std, embedding size, flip),
                  align (whether photos were aligned on the fly, and how), weighting, threshold (or null)
    identities    (G,) str, sorted
    templates     (G, D) float32|float16, L2-normalised mean of each identity's image embeddings
    embeddings    (M, D) same dtype, L2-normalised per-image embeddings
    norms         (M,) float32, the raw embedding norms (quality for MagFace/AdaFace-trained models)
    labels        (M,) int32, index into ``identities`` for each image
    paths         (M,) str, where each image came from
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from facecli.archives import check_npz
from facecli.errors import CorruptFileError, FacecliError, UsageError
from facecli.fileio import atomic_path

FORMAT = "facecli-gallery/1"
WEIGHTINGS = ("none", "norm")
_ARRAYS = ("identities", "templates", "embeddings", "norms", "labels", "paths")


def l2_normalize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` scaled to unit length, and the original norms (float32)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1)
    safe = np.where(norms > 0, norms, 1.0).astype(np.float32)
    return x / safe[:, None], norms.astype(np.float32)


def compute_templates(
    embeddings: np.ndarray, norms: np.ndarray, labels: np.ndarray, n_identities: int, weighting: str = "none"
) -> np.ndarray:
    """One unit-length template per identity: the (optionally norm-weighted) mean of its unit embeddings.

    ``weighting="norm"`` weights each image by its raw embedding norm, which MagFace and AdaFace train to grow with
    face quality, so blurred or profile shots pull the template less.
    """
    if weighting not in WEIGHTINGS:
        raise UsageError(f"unknown template weighting {weighting!r}; choose one of: {', '.join(WEIGHTINGS)}")
    weights = norms.astype(np.float64) if weighting == "norm" else np.ones(len(labels))
    sums = np.zeros((n_identities, embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, embeddings.astype(np.float64) * weights[:, None])
    templates, _ = l2_normalize(sums)
    return templates


#: float32 cosines of unit vectors can exceed 1 by a few ulps, and a calibrated threshold sits one ulp above a score.
_SCORE_BOUND = 1.0 + 1e-4


def score_threshold_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a cosine accept threshold (a finite number in [-1, 1], float32 rounding aside)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"the threshold is a {type(value).__name__}, not a number"
    if not math.isfinite(value) or not -_SCORE_BOUND <= value <= _SCORE_BOUND:
        return f"the threshold {value!r} is not a cosine score in [-1, 1]"
    return None


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a gallery's metadata (types, weighting, threshold), or None.

    A gallery is a file users copy around; a tampered threshold (NaN makes every probe ``unknown``, exit 0) must be
    refused on load rather than silently change every answer.
    """
    if not isinstance(meta, dict):
        return "metadata is not a mapping"
    for key in ("model", "align"):
        if not isinstance(meta.get(key) or {}, dict):
            return f"{key!r} is not a mapping"
    if meta.get("weighting", "none") not in WEIGHTINGS:
        return f"unknown template weighting {meta.get('weighting')!r}"
    threshold = meta.get("threshold")
    if threshold is None:
        return None
    if not isinstance(threshold, dict) or "threshold" not in threshold:
        return "the calibrated threshold is not a record with a 'threshold' value"
    problem = score_threshold_problem(threshold["threshold"])
    if problem:
        return problem
    size = threshold.get("gallery_size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return f"the threshold's gallery_size {size!r} is not a count"
    return None


@dataclass
class Gallery:
    """An in-memory gallery; build it with :meth:`from_images`, change it with :meth:`add` / :meth:`remove`."""

    identities: np.ndarray
    templates: np.ndarray
    embeddings: np.ndarray
    norms: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    model: dict[str, Any]
    align: dict[str, Any] = field(default_factory=dict)
    weighting: str = "none"
    threshold: dict[str, Any] | None = None

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_images(
        cls,
        names: list[str],
        raw_embeddings: np.ndarray,
        paths: list[str],
        model: dict[str, Any],
        align: dict[str, Any] | None = None,
        weighting: str = "none",
        dtype: str = "float32",
    ) -> "Gallery":
        """A gallery from one raw (unnormalised) embedding per image and the identity name of each image."""
        if len(names) != len(raw_embeddings) or len(names) != len(paths):
            raise ValueError("names, embeddings and paths must have the same length")
        if len(names) == 0:
            raise UsageError("no images to enrol")
        embeddings, norms = l2_normalize(raw_embeddings)
        identities, labels = np.unique(np.asarray(names, dtype=str), return_inverse=True)
        labels = labels.astype(np.int32)
        templates = compute_templates(embeddings, norms, labels, len(identities), weighting)
        return cls(
            identities=identities,
            templates=templates.astype(dtype),
            embeddings=embeddings.astype(dtype),
            norms=norms,
            labels=labels,
            paths=np.asarray(paths, dtype=str),
            model=dict(model),
            align=dict(align or {}),
            weighting=weighting,
        )

    # -- queries -----------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.identities)

    @property
    def dim(self) -> int:
        return int(self.templates.shape[1])

    @property
    def dtype(self) -> str:
        return str(self.templates.dtype)

    def image_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.size)

    def threshold_is_stale(self) -> bool:
        """True when identities were added or removed after calibration (FPIR depends on the gallery size)."""
        return self.threshold is not None and int(self.threshold.get("gallery_size", -1)) != self.size

    def check_model(self, fingerprint: str, spec: str = "") -> None:
        """Refuse a probe model whose fingerprint differs from the one the gallery was built with."""
        if fingerprint != self.model.get("fingerprint"):
            raise FacecliError(
                f"model fingerprint {fingerprint} ({spec or 'probe model'}) differs from the gallery's "
                f"{self.model.get('fingerprint')} ({self.model.get('spec', '?')}): embeddings of different models "
                "(or colour order/normalisation) are not comparable; use the gallery's model or rebuild the gallery"
            )

    # -- changes (each returns a new Gallery; templates are recomputed) ---------------------------------------------
    def _with_images(
        self, names: np.ndarray, embeddings: np.ndarray, norms: np.ndarray, paths: np.ndarray
    ) -> "Gallery":
        if len(names) == 0:
            raise UsageError("the gallery would be empty; delete the file instead")
        identities, labels = np.unique(names, return_inverse=True)
        labels = labels.astype(np.int32)
        templates = compute_templates(embeddings.astype(np.float32), norms, labels, len(identities), self.weighting)
        return replace(
            self,
            identities=identities,
            templates=templates.astype(self.dtype),
            embeddings=embeddings.astype(self.dtype),
            norms=norms.astype(np.float32),
            labels=labels,
            paths=paths,
        )

    def add(self, names: list[str], raw_embeddings: np.ndarray, paths: list[str]) -> tuple["Gallery", int]:
        """Enrol more images (new or existing identities); images whose path is already enrolled are skipped.

        Returns the new gallery and the number of images actually added.
        """
        if raw_embeddings.shape[1:] != (self.dim,):
            raise UsageError(f"embeddings have size {raw_embeddings.shape[1:]}, the gallery {self.dim}")
        known = set(self.paths.tolist())
        keep = np.array([p not in known for p in paths], dtype=bool)
        if not keep.any():
            return self, 0
        embeddings, norms = l2_normalize(raw_embeddings[keep])
        new = self._with_images(
            np.concatenate([self.identities[self.labels], np.asarray(names, dtype=str)[keep]]),
            np.concatenate([self.embeddings.astype(np.float32), embeddings]),
            np.concatenate([self.norms, norms]),
            np.concatenate([self.paths, np.asarray(paths, dtype=str)[keep]]),
        )
        return new, int(keep.sum())

    def remove(self, identities: list[str]) -> "Gallery":
        """Remove whole identities; unknown names are an error (nothing is changed)."""
        unknown = sorted(set(identities) - set(self.identities.tolist()))
        if unknown:
            raise UsageError(f"not in the gallery: {', '.join(unknown)}")
        drop = np.isin(self.identities, np.asarray(identities, dtype=str))
        keep = ~drop[self.labels]
        return self._with_images(
            self.identities[self.labels][keep], self.embeddings[keep], self.norms[keep], self.paths[keep]
        )

    def with_threshold(self, threshold: dict[str, Any]) -> "Gallery":
        return replace(self, threshold={**threshold, "gallery_size": self.size})

    # -- file ----------------------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"model": self.model, "align": self.align, "weighting": self.weighting, "threshold": self.threshold}

    def save(self, path: str | os.PathLike) -> None:
        """Write the gallery atomically (a crash never leaves a half-written gallery behind)."""
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:  # a file object keeps numpy from appending ".npz"
                np.savez(handle, format=np.asarray(FORMAT), meta=np.asarray(json.dumps(self.meta())), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Gallery":
        """Read and validate a gallery; any damage is a one-line CorruptFileError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"gallery not found: {path}")
        check_npz(path, "gallery")
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "format" not in npz.files or str(npz["format"]) != FORMAT:
                    raise CorruptFileError(f"{path}: not a facecli gallery (no '{FORMAT}' format marker)")
                missing = [name for name in ("meta", *_ARRAYS) if name not in npz.files]
                if missing:
                    raise CorruptFileError(f"{path}: damaged gallery, missing {', '.join(missing)}")
                meta = json.loads(str(npz["meta"]))
                arrays = {name: npz[name] for name in _ARRAYS}
        except CorruptFileError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
            raise CorruptFileError(f"{path}: not a readable gallery file ({type(exc).__name__}: {exc})") from None
        problem = _meta_problem(meta)
        if problem:
            raise CorruptFileError(f"{path}: damaged gallery metadata, {problem}")
        gallery = cls(
            **arrays,
            model=meta.get("model") or {},
            align=meta.get("align") or {},
            weighting=meta.get("weighting", "none"),
            threshold=meta.get("threshold"),
        )
        problem = gallery._inconsistency()
        if problem:
            raise CorruptFileError(f"{path}: damaged gallery, {problem}")
        return gallery

    def _inconsistency(self) -> str | None:
        """What is wrong with the arrays, or None when they fit together."""
        t, e = self.templates, self.embeddings
        if t.ndim != 2 or e.ndim != 2 or t.shape[1] != e.shape[1]:
            return f"templates {t.shape} and embeddings {e.shape} do not fit"
        if t.dtype.kind != "f" or e.dtype.kind != "f":
            return "embeddings are not floating point"
        if self.identities.ndim != 1 or len(self.identities) != len(t) or len(t) == 0:
            return f"{len(self.identities)} identities for {len(t)} templates"
        if not (len(self.labels) == len(e) == len(self.norms) == len(self.paths)):
            return "per-image arrays have different lengths"
        if self.labels.dtype.kind not in "iu" or (len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(t))):
            return "image labels out of range"
        if self.identities.dtype.kind != "U" or self.paths.dtype.kind != "U":
            return "identity names or paths are not text"
        if not (np.isfinite(t).all() and np.isfinite(e).all()):
            return "non-finite values in the embeddings"
        if self.norms.dtype.kind != "f" or not np.isfinite(self.norms).all() or (self.norms < 0).any():
            return "embedding norms are not finite non-negative numbers"
        if not self.model.get("fingerprint"):
            return "no model fingerprint"
        return None
