"""Partial FC v2 (An et al., "Killing Two Birds with One Stone", CVPR 2022), as arcface_torch implements it.

The class-centre matrix is sharded over the ranks (rank r holds a contiguous block of classes). Every step:

1. ``gather``: embeddings and labels of the whole global batch are all-gathered (embeddings with gradient);
2. each rank keeps the centres of the positive classes it holds and a random sample of its other centres, so that
   ``sample_rate`` of its centres take part (all of them at ``sample_rate=1``);
3. the head adjusts the cosines of its shard; labels of classes held elsewhere become -1;
4. a distributed cross-entropy computes the softmax over all shards with two all-reduces (max, sum).

Differences from arcface_torch, both deliberate: the loss is computed as ``log Σexp - logit_target`` (stable in the
far tail where arcface_torch clamps a probability at 1e-30), and the gradient that flows back through the
all-gather is multiplied by the world size so that, after DDP averages the backbone gradients, N processes
follow the gradient of the global-batch loss exactly as one process would (arcface_torch's is N times smaller).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from facecli.errors import UsageError
from facecli.nn import distributed
from facecli.nn.classifier import Classifier, cosine_matrix, init_centres


def shard_bounds(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(start, count)`` of the classes rank ``rank`` holds: the first ``C % N`` ranks hold one more."""
    base, extra = divmod(num_classes, world_size)
    count = base + (1 if rank < extra else 0)
    start = base * rank + min(rank, extra)
    return start, count


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradients of all ranks and returns this rank's slice × N."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.batch = tensor.size(0)
        parts = [torch.empty_like(tensor) for _ in range(distributed.world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = distributed.rank() * ctx.batch
        return grad[start : start + ctx.batch] * distributed.world_size()


class _DistCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over the global batch when each rank holds some of the logit columns."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        row_max = logits.amax(dim=1, keepdim=True)
        if distributed.is_distributed():
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        shifted = logits - row_max
        exp = shifted.exp()
        denom = exp.sum(dim=1, keepdim=True)
        held = torch.nonzero(columns >= 0, as_tuple=True)[0]
        target = torch.zeros(logits.size(0), 1, device=logits.device)
        target[held, 0] = shifted[held, columns[held]]
        if distributed.is_distributed():
            dist.all_reduce(denom, op=dist.ReduceOp.SUM)
            dist.all_reduce(target, op=dist.ReduceOp.SUM)
        ctx.save_for_backward(exp / denom, columns, held)
        return (denom.log() - target).mean()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        softmax, columns, held = ctx.saved_tensors
        grad = softmax.clone()
        grad[held, columns[held]] -= 1.0
        return grad * (grad_out / softmax.size(0)), None


class PartialFC(Classifier):
    """This rank's shard of the class centres, with negative-centre sampling (``sample_rate`` in (0, 1])."""

    sharded = True

    def __init__(self, num_classes: int, embedding_size: int, sample_rate: float = 1.0, num_subcenters: int = 1,
                 seed: int = 0) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise UsageError(f"partial FC sample rate must be in (0, 1], got {sample_rate}")
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.num_subcenters = int(num_subcenters)
        self.class_start, self.num_local = shard_bounds(num_classes, distributed.world_size(), distributed.rank())
        self.num_sample = int(self.sample_rate * self.num_local)
        self.weight = nn.Parameter(
            init_centres(self.class_start, self.class_start + self.num_local, num_subcenters, embedding_size, seed)
        )

    def gather(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch: embeddings (with gradient) and labels of every rank, concatenated in rank order."""
        if not distributed.is_distributed():
            return embeddings, labels
        return _GatherWithGrad.apply(embeddings), distributed.all_gather_cat(labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosines of the (gathered) batch to the sampled local centres, and each label's column there (or -1)."""
        labels = labels.long()
        local = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        columns = torch.full_like(labels, -1)
        columns[local] = labels[local] - self.class_start
        weight: torch.Tensor = self.weight
        if self.num_sample < self.num_local and self.training:
            kept = self._sample(columns[local])
            columns[local] = torch.searchsorted(kept, columns[local])
            rows = (kept[:, None] * self.num_subcenters + torch.arange(self.num_subcenters, device=kept.device))
            weight = self.weight[rows.reshape(-1)]
        return cosine_matrix(embeddings, weight, self.num_subcenters), columns

    def _sample(self, positives: torch.Tensor) -> torch.Tensor:
        """Sorted local class indices to use: all positives plus random negatives up to ``num_sample``."""
        positives = torch.unique(positives, sorted=True)
        if positives.numel() >= self.num_sample:
            return positives
        score = torch.rand(self.num_local, device=self.weight.device)
        score[positives] = 2.0
        return torch.topk(score, k=self.num_sample)[1].sort()[0]

    def cross_entropy(self, logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return _DistCrossEntropy.apply(logits, columns)

    def class_centres(self) -> torch.Tensor:
        return self.weight.detach().view(self.num_local, self.num_subcenters, -1)
