"""Hostile and broken input for ``align`` and the shared image reader (issue 14, part A).

Every file is made here, small: decompression bombs whose headers lie about their size, special files, damaged
and padded JPEG/PNG, degenerate landmarks, names that are not UTF-8 or too long, a full disk, a ``kill -9``
in the middle of a run. Each case checks the exit code, the one-line message, the manifest row and that nothing
outside OUT changed. Runs use ``--landmarks`` or ``--assume-aligned`` so that no detector is needed.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facecli.align.pipeline import align_folder
from facecli.align.transform import ARCFACE_DST
from facecli.errors import FacecliError
from facecli.imageio import ImageReadError, decode_image_with_notes, load_image

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _face(seed: int = 0, size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (7, 7), 2)


def _jpeg(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()


def _landmarks_csv(path: Path, names: list[str], points: np.ndarray | None = None) -> Path:
    points = ARCFACE_DST + 8 if points is None else points
    lines = ["path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5"]
    lines += [name + "," + ",".join(repr(float(v)) for v in np.asarray(points).reshape(-1)) for name in names]
    path.write_text("\n".join(lines) + "\n")
    return path


def _manifest(out: Path, name: str = "manifest.csv") -> pd.DataFrame:
    return pd.read_csv(out / name, dtype={"source": str, "output": str, "status": str, "reason": str,
                                          "settings": str})


def _snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under ``root`` except ``skip`` (OUT): kind, size and modification time, links not followed."""
    found = {}
    for folder, dirs, files in os.walk(root):
        if Path(folder) == skip or skip in Path(folder).parents:
            continue
        for name in dirs + files:
            path = Path(folder) / name
            if path == skip:
                continue
            info = path.lstat()
            found[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


def _cli(*args: object, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facecli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV, **kwargs)


def _one_line_error(proc: subprocess.CompletedProcess, *parts: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facecli: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for part in parts:
        assert part in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------- bombs


def _png_bomb(width: int, height: int) -> bytes:
    """A 1-bit grayscale PNG of ``width`` x ``height`` zeros: kilobytes on disk, gigabytes once decoded to BGR."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _hdr_bomb(width: int, height: int) -> bytes:
    """A Radiance HDR (which Pillow cannot read) of flat run-length scanlines: 12 bytes a pixel once decoded."""
    runs = b""
    left = width
    while left:
        n = min(127, left)
        runs += bytes([128 + n, 1])
        left -= n
    line = bytes([2, 2, width >> 8, width & 255]) + runs * 4
    return f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode() + line * height


def _gif_bomb(width: int, height: int) -> bytes:
    """A GIF whose logical screen is ``width`` x ``height`` and whose one frame is 1x1."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
            + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00" + b"\x3b")


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is rewritten to claim ``width`` x ``height``."""
    data = bytearray(_jpeg(_face(1, 16)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_bombs_are_refused_from_their_headers_with_bounded_memory(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    (raw / "png_bomb.png").write_bytes(_png_bomb(20000, 20000))  # 1.2 GB as BGR
    (raw / "hdr_bomb.jpg").write_bytes(_hdr_bomb(6000, 6000))  # renamed .jpg: 430 MB of float pixels
    (raw / "gif_bomb.gif").write_bytes(_gif_bomb(65535, 65535))
    (raw / "jpeg_bomb.jpg").write_bytes(_jpeg_with_size(60000, 60000))
    (raw / "fine.png").write_bytes(_png(_face()))
    assert sum(p.stat().st_size for p in raw.iterdir()) < 4_000_000
    script = textwrap.dedent(f"""
        import json, resource, sys
        from facecli.align.pipeline import align_folder
        size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + (250 << 20), resource.RLIM_INFINITY))
        summary = align_folder({str(raw)!r}, {str(out)!r}, assume_aligned=True, max_pixels=10_000_000, workers=1)
        print(json.dumps(summary["counts"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"ok": 1, "too_large": 4}
    assert proc.stderr == ""
    rows = _manifest(out).set_index("source")
    assert "6000x6000 = 36000000 pixels" in rows.loc["hdr_bomb.jpg", "reason"]
    assert "60000x60000" in rows.loc["jpeg_bomb.jpg", "reason"]


def test_the_size_check_comes_before_any_decoding_for_every_format():
    for name, data in {"png": _png_bomb(5000, 5000), "hdr": _hdr_bomb(3000, 3000), "gif": _gif_bomb(9000, 9000),
                       "jpeg": _jpeg_with_size(9000, 9000)}.items():
        with pytest.raises(ImageReadError) as caught:
            decode_image_with_notes(data, max_pixels=1_000_000)
        assert caught.value.status == "too_large", name


# ---------------------------------------------------------------------------------------------- special files


def test_special_files_are_recorded_not_read(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    (raw / "good.png").write_bytes(_png(_face()))
    os.mkfifo(raw / "pipe.jpg")
    (raw / "zero.jpg").symlink_to("/dev/zero")
    (raw / "missing.jpg").symlink_to(raw / "nowhere.jpg")
    (tmp_path / "elsewhere").mkdir()
    (raw / "linked_dir.jpg").symlink_to(tmp_path / "elsewhere")
    (raw / "folder.jpg").mkdir()  # a real folder named like an image is walked as a folder
    (raw / "folder.jpg" / "inner.png").write_bytes(_png(_face(2)))
    (raw / "link.png").symlink_to(raw / "good.png")  # a link to a regular file is read
    with open(raw / "sparse.png", "wb") as fh:  # a 200 MB file that takes no disk space
        fh.truncate(200 << 20)
    before = _snapshot(tmp_path, out)
    proc = _cli("align", raw, out, "--assume-aligned", "--max-pixels", "1000000", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = _manifest(out).set_index("source")
    assert rows.status.to_dict() == {
        "folder.jpg/inner.png": "ok", "good.png": "ok", "link.png": "ok", "linked_dir.jpg": "not_a_file",
        "missing.jpg": "not_a_file", "pipe.jpg": "not_a_file", "sparse.png": "too_large", "zero.jpg": "not_a_file",
    }
    assert "FIFO" in rows.loc["pipe.jpg", "reason"] and "character device" in rows.loc["zero.jpg", "reason"]
    assert "broken symbolic link" in rows.loc["missing.jpg", "reason"]
    assert "directory" in rows.loc["linked_dir.jpg", "reason"]
    assert "209715200 bytes" in rows.loc["sparse.png", "reason"]
    assert _snapshot(tmp_path, out) == before

    single = _cli("align", raw / "pipe.jpg", tmp_path / "out2", "--assume-aligned", "--json", timeout=60)
    assert single.returncode == 0 and json.loads(single.stdout)["counts"] == {"not_a_file": 1}
    with pytest.raises(ImageReadError, match="directory") as caught:
        load_image(raw / "folder.jpg")  # the shared reader used by gallery and eval --align
    assert caught.value.status == "not_a_file"


# ---------------------------------------------------------------------------------------------- damaged data


def test_padded_files_decode_and_damaged_ones_are_noted_quietly(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    face = _face(3, 256)
    jpeg, png = _jpeg(face), _png(face)
    (raw / "jpeg_tail.jpg").write_bytes(jpeg + b"\x00" * 100 + b"trailing bytes after the end marker")
    (raw / "png_tail.png").write_bytes(png + b"data after IEND" * 20)
    scan = jpeg.find(b"\xff\xda")
    (raw / "entropy.jpg").write_bytes(jpeg[: scan + 400] + bytes(300) + jpeg[scan + 700 :])
    (raw / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (raw / "cut.png").write_bytes(png[: len(png) // 2])
    (raw / "plain.jpg").write_bytes(jpeg)
    (raw / "plain.png").write_bytes(png)
    proc = _cli("align", raw, out, "--assume-aligned", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("warning: 2 of 7 files gave no crop") and len(proc.stderr.splitlines()) == 1
    rows = _manifest(out).set_index("source")
    assert rows.status.to_dict() == {"cut.jpg": "truncated", "cut.png": "truncated", "entropy.jpg": "ok",
                                     "jpeg_tail.jpg": "ok", "plain.jpg": "ok", "plain.png": "ok",
                                     "png_tail.png": "ok"}
    assert "decode_warning: Corrupt JPEG data" in rows.loc["entropy.jpg", "reason"]
    assert "decode_warning" not in rows.loc["jpeg_tail.jpg", "reason"]
    assert (out / "jpeg_tail.jpg").read_bytes() == (out / "plain.jpg.jpg").read_bytes()  # the same pixels
    assert (out / "png_tail.jpg").read_bytes() == (out / "plain.png.jpg").read_bytes()


def test_a_thumbnail_end_marker_does_not_hide_a_cut_jpeg():
    face = _face(4, 200)
    thumb = io.BytesIO()
    Image.fromarray(face[:40, :40]).save(thumb, "JPEG")
    data = _jpeg(face)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + len(thumb.getvalue())) + thumb.getvalue()  # holds FF D9
    cut = data[:2] + app1 + data[2 : len(data) // 2]
    with pytest.raises(ImageReadError) as caught:
        decode_image_with_notes(cut)
    assert caught.value.status == "truncated"
    assert decode_image_with_notes(data[:2] + app1 + data[2:]).rgb.shape == (200, 200, 3)


def test_degenerate_landmarks_and_animated_gifs(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.png").write_bytes(_png(_face(5)))
    (raw / "b.png").write_bytes(_png(_face(6)))
    frames = [Image.fromarray(_face(7 + i)) for i in range(3)]
    frames[0].save(raw / "moving.gif", save_all=True, append_images=frames[1:], duration=50)
    same = np.tile(np.array([[60.0, 60.0]]), (5, 1))
    csv = _landmarks_csv(tmp_path / "lm.csv", ["a.png"], same)
    with csv.open("a") as fh:
        fh.write("b.png," + ",".join(["nan"] * 10) + "\n")
        fh.write("moving.gif," + ",".join(repr(float(v)) for v in (ARCFACE_DST + 8).reshape(-1)) + "\n")
    out = tmp_path / "out"
    summary = align_folder(raw, out, landmarks=csv)
    rows = _manifest(out).set_index("source")
    assert rows.status.to_dict() == {"a.png": "bad_landmarks", "b.png": "bad_landmarks", "moving.gif": "ok"}
    assert "coincide" in rows.loc["a.png", "reason"] and "NaN" in rows.loc["b.png", "reason"]
    assert not (out / "a.jpg").exists() and not (out / "b.jpg").exists()
    assert "animated GIF: first frame used" in rows.loc["moving.gif", "reason"]
    assert summary["warnings"] == 2
    crop = cv2.imread(str(out / "moving.jpg"))[:, :, ::-1]
    expected = cv2.warpAffine(np.asarray(frames[0].convert("RGB")), rows.loc["moving.gif", ["m00", "m01", "m02",
                              "m10", "m11", "m12"]].to_numpy(float).reshape(2, 3), (112, 112))
    assert np.abs(crop.astype(int) - expected.astype(int)).mean() < 3  # the first frame, not another


def test_a_folder_that_cannot_be_listed_is_reported_not_lost(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    (raw / "open").mkdir(parents=True)
    (raw / "locked").mkdir()
    (raw / "open" / "a.png").write_bytes(_png(_face(5)))
    (raw / "locked" / "b.png").write_bytes(_png(_face(6)))
    real_scandir = os.scandir

    def scandir(path: os.PathLike | str = ".") -> object:  # root ignores permission bits, so deny the listing here
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    csv = _landmarks_csv(tmp_path / "lm.csv", ["open/a.png", "locked/b.png"])
    summary = align_folder(raw, tmp_path / "out", landmarks=csv, workers=1)
    assert summary["folders_unlisted"] == ["locked: Permission denied"]
    assert _manifest(tmp_path / "out").source.tolist() == ["open/a.png"]


# ---------------------------------------------------------------------------------------------- crash and resume

_KILLING_RUN = """
import os, signal, sys
from contextlib import contextmanager
from facecli.align.pipeline import align_folder

calls = []

@contextmanager
def progress(total):
    def advance(n=1):
        calls.append(n)
        if len(calls) == int(sys.argv[4]) + 1:  # the first call counts the skipped files
            os.kill(os.getpid(), signal.SIGKILL)
    yield advance

align_folder(sys.argv[1], sys.argv[2], landmarks=sys.argv[3], workers=1, progress=progress)
"""


def test_kill_9_then_rerun_gives_the_uninterrupted_manifest(tmp_path):
    raw = tmp_path / "raw"
    (raw / "sub").mkdir(parents=True)
    names = [f"p{i}.png" for i in range(4)] + [f"sub/q{i}.png" for i in range(4)]
    for i, name in enumerate(names):
        (raw / name).write_bytes(_png(_face(10 + i)))
    csv = _landmarks_csv(tmp_path / "lm.csv", names)
    clean = tmp_path / "clean"
    align_folder(raw, clean, landmarks=csv)

    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", _KILLING_RUN, raw, out, csv, "3"], env=ENV, timeout=120,
                            capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "manifest.csv").exists()
    journal = (out / ".manifest.csv.journal").read_bytes()
    assert journal.count(b"\n") == 3
    with (out / ".manifest.csv.journal").open("ab") as fh:  # a record torn by a full disk
        fh.write(b'[{"source": "p3.png", "status": "ok", "sco')

    summary = align_folder(raw, out, landmarks=csv)
    assert summary["skipped_existing"] == 3 and summary["processed"] == 5
    assert not (out / ".manifest.csv.journal").exists() and not list(out.rglob("*.tmp"))
    resumed, uninterrupted = _manifest(out), _manifest(clean)
    assert list(resumed.status).count("skipped_existing") == 3
    same = [c for c in uninterrupted.columns if c not in ("status", "reason", "seconds")]
    pd.testing.assert_frame_equal(resumed[same], uninterrupted[same])
    for output in uninterrupted.output:
        assert (out / output).read_bytes() == (clean / output).read_bytes()


def test_a_full_disk_stops_the_run_in_one_line_and_the_rerun_completes(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    names = [f"f{i}.png" for i in range(6)]
    for i, name in enumerate(names):
        (raw / name).write_bytes(_png(_face(20 + i)))
    csv = _landmarks_csv(tmp_path / "lm.csv", names)

    def small_files() -> None:  # writes past 12 KiB fail with EFBIG, as ENOSPC would
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (12 << 10, 12 << 10))

    before = _snapshot(tmp_path, out)
    full = _cli("align", raw, out, "--landmarks", csv, "--format", "png", "--workers", "1",
                preexec_fn=small_files)
    assert full.returncode == 1
    _one_line_error(full, "cannot write", "File too large")
    assert not list(out.rglob("*.tmp"))
    assert _snapshot(tmp_path, out) == before
    rerun = _cli("align", raw, out, "--landmarks", csv, "--format", "png", "--json")
    assert rerun.returncode == 0, rerun.stderr
    counts = json.loads(rerun.stdout)["counts"]
    assert counts.get("ok", 0) + counts.get("skipped_existing", 0) == 6 and len(counts) <= 2
    assert len(_manifest(out)) == 6 and _manifest(out).m00.notna().all()


def test_no_space_left_is_one_line_and_keeps_finished_rows(tmp_path, monkeypatch):
    from facecli.align import pipeline

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    for i in range(3):
        (raw / f"f{i}.png").write_bytes(_png(_face(30 + i)))
    csv = _landmarks_csv(tmp_path / "lm.csv", [f"f{i}.png" for i in range(3)])
    real = pipeline.atomic_write_bytes

    def fills_up(target, data):
        if Path(target).name == "f2.jpg":
            raise OSError(28, "No space left on device")
        real(target, data)

    monkeypatch.setattr(pipeline, "atomic_write_bytes", fills_up)
    with pytest.raises(FacecliError, match=r"cannot write .*f2\.jpg: No space left on device"):
        align_folder(raw, out, landmarks=csv)
    assert set(_manifest(out).source) == {"f0.png", "f1.png"}


# ---------------------------------------------------------------------------------------------- stale settings


def test_changed_crop_settings_redo_the_crops_and_harmless_ones_do_not(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    names = ["a.png", "b.png"]
    for i, name in enumerate(names):
        (raw / name).write_bytes(_png(_face(40 + i)))
    csv = _landmarks_csv(tmp_path / "lm.csv", names)
    first = align_folder(raw, out, landmarks=csv)
    assert first["processed"] == 2 and cv2.imread(str(out / "a.jpg")).shape == (112, 112, 3)

    assert align_folder(raw, out, landmarks=csv, workers=2, max_pixels=10**7)["processed"] == 0  # harmless
    bigger = align_folder(raw, out, landmarks=csv, size=224)
    assert bigger["processed"] == 2 and bigger["stale_redone"] == 2
    assert cv2.imread(str(out / "a.jpg")).shape == (224, 224, 3)
    assert (_manifest(out).m00 > 0.9).all()  # the matrix of the 224 crops is recorded

    png = _cli("align", raw, out, "--landmarks", csv, "--size", "224", "--format", "png")
    assert png.returncode == 0 and "2 files had crops made with other settings" in png.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.png", "b.png", "manifest.csv"]

    moved = _landmarks_csv(tmp_path / "lm.csv", names, ARCFACE_DST * 1.1 + 3)  # other landmarks: redone too
    assert align_folder(raw, out, landmarks=moved, size=224, fmt="png")["stale_redone"] == 2
    assert align_folder(raw, out, landmarks=moved, size=224, fmt="png", quality=50)["processed"] == 0  # png


def test_a_tampered_manifest_cannot_reach_outside_out(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    (raw / "a.png").write_bytes(_png(_face(50)))
    csv = _landmarks_csv(tmp_path / "lm.csv", ["a.png"])
    align_folder(raw, out, landmarks=csv)
    victim = tmp_path / "victim.jpg"
    victim.write_bytes(_jpeg(_face(51)))
    manifest = _manifest(out)
    manifest.loc[0, "output"] = "../victim.jpg"
    manifest.loc[0, "settings"] = "0" * 16
    manifest.to_csv(out / "manifest.csv", index=False)
    align_folder(raw, out, landmarks=csv)
    assert victim.exists() and _manifest(out).output.tolist() == ["a.jpg"]


# ---------------------------------------------------------------------------------------------- the environment


def test_out_that_cannot_be_used_is_one_line_exit_1(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.png").write_bytes(_png(_face(60)))
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    before = _snapshot(tmp_path, tmp_path / "none")
    proc = _cli("align", raw, taken, "--assume-aligned")
    assert proc.returncode == 1
    _one_line_error(proc, "not a folder", str(taken))
    under = _cli("align", raw, taken / "sub", "--assume-aligned")
    assert under.returncode == 1
    _one_line_error(under, "cannot create output folder", "Not a directory")
    assert _snapshot(tmp_path, tmp_path / "none") == before
    if os.geteuid() != 0:  # root writes through any permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        denied = _cli("align", raw, locked, "--assume-aligned")
        assert denied.returncode == 1
        _one_line_error(denied, "cannot write to output folder", "ermission denied")


def test_names_that_are_not_utf8_or_too_long_never_stop_the_batch(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    rawb = os.fsencode(raw)
    face = _png(_face(70))
    with open(os.path.join(rawb, b"caf\xe9.png"), "wb") as fh:  # Latin-1 "café"
        fh.write(face)
    os.mkdir(os.path.join(rawb, b"\xff\xfedir"))
    with open(os.path.join(rawb, b"\xff\xfedir", b"x.png"), "wb") as fh:
        fh.write(face)
    long_stem = "n" * 251
    (raw / f"{long_stem}.png").write_bytes(face)  # 255 bytes: its output name is fine ...
    (raw / f"{long_stem}.jpg").write_bytes(_jpeg(_face(71)))  # ... until the pair collides: ".png.jpg", 259 bytes
    (raw / "plain.png").write_bytes(face)
    proc = _cli("align", raw, out, "--assume-aligned", "--json")
    assert proc.returncode == 0, proc.stderr
    (out / "manifest.csv").read_bytes().decode("utf-8")  # valid UTF-8 throughout
    rows = _manifest(out).set_index("source")
    assert rows.loc["caf\\xe9.png", "status"] == "ok" and rows.loc["caf\\xe9.png", "output"] == "caf\\xe9.jpg"
    assert (out / "caf\\xe9.jpg").is_file() and (out / "\\xff\\xfedir" / "x.jpg").is_file()
    assert rows.loc[f"{long_stem}.jpg", "status"] == "unwritable"
    assert "too long" in rows.loc[f"{long_stem}.jpg", "reason"]
    assert rows.loc["plain.png", "status"] == "ok"
    assert rows.status.value_counts().to_dict() == {"ok": 3, "unwritable": 2}
    assert json.loads(proc.stdout)["counts"] == {"ok": 3, "unwritable": 2}
    again = align_folder(raw, out, assume_aligned=True)  # resumes by the same names
    assert again["skipped_existing"] == 3
