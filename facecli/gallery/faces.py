"""From image folders to unit-length embeddings: listing identity trees, reading, aligning on the fly, embedding.

Galleries, impostor sets and probe sets are all identity-per-folder trees (``ROOT/NAME/*.jpg``, as produced by
``facecli align``); probes may also be a flat folder or a single file. Images are processed in chunks so memory
stays bounded, and a bad image (unreadable, no face, not an aligned crop) is recorded and skipped, never fatal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facecli.errors import UsageError
from facecli.imageio import ImageReadError, is_image_path, read_image

CROP_SIZE = 112
CHUNK = 256


@dataclass(frozen=True)
class FaceImage:
    """One image file and the identity its folder names (None for images in a flat folder)."""

    path: Path
    identity: str | None


def list_images(root: str | os.PathLike) -> list[FaceImage]:
    """Images under ``root``: ``root/NAME/**`` belong to identity NAME, files directly in ``root`` to none."""
    root = Path(root)
    if root.is_file():
        return [FaceImage(root, None)]
    if not root.is_dir():
        raise UsageError(f"not found: {root}")
    items: list[FaceImage] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for path in sorted(entry.rglob("*")):
                if path.is_file() and is_image_path(path) and not path.name.startswith("."):
                    items.append(FaceImage(path, entry.name))
        elif is_image_path(entry):
            items.append(FaceImage(entry, None))
    if not items:
        raise UsageError(f"no images found in {root}")
    return items


@dataclass
class AlignSettings:
    """Whether photos are aligned on the fly (``--align``) and which face is kept; stored in the gallery."""

    enabled: bool = False
    select: str = "center"

    def as_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "select": self.select, "size": CROP_SIZE}


@dataclass
class Embedded:
    """Unnormalised (flip-fused) embeddings of the images that worked, and why the others did not.

    ``quality`` is the L2 norm of each image's raw *unflipped* embedding: the face-quality score of MagFace and
    AdaFace models (the flip-fused norm would also depend on how symmetric the face is).
    """

    images: list[FaceImage]
    raw: np.ndarray
    quality: np.ndarray
    failures: list[dict[str, str]] = field(default_factory=list)


def _load_face(item: FaceImage, align: AlignSettings) -> np.ndarray:
    image = read_image(item.path)
    if align.enabled:
        from facecli.align import align_image

        crop, _face = align_image(image, select=align.select, size=CROP_SIZE)
        if crop is None:
            raise ImageReadError("no_face", "no face detected")
        return crop
    if image.shape[:2] != (CROP_SIZE, CROP_SIZE):
        raise ImageReadError(
            "not_aligned",
            f"is {image.shape[1]}x{image.shape[0]}, not an aligned {CROP_SIZE}x{CROP_SIZE} crop (pass --align)",
        )
    return image


def embed_images(
    model: Any,
    items: list[FaceImage],
    align: AlignSettings,
    flip: str = "sum",
    batch_size: int | None = None,
    advance: Callable[[int], None] = lambda n: None,
) -> Embedded:
    """Embed every image of ``items`` with ``model`` (a :func:`facecli.eval.load_model` model), chunk by chunk."""
    from facecli.eval import embed
    from facecli.eval.embed import fuse, split_flip

    done: list[FaceImage] = []
    parts: list[np.ndarray] = []
    quality: list[np.ndarray] = []
    failures: list[dict[str, str]] = []
    for start in range(0, len(items), CHUNK):
        crops = []
        for item in items[start : start + CHUNK]:
            try:
                crops.append(_load_face(item, align))
                done.append(item)
            except ImageReadError as exc:
                failures.append({"path": str(item.path), "status": exc.status, "reason": exc.reason})
        if crops:
            both = embed(model, np.stack(crops), flip="none" if flip == "none" else "concat", batch_size=batch_size)
            emb, emb_flip = split_flip(both, flip != "none")
            parts.append(np.asarray(fuse(emb, emb_flip, flip), np.float32))
            quality.append(np.linalg.norm(emb.astype(np.float64), axis=1))
        advance(len(items[start : start + CHUNK]))
    dim = int(model.embedding_size) * (2 if flip == "concat" else 1)
    raw = np.concatenate(parts) if parts else np.empty((0, dim), np.float32)
    return Embedded(done, raw, np.concatenate(quality) if quality else np.empty(0), failures)


def drop_low_quality(embedded: Embedded, threshold: float) -> Embedded:
    """``embedded`` without the faces whose quality is below ``threshold``; they join the failures."""
    keep = embedded.quality >= threshold
    dropped = [
        {
            "path": str(item.path),
            "status": "low_quality",
            "reason": f"face quality (embedding norm) {q:.3g} is below {threshold:g}",
        }
        for item, q, kept in zip(embedded.images, embedded.quality, keep)
        if not kept
    ]
    return Embedded(
        [item for item, kept in zip(embedded.images, keep) if kept],
        embedded.raw[keep],
        embedded.quality[keep],
        embedded.failures + dropped,
    )


def describe_failures(failures: list[dict[str, str]]) -> str:
    """``"no_face: 2, not_aligned: 9; e.g. a.jpg: is 250x250, not an aligned 112x112 crop (pass --align)"``."""
    if not failures:
        return "no failures"
    counts: dict[str, int] = {}
    for failure in failures:
        counts[failure["status"]] = counts.get(failure["status"], 0) + 1
    first = failures[0]
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f"; e.g. {first['path']}: {first['reason']}"


def model_record(model: Any, spec: str, flip: str) -> dict[str, Any]:
    """What the gallery stores about its model: enough to reload it (from any working directory) and to recognise
    a different one."""
    return {
        "spec": str(Path(spec).expanduser().resolve()),
        "fingerprint": str(model.fingerprint),
        "color": str(model.color),
        "mean": np.asarray(model.mean, dtype=float).ravel().tolist(),
        "std": np.asarray(model.std, dtype=float).ravel().tolist(),
        "embedding_size": int(model.embedding_size),
        "flip": flip,
    }
