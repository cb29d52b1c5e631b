"""The shared base of every margin head: normalised cosines in, margin-adjusted scaled logits out.

Following pytorch-metric-learning, the base owns the bookkeeping (float32 maths under autocast, finding each row's
target column, writing the adjusted target back, scaling) and a head overrides only the small hooks its paper
changes. The cosine matrix itself is computed by a classifier (``facecli.nn.classifier``: full or Partial FC), so
every head composes with every classifier:

    cosine = classifier(embeddings)             # (B, C') cosines to the class centres held on this rank
    logits = head(cosine, labels, norms)        # labels index columns of ``cosine``; -1 = target on another rank
    loss = cross_entropy(logits, labels) + head.regularizer(norms)

Hooks, in the order ``forward`` calls them:
- ``target_logit(cos_t, norms_t)``: the target-class cosine after the margin (ArcFace: cos(θ+m)); unscaled.
- ``non_target_logits(cosine, cos_t, new_t, rows, cols)``: the other columns (CurricularFace, MV-softmax re-weight
  hard negatives); default unchanged.
- ``scale_logits(logits, cos_t, rows, cols)``: multiply by the scale (AdaCos adapts it); default ``s``.
- ``regularizer(norms)``: an extra loss term (MagFace's g(a)); default none.
- ``no_weight_decay_parameters()``: head parameters the trainer puts in a weight-decay-0 group; default none.

Adaptive state (AdaCos s, CurricularFace t, AdaFace statistics) must be registered buffers so that checkpoints and
``--resume`` restore it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from facecli.registry import Registry


def constructor_defaults(cls: Callable[..., Any]) -> dict[str, Any]:
    """A head's tunable parameters with their defaults (sizes that come from the data are left out)."""
    params = inspect.signature(cls).parameters
    return {
        name: p.default
        for name, p in params.items()
        if name not in ("self", "num_classes", "embedding_size") and p.default is not inspect.Parameter.empty
    }


class MarginHead(nn.Module):
    """Base class of classification heads on the unit hypersphere (softmax, SphereFace, CosFace, ArcFace, ...)."""

    kind: ClassVar[str] = "margin"
    paper: ClassVar[str] = ""
    year: ClassVar[int] = 0
    #: None when the head works with a sharded Partial FC classifier, otherwise the reason it does not.
    partial_fc_incompatible: ClassVar[str | None] = None
    #: Number of sub-centres per class the classifier must allocate and max-pool (Sub-center ArcFace).
    num_subcenters: int = 1

    def __init__(self, num_classes: int, s: float = 64.0) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.s = float(s)

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for cross-entropy. ``cosine`` (B, C'), ``labels`` (B,) column index or -1, ``norms`` (B,)."""
        cosine = cosine.float()
        rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
        cols = labels[rows].long()
        cos_t = cosine[rows, cols]
        norms_t = norms.float()[rows] if norms is not None else None
        new_t = self.target_logit(cos_t, norms_t)
        logits = self.non_target_logits(cosine, cos_t, new_t, rows, cols)
        logits = logits.index_put((rows, cols), new_t.to(logits.dtype))
        return self.scale_logits(logits, cos_t, rows, cols)

    def target_logit(self, cos_t: torch.Tensor, norms_t: torch.Tensor | None) -> torch.Tensor:
        """The target-class cosine after the margin. The plain softmax head leaves it unchanged."""
        return cos_t

    def non_target_logits(
        self, cosine: torch.Tensor, cos_t: torch.Tensor, new_t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """All logits before the target column is overwritten; most heads leave the negatives alone."""
        return cosine

    def scale_logits(
        self, logits: torch.Tensor, cos_t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        return logits * self.s

    def regularizer(self, norms: torch.Tensor | None) -> torch.Tensor | None:
        """An extra loss term added to the cross-entropy (None when the head has none)."""
        return None

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        """Head parameters the optimiser must not decay (AdaptiveFace's margins: decay would pull them to 0)."""
        return []

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The constructor's parameters and their defaults: what ``--list-heads`` shows."""
        return constructor_defaults(cls)


class EmbeddingLoss(nn.Module):
    """Base class of losses computed directly on embeddings (contrastive, triplet): no classifier, P×K batches."""

    kind: ClassVar[str] = "embedding"
    paper: ClassVar[str] = ""
    year: ClassVar[int] = 0
    partial_fc_incompatible: ClassVar[str | None] = "it has no classifier to shard"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser must not decay; embedding losses have none."""
        return []

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return constructor_defaults(cls)


#: Every head and embedding loss by name; ``HEADS.build(name, num_classes=C, **options)``.
HEADS: Registry[nn.Module] = Registry("head")
