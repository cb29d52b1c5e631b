"""Margin heads and metric losses: facecli vs pytorch-metric-learning (PML), same run, same tensors.

One training step of the loss alone — embeddings (B, D) → cosines to C class centres → margin → cross-entropy →
backward to the embeddings and the centres — timed for facecli (``facecli.nn.classifier.cosine_matrix`` + the head
+ cross-entropy) and for PML's loss of the same name with the same centres. Also the embedding losses (contrastive,
triplet batch-hard) on a P×K batch. ``ratio`` = PML time / facecli time (> 1: facecli is faster). Heads PML does
not have (CurricularFace, AdaFace, MagFace, ...) are timed alone, for reference.

    pip install pytorch-metric-learning        # the peer (optional; without it only facecli is timed)
    python benchmarks/bench_heads.py            # B=256, D=512, C=10000; about 1-2 minutes on an idle 2-core machine
    python benchmarks/bench_heads.py --classes 100000 --batch 512
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from facecli.nn.classifier import cosine_matrix
from facecli.nn.heads import build_head


def timed(fns: list, repeat: int) -> list[float]:
    """Median wall time (ms) of each function over ``repeat`` rounds after one warm-up round. The functions are
    called in turn within every round, so a busy machine slows both sides alike instead of whichever ran last."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [1000 * statistics.median(t) for t in times]


def margin_step(name: str, options: dict, emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor):
    head = build_head(name, weight.shape[0] // options.get("k", 1), emb.shape[1], **options).train()
    k = int(getattr(head, "num_subcenters", 1))

    def run() -> None:
        e = emb.detach().requires_grad_(True)
        w = weight.detach().requires_grad_(True)
        logits = head(cosine_matrix(e, w, k), labels, e.norm(dim=1))
        loss = F.cross_entropy(logits, labels)
        reg = head.regularizer(e.norm(dim=1))
        (loss + reg if reg is not None else loss).backward()

    return run


def pml_step(loss, emb: torch.Tensor, labels: torch.Tensor, miner=None):
    def run() -> None:
        e = emb.detach().requires_grad_(True)
        value = loss(e, labels, miner(e, labels)) if miner is not None else loss(e, labels)
        value.backward()

    return run


def embedding_step(name: str, options: dict, emb: torch.Tensor, labels: torch.Tensor):
    loss = build_head(name, int(labels.max()) + 1, emb.shape[1], **options)

    def run() -> None:
        e = emb.detach().requires_grad_(True)
        loss(e, labels).backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10000)
    parser.add_argument("--pk", type=int, nargs=2, default=(64, 4), metavar=("P", "K"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    try:
        from pytorch_metric_learning import losses as pml
        from pytorch_metric_learning import miners
    except ImportError:
        pml = miners = None
        print("pytorch-metric-learning is not installed: timing facecli alone")
    torch.manual_seed(0)
    emb = torch.randn(args.batch, args.dim)
    labels = torch.randint(0, args.classes, (args.batch,))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={args.batch} D={args.dim} "
          f"C={args.classes}; median of {args.repeat} forward+backward steps")
    rows = []

    def compare(label, ours, theirs=None) -> None:
        if theirs is None:
            (ours_ms,), theirs_ms = timed([ours], args.repeat), float("nan")
        else:
            ours_ms, theirs_ms = timed([ours, theirs], args.repeat)
        rows.append((label, ours_ms, theirs_ms))
        print(f"{label:<40} facecli {ours_ms:8.1f} ms   PML {theirs_ms:8.1f} ms   ratio {theirs_ms / ours_ms:5.2f}x")

    for name, options, peer in [
        ("arcface", {}, "ArcFaceLoss"),
        ("cosface", {}, "CosFaceLoss"),
        ("subcenter-arcface", {"k": 3}, "SubCenterArcFaceLoss"),
    ]:
        k = options.get("k", 1)
        weight = torch.randn(args.classes * k, args.dim)
        theirs = None
        if pml is not None:
            kwargs = {"num_classes": args.classes, "embedding_size": args.dim}
            if name == "arcface":
                kwargs["margin"] = float(np.degrees(0.5))
            if k > 1:
                kwargs.update(sub_centers=k, margin=float(np.degrees(0.5)))
            loss = getattr(pml, peer)(**kwargs)
            with torch.no_grad():
                loss.W.copy_(weight.T)
            theirs = pml_step(loss, emb, labels)
        compare(name, margin_step(name, options, emb, weight, labels), theirs)

    for name in ["curricularface", "adaface", "magface", "elasticface-arc+", "mv-softmax", "airface", "adacos"]:
        weight = torch.randn(args.classes, args.dim)
        compare(f"{name} (no PML counterpart)", margin_step(name, {}, emb * 20, weight, labels))

    p, k = args.pk
    pk_labels = torch.arange(p).repeat_interleave(k)
    pk_emb = torch.randn(p * k, args.dim)
    compare("contrastive (P×K)", embedding_step("contrastive", {}, pk_emb, pk_labels),
            pml_step(pml.ContrastiveLoss(pos_margin=0, neg_margin=1), pk_emb, pk_labels) if pml else None)
    compare("triplet batch-hard (P×K)", embedding_step("triplet", {"mining": "batch-hard", "squared": False},
                                                       pk_emb, pk_labels),
            pml_step(pml.TripletMarginLoss(margin=0.2), pk_emb, pk_labels, miners.BatchHardMiner()) if pml else None)
    compare("triplet semi-hard (P×K)", embedding_step("triplet", {}, pk_emb, pk_labels))

    print()
    print("| loss | facecli ms | PML ms | PML / facecli |")
    print("|---|---:|---:|---:|")
    for label, ours_ms, theirs_ms in rows:
        peer = "–" if np.isnan(theirs_ms) else f"{theirs_ms:.1f}"
        ratio = "–" if np.isnan(theirs_ms) else f"{theirs_ms / ours_ms:.2f}x"
        print(f"| {label} | {ours_ms:.1f} | {peer} | {ratio} |")


if __name__ == "__main__":
    main()
