"""``align_folder``: walk RAW, detect, choose, warp and write one crop per face into a mirrored tree under OUT.

The shape of a run, and why:

* **Plan first.** The whole tree is walked and sorted before anything runs, so output names (collisions between
  ``a.jpg`` and ``a.png`` get the full name) and shard membership (``sorted_files[I::N]``) are the same on every
  machine, whatever ``--workers`` is.
* **Skip what is done, redo what is stale.** Without ``--overwrite``, a file is not processed again when a previous
  run recorded it (manifest or journal, see :mod:`facecli.align.manifest`) with the same ``settings`` fingerprint
  and its crops exist and decode; its rows come back with status ``skipped_existing``, so a resumed manifest says
  how every crop was made. A file recorded with other crop-shaping settings (size, format, quality, detector and
  its options, selection, landmarks) is redone and its old crops removed; options that do not shape crops
  (workers, shard, ``--max-pixels``) may change freely. Crops without a record are redone, not trusted.
* **Use the machine.** By default a run with about a second of work or more (``AUTO_WORKERS_MIN_FILES`` files, or
  ``AUTO_WORKERS_MIN_BYTES`` of images: a few large photos count) uses one process per CPU core it may run on;
  smaller runs stay in this process, as a pool would not be up before they end.
* **Compute in workers, write in one place.** With ``--workers N`` this process is one of the N: it starts at
  once while N - 1 pool processes start up. Whichever process is free takes the biggest file left, so only small
  files remain at the end and the processes finish together (:meth:`facecli.parallel.Executor.share`, which
  starts, stops and fails the pool as for every stage). Pool processes return encoded crops and manifest rows;
  this process writes every file atomically as results arrive. Results are byte-identical to ``--workers 1``
  (the manifest is sorted before it is written) and Ctrl-C leaves no partial file: pool processes ignore SIGINT,
  this process stops them, saves the manifest of what finished and re-raises.
* **The environment fails loudly, files fail quietly.** A full disk, a read-only or unwritable OUT stops the run
  with one line (:class:`FacecliError`) after saving what finished; a crop whose name the file system refuses
  (over 255 bytes) gets status ``unwritable`` and the run goes on. Names that are not valid UTF-8 are carried as
  :func:`facecli.fileio.text_name` text in the manifest and in OUT's file names.
* **Anywhere fsspec reaches.** RAW and OUT may be URLs (``s3://``, ``gs://``, ...): the same plan, names, resume
  and shards, with object storage's own way of being atomic (:mod:`facecli.align.remote`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from facecli.align.detectors import DETECTORS, Detector, build_detector
from facecli.align.detectors.base import Face
from facecli.align.detectors.device import pick_runtime
from facecli.align.manifest import (
    BOX_COLUMNS,
    LANDMARK_COLUMNS,
    MANIFEST_NAME,
    MATRIX_COLUMNS,
    WRITTEN_STATUSES,
    Journal,
    journal_path,
    manifest_name,
    read_journal,
    read_manifest,
    status_counts,
    write_manifest,
)
from facecli.align.remote import RemoteFile, RemoteFolder, in_one_process, is_url
from facecli.align.selection import SELECT_MODES, select_faces
from facecli.align.transform import estimate_norm, template, warp
from facecli.errors import FacecliError, UsageError
from facecli.fileio import atomic_write_bytes, sha256_file, text_name
from facecli.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    LoadedImage,
    decode_image_with_notes,
    decodes,
    encode_image,
    is_image_path,
    load_image,
    max_file_bytes,
    read_file_bytes,
)
from facecli.parallel import Executor, usable_cpus
from facecli.progress import ProgressFactory, silent_progress

FORMATS = ("jpg", "png")


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
        if not self.assume_aligned and self.landmarks is None and self.detector_options.get("device") is not None:
            pick_runtime(str(self.detector_options["device"]))  # so does a CUDA device that is not there

    def fingerprint(self) -> str:
        """What shapes every crop of this run, hashed: size, format (and JPEG quality), selection and its filters,
        and how landmarks are found (the detector with its effective options, model file by content). Not
        ``max_pixels``: it decides which files are read, not what their crops look like."""
        settings: dict[str, Any] = {"size": self.size, "format": self.fmt, "select": self.select,
                                    "min_face": self.min_face, "min_score": self.min_score}
        if self.fmt == "jpg":
            settings["quality"] = self.quality
        if self.assume_aligned:
            settings["landmarks"] = "assume-aligned"
        elif self.landmarks is not None:
            settings["landmarks"] = "given"  # each file's own landmarks are added by file_fingerprint
        else:
            settings["detector"] = _detector_settings(self.detector, self.detector_options)
        return _digest(settings)

    def file_fingerprint(self, run: str, source: str) -> str:
        """The run's fingerprint, plus the landmarks given for this one file (other files' rows may change)."""
        if self.landmarks is None:
            return run
        points = [np.asarray(p, dtype=np.float32).reshape(-1).tolist() for p in self.landmarks.get(source, [])]
        return _digest({"run": run, "points": points})


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Detector options that decide where it runs, not what it finds: threads, and the device and runtime (CUDA and
# PyTorch give the same landmarks within 1e-3 px; tests/test_align_device.py).
_NOT_SHAPING = frozenset({"threads", "device", "runtime"})


def _detector_settings(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The detector's name and every option its builder will use (defaults filled in, threads and device left out),
    so that the CLI's explicit defaults and a library call without options give the same fingerprint."""
    builder = DETECTORS.get(name)
    parameters = inspect.signature(builder).parameters
    known = {k: v for k, v in options.items() if k in parameters and v is not None}
    bound = inspect.signature(builder).bind_partial(**known)
    bound.apply_defaults()
    effective: dict[str, Any] = {"name": builder.__name__}
    for key, value in bound.arguments.items():
        if key in _NOT_SHAPING or parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if key == "model_path" and value is not None and Path(value).is_file():
            value = sha256_file(value)  # the weights, wherever the file lies
        elif isinstance(value, (tuple, list)):
            value = [float(v) for v in value]
        elif isinstance(value, (int, float)):
            value = float(value)
        effective[key] = value
    return effective


@dataclass(frozen=True)
class Job:
    """One input file: where it is (a local path, or a file on object storage), its manifest name, and its output
    name without the suffix."""

    path: Path | RemoteFile
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
    """RAW (a folder or one image) must exist; OUT must not be RAW or inside it (a rerun would align its crops),
    nor an existing file (exit 1, like every other problem with where the results go)."""
    if not raw.exists():
        raise UsageError(f"input not found: {text_name(raw)}")
    if not raw.is_dir() and not is_image_path(raw):
        raise UsageError(f"input is neither a folder nor an image file: {text_name(raw)}")
    raw_r, out_r = raw.resolve(), out.resolve()
    if raw.is_dir() and (out_r == raw_r or raw_r in out_r.parents):
        raise UsageError(
            f"output folder {text_name(out)} is inside the input folder {text_name(raw)}; choose a folder outside it"
        )
    if out.exists() and not out.is_dir():
        raise FacecliError(f"output path exists and is not a folder: {text_name(out)}")
    return raw_r, out_r


Folder = Path | RemoteFolder


def locate(raw: str | Path, out: str | Path) -> tuple[Folder, Folder]:
    """RAW and OUT as local paths (checked by :func:`check_folders`) or, given as URLs, folders on object storage
    (the same checks: RAW exists and is a folder or an image, OUT is not inside RAW and not a file)."""
    if not is_url(raw) and not is_url(out):
        return check_folders(Path(raw), Path(out))
    raw_f: Folder = RemoteFolder(str(raw)) if is_url(raw) else Path(raw)
    out_f: Folder = RemoteFolder(str(out)) if is_url(out) else Path(out)
    if isinstance(raw_f, Path):
        if not raw_f.exists():
            raise UsageError(f"input not found: {text_name(raw_f)}")
        if not raw_f.is_dir() and not is_image_path(raw_f):
            raise UsageError(f"input is neither a folder nor an image file: {text_name(raw_f)}")
        raw_f = raw_f.resolve()
    else:
        if not raw_f.exists():
            raise UsageError(f"input not found: {raw_f}")
        if not raw_f.is_dir() and not is_image_path(raw_f.root):
            raise UsageError(f"input is neither a folder nor an image file: {raw_f}")
        if isinstance(out_f, RemoteFolder) and raw_f.is_dir() and raw_f.contains(out_f):
            raise UsageError(f"output folder {out_f} is inside the input folder {raw_f}; choose a folder outside it")
    if isinstance(out_f, Path):
        if out_f.exists() and not out_f.is_dir():
            raise FacecliError(f"output path exists and is not a folder: {text_name(out_f)}")
        out_f = out_f.resolve()
    return raw_f, out_f


def _make_out(out: Folder) -> None:
    """Create OUT, or say in one line why it cannot be (a parent that is a file, no permission, read-only disk)."""
    if isinstance(out, RemoteFolder):
        out.prepare()
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FacecliError(f"cannot create output folder {text_name(out)}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise FacecliError(f"cannot write to output folder {text_name(out)}: permission denied")


def plan_jobs(raw: Folder) -> tuple[list[Job], int, list[str]]:
    """Every image file under ``raw`` (any depth, sorted, hidden entries skipped), the count of other files and the
    folders that could not be listed (no permission, removed meanwhile), so that none of them vanishes unreported.

    Entries named like images are jobs whatever they are (a FIFO, a device, a link to a folder): the read
    records them as ``not_a_file`` instead of letting them vanish. Real folders are walked, never followed
    through links. Sources and output stems are :func:`text_name` text (valid UTF-8 whatever the name's bytes).
    """
    if isinstance(raw, RemoteFolder):
        return (*_plan_remote_jobs(raw), [])
    if not raw.is_dir():
        return [Job(raw, text_name(raw.name), text_name(raw.stem))], 0, []
    jobs: list[Job] = []
    ignored = 0
    unlisted: list[str] = []

    def note_unlisted(error: OSError) -> None:
        folder = Path(error.filename or raw)
        rel = folder.relative_to(raw).as_posix() if folder.is_relative_to(raw) else str(folder)
        unlisted.append(f"{text_name(rel)}: {error.strerror or error}")

    for folder, dirs, files in os.walk(raw, onerror=note_unlisted):
        linked = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in linked)
        rel_dir = Path(folder).relative_to(raw)
        entries = [f for f in files + linked if not f.startswith(".")]
        images = sorted(f for f in entries if is_image_path(f))
        ignored += sum(1 for f in files if not f.startswith(".") and not is_image_path(f))
        stems: dict[str, int] = {}
        for name in images:
            stems[text_name(Path(name).stem)] = stems.get(text_name(Path(name).stem), 0) + 1
        for name in images:
            stem = text_name(Path(name).stem)
            stem = stem if stems[stem] == 1 else text_name(name)  # a.jpg + a.png → a.jpg.jpg, a.png.jpg
            rel = text_name(rel_dir.as_posix())
            source, output_stem = (PurePosixPath(rel) / text_name(name)).as_posix(), (PurePosixPath(rel) / stem)
            jobs.append(Job(Path(folder) / name, source, output_stem.as_posix()))
    jobs.sort(key=lambda j: j.source)
    return jobs, ignored, sorted(unlisted)


def _plan_remote_jobs(raw: RemoteFolder) -> tuple[list[Job], int]:
    """:func:`plan_jobs` for a folder on object storage: the same sources and output names for the same tree."""
    listed = raw.files()
    if not raw.is_dir():
        (name, file), = listed
        return [Job(file, name, PurePosixPath(name).stem)], 0
    folders: dict[str, list[tuple[str, RemoteFile]]] = {}
    ignored = 0
    for rel, file in listed:
        if not is_image_path(rel):
            ignored += 1
            continue
        parent = PurePosixPath(rel).parent.as_posix()
        folders.setdefault("" if parent == "." else parent, []).append((PurePosixPath(rel).name, file))
    jobs: list[Job] = []
    for folder, entries in folders.items():
        stems: dict[str, int] = {}
        for name, _ in entries:
            stems[PurePosixPath(name).stem] = stems.get(PurePosixPath(name).stem, 0) + 1
        for name, file in entries:
            stem = PurePosixPath(name).stem
            stem = stem if stems[stem] == 1 else name
            jobs.append(Job(file, (PurePosixPath(folder) / name).as_posix(), (PurePosixPath(folder) / stem).as_posix()))
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


def read_landmarks_csv(path: Path, raw: Folder) -> dict[str, list[np.ndarray]]:
    """``path,x1,y1,...,x5,y5`` rows → {source relative to RAW: [landmarks (5, 2) float32, ...]}. Absolute paths
    are made relative to a local RAW; with RAW on object storage, paths must be relative."""
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
    base = None if isinstance(raw, RemoteFolder) else (raw if raw.is_dir() else raw.parent)
    result: dict[str, list[np.ndarray]] = {}
    for line, row in enumerate(frame.itertuples(index=False), start=2):
        try:
            points = np.array([float(v) for v in row[1:]], dtype=np.float32).reshape(5, 2)
        except ValueError:
            raise UsageError(f"{path}: row {line} has a non-numeric landmark") from None
        source = Path(row[0])
        if source.is_absolute():
            if base is None:
                raise UsageError(f"{path}: row {line}: {row[0]} is absolute; with RAW at {raw}, give paths relative "
                                 "to it")
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
    values.update(zip(BOX_COLUMNS, (float(v) for v in face.box), strict=True))
    values.update(zip(LANDMARK_COLUMNS, (float(v) for v in face.landmarks.reshape(-1)), strict=True))
    values.update(zip(MATRIX_COLUMNS, (float(v) for v in matrix.reshape(-1)), strict=True))
    return values


def _faces_from_landmarks(points: list[np.ndarray]) -> list[Face]:
    """Given landmarks as faces: the box is their extent, the score 1 (nothing to threshold)."""
    faces = []
    for lm in points:
        box = np.array([*lm.min(axis=0), *lm.max(axis=0)], dtype=np.float32)
        faces.append(Face(box=box, score=1.0, landmarks=lm))
    return faces


# Five points closer together than this (root-mean-square distance from their centre, pixels) hold no face
# geometry: the fitted scale explodes (or is NaN when they coincide) and the "crop" is one colour or black.
MIN_LANDMARK_SPREAD = 0.5


def _crop_matrix(landmarks: np.ndarray, size: int) -> tuple[np.ndarray | None, str]:
    """The warp matrix for these landmarks, or None and why they cannot make a crop (not finite, degenerate)."""
    if not np.all(np.isfinite(landmarks)):
        return None, "landmarks contain NaN or infinity"
    centred = landmarks.astype(np.float64) - landmarks.astype(np.float64).mean(axis=0)
    spread = float(np.sqrt((centred**2).sum(axis=1).mean()))
    matrix = estimate_norm(landmarks, size) if spread >= MIN_LANDMARK_SPREAD else None
    if matrix is None or not np.all(np.isfinite(matrix)):
        return None, f"the five landmarks (nearly) coincide ({spread:.3g} px from their centre): no face to align"
    return matrix, ""


def _load(job: Job, max_pixels: int) -> LoadedImage:
    if isinstance(job.path, RemoteFile):
        return decode_image_with_notes(job.path.read_bytes(max_file_bytes(max_pixels)), max_pixels=max_pixels)
    return load_image(job.path, max_pixels)


class _NoCrop(Exception):
    """A file that yields no crop, raised on the way to its crops: the status and reason its row records."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def process_file(job: Job, options: AlignOptions, detector: Detector | None) -> FileResult:
    """Everything for one input file; never raises for a bad image (the row says what happened)."""
    start = time.perf_counter()
    try:
        loaded = _load(job, options.max_pixels)
    except ImageReadError as exc:
        return FileResult([_row(job, exc.status, exc.reason, seconds=time.perf_counter() - start)], [])
    rgb = loaded.rgb
    notes = "; ".join(loaded.notes)
    size_info = {"width": rgb.shape[1], "height": rgb.shape[0]}
    if options.assume_aligned:
        return _resized(job, rgb, options, notes, size_info, start)
    try:
        usable = _usable_faces(job, rgb, options, detector, notes)
    except _NoCrop as no_crop:
        row = _row(job, no_crop.status, no_crop.reason, **size_info, seconds=time.perf_counter() - start)
        return FileResult([row], [])
    rows, files = [], []
    for index, (face, matrix) in enumerate(usable):
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


def _resized(job: Job, rgb: np.ndarray, options: AlignOptions, notes: str, size_info: dict[str, int],
             start: float) -> FileResult:
    """``--assume-aligned``: the whole image is the face, only resized to the crop size."""
    import cv2

    shrink = rgb.shape[0] > options.size or rgb.shape[1] > options.size
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    crop = cv2.resize(rgb, (options.size, options.size), interpolation=interpolation)
    name = job.output(options.fmt, None)
    reason = "; ".join(filter(None, ["assumed aligned, resized", notes]))
    row = _row(job, "ok", reason, **size_info, seconds=time.perf_counter() - start)
    row.update(output=name, face=0)
    return FileResult([row], [(name, encode_image(crop, options.fmt, options.quality))])


def _usable_faces(job: Job, rgb: np.ndarray, options: AlignOptions, detector: Detector | None,
                  notes: str) -> list[tuple[Face, np.ndarray]]:
    """The faces to crop (given or detected, then :func:`select_faces`) with their warp matrices; raises
    :class:`_NoCrop` when none is left, with why."""
    if options.landmarks is not None:
        faces = _given_faces(job, options.landmarks)
    else:
        assert detector is not None  # the callers build one whenever no --landmarks file is given
        faces = detector.detect(rgb)
    chosen = select_faces(faces, rgb.shape, options.select, options.min_face, options.min_score)
    if not chosen.faces:
        raise _NoCrop(chosen.status, "; ".join(filter(None, [chosen.reason, notes])))
    usable, problems = [], []
    for face in chosen.faces:
        matrix, problem = _crop_matrix(face.landmarks, options.size)
        if matrix is None:
            problems.append(problem)
        else:
            usable.append((face, matrix))
    if not usable:
        raise _NoCrop("bad_landmarks", "; ".join(filter(None, [problems[0], notes])))
    return usable


def _given_faces(job: Job, landmarks: dict[str, list[np.ndarray]]) -> list[Face]:
    """The faces ``--landmarks`` gives for this file, those with finite points; :class:`_NoCrop` when none."""
    given = landmarks.get(job.source)
    if not given:
        raise _NoCrop("no_landmarks", "not listed in the --landmarks file")
    faces = [face for face in _faces_from_landmarks(given) if np.all(np.isfinite(face.landmarks))]
    if not faces:
        raise _NoCrop("bad_landmarks", "landmarks contain NaN or infinity")
    return faces


# ---------------------------------------------------------------------------------------------- resume


KEPT_REASON = "output exists (kept from a previous run)"


def _output_path(out: Path, output: str) -> Path | None:
    """``out / output`` for a manifest's relative output path; None for one that would leave OUT (a tampered
    manifest must not make a rerun read or delete files elsewhere)."""
    rel = PurePosixPath(output)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return None
    return out / rel


def _valid_crop(out: Folder, output: str) -> bool:
    """An existing output counts as done only if it is a whole, decodable image (a regular file inside OUT)."""
    if isinstance(out, RemoteFolder):
        inside = _output_path(Path("."), output)
        data = out.read_bytes(output, max_file_bytes()) if inside is not None else None
        return data is not None and decodes(data)
    path = _output_path(out, output)
    if path is None:
        return False
    try:
        return decodes(read_file_bytes(path, max_file_bytes()))
    except ImageReadError:
        return False


def _manifest_path(out: Folder, name: str) -> Path:
    """Where this run writes manifest ``name`` and keeps its journal: in OUT, or for OUT on object storage in its
    local stage folder (the manifest is uploaded from there, see :mod:`facecli.align.remote`)."""
    return out.stage() / name if isinstance(out, RemoteFolder) else out / name


def _manifest_rows(out: Folder, name: str) -> list[dict[str, Any]] | None:
    """The rows of manifest ``name`` in OUT, or None when there is none."""
    if isinstance(out, Path):
        return read_manifest(out / name) if (out / name).is_file() else None
    if not out.is_file(name):
        return None
    import tempfile

    with tempfile.TemporaryDirectory(dir=out.stage()) as folder:  # concurrent shards each read their own copy
        out.download(name, Path(folder) / name)
        return read_manifest(Path(folder) / name)


def _previous_rows(out: Folder, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Rows per source from earlier runs: each manifest in ``names``, then its journal (rows of files finished
    after that manifest was written), later ones replacing earlier ones per source (a shard's own beats the
    merged one)."""
    by_source: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        manifest = _manifest_rows(out, name)
        if manifest is not None:
            recorded: dict[str, list[dict[str, Any]]] = {}
            for row in manifest:
                recorded.setdefault(row["source"], []).append(row)
            by_source.update(recorded)
        for rows in read_journal(journal_path(_manifest_path(out, name)))[0]:
            by_source[rows[0]["source"]] = rows
    return by_source


def _already_done(out: Folder, fingerprint: str, previous: list[dict[str, Any]]) -> list[dict] | None:
    """Rows to reuse (status ``skipped_existing``) if a previous run recorded crops for this file with these
    settings and they exist and decode; None when the file must be (re)done."""
    written = [r for r in previous if r["status"] in WRITTEN_STATUSES and r.get("output")]
    if not written or any(r.get("settings") != fingerprint for r in written):
        return None
    if not all(_valid_crop(out, r["output"]) for r in written):
        return None
    kept = []
    for row in written:
        earlier = (row.get("reason") or "").removeprefix(KEPT_REASON).lstrip("; ")
        kept.append({**row, "status": "skipped_existing", "reason": "; ".join(filter(None, [KEPT_REASON, earlier]))})
    return kept


def _remove_stale(out: Folder, rows: list[dict[str, Any]], keep: set[str]) -> None:
    """Delete the crops a previous run made for a file that is being redone (other settings, ``--overwrite``), so
    OUT never holds a crop the new manifest does not describe."""
    for row in rows:
        output = row.get("output")
        if isinstance(out, RemoteFolder):
            if output and output not in keep and _output_path(Path("."), output) is not None:
                out.remove(output)
            continue
        path = _output_path(out, output) if output and output not in keep else None
        if path is not None and path.is_file():
            try:
                path.unlink()
            except OSError as exc:
                raise FacecliError(f"cannot remove stale crop {text_name(path)}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------------- workers

# Starting the pool takes about a second (a fork server importing the detector's runtime) while this process
# already works; with less than about a second of work the pool would arrive too late. That is 64 small photos,
# or 1 MiB of images: MTCNN needs about 1-2.5 ms of CPU per KiB of JPEG, from 250x250 LFW faces to 13-megapixel
# photos.
AUTO_WORKERS_MIN_FILES = 64
AUTO_WORKERS_MIN_BYTES = 1 << 20


def _file_size(job: Job) -> int:
    if isinstance(job.path, RemoteFile):
        return job.path.size
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


def _make_detector(options: AlignOptions) -> Detector | None:
    if options.assume_aligned or options.landmarks is not None:
        return None
    return build_detector(options.detector, **options.detector_options)


def _file_task(options: AlignOptions, one_thread: bool) -> Callable[[Job], FileResult]:
    """What each process that aligns (this one, and every pool process) builds once: its own detector, and with a
    pool OpenCV on one thread (the parallelism is the processes; OpenCV's threads would only contend with them)."""
    if one_thread:
        import cv2

        cv2.setNumThreads(1)
    return functools.partial(_timed, options=options, detector=_make_detector(options))


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


@contextlib.contextmanager
def _results(jobs: list[Job], options: AlignOptions, executor: Executor) -> Iterator[Iterator[FileResult]]:
    """Every job's result as it finishes: in job order in this process (one worker), or shared between this
    process and a pool (:meth:`Executor.share`), the biggest file left going to whichever process is free, so that
    only small files remain at the end and the processes finish together."""
    if executor.workers == 1:
        with executor.share(functools.partial(_file_task, options, False), jobs) as results:
            yield results
        return
    biggest_first = sorted(jobs, key=_file_size, reverse=True)
    task = functools.partial(_file_task, options, True)
    with _opencv_threads(1), executor.share(task, biggest_first) as results:
        yield results


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


# ---------------------------------------------------------------------------------------------- the run

# Write errors that concern one crop's name (too long for the file system, bytes it refuses): recorded in that
# file's row. Every other one (a full disk, no permission, a read-only or failing disk) concerns the whole run.
_NAME_ERRORS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL})


def _write_result(out: Folder, result: FileResult) -> list[dict[str, Any]]:
    """Write one file's crops atomically; its rows, or one ``unwritable`` row when the file system refuses a crop's
    name (its other crops are removed). Raises :class:`FacecliError` for errors of the whole run."""
    written: list[str] = []
    for name, data in result.files:
        try:
            if isinstance(out, RemoteFolder):
                out.write_bytes(name, data)  # one PUT: whole or absent
            else:
                atomic_write_bytes(out / name, data)
        except OSError as exc:
            shown = out.url_of(name) if isinstance(out, RemoteFolder) else text_name(out / name)
            if exc.errno not in _NAME_ERRORS:
                raise FacecliError(f"cannot write {shown}: {exc.strerror or exc}") from None
            for done in written:
                if isinstance(out, RemoteFolder):
                    out.remove(done)
                else:
                    (out / done).unlink(missing_ok=True)
            first = result.rows[0]
            reason = f"cannot write crop {name}: {exc.strerror}"
            kept = {k: first.get(k) for k in ("source", "width", "height", "seconds")}
            return [{**kept, "output": None, "status": "unwritable", "reason": reason, "face": None}]
        written.append(name)
    return result.rows


def _open_journal(manifest: Path) -> Journal:
    """The journal of this run, continuing an interrupted run's (its torn last line, if any, cut off)."""
    path = journal_path(manifest)
    try:
        return Journal(path, read_journal(path)[1])
    except OSError as exc:
        raise FacecliError(f"cannot write to output folder {text_name(manifest.parent)}: {exc.strerror}") from None


def _record(journal: Journal, rows: list[dict[str, Any]]) -> None:
    try:
        journal.add(rows)
    except OSError as exc:
        raise FacecliError(f"cannot write {text_name(journal.path)}: {exc.strerror or exc}") from None


def _save_manifest(out: Folder, path: Path, rows: list[dict[str, Any]], journal: Journal, failing: bool) -> None:
    """Write the manifest (and upload it to OUT on object storage) and drop the journal it replaces. When the run
    is already failing (a full disk, say) a manifest that cannot be written is left to the journal, and the first
    error is the one reported."""
    try:
        write_manifest(path, rows)
        if isinstance(out, RemoteFolder):
            out.upload(path, path.name)
    except (OSError, FacecliError) as exc:
        journal.close()
        if failing:
            return
        if isinstance(exc, FacecliError):
            raise
        raise FacecliError(f"cannot write {text_name(path)}: {exc.strerror or exc}") from None
    journal.remove()
    if isinstance(out, RemoteFolder):
        out.clear_stage(path.name)


def _shown(folder: Folder) -> str:
    return str(folder) if isinstance(folder, RemoteFolder) else text_name(folder)


def _resume(
    out: Folder, jobs: list[Job], previous: dict[str, list[dict[str, Any]]], fingerprints: dict[str, str],
    overwrite: bool,
) -> tuple[list[dict[str, Any]], list[Job], int]:
    """The rows of files a previous run finished with these settings (:func:`_already_done`), the jobs still to
    do, and how many of those had crops made with other settings; those earlier crops are removed now."""
    rows: list[dict[str, Any]] = []
    todo: list[Job] = []
    redone: list[dict[str, Any]] = []  # rows of earlier crops of the files to do again
    stale = 0
    for job in jobs:
        earlier = previous.get(job.source, [])
        done = None if overwrite else _already_done(out, fingerprints[job.source], earlier)
        if done:
            rows.extend(done)
            continue
        todo.append(job)
        recorded = [r for r in earlier if r["status"] in WRITTEN_STATUSES]
        redone.extend(recorded)
        stale += any(r.get("settings") != fingerprints[job.source] for r in recorded)
    _remove_stale(out, redone, keep={r["output"] for r in rows})
    return rows, todo, stale


def _align_all(
    out: Folder, manifest_path: Path, rows: list[dict[str, Any]], todo: list[Job], options: AlignOptions,
    executor: Executor, fingerprints: dict[str, str], advance: Callable[[int], None],
) -> tuple[int, float]:
    """Compute every job, write its crops and journal its rows (added to ``rows``) as results arrive, then save
    the manifest, also when the run stops (Ctrl-C, a full disk): what finished is kept. Returns the count of files
    processed and their CPU seconds."""
    journal = _open_journal(manifest_path)
    processed = 0
    cpu_seconds = 0.0
    try:
        with _results(todo, options, executor) as results:
            for result in results:
                finished = _write_result(out, result)
                for row in finished:
                    row["settings"] = fingerprints[row["source"]] if row["status"] == "ok" else None
                _record(journal, finished)
                rows.extend(finished)
                processed += 1
                cpu_seconds += result.cpu_seconds
                advance(1)
    except BaseException:
        _save_manifest(out, manifest_path, rows, journal, failing=True)
        raise
    _save_manifest(out, manifest_path, rows, journal, failing=False)
    return processed, cpu_seconds


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
    progress: ProgressFactory = silent_progress,
) -> dict[str, Any]:
    """Align every image under ``raw`` into ``out``; returns the run summary (counts per status, speed, paths).

    ``raw`` and ``out`` are local paths or fsspec URLs (``s3://bucket/raw``, see :mod:`facecli.align.remote`).
    ``detector_options`` go to the detector's builder (MTCNN: ``min_face_size``, ``thresholds``, ``factor``;
    SCRFD: ``model_path``). ``shard`` is ``"I/N"``; without it ``RANK``/``WORLD_SIZE`` are honoured. ``workers``
    defaults to :func:`auto_workers` of the shard's files still to do.
    """
    source_folder, target = locate(raw, out)
    shard_index, num_shards = parse_shard(shard)
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    options = AlignOptions(
        size=int(size), select=select, min_face=float(min_face), min_score=float(min_score),
        fmt=fmt.lower().replace("jpeg", "jpg"), quality=int(quality), max_pixels=int(max_pixels), detector=detector,
        detector_options=dict(detector_options or {}), assume_aligned=assume_aligned,
        landmarks=read_landmarks_csv(Path(landmarks), source_folder) if landmarks is not None else None,
    )
    options.validate()
    started = time.perf_counter()
    run = _plan_run(source_folder, target, options, (shard_index, num_shards), overwrite)
    workers, executor = _start_workers(workers, run.todo, source_folder)
    with progress(len(run.jobs)) as advance:
        advance(len(run.jobs) - len(run.todo))
        processed, cpu_seconds = _align_all(target, run.manifest_path, run.rows, run.todo, options, executor,
                                            run.fingerprints, advance)
    elapsed = time.perf_counter() - started
    return _summary(source_folder, target, run, workers, processed, cpu_seconds, elapsed)


@dataclass
class _Run:
    """What one run does: its shard's files, those still to do, the rows of those kept from earlier runs (the new
    rows are added as files finish) and where its manifest goes."""

    shard: tuple[int, int]  # (index, count)
    jobs: list[Job]
    todo: list[Job]
    rows: list[dict[str, Any]]
    stale: int  # files redone because their crops were made with other settings
    fingerprints: dict[str, str]  # source → the settings fingerprint its rows record
    manifest_path: Path
    ignored: int  # files under RAW that are not images
    unlisted: list[str]  # folders that could not be listed, with why


def _plan_run(source_folder: Folder, target: Folder, options: AlignOptions, shard: tuple[int, int],
              overwrite: bool) -> _Run:
    """List RAW, take the shard's files, create OUT and find what earlier runs already did (:func:`_resume`)."""
    all_jobs, ignored, unlisted = plan_jobs(source_folder)
    jobs = all_jobs[shard[0] :: shard[1]]
    _make_out(target)
    manifest_path = _manifest_path(target, manifest_name(*shard))
    previous = _previous_rows(target, list(dict.fromkeys([MANIFEST_NAME, manifest_path.name])))
    run_fingerprint = options.fingerprint()
    fingerprints = {job.source: options.file_fingerprint(run_fingerprint, job.source) for job in jobs}
    rows, todo, stale = _resume(target, jobs, previous, fingerprints, overwrite)
    return _Run(shard, jobs, todo, rows, stale, fingerprints, manifest_path, ignored, unlisted)


def _start_workers(workers: int | None, todo: list[Job], source_folder: Folder) -> tuple[int, Executor]:
    """The number of processes (``workers``, default :func:`auto_workers`) and the executor they run in: a pool
    only with two or more processes and files to share them."""
    workers = workers or auto_workers(todo)
    if isinstance(source_folder, RemoteFolder) and in_one_process(source_folder.fs):
        workers = 1  # worker processes would not see this process's memory:// files
    pooled = workers > 1 and len(todo) > 1  # else no pool: one worker, or nothing to share
    # With a pool, the fork server starts now; while it imports the detector's runtime on one core, this process
    # imports pandas for the manifest on the other.
    executor = Executor(workers if pooled else 1, preload=[__name__, "onnx", "onnxruntime"])
    if pooled:
        import pandas  # noqa: F401
    return workers, executor


def _summary(source_folder: Folder, target: Folder, run: _Run, workers: int, processed: int, cpu_seconds: float,
             elapsed: float) -> dict[str, Any]:
    """The run summary :func:`align_folder` returns (what the CLI shows and ``--json`` prints)."""
    counts = status_counts(run.rows)
    problems = {k: v for k, v in counts.items() if k not in WRITTEN_STATUSES}
    manifest = run.manifest_path
    return {
        "raw": _shown(source_folder),
        "out": _shown(target),
        "manifest": target.url_of(manifest.name) if isinstance(target, RemoteFolder) else text_name(manifest),
        "shard": f"{run.shard[0]}/{run.shard[1]}",
        "workers": workers,
        "files": len(run.jobs),
        "processed": processed,
        "skipped_existing": len(run.jobs) - len(run.todo),
        "stale_redone": run.stale,
        "crops_written": sum(1 for row in run.rows if row["status"] == "ok"),
        "other_files_ignored": run.ignored,
        "folders_unlisted": run.unlisted,
        "counts": counts,
        "warnings": sum(problems.values()),
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "images_per_s": round(processed / elapsed, 2) if elapsed > 0 else None,
    }
