"""Train the same small backbone with several heads on the same real faces and compare them in one table.

    python examples/compare_heads.py                       # CI-sized: a few minutes on a laptop CPU
    python examples/compare_heads.py --steps 2000 --heads arcface,cosface,curricularface,adaface,magface

Data: the LFW sample in ../shared/data/lfw-sample (40 people, real photos). The people of the first fold of its
``pairs_sample.txt`` are the training identities; the pairs of the second fold (other people, never seen in
training) are the verification test. Photos are aligned once with facecli's aligner into ``--work``; every head
then trains with facecli's own trainer (``facecli.train``) from the same seed, backbone, batch and step count,
and is scored with facecli's verification protocol (10-fold accuracy, TAR@FAR on the pooled pairs).

The numbers of the CI-sized run are small-sample numbers (100 test pairs, 20 training identities): they show
that every head trains end to end and how they compare under the same budget, not LFW benchmark results.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "lfw-sample"
DEFAULT_HEADS = "softmax,arcface,cosface,airface,curricularface,mv-softmax,magface,adaface,elasticface-arc,triplet"


def read_folds(pairs_file: Path) -> tuple[set[str], list[tuple[str, int, str, int]]]:
    """Training people (fold 1) and the test pairs (fold 2) of an LFW-style pairs file."""
    lines = [line.split() for line in pairs_file.read_text().splitlines() if line.strip()]
    folds, per_fold = int(lines[0][0]), int(lines[0][1])
    pairs = []
    for fields in lines[1:]:
        if len(fields) == 3:
            pairs.append((fields[0], int(fields[1]), fields[0], int(fields[2])))
        else:
            pairs.append((fields[0], int(fields[1]), fields[2], int(fields[3])))
    size = 2 * per_fold
    train_people = {p[0] for p in pairs[:size]} | {p[2] for p in pairs[:size]}
    test = pairs[size:2 * size] if folds > 1 else pairs
    genuine = [p for p in test if p[0] == p[2]]
    impostor = [p for p in test if p[0] != p[2]]
    # Interleave so that every one of the 10 verification folds (contiguous blocks) holds both kinds.
    return train_people, [p for pair in zip(genuine, impostor) for p in pair]


def align_all(data: Path, work: Path) -> Path:
    """Align every photo once (MTCNN + ArcFace template, the face nearest the centre) into work/aligned."""
    from facecli.align import align_image
    from facecli.imageio import encode_image, read_image

    out = work / "aligned"
    done = out / ".complete"
    if done.is_file():
        return out
    photos = sorted(data.glob("*/*.jpg"))
    for i, photo in enumerate(photos, 1):
        crop, _ = align_image(read_image(photo), select="center", size=112)
        if crop is None:  # keep the photo: the trainer resizes it (a rare miss on this sample)
            crop = read_image(photo)
        target = out / photo.parent.name / (photo.stem + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode_image(crop, "png", 95))
        if i % 50 == 0 or i == len(photos):
            print(f"aligned {i}/{len(photos)} photos", file=sys.stderr)
    done.touch()
    return out


def train_folder(aligned: Path, people: set[str], work: Path) -> Path:
    folder = work / "train"
    if not folder.is_dir():
        for person in sorted(people):
            shutil.copytree(aligned / person, folder / person)
    return folder


def embed(run: Path, aligned: Path, names: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the test photos and of their mirror images with the run's final backbone."""
    import torch

    from facecli.data.datasets import to_input
    from facecli.imageio import read_image
    from facecli.nn.inference import load_backbone

    model, _ = load_backbone(run)
    images = [read_image(aligned / name / f"{name}_{number:04d}.png") for name, number in names]
    with torch.inference_mode():
        plain = model(torch.stack([to_input(im) for im in images])).numpy()
        flipped = model(torch.stack([to_input(im, flip=True) for im in images])).numpy()
    return plain, flipped


def compare(heads: list[str], args: argparse.Namespace) -> list[dict]:
    from facecli.eval.verification import verify
    from facecli.train.config import build_config
    from facecli.train.trainer import Trainer

    train_people, test_pairs = read_folds(args.data / "pairs_sample.txt")
    aligned = align_all(args.data, args.work)
    train_data = train_folder(aligned, train_people, args.work)
    names = [n for a, i, b, j in test_pairs for n in ((a, i), (b, j))]
    issame = np.array([a == b for a, _, b, _ in test_pairs])
    rows = []
    for head in heads:
        run = args.work / "runs" / head
        shutil.rmtree(run, ignore_errors=True)
        cfg = build_config({
            "out": str(run), "batch_size": args.batch_size, "steps": args.steps, "seed": args.seed,
            "device": "cpu", "log_every": max(1, args.steps // 5), "checkpoint_every": 10**9,
            "data": {"path": str(train_data), "workers": 0},
            "model": {"backbone": args.backbone, "embedding_size": args.embedding_size},
            "optim": {"lr": args.lr}, "schedule": {"warmup_steps": max(1, args.steps // 10)},
            "head": {"name": head},
        })
        started = time.perf_counter()
        summary = Trainer(cfg).fit()
        plain, flipped = embed(run, aligned, names)
        result = verify(plain, issame, flipped, nfolds=10)
        tar = result.tar_at_far_map.get(0.1)
        rows.append({"head": head, "final_loss": summary["final_loss"], "accuracy": result.accuracy,
                     "accuracy_std": result.accuracy_std, "tar_at_far_0.1": tar, "auc": result.auc,
                     "seconds": time.perf_counter() - started})
        print(f"{head}: loss {summary['final_loss']:.3f}, accuracy {result.accuracy:.3f}", file=sys.stderr)
    return rows


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.backbone}-{args.embedding_size}, {args.steps} steps × batch {args.batch_size}, "
                        f"seed {args.seed}; test: 100 pairs of unseen people")
    for column in ("head", "final loss", "accuracy (10-fold)", "TAR@FAR=0.1", "AUC", "time (s)"):
        table.add_column(column, justify="left" if column == "head" else "right")
    for r in rows:
        tar = "n/a" if r["tar_at_far_0.1"] is None else f"{r['tar_at_far_0.1']:.3f}"
        table.add_row(r["head"], f"{r['final_loss']:.3f}", f"{r['accuracy']:.3f} ± {r['accuracy_std']:.3f}", tar,
                      f"{r['auc']:.3f}", f"{r['seconds']:.0f}")
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", default=DEFAULT_HEADS, help="comma-separated names (facecli train --list-heads)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LFW-layout folder with pairs_sample.txt")
    parser.add_argument("--work", type=Path, default=Path("compare_heads_work"), help="aligned crops and runs")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--backbone", default="mobilefacenet")
    parser.add_argument("--embedding-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.data / "pairs_sample.txt").is_file():
        print(f"compare_heads: {args.data} has no pairs_sample.txt (the LFW sample of ../shared)", file=sys.stderr)
        return 2
    rows = compare([h.strip() for h in args.heads.split(",") if h.strip()], args)
    print_table(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
