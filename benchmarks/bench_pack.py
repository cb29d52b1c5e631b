"""Images/s of ``facecli pack`` vs MXNet's ``im2rec --pass-through`` and vs the floor of just reading the bytes.

    python benchmarks/bench_pack.py [--images 20000] [--workers 1]

Builds a folder dataset of real 112x112 face JPEGs (the golden RecordIO sources, copied into many identity
folders), warms the page cache, then times in the same run:

* floor: listing the tree (``os.walk``, sorted) and reading every file's bytes, in this process, nothing else;
* facecli library: ``facecli.data.pack.write_pack`` in this process (listing, header checks, framing, writing
  .rec/.idx/labels.csv/records.csv/pack.json with sha256) — compared with the floor;
* facecli CLI: ``facecli pack SRC OUT`` as a subprocess, interpreter start included — compared with im2rec;
* im2rec: ``python -m mxnet.tools.im2rec --list --recursive`` + ``--pass-through`` with the real MXNet 1.9.1 (its
  two interpreter starts included), when a venv with it exists (``FACECLI_MXNET_PYTHON`` or ``../mxnet-venv``).

Targets: facecli at least 2x im2rec, and within 2x of the floor. Each contender is timed best-of ``--repeat``;
deleting the previous round's output happens before the clock starts, for every contender alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN_SRC = REPO.parent / "shared" / "golden" / "recordio" / "src"


def build_dataset(root: Path, images: int, per_identity: int = 20) -> None:
    sources = [p.read_bytes() for p in sorted(GOLDEN_SRC.rglob("*.jpg"))]
    for i in range(images):
        path = root / f"id_{i // per_identity:06d}" / f"{i % per_identity:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sources[i % len(sources)])


def timed(contender: tuple) -> float:
    """Seconds of ``run()``; ``setup()`` before it (removing the previous round's output) is not timed."""
    setup, run = contender
    setup()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def read_all(root: Path) -> int:
    """The floor: list the tree (sorted, as any packer must) and read every file's bytes; nothing else."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            with open(os.path.join(dirpath, name), "rb") as fh:
                total += len(fh.read())
    return total


def mxnet_python() -> Path | None:
    candidate = os.environ.get("FACECLI_MXNET_PYTHON")
    path = Path(candidate) if candidate else REPO.parent / "mxnet-venv" / "bin" / "python"
    return path if path.is_file() else None


def run(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs for each contender")
    args = parser.parse_args()
    if not GOLDEN_SRC.is_dir():
        raise SystemExit(f"needs the golden sources at {GOLDEN_SRC}")
    work = Path(tempfile.mkdtemp(prefix="bench_pack_"))
    try:
        src = work / "src"
        build_dataset(src, args.images)
        total_bytes = read_all(src)  # also warms the page cache
        print(f"dataset: {args.images} images, {total_bytes / 1e6:.1f} MB, {args.images // 20} identities")

        from facecli.data.layouts import Selection, build_layout
        from facecli.data.pack import PackOptions, lazy_plan, write_pack

        def removing(folder: Path, recreate: bool = False):
            """A setup that deletes the previous round's output (untimed: deleting is no part of packing)."""
            def setup() -> None:
                shutil.rmtree(folder, ignore_errors=True)
                if recreate:
                    folder.mkdir()
            return setup

        def facecli_library() -> None:
            out = work / "facecli_lib"
            write_pack(lazy_plan(build_layout("folders", src), Selection()), out,
                       PackOptions(layout_out="flat", workers=args.workers), source=str(src))

        def facecli_cli() -> None:
            out = work / "facecli"
            run([sys.executable, "-m", "facecli", "pack", str(src), str(out), "--layout-out", "flat",
                 "--workers", str(args.workers), "-q"])

        mx = mxnet_python()

        def im2rec() -> None:
            prefix = work / "im2rec" / "data"
            run([str(mx), "-m", "mxnet.tools.im2rec", "--list", "--recursive", str(prefix), str(src)])
            run([str(mx), "-m", "mxnet.tools.im2rec", "--pass-through", "--num-thread", "1", str(prefix), str(src)])

        contenders = {
            "floor: list + read all bytes": (lambda: None, lambda: read_all(src)),
            f"facecli library (workers={args.workers})": (removing(work / "facecli_lib"), facecli_library),
            f"facecli pack CLI (workers={args.workers})": (removing(work / "facecli"), facecli_cli),
        }
        if mx is not None:
            contenders["im2rec --list + --pass-through"] = (removing(work / "im2rec", recreate=True), im2rec)
        else:
            print("(no MXNet venv: set FACECLI_MXNET_PYTHON or create ../mxnet-venv to compare with im2rec)")
        # rounds interleave the contenders, so a busy machine slows all of them alike within a round
        rounds = [{name: timed(contender) for name, contender in contenders.items()} for _ in range(args.repeat)]
        names = list(contenders)
        for name in names:
            best = min(r[name] for r in rounds)
            print(f"{name:38s} {best:7.2f} s  {args.images / best:9.0f} images/s  (best of {args.repeat})")
        lib_ratio = statistics.median(r[names[1]] / r[names[0]] for r in rounds)
        print(f"facecli library / floor time ratio: {lib_ratio:.2f}x, median over rounds (target <= 2)")
        if mx is not None:
            im_ratio = statistics.median(r[names[3]] / r[names[2]] for r in rounds)
            print(f"im2rec / facecli CLI time ratio: {im_ratio:.2f}x, median over rounds (target >= 2)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
