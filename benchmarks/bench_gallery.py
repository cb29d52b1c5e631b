"""Gallery search speed: facecli's exact search vs a plain numpy loop over templates, same run, same data.

Target (issue 8): a 1M-template gallery answers one probe in under 1 s on a 2-core machine. Prints the time per
probe for a single probe and for a batch, in float32 and float16, and the speed-up over a Python loop of
``np.dot`` calls (the straightforward implementation).

With ``--faiss`` (needs faiss-cpu) it builds facecli's FAISS indexes (``faiss`` = IVF-Flat, ``faiss-pq``,
``faiss-ivfpq``, ``faiss-hnsw``) over the first ``--faiss-n`` templates and prints, per search setting (``nprobe``
for IVF, ``efSearch`` for HNSW, candidates re-scored for the exhaustive PQ scan): build time, ms per probe (one
probe, and a batch), recall@1 against exact search, how often the top-1 is the enrolled mate, and index memory per
template with its total at 10M templates. Goal (issue 18): ≤ 50 ms per probe at recall@1 ≥ 0.99 on 10M 512-d
templates. 10M float32 templates are 20 GB, more than this machine holds beside its other work; ``--dtype float16``
makes them 10 GB, as ``gallery build --dtype float16`` does. Below 10M the 10M time is extrapolated: linearly for
flat and IVF indexes (the same recall needs about the same fraction of the gallery scanned, as cells grow with
sqrt(N) and so does nprobe), as log N for HNSW (graph hops).

    python benchmarks/bench_gallery.py                 # 1M x 512, about 1-2 minutes
    python benchmarks/bench_gallery.py --n 200000 --dim 128
    python benchmarks/bench_gallery.py --n 1000000 --faiss-only --faiss-kinds faiss-pq,faiss-ivfpq --faiss-n 1000000
    python benchmarks/bench_gallery.py --n 10000000 --dtype float16 --faiss-only --faiss-kinds faiss-pq \
        --faiss-n 10000000                             # 10M x 512: ~12 GB of memory, ~15 minutes
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

THREADS = os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", THREADS)
os.environ.setdefault("MKL_NUM_THREADS", THREADS)

import numpy as np  # noqa: E402

from facecli.gallery.search import ExactIndex, FaissIndex, build_index, recall_at_k  # noqa: E402

#: Search settings swept per FAISS index: nprobe (cells scanned) for IVF, efSearch (graph beam) for HNSW.
SWEEP = {"faiss": (64, 256, 1024), "faiss-pq": (64, 256, 1024), "faiss-ivfpq": (64, 256, 1024),
         "faiss-hnsw": (64, 128, 256)}
TARGET_N = 10_000_000


def random_units(rng: np.random.Generator, n: int, dim: int, dtype: str = "float32", chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, dim), dtype)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def timed(fn, repeat: int) -> float:
    """Median wall time of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def numpy_loop(templates: np.ndarray, probe: np.ndarray, k: int) -> list[int]:
    """The plain implementation: one dot product per template in a Python loop, then a sort."""
    scores = np.empty(len(templates), np.float32)
    for i in range(len(templates)):
        scores[i] = np.dot(templates[i], probe)
    return np.argsort(-scores)[:k].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="templates in the gallery")
    parser.add_argument("--dim", type=int, default=512, help="embedding size")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="template precision (the FAISS section; float16 halves the memory, as in a gallery "
                        "built with --dtype float16)")
    parser.add_argument("--batch", type=int, default=64, help="probes per batch for the throughput figure")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--faiss", action="store_true", help="also time facecli's FAISS indexes (needs faiss-cpu)")
    parser.add_argument("--faiss-only", action="store_true", help="skip the exact-search tables (implies --faiss)")
    parser.add_argument("--faiss-n", type=int, default=200_000, help="gallery size for the FAISS comparison")
    parser.add_argument("--faiss-kinds", default="faiss,faiss-ivfpq,faiss-hnsw", help="comma-separated --index names")
    parser.add_argument("--widths", default="", help="comma-separated nprobe/efSearch values instead of the defaults")
    parser.add_argument("--recall-probes", type=int, default=1000, help="mate probes for the FAISS recall figures")
    parser.add_argument("--faiss-cache", default="", help="folder to keep built FAISS indexes in between runs")
    args = parser.parse_args()

    try:
        import torch

        torch.set_num_threads(int(THREADS))
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    print(f"gallery {args.n} x {args.dim}, {THREADS} threads; generating ...", flush=True)
    templates = random_units(rng, args.n, args.dim, args.dtype if args.faiss_only else "float32")
    if args.faiss_only:
        faiss_section(templates, rng, args)
        return
    # probes of enrolled people: a template plus noise (cosine ~0.7 to it), so the exact top-1 is meaningful
    mates = rng.choice(args.n, args.batch, replace=False)
    probes = templates[mates] + random_units(rng, args.batch, args.dim)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    one = probes[:1]

    exact32 = ExactIndex(templates)
    t32 = timed(lambda: exact32.search(one, args.k), args.repeat)
    b32 = timed(lambda: exact32.search(probes, args.k), max(1, args.repeat // 2)) / args.batch
    exact16 = ExactIndex(templates.astype(np.float16))
    t16 = timed(lambda: exact16.search(one, args.k), args.repeat)
    b16 = timed(lambda: exact16.search(probes, args.k), max(1, args.repeat // 2)) / args.batch
    _, idx32 = exact32.search(probes, args.k)
    _, idx16 = exact16.search(probes, args.k)

    start = time.perf_counter()
    loop_top = numpy_loop(templates, one[0], args.k)
    t_loop = time.perf_counter() - start
    assert loop_top[0] == int(exact32.search(one, args.k)[1][0, 0]), "the loop and facecli disagree"

    print()
    print("| method | time per probe | vs numpy loop |")
    print("|---|---|---|")
    print(f"| numpy loop (np.dot per template, 1 probe) | {t_loop * 1e3:.1f} ms | 1.0x |")
    print(f"| facecli exact float32, 1 probe | {t32 * 1e3:.1f} ms | {t_loop / t32:.1f}x |")
    print(f"| facecli exact float16, 1 probe | {t16 * 1e3:.1f} ms | {t_loop / t16:.1f}x |")
    print(f"| facecli exact float32, batch of {args.batch} | {b32 * 1e3:.2f} ms | {t_loop / b32:.1f}x |")
    print(f"| facecli exact float16, batch of {args.batch} | {b16 * 1e3:.2f} ms | {t_loop / b16:.1f}x |")
    print()
    print(f"float16 top-{args.k} recall vs float32: {recall_at_k(idx16, idx32):.4f}; "
          f"top-1 = enrolled mate: float32 {(idx32[:, 0] == mates).mean():.3f}, float16 {(idx16[:, 0] == mates).mean():.3f}")
    verdict = "PASS" if t32 < 1.0 else "FAIL"
    print(f"target < 1 s per probe on {args.n} templates: {verdict} (float32 {t32:.3f} s, float16 {t16:.3f} s)")

    if args.faiss:
        faiss_section(templates, rng, args)


def faiss_section(templates: np.ndarray, rng: np.random.Generator, args: argparse.Namespace) -> None:
    """Each FAISS index over the first ``--faiss-n`` templates: speed, recall@1 and memory per search setting."""
    sub = templates[: args.faiss_n]
    n = len(sub)
    count = max(args.batch, args.recall_probes)
    sub_mates = rng.choice(n, count, replace=False)
    probes = sub[sub_mates].astype(np.float32) + random_units(rng, count, args.dim)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    start = time.perf_counter()
    exact = ExactIndex(sub).search(probes, args.k)[1]
    print(f"exact reference search of {count} probes: {time.perf_counter() - start:.0f} s", flush=True)
    batch = probes[: args.batch]
    print(f"\nFAISS on {n} x {args.dim} {sub.dtype} templates; recall over {count} mate probes (cosine ~0.7 to "
          f"their template), time over {args.batch}; top-{args.k}; 10M figures extrapolated below 10M\n")
    print("| index | structure | build s | setting | ms/probe (1) | ms/probe (batch) | est. ms/probe at 10M "
          "| recall@1 | top-1 = mate | bytes/template | index at 10M |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.faiss_kinds.split(","):
        start = time.perf_counter()
        try:
            cache = Path(args.faiss_cache) / f"{name}-{n}x{args.dim}.npz" if args.faiss_cache else None
            index = build_index(name, sub, cache)
        except Exception as exc:  # noqa: BLE001 - report and go on; FAISS is optional
            print(f"| {name} | skipped: {exc} |")
            continue
        built = time.perf_counter() - start
        assert isinstance(index, FaissIndex)
        per = index.bytes_per_template()
        graph = index.structure.startswith("hnsw")
        flat = index.structure == "flat"
        growth = math.log(TARGET_N) / math.log(n) if graph else TARGET_N / n
        widths = tuple(int(v) for v in args.widths.split(",")) if args.widths else SWEEP[name]
        for value in widths if not flat else (None,):
            if value is not None:
                index.set_search_width(value)
            single = timed(lambda index=index: index.search(probes[:1], args.k), args.repeat)
            per_batch = timed(lambda index=index: index.search(batch, args.k), max(1, args.repeat // 2)) / args.batch
            idx = index.search(probes, args.k)[1]
            recall1 = recall_at_k(idx[:, :1], exact[:, :1])
            mate = (idx[:, 0] == sub_mates).mean()
            setting = ("exact" if value is None else f"efSearch {value}" if graph
                       else f"re-score {value}" if index.structure == "pq-fastscan" else f"nprobe {value}")
            print(f"| {name} | {index.structure} | {built:.0f} | {setting} | {single * 1e3:.2f} | "
                  f"{per_batch * 1e3:.3f} | {single * growth * 1e3:.1f} | {recall1:.4f} | {mate:.3f} | {per:.0f} | "
                  f"{per * TARGET_N / 2**30:.2f} GiB |", flush=True)


if __name__ == "__main__":
    main()
