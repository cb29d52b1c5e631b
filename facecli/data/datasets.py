"""Torch datasets of face crops: insightface record files (``.rec``/``.idx``) and folders with one identity each.

Items are requested as ``(index, flip)`` pairs, or ``(index, flip, seed)`` when the dataset has an
``augment`` (``facecli.data.augment.Augmenter``, applied in the DataLoader workers with that seed): the batch
sampler of the trainer decides the random horizontal flip and augmentation seed together with the order, from the
seed and the position in the epoch alone. That makes an epoch's data the same with 0 or 8 DataLoader workers, and
``--resume`` exact, without worker RNG state to save.

An item is ``(image, label)``: a float32 ``(3, H, W)`` RGB tensor normalised as ``(x/255 - 0.5)/0.5`` and the
int64 class index. Each DataLoader worker opens its own record-file handle (the reader re-opens lazily per pid).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from facecli.errors import CorruptFileError, UsageError
from facecli.imageio import ImageReadError, decode_image, is_image_path, read_image

#: Network input size (width, height) of every facecli backbone.
INPUT_SIZE = (112, 112)


def to_input(rgb: np.ndarray, flip: bool = False, size: tuple[int, int] = INPUT_SIZE) -> torch.Tensor:
    """RGB uint8 HxWx3 → float32 (3, H, W) in [-1, 1]; resized (INTER_AREA) when not ``size``; optionally mirrored."""
    if (rgb.shape[1], rgb.shape[0]) != tuple(size):
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    if flip:
        rgb = rgb[:, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float()
    return x.div_(255.0).sub_(0.5).div_(0.5)


class FaceDataset(Dataset):
    """Common interface: ``labels`` (int64 array, one per item), ``num_classes``, items by ``(index, flip)``."""

    labels: np.ndarray
    num_classes: int
    source: str
    #: ``augment(rgb, seed) -> rgb``, set by the trainer for ``--augment``; None: no augmentation.
    augment: Callable[[np.ndarray, int], np.ndarray] | None = None
    #: Also return the un-augmented image (same flip) as a third item: the teacher's view for distillation.
    clean_view: bool = False

    def load_rgb(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | tuple[int, bool] | tuple[int, bool, int]) -> tuple[Any, ...]:
        """``(image, label)``, or ``(image, label, clean image)`` with :attr:`clean_view`."""
        index, flip, *seed = item if isinstance(item, tuple) else (item, False)
        rgb = clean = self.load_rgb(int(index))
        if self.augment is not None and seed:
            if (rgb.shape[1], rgb.shape[0]) != INPUT_SIZE:
                rgb = clean = cv2.resize(rgb, INPUT_SIZE, interpolation=cv2.INTER_AREA)
            rgb = self.augment(rgb, int(seed[0]))
        if self.clean_view:
            return to_input(rgb, bool(flip)), int(self.labels[index]), to_input(clean, bool(flip))
        return to_input(rgb, bool(flip)), int(self.labels[index])


class ImageFolderDataset(FaceDataset):
    """``ROOT/identity/*.jpg``: one sub-folder per identity (sorted names → labels 0..C-1), aligned crops."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UsageError(f"image folder not found: {self.root}")
        self.identities = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        paths: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(self.identities):
            files = sorted(f for f in (self.root / name).iterdir() if f.is_file() and is_image_path(f))
            paths += [str(f) for f in files]
            labels += [label] * len(files)
        if not paths:
            raise UsageError(f"{self.root} has no identity sub-folders with images (expected ROOT/NAME/*.jpg)")
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(self.identities)
        self.source = str(self.root)

    def load_rgb(self, index: int) -> np.ndarray:
        try:
            return read_image(self.paths[index])
        except ImageReadError as exc:
            raise CorruptFileError(f"{self.paths[index]}: {exc.reason}") from None


class RecordDataset(FaceDataset):
    """An insightface record file (MS1M layout or flat) read with facecli's own RecordIO reader."""

    def __init__(self, rec_path: str | os.PathLike) -> None:
        from facecli.data.recordio import RecordReader, read_ms1m_layout, read_property, sidecar_path

        self.rec_path = Path(rec_path)
        self.reader = RecordReader(self.rec_path)
        keys, labels = read_ms1m_layout(self.reader)
        if not keys:
            raise UsageError(f"{self.rec_path} holds no image records")
        self.keys = np.asarray(keys, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.min() < 0:
            raise CorruptFileError(f"{self.rec_path}: negative class labels")
        num_classes = int(self.labels.max()) + 1
        prop = sidecar_path(self.rec_path, "property")
        if prop.is_file():
            num_classes = max(num_classes, read_property(prop)[0])
        self.num_classes = num_classes
        self.source = str(self.rec_path)

    def load_rgb(self, index: int) -> np.ndarray:
        from facecli.data.recordio import unpack

        key = int(self.keys[index])
        _, payload = unpack(self.reader.read(key))
        try:
            return decode_image(payload)
        except ImageReadError as exc:
            raise CorruptFileError(f"{self.rec_path} record {key}: {exc.reason}") from None


def open_dataset(path: str | os.PathLike) -> FaceDataset:
    """A ``.rec`` file, a folder holding ``train.rec`` (insightface layout) or an image folder."""
    path = Path(path)
    if path.is_file() and path.suffix == ".rec":
        return RecordDataset(path)
    if path.is_dir():
        recs = sorted(path.glob("*.rec"))
        if (path / "train.rec").is_file():
            return RecordDataset(path / "train.rec")
        if len(recs) == 1:
            return RecordDataset(recs[0])
        return ImageFolderDataset(path)
    raise UsageError(f"training data not found: {path} (give a .rec file, its folder, or an image folder)")


def collate(items: Sequence[tuple[Any, ...]]) -> tuple[torch.Tensor, ...]:
    """Stack images and labels (and clean views, when items carry them): the default collate without its dispatch."""
    images = torch.stack([item[0] for item in items])
    labels = torch.tensor([item[1] for item in items], dtype=torch.long)
    if len(items[0]) > 2:
        return images, labels, torch.stack([item[2] for item in items])
    return images, labels
