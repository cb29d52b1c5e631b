"""The class-centre matrix: embeddings in, cosines to every class centre out (the input of every margin head).

``FullClassifier`` keeps all centres in one process; ``facecli.nn.partial_fc.PartialFC`` shards them over ranks
and samples negatives. Both implement :class:`Classifier`, so every head composes with both and the trainer never
asks which one it has:

    embeddings, labels = classifier.gather(embeddings, labels)  # the global batch under Partial FC
    cosine, columns = classifier(embeddings, labels)  # columns: each label's column in ``cosine`` or -1
    logits = head(cosine, columns, norms)
    loss = classifier.cross_entropy(logits, columns)

Sub-centres (Sub-center ArcFace): with ``num_subcenters = K`` each class owns K centres, rows ``c*K .. c*K+K-1``
of the weight, and the class cosine is the max over its K sub-centre cosines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

#: Classes per independently seeded block of the initial centres (see :func:`init_centres`).
_INIT_BLOCK = 4096


def init_centres(start: int, stop: int, rows_per_class: int, embedding_size: int, seed: int) -> torch.Tensor:
    """Initial centres N(0, 0.01) of classes ``start..stop-1``, identical however the classes are sharded.

    Each block of classes draws from its own generator seeded by ``(seed, block)``, so rank r of a Partial FC run
    starts with exactly the rows a single-process run has there: N processes and one process train alike.
    """
    out = torch.empty((stop - start) * rows_per_class, embedding_size)
    first_block, last_block = start // _INIT_BLOCK, (max(stop, 1) - 1) // _INIT_BLOCK
    for block in range(first_block, last_block + 1):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + block)
        values = torch.randn(_INIT_BLOCK * rows_per_class, embedding_size, generator=gen) * 0.01
        lo, hi = max(start, block * _INIT_BLOCK), min(stop, (block + 1) * _INIT_BLOCK)
        src = slice((lo - block * _INIT_BLOCK) * rows_per_class, (hi - block * _INIT_BLOCK) * rows_per_class)
        out[(lo - start) * rows_per_class : (hi - start) * rows_per_class] = values[src]
    return out


def cosine_matrix(embeddings: torch.Tensor, weight: torch.Tensor, num_subcenters: int) -> torch.Tensor:
    """Cosines ``(B, rows / K)`` between L2-normalised embeddings and centres, max-pooled over sub-centres.

    The matrix product may run in half precision under autocast (it is the expensive part); the result is
    returned in float32 and clamped to [-1, 1] so that acos in the heads is safe.
    """
    cosine = F.linear(F.normalize(embeddings), F.normalize(weight)).float().clamp(-1.0, 1.0)
    if num_subcenters > 1:
        cosine = cosine.view(cosine.size(0), -1, num_subcenters).amax(dim=2)
    return cosine


class Classifier(nn.Module, ABC):
    """The protocol of a classifier: what the training step and the trainer need from it.

    ``sharded`` says whether each process holds only its own part of the centres: then DDP must not average
    them across processes, and the training state of the centres is one file per rank, which only the same number
    of processes can resume.
    """

    sharded: ClassVar[bool]
    num_classes: int
    num_subcenters: int

    @abstractmethod
    def gather(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch this classifier scores, from this process's embeddings and labels."""

    @abstractmethod
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosines to the centres this process scores, and each label's column there (or -1 if held elsewhere)."""

    @abstractmethod
    def cross_entropy(self, logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """The mean softmax cross-entropy of the (whole) batch over all classes."""

    @abstractmethod
    def class_centres(self) -> torch.Tensor:
        """``(classes held here, K, E)`` centres (for tools such as sub-centre cleaning)."""


class FullClassifier(Classifier):
    """All class centres in this process (replicated under DDP like any other parameter)."""

    sharded = False

    def __init__(self, num_classes: int, embedding_size: int, num_subcenters: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.num_subcenters = int(num_subcenters)
        self.weight = nn.Parameter(init_centres(0, num_classes, num_subcenters, embedding_size, seed))

    def gather(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch this classifier scores: the local one (DDP averages the gradients of replicated centres)."""
        return embeddings, labels

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cosine_matrix(embeddings, self.weight, self.num_subcenters), labels.long()

    def cross_entropy(self, logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), columns)

    def class_centres(self) -> torch.Tensor:
        return self.weight.detach().view(self.num_classes, self.num_subcenters, -1)
