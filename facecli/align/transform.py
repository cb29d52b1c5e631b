"""From five landmarks to an ArcFace crop: insightface's template, a similarity fit, one ``cv2.warpAffine``.

Everything here reproduces ``insightface.utils.face_align.estimate_norm``/``norm_crop`` to the bit: the template is
kept in float32, scaled for other crop sizes exactly as insightface does (multiples of 112 scale it; multiples of
128 scale it by size/128 and shift it right by 8*size/128), the Umeyama fit runs in the landmarks' float32 precision
like scikit-image's does, and the warp uses the same OpenCV call (bilinear, constant black border).
"""

from __future__ import annotations

import numpy as np

#: insightface ``arcface_dst``: where the five landmarks land in a 112x112 ArcFace crop.
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def template(size: int = 112) -> np.ndarray:
    """The landmark template for a ``size`` x ``size`` crop (float32, (5, 2))."""
    size = int(size)
    if size <= 0 or (size % 112 and size % 128):
        raise ValueError(f"crop size must be a multiple of 112 or 128, got {size}")
    if size % 112 == 0:
        return ARCFACE_DST * (size / 112.0)
    ratio = size / 128.0
    dst = ARCFACE_DST * ratio
    dst[:, 0] += 8.0 * ratio
    return dst


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; never a reflection) mapping src onto dst.

    Umeyama (1991), eqs. 38-43, computed in the inputs' own precision as scikit-image's ``SimilarityTransform``
    does; returns the 3x3 homogeneous matrix in float64.
    """
    num, dim = src.shape
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_demean = src - src_mean
    dst_demean = dst - dst_mean
    cov = dst_demean.T @ src_demean / num
    signs = np.ones(dim, dtype=np.float64)
    if np.linalg.det(cov) < 0:
        signs[-1] = -1
    u, s, vt = np.linalg.svd(cov)
    matrix = np.eye(dim + 1, dtype=np.float64)
    rank = np.count_nonzero(s > s.max() * max(cov.shape) * np.finfo(float).eps)
    if rank == 0:
        return matrix * np.nan
    if rank == dim - 1 and np.linalg.det(u) * np.linalg.det(vt) > 0:
        matrix[:dim, :dim] = u @ vt
    elif rank == dim - 1:
        flipped = signs.copy()
        flipped[-1] = -1
        matrix[:dim, :dim] = u @ np.diag(flipped) @ vt
    else:
        matrix[:dim, :dim] = u @ np.diag(signs) @ vt
    scale = 1.0 / src_demean.var(axis=0).sum() * (s @ signs)
    matrix[:dim, dim] = dst_mean - scale * (matrix[:dim, :dim] @ src_mean.T)
    matrix[:dim, :dim] *= scale
    return matrix


def estimate_norm(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2x3 matrix that maps image pixels into the ``size`` ArcFace crop (landmarks are used as float32)."""
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.shape != (5, 2):
        raise ValueError(f"expected (5, 2) landmarks, got shape {landmarks.shape}")
    if not np.all(np.isfinite(landmarks)):
        raise ValueError("landmarks contain NaN or infinity")
    return similarity_transform(landmarks, template(size))[:2, :]


def warp(image: np.ndarray, matrix: np.ndarray, size: int = 112) -> np.ndarray:
    """Apply a 2x3 matrix with bilinear sampling and a black border, giving a ``size`` x ``size`` crop."""
    import cv2

    return cv2.warpAffine(image, matrix, (int(size), int(size)), borderValue=0.0)


def align(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The ArcFace crop of ``image`` (RGB in, RGB out) for five landmarks: ``norm_crop`` without insightface."""
    return warp(image, estimate_norm(landmarks, size), size)
