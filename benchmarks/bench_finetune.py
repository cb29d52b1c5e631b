"""Fine-tuning the pretrained MobileFaceNet for low-resolution faces: accuracy on *other* people, before and after.

The 40 people of the LFW sample are split by person: 24 to fine-tune on, 16 never seen in training whose pairs
(every genuine pair, and as many impostor pairs drawn with a fixed seed) are scored with the 10-fold protocol at
full resolution and with the faces shrunk to 24 and 16 pixels and scaled back (area down, bilinear up). The
fine-tune is the plain facecli command, with fine-tuning defaults only:

    facecli pack TRAIN PACK
    facecli train PACK --init MODEL.onnx --mean 123.675,116.28,103.53 --std 58.395,57.12,57.375 \\
        --head arcface --augment lowres --steps 300 --batch-size 32 --out RUN

and both models are evaluated through ``facecli.eval.load_model`` (onnxruntime for the original, the run
directory for the fine-tuned one) with flip fusion.

    python benchmarks/bench_finetune.py [--steps 300] [--seed 0] [--extra='key=value ...']   (about 10 min on 2 cores)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facecli.data.augment import low_resolution  # noqa: E402
from facecli.eval import load_model, verify  # noqa: E402
from facecli.imageio import read_image  # noqa: E402

SHARED = REPO.parent / "shared"
LFW = SHARED / "data" / "lfw-sample"
MODEL = SHARED / "models" / "mobilefacenet_foamliu.onnx"
IMAGENET = ["--mean", "123.675,116.28,103.53", "--std", "58.395,57.12,57.375"]
RESOLUTIONS = (112, 24, 16)


def facecli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    subprocess.run([sys.executable, "-m", "facecli", *args, "--quiet"], check=True, env=env)


def split_people(aligned: Path, dest: Path) -> tuple[Path, list[Path]]:
    """Three of every five people (by sorted name) to train on (24 of 40), the other two held out (16)."""
    people = sorted(p for p in aligned.iterdir() if p.is_dir())
    train = dest / "train"
    heldout = []
    for i, person in enumerate(people):
        if i % 5 < 3:
            shutil.copytree(person, train / person.name)
        else:
            heldout.append(person)
    return train, heldout


def make_pairs(people: list[Path], seed: int) -> tuple[list[tuple[Path, Path]], np.ndarray]:
    """Every genuine pair of the held-out people and as many impostor pairs, shuffled with ``seed``."""
    images = {p.name: sorted(p.glob("*.jpg")) for p in people}
    genuine = [pair for files in images.values() for pair in itertools.combinations(files, 2)]
    rng = np.random.default_rng(seed)
    names = sorted(images)
    impostor: set[tuple[Path, Path]] = set()
    while len(impostor) < len(genuine):
        a, b = rng.choice(len(names), 2, replace=False)
        impostor.add((images[names[a]][rng.integers(len(images[names[a]]))],
                      images[names[b]][rng.integers(len(images[names[b]]))]))
    pairs = genuine + sorted(impostor)
    issame = np.array([True] * len(genuine) + [False] * len(impostor))
    order = rng.permutation(len(pairs))  # 10 contiguous folds must each mix both kinds
    return [pairs[i] for i in order], issame[order]


def accuracy(model_path: Path, extra: list[str], pairs: list[tuple[Path, Path]], issame: np.ndarray,
             side: int) -> tuple[float, float]:
    mean, std = (extra[1], extra[3]) if extra else (None, None)
    model = load_model(model_path, mean=mean, std=std)
    files = sorted({f for pair in pairs for f in pair})
    faces = np.stack([read_image(f) for f in files])
    if side < faces.shape[1]:
        faces = np.stack([low_resolution(face, side) for face in faces])
    plain, flipped = model.embed_batch(faces), model.embed_batch(faces[:, :, ::-1].copy())
    index = {f: i for i, f in enumerate(files)}
    rows = [index[f] for pair in pairs for f in pair]
    result = verify(plain[rows], issame, embeddings_flip=flipped[rows], nfolds=10)
    return result.accuracy, result.accuracy_std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="the fine-tune's seed (the pairs stay the same)")
    parser.add_argument("--aligned", type=Path, help="facecli align output of the LFW sample (made if absent)")
    parser.add_argument("--work", type=Path, help="keep the work folder here (default: a temporary one)")
    parser.add_argument("--extra", default="", help='more facecli train arguments, one string: --extra="optim.lr=3e-4"')
    args = parser.parse_args()
    extra = shlex.split(args.extra)
    if not MODEL.is_file():
        sys.exit(f"needs {MODEL}")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    work.mkdir(parents=True, exist_ok=True)
    aligned = args.aligned or work / "aligned"
    if not aligned.is_dir():
        facecli("align", str(LFW), str(aligned), "--select", "center", "--workers", "2")
    shutil.rmtree(work / "split", ignore_errors=True)
    train, heldout = split_people(aligned, work / "split")
    pairs, issame = make_pairs(heldout, 0)  # the same pairs whatever the training seed
    print(f"train: {len(list(train.iterdir()))} people, {len(list(train.glob('*/*.jpg')))} photos; "
          f"held out: {len(heldout)} people, {len(pairs)} pairs ({int(issame.sum())} genuine)", flush=True)
    shutil.rmtree(work / "pack", ignore_errors=True)
    shutil.rmtree(work / "run", ignore_errors=True)
    facecli("pack", str(train), str(work / "pack"))
    started = time.perf_counter()
    facecli("train", str(work / "pack"), "--init", str(MODEL), *IMAGENET, "--head", "arcface", "--augment", "lowres",
            "--steps", str(args.steps), "--batch-size", "32", "--seed", str(args.seed), "--out", str(work / "run"),
            *extra)
    train_s = time.perf_counter() - started
    results: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    for side in RESOLUTIONS:
        results["before"][str(side)] = list(accuracy(MODEL, IMAGENET, pairs, issame, side))
        results["after"][str(side)] = list(accuracy(work / "run", [], pairs, issame, side))
    print(f"fine-tune: {args.steps} steps in {train_s:.0f} s; {args.extra}")
    print(f"{'resolution':>10} {'before':>15} {'after':>15} {'change':>8}")
    for side in RESOLUTIONS:
        (b, bs), (a, as_) = results["before"][str(side)], results["after"][str(side)]
        print(f"{side:>8}px {100 * b:>8.2f} ±{100 * bs:4.2f} {100 * a:>8.2f} ±{100 * as_:4.2f} "
              f"{100 * (a - b):+8.2f}")
    print(json.dumps({"steps": args.steps, "seed": args.seed, "extra": extra, "train_s": train_s, **results}))


if __name__ == "__main__":
    main()
