"""Training augmentations for real-world face quality: ``--augment lowres,crop,photometric,grayscale``.

Faces in the field are small, badly framed, differently lit and sometimes grey; clean 112x112 training crops
teach none of that. Each augmentation is applied with its own probability (``augment.<name>_p``), in a fixed
order — crop, photometric, grayscale, then lowres (the capture degrades what the scene looks like):

- ``lowres``: AdaFace-style resolution loss: shrink the face to a random side in ``[lowres_min, lowres_max]``
  pixels (area interpolation, as a small sensor integrates light) and scale it back (bilinear or bicubic, at
  random): defaults 12–32 px, the faces of CCTV frames and crowd photos;
- ``crop``: random resized crop keeping at least ``crop_scale`` of the area, aspect 3:4–4:3 (alignment jitter);
- ``photometric``: brightness, contrast and saturation factors drawn from ``1 ± brightness/contrast/saturation``;
- ``grayscale``: the luma of the face in all three channels.

Every random number of a sample comes from one integer seed that the batch sampler draws together with the order
and the flip (``facecli.train.sampling``), so a sample's augmentation is a pure function of (run seed, epoch,
position): the same with any number of DataLoader workers, and ``--resume`` continues exactly. The work is done by
OpenCV/numpy on uint8 112x112 crops inside the DataLoader workers, where decoding already happens.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from facecli.errors import UsageError

#: Every augmentation by name, in the order they are applied.
AUGMENTATIONS = ("crop", "photometric", "grayscale", "lowres")

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as cv2.COLOR_RGB2GRAY


def parse_names(text: str) -> list[str]:
    """``"lowres,crop"`` → ``["lowres", "crop"]`` (empty items dropped)."""
    return [part.strip().lower() for part in text.split(",") if part.strip()]


def check_augment(cfg: Any) -> None:
    """One-line errors for unknown names and out-of-range options of an ``AugmentConfig``."""
    unknown = [n for n in cfg.names if n not in AUGMENTATIONS]
    if unknown:
        raise UsageError(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
    for name in ("lowres_p", "crop_p", "photometric_p", "grayscale_p"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise UsageError(f"augment.{name} must be a probability in [0, 1], got {getattr(cfg, name)}")
    if not 2 <= cfg.lowres_min <= cfg.lowres_max:
        raise UsageError(f"augment.lowres_min/lowres_max must satisfy 2 <= min <= max, got "
                         f"{cfg.lowres_min}, {cfg.lowres_max}")
    if not 0.0 < cfg.crop_scale <= 1.0:
        raise UsageError(f"augment.crop_scale must be in (0, 1], got {cfg.crop_scale}")
    for name in ("brightness", "contrast", "saturation"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise UsageError(f"augment.{name} must be in [0, 1), got {getattr(cfg, name)}")


class Augmenter:
    """The configured augmentations as one picklable callable: ``augmenter(rgb_uint8, seed) -> rgb_uint8``."""

    def __init__(self, cfg: Any) -> None:
        check_augment(cfg)
        self.names = set(cfg.names)
        self.cfg = {k: getattr(cfg, k) for k in ("lowres_p", "lowres_min", "lowres_max", "crop_p", "crop_scale",
                                                  "photometric_p", "brightness", "contrast", "saturation",
                                                  "grayscale_p")}

    def __bool__(self) -> bool:
        return bool(self.names)

    def __call__(self, rgb: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        c = self.cfg
        if "crop" in self.names and rng.random() < c["crop_p"]:
            rgb = random_resized_crop(rgb, rng, c["crop_scale"])
        if "photometric" in self.names and rng.random() < c["photometric_p"]:
            rgb = photometric(rgb, rng, c["brightness"], c["contrast"], c["saturation"])
        if "grayscale" in self.names and rng.random() < c["grayscale_p"]:
            rgb = grayscale(rgb)
        if "lowres" in self.names and rng.random() < c["lowres_p"]:
            side = int(rng.integers(c["lowres_min"], c["lowres_max"] + 1))
            rgb = low_resolution(rgb, side, cv2.INTER_CUBIC if rng.random() < 0.5 else cv2.INTER_LINEAR)
        return rgb


def low_resolution(rgb: np.ndarray, side: int, up: int = cv2.INTER_LINEAR) -> np.ndarray:
    """The face shrunk to ``side`` x ``side`` pixels (area) and scaled back to its size (``up`` interpolation)."""
    height, width = rgb.shape[:2]
    small = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=up)


def random_resized_crop(rgb: np.ndarray, rng: np.random.Generator, min_scale: float) -> np.ndarray:
    height, width = rgb.shape[:2]
    area = rng.uniform(min_scale, 1.0) * height * width
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(width, max(1, int(round(math.sqrt(area * ratio)))))
    h = min(height, max(1, int(round(math.sqrt(area / ratio)))))
    x0 = int(rng.integers(0, width - w + 1))
    y0 = int(rng.integers(0, height - h + 1))
    return cv2.resize(rgb[y0:y0 + h, x0:x0 + w], (width, height), interpolation=cv2.INTER_LINEAR)


def photometric(rgb: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float,
                saturation: float) -> np.ndarray:
    b, c, s = (rng.uniform(1 - v, 1 + v) for v in (brightness, contrast, saturation))
    x = rgb.astype(np.float32) * b
    gray = x @ _LUMA
    x = (x - gray.mean()) * c + gray.mean()
    gray = (x @ _LUMA)[..., None]
    x = gray + (x - gray) * s
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def grayscale(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
