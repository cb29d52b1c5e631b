"""Training throughput: facecli's training step (data loading included) vs a bare hand-written PyTorch loop.

Both sides train the same backbone with the same ArcFace head (s=64, m=0.5, full classifier), SGD (momentum 0.9,
wd 5e-4), gradient clipping 5, the same batch size and the same number of DataLoader workers reading the same
112x112 JPEG folder (LFW sample, centre-cropped). The bare loop is what one writes by hand without facecli:
cv2 decode, flip, normalise, forward, cross-entropy, backward, clip, step. facecli adds its deterministic
sampler, checkpoint-ready state, the non-finite guard, LR schedule and metrics.

Rounds alternate facecli and bare so that load from other processes hits both; the best round of each counts.

    python benchmarks/bench_train.py                       # CPU default: tiny MobileFaceNet, batch 32 (< 3 min)
    python benchmarks/bench_train.py --backbone iresnet50 --batch-size 128 --amp fp16 --device cuda --steps 50
    python benchmarks/bench_train.py --augment lowres,crop,photometric,grayscale   # both sides augment the same way

With ``--augment`` the bare loop applies the same ``facecli.data.augment.Augmenter`` in its workers (a fresh
random seed per sample); facecli derives the seed from the sampler, which is what makes it resumable.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
LFW = REPO.parent / "shared" / "data" / "lfw-sample"
TINY = {"blocks": [1, 1, 1, 1], "scale": 1}


def make_faces(dest: Path) -> Path:
    for image in sorted(LFW.glob("*/*.jpg")):
        crop = cv2.resize(cv2.imread(str(image))[60:190, 60:190], (112, 112), interpolation=cv2.INTER_AREA)
        (dest / image.parent.name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dest / image.parent.name / image.name), crop)
    return dest


# -- facecli ---------------------------------------------------------------------------------------------------
class StepClock:
    """Callback recording the wall time at the end of every step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_start(self, trainer) -> None:
        self.times = [time.perf_counter()]

    def on_step_end(self, trainer, metrics) -> None:
        self.times.append(time.perf_counter())

    def on_train_end(self, trainer, summary) -> None:
        pass


def run_facecli(faces: Path, out: Path, args) -> float:
    from facecli.train.config import build_config
    from facecli.train.trainer import Trainer

    shutil.rmtree(out, ignore_errors=True)
    cfg = build_config({
        "data.path": str(faces), "out": str(out), "batch_size": args.batch_size, "steps": args.warmup + args.steps,
        "data.workers": args.workers, "model.backbone": args.backbone, "model.backbone_options": args.options,
        "model.embedding_size": args.embedding_size, "head.name": "arcface", "optim.lr": 0.02, "amp": args.amp,
        "device": args.device, "checkpoint_every": 10**9, "log_every": 10**9, "schedule.name": "constant",
        "augment.names": args.augment,
    })
    clock = StepClock()
    Trainer(cfg, callbacks=[clock]).fit()
    timed = clock.times[args.warmup:]
    return args.batch_size * (len(timed) - 1) / (timed[-1] - timed[0])


# -- the bare loop -----------------------------------------------------------------------------------------------
class BareFolder(torch.utils.data.Dataset):
    def __init__(self, root: Path, augment=None) -> None:
        self.augment = augment
        people = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.items = [(str(f), i) for i, name in enumerate(people) for f in sorted((root / name).glob("*.jpg"))]
        self.num_classes = len(people)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        if self.augment is not None:
            rgb = self.augment(rgb, int(torch.randint(0, 2**31 - 1, ())))
        if torch.rand(()) < 0.5:
            rgb = rgb[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div(255).sub(0.5).div(0.5)
        return x, label


ARCFACE_SCALE, ARCFACE_MARGIN = 64.0, 0.5


def bare_arcface_step(backbone: torch.nn.Module, weight: torch.Tensor, opt: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, images: torch.Tensor, labels: torch.Tensor,
                      dtype: torch.dtype | None) -> None:
    """One step written by hand (the peer of facecli's step; also used by gpu_check.py): forward under autocast
    (none when ``dtype`` is None), ArcFace with arcface_torch's th/mm fallback, cross-entropy, backward, clip 5,
    step, and the loss read back as facecli reads it every step (for its non-finite guard and metrics)."""
    m = ARCFACE_MARGIN
    cos_m, sin_m, th, mm = math.cos(m), math.sin(m), math.cos(math.pi - m), math.sin(math.pi - m) * m
    with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        emb = backbone(images)
        cosine = F.linear(F.normalize(emb), F.normalize(weight)).float().clamp(-1, 1)
    target = cosine.gather(1, labels[:, None])
    sine = (1 - target * target).clamp(min=0).sqrt()
    phi = torch.where(target > th, target * cos_m - sine * sin_m, target - mm)
    loss = F.cross_entropy(cosine.scatter(1, labels[:, None], phi) * ARCFACE_SCALE, labels)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5.0)
    scaler.step(opt)
    scaler.update()
    loss.item()


def run_bare(faces: Path, args) -> float:
    from facecli.data.augment import Augmenter
    from facecli.nn.backbones import BACKBONES
    from facecli.train.config import AugmentConfig

    device = torch.device("cuda" if args.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    data = BareFolder(faces, Augmenter(AugmentConfig(names=args.augment)) if args.augment else None)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    torch.manual_seed(0)
    backbone = BACKBONES.build(args.backbone, embedding_size=args.embedding_size, **args.options).to(device)
    weight = torch.nn.Parameter(torch.randn(data.num_classes, args.embedding_size, device=device) * 0.01)
    params = [p for p in backbone.parameters() if p.requires_grad] + [weight]
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.amp)
    backbone.train()
    times = []
    step = 0
    while step < args.warmup + args.steps:
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            bare_arcface_step(backbone, weight, opt, scaler, images, labels, dtype)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            step += 1
            if step >= args.warmup + args.steps:
                break
    timed = times[args.warmup - 1:]
    return args.batch_size * (len(timed) - 1) / (timed[-1] - timed[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilefacenet")
    parser.add_argument("--full-width", action="store_true", help="the stock MobileFaceNet instead of the tiny one")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--embedding-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--amp", default="none", choices=["none", "fp16", "bf16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--augment", default="", help="comma-separated augmentations for both loops")
    args = parser.parse_args()
    args.augment = [a for a in args.augment.split(",") if a]
    if not LFW.is_dir():
        sys.exit(f"needs the LFW sample at {LFW}")
    args.options = TINY if args.backbone == "mobilefacenet" and not args.full_width else {}
    with tempfile.TemporaryDirectory() as tmp:
        faces = make_faces(Path(tmp) / "faces")
        ours, bare = [], []
        for r in range(args.rounds):
            ours.append(run_facecli(faces, Path(tmp) / "run", args))
            bare.append(run_bare(faces, args))
            print(f"round {r + 1}: facecli {ours[-1]:.1f} img/s, bare loop {bare[-1]:.1f} img/s", flush=True)
    name = args.backbone + (" (tiny: blocks 1,1,1,1, scale 1)" if args.options else "")
    print(f"\nbackbone {name}, head arcface, batch {args.batch_size}, {args.workers} workers, amp {args.amp}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, augment {','.join(args.augment) or 'none'}")
    print(f"facecli   {max(ours):8.1f} samples/s (best of {args.rounds})")
    print(f"bare loop {max(bare):8.1f} samples/s (best of {args.rounds})")
    print(f"ratio facecli / bare = {max(ours) / max(bare):.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
