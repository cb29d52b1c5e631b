"""The order of training samples as a pure function of (seed, epoch, position): resumable to the sample.

Every rank computes the same global permutation of the epoch, cuts it into global batches of
``batch_size × world_size`` (the incomplete tail is dropped, so all ranks step together) and takes its slice, so
N processes see exactly the global batches one process with an N-times larger batch sees. The horizontal flip of
every sample is drawn here too, and handed to the dataset with the index.

With ``augment`` every item also carries a seed for its augmentation (``facecli.data.augment``), drawn here
from the same (seed, epoch) stream, so augmented runs stay exactly resumable.

P×K mode (triplet/contrastive losses): the batches come from ``facecli.data.samplers.PKSampler`` (P identities
with K images each, a pure function of seed and epoch too); the flips are drawn here as in the plain mode.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from facecli.errors import UsageError

Item = tuple[int, bool] | tuple[int, bool, int]
Batch = list[Item]


class EpochPlan:
    """This rank's batches of ``(index, flip)`` for any epoch."""

    def __init__(self, labels: np.ndarray, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 flip: bool = True, pk: int = 0, augment: bool = False) -> None:
        self.labels = np.asarray(labels)
        self.batch_size, self.world_size, self.rank = int(batch_size), int(world_size), int(rank)
        self.seed, self.flip, self.k = int(seed), bool(flip), int(pk)
        self.augment = bool(augment)
        self.pk_sampler = None
        if self.k:
            from facecli.data.samplers import PKSampler

            if self.batch_size % self.k:
                raise UsageError(f"P×K batches: batch size {batch_size} is not a multiple of K={pk}")
            self.pk_sampler = PKSampler(self.labels, self.batch_size // self.k, self.k, seed, rank, world_size)
            self.batches_per_epoch = self.pk_sampler.batches_per_epoch()
        else:
            self.batches_per_epoch = len(self.labels) // (self.batch_size * self.world_size)
        if self.batches_per_epoch == 0:
            raise UsageError(
                f"{len(self.labels)} samples are not enough for one global batch of "
                f"{self.batch_size} × {self.world_size} process(es)"
            )

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 100_003 + epoch)

    def epoch(self, epoch: int) -> list[Batch]:
        flips_gen = self._generator(epoch + 7_919_000)
        seeds_gen = self._generator(epoch + 15_485_863)
        if self.pk_sampler is not None:
            pk_batches = self.pk_sampler.epoch_batches(epoch)[: self.batches_per_epoch]
            return [self._with_flips(b, flips_gen, seeds_gen) for b in pk_batches]
        order = torch.randperm(len(self.labels), generator=self._generator(epoch)).numpy()
        flips = self._flips(len(order), flips_gen)
        seeds = self._seeds(len(order), seeds_gen)
        per_global = self.batch_size * self.world_size
        batches: list[Batch] = []
        for b in range(self.batches_per_epoch):
            lo = b * per_global + self.rank * self.batch_size
            hi = lo + self.batch_size
            batches.append(self._items(order[lo:hi], flips[lo:hi], None if seeds is None else seeds[lo:hi]))
        return batches

    def _items(self, indices: np.ndarray, flips: np.ndarray, seeds: np.ndarray | None) -> Batch:
        if seeds is None:
            return [(int(i), bool(f)) for i, f in zip(indices, flips, strict=True)]
        return [(int(i), bool(f), int(s)) for i, f, s in zip(indices, flips, seeds, strict=True)]

    def _seeds(self, n: int, gen: torch.Generator) -> np.ndarray | None:
        return torch.randint(0, 2**31 - 1, (n,), generator=gen).numpy() if self.augment else None

    def _flips(self, n: int, gen: torch.Generator) -> np.ndarray:
        return (torch.rand(n, generator=gen) < 0.5).numpy() & self.flip

    def _with_flips(self, indices: np.ndarray, gen: torch.Generator, seeds_gen: torch.Generator) -> Batch:
        return self._items(indices, self._flips(len(indices), gen), self._seeds(len(indices), seeds_gen))


class ResumableBatchSampler(Sampler[Batch]):
    """An endless stream of this rank's batches, starting after ``start`` batches (across epochs)."""

    def __init__(self, plan: EpochPlan, start: int = 0) -> None:
        self.plan = plan
        self.start = int(start)

    def __iter__(self) -> Iterator[Batch]:
        epoch, offset = divmod(self.start, self.plan.batches_per_epoch)
        while True:
            yield from self.plan.epoch(epoch)[offset:]
            epoch, offset = epoch + 1, 0
