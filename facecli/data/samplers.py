"""P×K sampling for metric-learning losses: every batch holds P identities with K images each.

Triplet and contrastive losses learn only from pairs inside a batch, so a batch must contain several images of each
identity; uniform sampling almost never does on face data. An epoch shuffles the identities, cuts them into groups
of P, and takes K images of each identity (without replacement when it has K or more, with replacement otherwise).

Resumable and reproducible: the order of an epoch is a pure function of ``(seed, epoch)``, and :meth:`state_dict`
records the epoch and how many batches were already consumed, so a resumed run continues with exactly the next
batch. Under DDP each rank takes every ``world_size``-th batch of the same global order. ``consumed`` counts
batches *handed out*; a DataLoader fetches ahead, so a loop that resumes should save the number of batches it
actually trained on in that field. (``facecli train`` builds its own P×K batches in ``facecli.train.sampling``;
this sampler is for your own training loops.)
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from facecli.errors import UsageError


class PKSampler(Sampler[int]):
    """Yields dataset indices, ``p * k`` consecutive ones per batch (use ``batch_size = p * k``, no shuffle)."""

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        p: int,
        k: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
        if p < 1 or k < 1:
            raise UsageError(f"P×K sampling needs p >= 1 and k >= 1, got p={p}, k={k}")
        identities, inverse = np.unique(labels, return_inverse=True)
        if len(identities) < p:
            raise UsageError(f"P×K sampling with p={p} needs at least {p} identities; the data has {len(identities)}")
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is outside a world of {world_size}")
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(identities)))[:-1]
        self._members: list[np.ndarray] = np.split(order, bounds)
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self._consumed = 0  # batches of the current epoch already handed out on this rank

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def batches_per_epoch(self) -> int:
        """Batches of one epoch on this rank (every identity used at most once per epoch; the rest is dropped)."""
        return (len(self._members) // self.p) // self.world_size

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The batches this rank gets in ``epoch``: a pure function of (seed, epoch, rank)."""
        rng = np.random.default_rng([self.seed, epoch])
        identities = rng.permutation(len(self._members))
        batches = []
        for start in range(0, len(identities) - self.p + 1, self.p):
            batch = []
            for identity in identities[start : start + self.p]:
                members = self._members[identity]
                replace = len(members) < self.k
                batch.append(rng.choice(members, size=self.k, replace=replace))
            batches.append(np.concatenate(batch))
        usable = (len(batches) // self.world_size) * self.world_size
        return batches[self.rank : usable : self.world_size]

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self.epoch, self._consumed = int(epoch), 0

    def __iter__(self) -> Iterator[int]:
        batches = self.epoch_batches(self.epoch)
        while self._consumed < len(batches):
            batch = batches[self._consumed]
            self._consumed += 1
            yield from (int(i) for i in batch)
        self.set_epoch(self.epoch + 1)

    def __len__(self) -> int:
        return self.batches_per_epoch() * self.batch_size

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self._consumed, "seed": self.seed, "p": self.p, "k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (int(state["p"]), int(state["k"]), int(state["seed"])) != (self.p, self.k, self.seed):
            raise UsageError(
                f"the checkpoint's P×K sampler (p={state['p']}, k={state['k']}, seed={state['seed']}) differs from "
                f"this run's (p={self.p}, k={self.k}, seed={self.seed})"
            )
        self.epoch, self._consumed = int(state["epoch"]), int(state["consumed"])
