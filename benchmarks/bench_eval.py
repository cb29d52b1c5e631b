"""Benchmark: ``facecli eval``'s two hot paths against their peers, in the same run.

1. Embedding a verification ``.bin`` (every face and its mirror, from JPEG bytes to raw embeddings):
   facecli (``embed_stream``: threaded decoding overlapped with inference, face and mirror in one batch,
   fixed-batch ONNX graphs rewritten to take whole batches, per-channel PRelu rewritten into operators that
   onnxruntime's CPU provider keeps in its blocked layout) versus insightface's ``ArcFaceONNX.get_feat`` on the
   same ONNX file, fed the way insightface's own scripts feed it (``cv2.imdecode`` per image, then ``get_feat`` on
   the batch and on its mirror; one face per call for a model with a fixed batch of 1), at three batch sizes: 64
   (``--batch-size``, as insightface's evaluation scripts batch), facecli's own batch (so that the batch choice
   alone is visible) and one face per call (as ``FaceAnalysis`` does). Two models: a
   random-weight facecli MobileFaceNet exported with a dynamic batch (``--arch`` picks another backbone), and the
   real fixed-batch ../shared/models/mobilefacenet_foamliu.onnx. The ``.bin`` is built from the real JPEG faces
   of ../shared/golden/verification/tiny.bin, repeated. Embeddings are checked to agree (max abs difference).
2. IJB-C-sized 1:1 pair scoring: 15,658,489 pairs (IJB-C's count) between 3,531 enrolment and 19,593 probe
   templates (512-d, float64 as the reference). facecli's ``score_pairs`` versus the bound "one matrix
   multiply": a single numpy GEMM of all enrolment templates against all probe templates (which alone needs
   ~550 MB and yields no per-pair scores), and, for scale, insightface's batched gather-and-sum (timed on the
   first 1 M pairs and extrapolated).

Usage: python benchmarks/bench_eval.py [--images 1000] [--batch-size 64] [--facecli-batch-size N] [--repeat 1]
                                       [--arch mobilefacenet]
                                       [--skip-embed] [--skip-pairs] [--pairs 15658489]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IJBC_PAIRS = 15_658_489
IJBC_ENROL, IJBC_PROBE = 3_531, 19_593


def make_bin(path: Path, n_images: int) -> tuple[list[bytes], np.ndarray]:
    from facecli.data.benchmarks import load_bin, save_bin

    bins, _ = load_bin(SHARED / "golden" / "verification" / "tiny.bin")
    images = [bins[i % len(bins)] for i in range(n_images - n_images % 2)]
    issame = np.arange(len(images) // 2) % 2 == 0
    save_bin(path, images, issame)
    return load_bin(path)


def export_random_model(path: Path, arch: str) -> Path:
    import torch

    from facecli.nn.backbones import BACKBONES
    from facecli.train.export import export_onnx

    torch.manual_seed(0)
    net = BACKBONES.build(arch, embedding_size=512).eval()
    torch.save(net.state_dict(), path.with_suffix(".pth"))
    export_onnx(path.with_suffix(".pth"), path, check=False)
    return path


def insightface_embed(model_path: Path, bins: list[bytes], batch_size: int) -> np.ndarray:
    """The peer: decode with OpenCV (BGR), ``get_feat`` on the batch and on its mirror, rows [emb | mirror].

    ``batch_size`` 1 is how insightface's ``FaceAnalysis``/``ArcFaceONNX.get`` use it (one face per call)."""
    import cv2
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    model = ArcFaceONNX(model_file=str(model_path))
    fixed = model.input_shape[0] if isinstance(model.input_shape[0], int) else None
    step = fixed or batch_size
    out = []
    for start in range(0, len(bins), step):
        imgs = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in bins[start : start + step]]
        flipped = [np.ascontiguousarray(im[:, ::-1]) for im in imgs]
        out.append(np.concatenate([model.get_feat(imgs), model.get_feat(flipped)], axis=1))
    return np.concatenate(out)


def facecli_embed(
    model_path: Path, bins: list[bytes], batch_size: int | None, workers: int, **options
) -> np.ndarray:
    from facecli.eval import load_model
    from facecli.eval.embed import embed_stream
    from facecli.imageio import decode_image

    model = load_model(model_path, batch_size=batch_size, **options)
    return embed_stream(model, len(bins), lambda i: decode_image(bins[i]), flip=True, workers=workers)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def bench_embedding(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        bins, _ = make_bin(tmp_path / "bench.bin", args.images)
        models = [(f"{args.arch} (random weights, dynamic batch)", export_random_model(tmp_path / "model.onnx", args.arch), args.images)]
        real = SHARED / "models" / "mobilefacenet_foamliu.onnx"
        if real.is_file():
            models.append(("mobilefacenet_foamliu (real, fixed batch 1)", real, min(args.images, args.fixed_images)))
        from facecli.eval.models import default_batch_size

        ours_batch = args.facecli_batch_size or default_batch_size("cpu")
        peers = {f"get_feat b{args.batch_size}": args.batch_size, f"get_feat b{ours_batch}": ours_batch,
                 "get_feat 1/call": 1}
        origin = "given" if args.facecli_batch_size else "its CPU default"
        print(f"embedding a .bin: faces + mirrors; facecli batch {ours_batch} ({origin}), {args.workers} decode "
              f"threads; best of {args.repeat} interleaved rounds; images/s, ratio = facecli / peer")
        print(f"{'model':46s} {'images':>6s} " + " ".join(f"{p:>16s}" for p in peers) + f" {'facecli':>8s} "
              + " ".join(f"{'vs ' + p:>19s}" for p in peers) + f" {'max |diff|':>10s}")
        for name, path, n in models:
            subset = bins[:n]
            facecli_embed(path, subset[:ours_batch], args.facecli_batch_size, args.workers)  # warm-up
            insightface_embed(path, subset[: args.batch_size], args.batch_size)
            best = {p: float("inf") for p in [*peers, "facecli"]}
            for _ in range(args.repeat):  # rounds interleave the contenders; the best round of each counts
                for peer, batch in peers.items():
                    out, t = timed(insightface_embed, path, subset, batch)
                    best[peer] = min(best[peer], t)
                    if batch == args.batch_size:
                        theirs = out
                ours, t = timed(facecli_embed, path, subset, args.facecli_batch_size, args.workers)
                best["facecli"] = min(best["facecli"], t)
            diff = float(np.abs(ours - theirs).max())
            print(f"{name:46s} {n:6d} " + " ".join(f"{n / best[p]:16.1f}" for p in peers)
                  + f" {n / best['facecli']:8.1f} " + " ".join(f"{best[p] / best['facecli']:18.2f}x" for p in peers)
                  + f" {diff:10.2e}")


def bench_pairs(args: argparse.Namespace) -> None:
    from facecli.eval.ijb import score_pairs

    rng = np.random.default_rng(0)
    n_templates = IJBC_ENROL + IJBC_PROBE
    feats = rng.standard_normal((n_templates, 512))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    rows1 = rng.integers(0, IJBC_ENROL, args.pairs)
    rows2 = rng.integers(IJBC_ENROL, n_templates, args.pairs)
    enrol, probe = feats[:IJBC_ENROL], feats[IJBC_ENROL:]
    _, t_gemm = timed(np.matmul, enrol, probe.T)
    ours, t_ours = timed(score_pairs, feats, rows1, rows2)
    sample = min(1_000_000, args.pairs)
    batch = 100_000

    def reference(n: int) -> np.ndarray:  # eval_ijbc.verification(): gather both sides, multiply, sum
        out = np.empty(n)
        for s in range(0, n, batch):
            out[s : s + batch] = np.sum(feats[rows1[s : s + batch]] * feats[rows2[s : s + batch]], -1)
        return out

    ref, t_ref = timed(reference, sample)
    t_ref_all = t_ref * args.pairs / sample
    err = float(np.abs(ours[:sample] - ref).max())
    print(f"\nIJB-C-sized pair scoring: {args.pairs:,} pairs, {IJBC_ENROL:,} x {IJBC_PROBE:,} templates, 512-d float64")
    print(f"  numpy GEMM bound (enrolment @ probe.T, one call): {t_gemm:7.2f} s")
    print(f"  facecli score_pairs (bounded memory):             {t_ours:7.2f} s   = {t_ours / t_gemm:.2f}x the GEMM bound")
    print(f"  insightface batched gather-and-sum (extrapolated): {t_ref_all:7.2f} s   facecli is {t_ref_all / t_ours:.1f}x faster")
    print(f"  max |facecli - reference| on {sample:,} pairs: {err:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="images in the synthetic .bin")
    parser.add_argument("--fixed-images", type=int, default=400, help="images for the fixed-batch model")
    parser.add_argument("--batch-size", type=int, default=64, help="get_feat's batch (insightface's scripts: 64-128)")
    parser.add_argument("--facecli-batch-size", type=int, default=None, help="default: facecli's own CPU default")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds of the embedding contenders")
    parser.add_argument("--arch", default="mobilefacenet", help="facecli backbone exported for the dynamic case")
    parser.add_argument("--pairs", type=int, default=IJBC_PAIRS)
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--skip-pairs", action="store_true")
    args = parser.parse_args()
    if not args.skip_embed:
        bench_embedding(args)
    if not args.skip_pairs:
        bench_pairs(args)


if __name__ == "__main__":
    main()
