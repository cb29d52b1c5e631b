"""Helpers for the training tests: real LFW faces cropped to 112x112, and a tiny CPU-friendly config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2

from facecli.train.config import TrainConfig, build_config

#: A 0.5M-parameter MobileFaceNet (arcface_torch's blocks, width 1, one block per stage): seconds per step on CPU.
TINY_BACKBONE = {"model.backbone": "mobilefacenet", "model.backbone_options": {"blocks": [1, 1, 1, 1], "scale": 1},
                 "model.embedding_size": 32}


def read_pairs_people(lfw: Path) -> list[set[str]]:
    """The people of each fold of ``pairs_sample.txt`` (disjoint by construction)."""
    lines = (lfw / "pairs_sample.txt").read_text().splitlines()
    folds, per = (int(v) for v in lines[0].split())
    people = []
    for f in range(folds):
        names = set()
        for line in lines[1 + f * 2 * per : 1 + (f + 1) * 2 * per]:
            parts = line.split("\t")
            names.update([parts[0]] if len(parts) == 3 else [parts[0], parts[2]])
        people.append(names)
    return people


def centre_crops(lfw: Path, dest: Path, people: set[str] | None = None) -> Path:
    """LFW deep-funneled photos (face centred and upright) cropped around the face and resized to 112x112.

    A stand-in for 5-point alignment that keeps the tests fast; the slow learning test uses facecli.align.
    """
    for image in sorted(lfw.glob("*/*.jpg")):
        if people is not None and image.parent.name not in people:
            continue
        bgr = cv2.imread(str(image))
        crop = cv2.resize(bgr[60:190, 60:190], (112, 112), interpolation=cv2.INTER_AREA)
        (dest / image.parent.name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dest / image.parent.name / image.name), crop)
    return dest


def tiny_config(data: Path, out: Path, **overrides: Any) -> TrainConfig:
    base = {"data.path": str(data), "out": str(out), "batch_size": 8, "data.workers": 0, "log_every": 1,
            "checkpoint_every": 1000}
    if "model__backbone" not in overrides:
        base.update(TINY_BACKBONE)
    return build_config(base, {k.replace("__", "."): v for k, v in overrides.items()})
