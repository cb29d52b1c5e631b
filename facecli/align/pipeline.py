"""``align_folder``: walk RAW, detect, choose, warp and write one crop per face into a mirrored tree under OUT.

The shape of a run, and why:

* **Plan first.** The whole tree is walked and sorted before anything runs, so output names (collisions between
  ``a.jpg`` and ``a.png`` get the full name) and shard membership (``sorted_files[I::N]``) are the same on every
  machine, whatever ``--workers`` is.
* **Skip what is done.** Without ``--overwrite``, a file whose crops already exist and decode is not processed
  again; its row comes back from the previous manifest (status ``skipped_existing``), so the manifest is complete
  after a resume.
* **Use the machine.** By default a run with about a second of work or more (``AUTO_WORKERS_MIN_FILES`` files, or
  ``AUTO_WORKERS_MIN_BYTES`` of images: a few large photos count) uses one process per CPU core it may run on;
  smaller runs stay in this process, as a pool would not be up before they end.
* **Compute in workers, write in one place.** With ``--workers N`` this process is one of the N: it starts at
  once while N - 1 pool processes start up. Whichever process is free takes the biggest file left, so only small
  files remain at the end and the processes finish together. Pool processes return encoded crops and manifest rows;
  this process writes every file atomically as results arrive. Results are byte-identical to ``--workers 1``
  (the manifest is sorted before it is written) and Ctrl-C leaves no partial file: pool processes ignore SIGINT,
  this process stops them, saves the manifest of what finished and re-raises.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import numpy as np

from facecli.align.detectors import DETECTORS, Detector, build_detector
from facecli.align.detectors.base import Face
from facecli.align.manifest import (
    BOX_COLUMNS,
    LANDMARK_COLUMNS,
    MANIFEST_NAME,
    MATRIX_COLUMNS,
    WRITTEN_STATUSES,
    manifest_name,
    read_manifest,
    status_counts,
    write_manifest,
)
from facecli.align.selection import SELECT_MODES, select_faces
from facecli.align.transform import estimate_norm, template, warp
from facecli.errors import FacecliError, UsageError
from facecli.fileio import atomic_write_bytes
from facecli.imageio import DEFAULT_MAX_PIXELS, ImageReadError, encode_image, is_image_path, load_image

FORMATS = ("jpg", "png")
ProgressFactory = Callable[[int], ContextManager[Callable[[int], None]]]


@dataclass(frozen=True)
class AlignOptions:
    """Everything that decides what one input file turns into (shared with worker processes)."""

    size: int = 112
    select: str = "largest"
    min_face: float = 0.0
    min_score: float = 0.0
    fmt: str = "jpg"
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS
    detector: str = "mtcnn"
    detector_options: dict[str, Any] = field(default_factory=dict)
    assume_aligned: bool = False
    landmarks: dict[str, list[np.ndarray]] | None = None

    def validate(self) -> None:
        try:
            template(self.size)
        except ValueError as exc:
            raise UsageError(f"--size: {exc}") from None
        if self.select not in SELECT_MODES:
            raise UsageError(f"--select must be one of {', '.join(SELECT_MODES)}, got {self.select!r}")
        if self.fmt not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {self.fmt!r}")
        if not 1 <= self.quality <= 100:
            raise UsageError(f"--quality must be between 1 and 100, got {self.quality}")
        if self.max_pixels <= 0:
            raise UsageError("--max-pixels must be positive")
        if self.assume_aligned and self.landmarks is not None:
            raise UsageError("--assume-aligned and --landmarks exclude each other")
        DETECTORS.get(self.detector)  # an unknown name fails here, before any folder is created


@dataclass(frozen=True)
class Job:
    """One input file: where it is, its manifest name, and its output name without the suffix."""

    path: Path
    source: str
    stem: str

    def output(self, fmt: str, face: int | None) -> str:
        return f"{self.stem}.{fmt}" if face is None else f"{self.stem}_{face}.{fmt}"


@dataclass
class FileResult:
    rows: list[dict[str, Any]]
    files: list[tuple[str, bytes]]
    cpu_seconds: float = 0.0  # CPU time of the process that computed it (all its threads)


# ---------------------------------------------------------------------------------------------- planning


def check_folders(raw: Path, out: Path) -> tuple[Path, Path]:
    """RAW (a folder or one image) must exist; OUT must not be RAW or inside it (a rerun would align its crops)."""
    if not raw.exists():
        raise UsageError(f"input not found: {raw}")
    if raw.is_file() and not is_image_path(raw):
        raise UsageError(f"input is neither a folder nor an image file: {raw}")
    raw_r, out_r = raw.resolve(), out.resolve()
    if raw.is_file():
        return raw_r, out_r
    if out_r == raw_r or raw_r in out_r.parents:
        raise UsageError(f"output folder {out} is inside the input folder {raw}; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path exists and is not a folder: {out}")
    return raw_r, out_r


def plan_jobs(raw: Path) -> tuple[list[Job], int]:
    """Every image file under ``raw`` (any depth, sorted, hidden entries skipped) and the count of other files."""
    if raw.is_file():
        return [Job(raw, raw.name, raw.stem)], 0
    jobs: list[Job] = []
    ignored = 0
    for folder, dirs, files in os.walk(raw):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_dir = Path(folder).relative_to(raw)
        images = sorted(f for f in files if not f.startswith(".") and is_image_path(f))
        ignored += sum(1 for f in files if not f.startswith(".") and not is_image_path(f))
        stems: dict[str, int] = {}
        for name in images:
            stems[Path(name).stem] = stems.get(Path(name).stem, 0) + 1
        for name in images:
            stem = Path(name).stem if stems[Path(name).stem] == 1 else name  # a.jpg + a.png → a.jpg.jpg, a.png.jpg
            jobs.append(Job(Path(folder) / name, (rel_dir / name).as_posix(), (rel_dir / stem).as_posix()))
    jobs.sort(key=lambda j: j.source)
    return jobs, ignored


def parse_shard(shard: str | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """``"I/N"`` (0-based I), else ``RANK``/``WORLD_SIZE`` from the environment, else the whole tree."""
    env = dict(os.environ) if env is None else env
    if shard is None and "WORLD_SIZE" in env:
        shard = f"{env.get('RANK', '0')}/{env['WORLD_SIZE']}"
    if shard is None:
        return 0, 1
    try:
        index, count = (int(part) for part in shard.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like I/N (e.g. 0/4), got {shard!r}") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard I/N needs 0 <= I < N, got {shard!r}")
    return index, count


def read_landmarks_csv(path: Path, raw: Path) -> dict[str, list[np.ndarray]]:
    """``path,x1,y1,...,x5,y5`` rows → {source relative to RAW: [landmarks (5, 2) float32, ...]}."""
    import pandas as pd

    if not path.is_file():
        raise UsageError(f"landmarks file not found: {path}")
    columns = ["path"] + [f"{axis}{i}" for i in range(1, 6) for axis in ("x", "y")]
    try:
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise UsageError(f"cannot read landmarks file {path}: {exc}") from None
    if frame.shape[1] != 11:
        raise UsageError(f"{path}: expected 11 columns (path,x1,y1,...,x5,y5), found {frame.shape[1]}")
    frame.columns = columns
    if frame.iloc[0, 0].strip().lower() == "path":
        frame = frame.iloc[1:]
    base = raw if raw.is_dir() else raw.parent
    result: dict[str, list[np.ndarray]] = {}
    for line, row in enumerate(frame.itertuples(index=False), start=2):
        try:
            points = np.array([float(v) for v in row[1:]], dtype=np.float32).reshape(5, 2)
        except ValueError:
            raise UsageError(f"{path}: row {line} has a non-numeric landmark") from None
        source = Path(row[0])
        if source.is_absolute():
            try:
                source = source.resolve().relative_to(base)
            except ValueError:
                raise UsageError(f"{path}: row {line}: {row[0]} is not inside {base}") from None
        result.setdefault(source.as_posix(), []).append(points)
    return result


# ---------------------------------------------------------------------------------------------- one file


def _row(job: Job, status: str, reason: str = "", **values: Any) -> dict[str, Any]:
    return {"source": job.source, "output": None, "status": status, "reason": reason, "face": None, **values}


def _face_values(face: Face, matrix: np.ndarray) -> dict[str, Any]:
    """Manifest cells for one crop: score, box, landmarks and the 2x3 matrix, as plain floats."""
    values: dict[str, Any] = {"score": face.score}
    values.update(zip(BOX_COLUMNS, (float(v) for v in face.box)))
    values.update(zip(LANDMARK_COLUMNS, (float(v) for v in face.landmarks.reshape(-1))))
    values.update(zip(MATRIX_COLUMNS, (float(v) for v in matrix.reshape(-1))))
    return values


def _faces_from_landmarks(points: list[np.ndarray]) -> list[Face]:
    """Given landmarks as faces: the box is their extent, the score 1 (nothing to threshold)."""
    faces = []
    for lm in points:
        box = np.array([*lm.min(axis=0), *lm.max(axis=0)], dtype=np.float32)
        faces.append(Face(box=box, score=1.0, landmarks=lm))
    return faces


def process_file(job: Job, options: AlignOptions, detector: Detector | None) -> FileResult:
    """Everything for one input file; never raises for a bad image (the row says what happened)."""
    import cv2

    start = time.perf_counter()
    try:
        loaded = load_image(job.path, options.max_pixels)
    except ImageReadError as exc:
        return FileResult([_row(job, exc.status, exc.reason, seconds=time.perf_counter() - start)], [])
    rgb = loaded.rgb
    notes = "; ".join(loaded.notes)
    size_info = {"width": rgb.shape[1], "height": rgb.shape[0]}
    if options.assume_aligned:
        shrink = rgb.shape[0] > options.size or rgb.shape[1] > options.size
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        crop = cv2.resize(rgb, (options.size, options.size), interpolation=interpolation)
        name = job.output(options.fmt, None)
        reason = "; ".join(filter(None, ["assumed aligned, resized", notes]))
        row = _row(job, "ok", reason, **size_info, seconds=time.perf_counter() - start)
        row.update(output=name, face=0)
        return FileResult([row], [(name, encode_image(crop, options.fmt, options.quality))])
    if options.landmarks is not None:
        given = options.landmarks.get(job.source)
        if not given:
            row = _row(job, "no_landmarks", "not listed in the --landmarks file", **size_info)
            row["seconds"] = time.perf_counter() - start
            return FileResult([row], [])
        faces = _faces_from_landmarks(given)
    else:
        assert detector is not None  # the callers build one whenever no --landmarks file is given
        faces = detector.detect(rgb)
    chosen = select_faces(faces, rgb.shape, options.select, options.min_face, options.min_score)
    if not chosen.faces:
        reason = "; ".join(filter(None, [chosen.reason, notes]))
        return FileResult([_row(job, chosen.status, reason, **size_info, seconds=time.perf_counter() - start)], [])
    rows, files = [], []
    for index, face in enumerate(chosen.faces):
        matrix = estimate_norm(face.landmarks, options.size)
        crop = warp(rgb, matrix, options.size)
        name = job.output(options.fmt, index if options.select == "all" else None)
        files.append((name, encode_image(crop, options.fmt, options.quality)))
        row = _row(job, "ok", notes, **_face_values(face, matrix), **size_info)
        row.update(output=name, face=index)
        rows.append(row)
    elapsed = time.perf_counter() - start
    for row in rows:
        row["seconds"] = elapsed
    return FileResult(rows, files)


# ---------------------------------------------------------------------------------------------- resume


def _valid_crop(path: Path) -> bool:
    """An existing output counts as done only if it is a whole, decodable image."""
    import cv2

    try:
        data = path.read_bytes()
    except OSError:
        return False
    if not data or (data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9")):
        return False
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8) is not None


def _previous_rows(out: Path, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Rows per source from the last manifest in ``names`` that exists (a shard's own beats the merged one)."""
    by_source: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        path = out / name
        if path.is_file():
            by_source.clear()
            for row in read_manifest(path):
                by_source.setdefault(row["source"], []).append(row)
    return by_source


def _already_done(job: Job, out: Path, options: AlignOptions, previous: list[dict[str, Any]]) -> list[dict] | None:
    """Rows to reuse if this file's crops exist and decode (status ``skipped_existing``), else None."""
    written = [r for r in previous if r["status"] in WRITTEN_STATUSES and r.get("output")]
    if written:
        if not all(_valid_crop(out / r["output"]) for r in written):
            return None
        reason = "output exists (kept from a previous run)"
        return [{**row, "status": "skipped_existing", "reason": reason} for row in written]
    first = job.output(options.fmt, 0 if options.select == "all" else None)
    if not _valid_crop(out / first):
        return None
    rows = []
    index = 0
    name = first
    while _valid_crop(out / name):
        row = _row(job, "skipped_existing", "output exists (no manifest row from the previous run)")
        row.update(output=name, face=index)
        rows.append(row)
        if options.select != "all":
            break
        index += 1
        name = job.output(options.fmt, index)
    return rows


# ---------------------------------------------------------------------------------------------- workers

# Starting the pool takes about a second (a fork server importing the detector's runtime) while this process
# already works; with less than about a second of work the pool would arrive too late. That is 64 small photos,
# or 1 MiB of images: MTCNN needs about 1-2.5 ms of CPU per KiB of JPEG, from 250x250 LFW faces to 13-megapixel
# photos.
AUTO_WORKERS_MIN_FILES = 64
AUTO_WORKERS_MIN_BYTES = 1 << 20


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _file_size(job: Job) -> int:
    try:
        return job.path.stat().st_size
    except OSError:
        return 0


def auto_workers(jobs: list[Job]) -> int:
    """``--workers`` when not given: one per usable core for runs with about a second of work or more (at least
    ``AUTO_WORKERS_MIN_FILES`` files, or two or more files of ``AUTO_WORKERS_MIN_BYTES`` together), else 1."""
    if len(jobs) >= AUTO_WORKERS_MIN_FILES:
        return usable_cpus()
    if len(jobs) >= 2 and sum(_file_size(job) for job in jobs) >= AUTO_WORKERS_MIN_BYTES:
        return usable_cpus()
    return 1


_WORKER: dict[str, Any] = {}


def _make_detector(options: AlignOptions) -> Detector | None:
    if options.assume_aligned or options.landmarks is not None:
        return None
    return build_detector(options.detector, **options.detector_options)


def _init_worker(options: AlignOptions) -> None:
    import cv2

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    cv2.setNumThreads(1)  # the parallelism is the worker processes; OpenCV threads would only contend with them
    _WORKER["options"] = options
    try:
        _WORKER["detector"] = _make_detector(options)
    except Exception as exc:  # raising here would make the pool respawn workers forever; report it per job
        _WORKER["error"] = exc


def _timed(job: Job, options: AlignOptions, detector: Detector | None) -> FileResult:
    """:func:`process_file` with its CPU time; an unexpected failure on one file is recorded, not fatal."""
    cpu = time.process_time()
    try:
        result = process_file(job, options, detector)
    except FacecliError:  # a setup problem (e.g. a detector without landmarks) stops the run with its message
        raise
    except Exception as exc:
        result = FileResult([_row(job, "error", f"internal error: {type(exc).__name__}: {exc}")], [])
    result.cpu_seconds = time.process_time() - cpu
    return result


def _work(job: Job) -> FileResult:
    if "error" in _WORKER:
        raise _WORKER["error"]
    return _timed(job, _WORKER["options"], _WORKER["detector"])


def _worker_context() -> Any:
    """The multiprocessing context for the pool; its fork server starts now, in the background.

    Never plain fork: the caller may already run OpenCV/onnxruntime threads (a library user, the test suite), and a
    child forked while one of them holds a lock hangs. A fork server is a fresh process; preloading this module and
    the detectors' runtime there makes each worker start with numpy, OpenCV and onnxruntime already imported. It is
    started as soon as a run knows it needs workers, so those imports overlap with the planning of the run.
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "onnx", "onnxruntime"])
    try:
        with _environment(SINGLE_THREADED_BLAS):
            forkserver.ensure_running()
    except OSError:  # its socket cannot be made (a TMPDIR too long for a socket path): fresh interpreters instead
        return multiprocessing.get_context("spawn")
    return ctx


# Pool processes compute on one thread by design (OpenCV and onnxruntime are set to one each). numpy's OpenBLAS
# would still start a thread per core when the fork server imports numpy, and those threads busy-wait for about
# 0.1 s before they sleep: 0.2 s of CPU taken from the run's start. Unless the caller chose a value, none start.
SINGLE_THREADED_BLAS = {"OPENBLAS_NUM_THREADS": "1"}


@contextlib.contextmanager
def _environment(defaults: dict[str, str]) -> Iterator[None]:
    """Environment variables not already set take these values inside the block (for a child started there)."""
    added = {name: value for name, value in defaults.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


class _JobQueue:
    """Jobs biggest first, taken by whichever process is free: this one, or the pool as each result comes back.

    Taking the biggest remaining file whenever a process is free leaves only the smallest files for the end, so
    the processes finish together. The pool's jobs are handed out from its result thread the moment a result
    arrives, so a pool process never waits for this one to finish a file; ``sent`` counts what the pool was given.
    """

    def __init__(self, jobs: list[Job]) -> None:
        self._jobs = sorted(jobs, key=_file_size, reverse=True)
        self._next = 0
        self._lock = threading.Lock()
        self.sent = 0

    def take(self, for_pool: bool = False) -> Job | None:
        with self._lock:
            if self._next == len(self._jobs):
                return None
            self._next += 1
            self.sent += for_pool
            return self._jobs[self._next - 1]

    def close(self) -> None:
        """Hand out nothing more (the run is over or being abandoned)."""
        with self._lock:
            self._next = len(self._jobs)


def _start_pool(ctx: Any, size: int, options: AlignOptions, jobs: _JobQueue, finished: Any) -> Any:
    """Start ``size`` pool processes and keep each of them two jobs deep: one running, one waiting in its pipe."""
    pool = ctx.Pool(size, initializer=_init_worker, initargs=(options,))

    def submit() -> None:
        job = jobs.take(for_pool=True)
        if job is None:
            return
        try:
            pool.apply_async(_work, (job,), callback=done, error_callback=finished.put)
        except ValueError:  # the pool is being stopped: the run is over
            pass

    def done(result: FileResult) -> None:
        finished.put(result)
        submit()

    for _ in range(2 * size):
        submit()
    return pool


@contextlib.contextmanager
def _results(
    jobs: list[Job], options: AlignOptions, workers: int, ctx: Any
) -> Iterator[Iterator[FileResult]]:
    """Results computed here in job order (no ``ctx``: one worker), or shared between this process and a pool, as
    they finish.

    With N workers, N - 1 are pool processes (from ``ctx``, see :func:`_worker_context`) and this process is the
    N-th. The pool starts on a background thread (about a second: a fork server that imports the detector's
    runtime) while this process already works; from then on every process takes the biggest file left
    (:class:`_JobQueue`).
    """
    if ctx is None:
        detector = _make_detector(options)
        yield (_timed(job, options, detector) for job in jobs)
        return
    import queue
    from concurrent.futures import ThreadPoolExecutor

    size = min(workers - 1, len(jobs) - 1)
    shared = _JobQueue(jobs)
    finished: queue.SimpleQueue = queue.SimpleQueue()  # filled by the pool's result thread
    with ThreadPoolExecutor(1) as starter, _opencv_threads(1):
        pool_future = starter.submit(_start_pool, ctx, size, options, shared, finished)
        try:
            yield _shared_results(pool_future, shared, finished, options)
        finally:
            # Every task has been collected (or the run is being abandoned): stop the workers instead of waiting
            # for them to tear down their runtimes one by one. A pool that failed to start has nothing to stop.
            shared.close()
            if pool_future.exception() is None:
                pool_future.result().terminate()
                pool_future.result().join()


@contextlib.contextmanager
def _opencv_threads(count: int) -> Iterator[None]:
    """OpenCV's own threads would contend with the worker processes; restore the caller's setting afterwards."""
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def _shared_results(pool_future: Any, jobs: _JobQueue, finished: Any, options: AlignOptions) -> Iterator[FileResult]:
    """Compute jobs here while passing on the pool's results as they arrive; then wait for the pool's last ones."""
    received = 0
    detector: Detector | None = None

    def collected(result: FileResult | BaseException) -> FileResult:
        if isinstance(result, BaseException):
            raise result
        return result

    while True:
        while not finished.empty():
            received += 1
            yield collected(finished.get())
        if pool_future.done() and pool_future.exception() is not None:
            raise pool_future.exception()
        job = jobs.take()
        if job is None:
            break
        if detector is None:
            detector = _make_detector(options)
        yield _timed(job, options, detector)
    while received < jobs.sent:  # every job is handed out; the pool's last ones are still running
        received += 1
        yield collected(finished.get())


# ---------------------------------------------------------------------------------------------- the run


def align_folder(
    raw: str | Path,
    out: str | Path,
    *,
    size: int = 112,
    select: str = "largest",
    min_face: float = 0.0,
    min_score: float = 0.0,
    fmt: str = "jpg",
    quality: int = 95,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    detector: str = "mtcnn",
    detector_options: dict[str, Any] | None = None,
    landmarks: str | Path | None = None,
    assume_aligned: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    shard: str | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Align every image under ``raw`` into ``out``; returns the run summary (counts per status, speed, paths).

    ``detector_options`` go to the detector's builder (MTCNN: ``min_face_size``, ``thresholds``, ``factor``;
    SCRFD: ``model_path``). ``shard`` is ``"I/N"``; without it ``RANK``/``WORLD_SIZE`` are honoured. ``workers``
    defaults to :func:`auto_workers` of the shard's files still to do.
    """
    raw, out = check_folders(Path(raw), Path(out))
    shard_index, num_shards = parse_shard(shard)
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    options = AlignOptions(
        size=int(size),
        select=select,
        min_face=float(min_face),
        min_score=float(min_score),
        fmt=fmt.lower().replace("jpeg", "jpg"),
        quality=int(quality),
        max_pixels=int(max_pixels),
        detector=detector,
        detector_options=dict(detector_options or {}),
        assume_aligned=assume_aligned,
        landmarks=read_landmarks_csv(Path(landmarks), raw) if landmarks is not None else None,
    )
    options.validate()
    started = time.perf_counter()
    all_jobs, ignored = plan_jobs(raw)
    jobs = all_jobs[shard_index::num_shards]
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / manifest_name(shard_index, num_shards)
    previous = {} if overwrite else _previous_rows(out, list(dict.fromkeys([MANIFEST_NAME, manifest_path.name])))

    rows: list[dict[str, Any]] = []
    todo: list[Job] = []
    for job in jobs:
        done = None if overwrite else _already_done(job, out, options, previous.get(job.source, []))
        if done:
            rows.extend(done)
        else:
            todo.append(job)

    workers = workers or auto_workers(todo)
    ctx = None  # no pool: one worker, or nothing to share
    if workers > 1 and len(todo) > 1:
        # Start the fork server now; while it imports the detector's runtime on one core, this process imports
        # pandas for the manifest on the other.
        ctx = _worker_context()
        import pandas  # noqa: F401

    progress = progress or (lambda total: contextlib.nullcontext(lambda n=1: None))
    processed = 0
    cpu_seconds = 0.0
    try:
        with _results(todo, options, workers, ctx) as results, progress(len(jobs)) as advance:
            advance(len(jobs) - len(todo))
            for result in results:
                for name, data in result.files:
                    atomic_write_bytes(out / name, data)
                rows.extend(result.rows)
                processed += 1
                cpu_seconds += result.cpu_seconds
                advance(1)
    finally:
        write_manifest(manifest_path, rows)  # also on Ctrl-C: what finished is recorded

    elapsed = time.perf_counter() - started
    counts = status_counts(rows)
    problems = {k: v for k, v in counts.items() if k not in WRITTEN_STATUSES}
    return {
        "raw": str(raw),
        "out": str(out),
        "manifest": str(manifest_path),
        "shard": f"{shard_index}/{num_shards}",
        "workers": workers,
        "files": len(jobs),
        "processed": processed,
        "skipped_existing": len(jobs) - len(todo),
        "crops_written": sum(1 for row in rows if row["status"] == "ok"),
        "other_files_ignored": ignored,
        "counts": counts,
        "warnings": sum(problems.values()),
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "images_per_s": round(processed / elapsed, 2) if elapsed > 0 else None,
    }
