"""The class-centre matrix: embeddings in, cosines to every class centre out (the input of every margin head).

``FullClassifier`` keeps all centres in one process; ``facecli.nn.partial_fc.PartialFC`` shards them over ranks
and samples negatives. Both have the same interface so every head composes with both:

    embeddings, labels = classifier.gather(embeddings, labels)  # the global batch under Partial FC
    cosine, columns = classifier(embeddings, labels)  # columns: each label's column in ``cosine`` or -1
    logits = head(cosine, columns, norms)
    loss = classifier.cross_entropy(logits, columns)

Sub-centres (Sub-center ArcFace): with ``num_subcenters = K`` each class owns K centres, rows ``c*K .. c*K+K-1``
of the weight, and the class cosine is the max over its K sub-centre cosines.
"""

from __future__ import annotations

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


class FullClassifier(nn.Module):
    """All class centres in this process (replicated under DDP like any other parameter)."""

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
        """``(C, K, E)`` centres (for tools such as sub-centre cleaning)."""
        return self.weight.detach().view(self.num_classes, self.num_subcenters, -1)
