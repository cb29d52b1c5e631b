"""``data.val_split``: hold some *people* out of the training data and validate on pairs of them.

A fine-tune on a few hundred photos needs a measure of whether it helps, on people it did not train on (pairs of
the training people would only show that it memorised them). Without a pairs file, a seeded fraction of the
identities is set aside: their photos leave the training set, and verification pairs are made from them (every
genuine pair of up to :data:`PHOTOS_PER_PERSON` photos per person, and as many impostor pairs), scored like any
``--val`` set: before the first step, every ``--val-every`` steps and at the end, with ``best.pt`` kept.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np

from facecli.data.datasets import INPUT_SIZE, FaceDataset
from facecli.errors import UsageError

#: Photos per held-out person used for pairs, and the most genuine pairs in all (memory and time stay small).
PHOTOS_PER_PERSON = 10
MAX_GENUINE_PAIRS = 1500


class IdentitySubset(FaceDataset):
    """The photos ``indices`` of ``base``, with their identities renumbered 0..K-1."""

    def __init__(self, base: FaceDataset, indices: np.ndarray) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        classes, self.labels = np.unique(base.labels[self.indices], return_inverse=True)
        self.labels = self.labels.astype(np.int64)
        self.num_classes = len(classes)
        self.source = base.source

    def load_rgb(self, index: int) -> np.ndarray:
        return self.base.load_rgb(int(self.indices[index]))


def split_people(dataset: FaceDataset, fraction: float, seed: int) -> tuple[IdentitySubset, tuple[list, np.ndarray]]:
    """``(training subset, (images, issame))``: ``fraction`` of the identities (seeded) held out as pairs."""
    people = np.unique(dataset.labels)
    rng = np.random.default_rng(seed + 1_000_003)
    count = int(round(fraction * len(people)))
    if count < 2 or count > len(people) - 2:
        raise UsageError(f"data.val_split={fraction} holds out {count} of {len(people)} people; it needs at least 2 "
                         "for pairs and leaves at least 2 to train on")
    held = set(rng.choice(people, count, replace=False).tolist())
    in_val = np.isin(dataset.labels, list(held))
    photos = {p: rng.permutation(np.flatnonzero(dataset.labels == p))[:PHOTOS_PER_PERSON] for p in sorted(held)}
    genuine = [pair for idx in photos.values() for pair in itertools.combinations(sorted(idx.tolist()), 2)]
    if len(genuine) > MAX_GENUINE_PAIRS:
        genuine = [genuine[i] for i in sorted(rng.choice(len(genuine), MAX_GENUINE_PAIRS, replace=False))]
    if len(genuine) < 5:
        raise UsageError(f"data.val_split={fraction}: the held-out people have only {len(genuine)} genuine pairs "
                         "(people with one photo give none); hold out more people or give --val PAIRS.bin")
    names = sorted(photos)
    impostor: set[tuple[int, int]] = set()
    while len(impostor) < len(genuine):
        a, b = rng.choice(len(names), 2, replace=False)
        impostor.add((int(rng.choice(photos[names[a]])), int(rng.choice(photos[names[b]]))))
    pairs = genuine + sorted(impostor)
    issame = np.array([True] * len(genuine) + [False] * len(impostor))
    order = rng.permutation(len(pairs))  # every one of the 10 contiguous folds gets both kinds
    cache: dict[int, np.ndarray] = {}
    images = []
    for k in order:
        for index in pairs[k]:
            if index not in cache:
                rgb = dataset.load_rgb(index)
                if (rgb.shape[1], rgb.shape[0]) != INPUT_SIZE:
                    rgb = cv2.resize(rgb, INPUT_SIZE, interpolation=cv2.INTER_AREA)
                cache[index] = rgb
            images.append(cache[index])
    return IdentitySubset(dataset, np.flatnonzero(~in_val)), (images, issame[order])
