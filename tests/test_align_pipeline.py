"""``align_folder`` and ``facecli align`` on real photos: bad inputs, resume, workers, shards, manifests, CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facecli.align import align
from facecli.align.pipeline import align_folder
from facecli.errors import UsageError

LFW_PICKS = ["Al_Gore/Al_Gore_0001.jpg", "Ariel_Sharon/Ariel_Sharon_0001.jpg", "Bill_McBride/Bill_McBride_0001.jpg",
             "Britney_Spears/Britney_Spears_0001.jpg", "Atal_Bihari_Vajpayee/Atal_Bihari_Vajpayee_0001.jpg"]


def _manifest(out: Path, name: str = "manifest.csv") -> pd.DataFrame:
    return pd.read_csv(out / name, dtype={"source": str, "output": str, "status": str, "reason": str})


def _tree_bytes(out: Path) -> dict[str, bytes]:
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.suffix != ".csv")
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in files}


@pytest.fixture
def lfw_tree(shared_dir, tmp_path):
    """Five LFW photos in nested folders with non-ASCII and space-containing names, plus two real photos."""
    raw = tmp_path / "raw"
    lfw = shared_dir / "data" / "lfw-sample"
    for i, rel in enumerate(LFW_PICKS):
        target = raw / ("Zoë Ünïcødé" if i % 2 else "plain") / "deeper dir" / f"фото {i}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lfw / rel, target)
    for name in ("img62.jpg", "img46.jpg"):
        shutil.copy(shared_dir / "data" / "photos" / name, raw / name)
    return raw


def test_bad_inputs_are_recorded_and_the_run_goes_on(shared_dir, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    face = shared_dir / "data" / "lfw-sample" / LFW_PICKS[0]
    rgb = np.asarray(Image.open(face).convert("RGB"))
    shutil.copy(face, raw / "good.jpg")
    (raw / "zero.jpg").write_bytes(b"")
    (raw / "text.jpg").write_text("this is not an image\n")
    data = face.read_bytes()
    (raw / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(rgb).convert("CMYK").save(raw / "cmyk.jpg", quality=95)
    cv2.imwrite(str(raw / "sixteen.png"), (rgb[:, :, ::-1].astype(np.uint16) * 257))
    Image.fromarray(rgb).convert("L").save(raw / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(raw / "alpha.png")
    Image.fromarray(rgb).resize((600, 600)).save(raw / "huge.jpg")  # 360000 px > the 200000 limit below
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(raw / "noface.png")
    shutil.copy(face, raw / "locked.jpg")
    (raw / "notes.txt").write_text("not an image file name: ignored")
    locked = raw / "locked.jpg"
    if os.geteuid() == 0:  # root reads through chmod 000: make the read itself fail as it would for a user
        real_read = Path.read_bytes

        def denied(self):
            if self == locked:
                raise PermissionError(13, "Permission denied")
            return real_read(self)

        monkeypatch.setattr(Path, "read_bytes", denied)
    else:
        locked.chmod(0)

    out = tmp_path / "out"
    summary = align_folder(raw, out, max_pixels=200_000)
    rows = _manifest(out).set_index("source")
    expected = {
        "good.jpg": "ok", "zero.jpg": "empty", "text.jpg": "not_image", "truncated.jpg": "truncated",
        "cmyk.jpg": "ok", "sixteen.png": "ok", "gray.png": "ok", "alpha.png": "ok", "huge.jpg": "too_large",
        "noface.png": "no_face", "locked.jpg": "unreadable",
    }
    assert rows["status"].to_dict() == expected
    assert "CMYK" in rows.loc["cmyk.jpg", "reason"]
    assert "16-bit" in rows.loc["sixteen.png", "reason"]
    assert "grayscale" in rows.loc["gray.png", "reason"]
    assert "alpha" in rows.loc["alpha.png", "reason"]
    assert "permission denied" in rows.loc["locked.jpg", "reason"]
    assert "360000" in rows.loc["huge.jpg", "reason"]
    assert summary["warnings"] == 6 and summary["other_files_ignored"] == 1
    for source, status in expected.items():
        output = out / (Path(source).stem + ".jpg")
        assert output.is_file() == (status == "ok"), source
    crop = cv2.imread(str(out / "good.jpg"))
    assert crop.shape == (112, 112, 3)
    ok = rows[rows.status == "ok"]
    assert ok[["score", "lm0_x", "m00", "m12"]].notna().all().all()
    assert (ok.width == 250).all() and (ok.height == 250).all()


def test_unicode_tree_is_mirrored_and_workers_match(lfw_tree, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    s1 = align_folder(lfw_tree, one, select="center", workers=1)
    s2 = align_folder(lfw_tree, two, select="center", workers=2)
    assert s1["counts"] == s2["counts"] == {"ok": 7}
    assert (one / "Zoë Ünïcødé" / "deeper dir" / "фото 1.jpg").is_file()
    assert _tree_bytes(one) == _tree_bytes(two)
    m1, m2 = _manifest(one).drop(columns="seconds"), _manifest(two).drop(columns="seconds")
    pd.testing.assert_frame_equal(m1, m2)


def test_workers_default_to_the_cores_for_large_runs_only(insightface_t1, tmp_path, monkeypatch):
    from facecli.align import pipeline

    monkeypatch.setattr(pipeline, "usable_cpus", lambda: 4)
    raw = tmp_path / "raw"
    raw.mkdir()
    small, big = raw / "small.jpg", raw / "big.jpg"
    small.write_bytes(b"x" * 1000)
    big.write_bytes(b"x" * (600 << 10))

    def jobs(*paths):
        return [pipeline.Job(p, p.name, p.stem) for p in paths]

    assert pipeline.auto_workers(jobs(small)) == 1
    assert pipeline.auto_workers(jobs(*[small] * 63)) == 1  # about 60 ms of work: no pool
    assert pipeline.auto_workers(jobs(*[small] * 64)) == 4
    assert pipeline.auto_workers(jobs(big)) == 1  # one file: nothing to share
    assert pipeline.auto_workers(jobs(big, small)) == 1  # 0.6 MiB
    assert pipeline.auto_workers(jobs(big, big)) == 4  # 1.2 MiB of photos: seconds of work

    shutil.copy(insightface_t1, raw / "t1.jpg")
    small.unlink()
    big.unlink()
    assert align_folder(raw, tmp_path / "out")["workers"] == 1  # one file: no pool to wait for
    with pytest.raises(UsageError, match="at least 1"):
        align_folder(raw, tmp_path / "out2", workers=0)


def test_select_all_names_every_face(insightface_t1, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(insightface_t1, raw / "group photo.jpg")
    summary = align_folder(raw, tmp_path / "out", select="all", fmt="png", size=128)
    assert summary["crops_written"] == 6
    rows = _manifest(tmp_path / "out")
    assert list(rows.output) == [f"group photo_{i}.png" for i in range(6)]
    assert list(rows.box_x1) == sorted(rows.box_x1)
    assert cv2.imread(str(tmp_path / "out" / "group photo_3.png")).shape == (128, 128, 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_after_interrupt(lfw_tree, tmp_path, workers):
    out = tmp_path / "out"
    calls = []

    def interrupting_progress(total):
        from contextlib import contextmanager

        @contextmanager
        def bar():
            def advance(n=1):
                calls.append(n)
                if len(calls) == 4:  # the first call reports the skipped files, then one per file
                    raise KeyboardInterrupt

            yield advance

        return bar()

    with pytest.raises(KeyboardInterrupt):
        align_folder(lfw_tree, out, select="center", progress=interrupting_progress, workers=workers)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    partial = _manifest(out)
    assert len(partial) == 3 and set(partial.status) == {"ok"}
    first = {row.output: (out / row.output).read_bytes() for row in partial.itertuples()}

    summary = align_folder(lfw_tree, out, select="center", workers=workers)
    assert summary["skipped_existing"] == 3 and summary["processed"] == 4
    rows = _manifest(out)
    assert len(rows) == 7 and rows.source.is_unique
    assert (rows.status == "skipped_existing").sum() == 3
    kept = rows[rows.status == "skipped_existing"]
    assert kept.score.notna().all()  # detection data kept from the interrupted run's manifest
    assert all((out / name).read_bytes() == data for name, data in first.items())

    clean = tmp_path / "clean"
    align_folder(lfw_tree, clean, select="center")
    assert _tree_bytes(out) == _tree_bytes(clean)

    (out / rows.output.iloc[-1]).write_bytes(b"\xff\xd8 broken")  # an invalid crop is redone
    again = align_folder(lfw_tree, out, select="center")
    assert again["processed"] == 1 and again["skipped_existing"] == 6


def test_shards_cover_every_file_once_and_merge(lfw_tree, tmp_path, run_cli):
    out = tmp_path / "out"
    for index in range(3):
        align_folder(lfw_tree, out, shard=f"{index}/3", assume_aligned=True)
    sources = [set(_manifest(out, f"manifest.shard-{i}-of-3.csv").source) for i in range(3)]
    assert sum(len(s) for s in sources) == 7 and len(set.union(*sources)) == 7
    res = run_cli("align", "--merge-manifests", out, "--json")
    assert res.returncode == 0, res.stderr
    assert res.json()["files"] == 7 and res.json()["shards"] == 3
    merged = _manifest(out)
    assert set(merged.source) == set.union(*sources)

    env_out = tmp_path / "env"
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "3"}
    res = run_cli("align", lfw_tree, env_out, "--assume-aligned", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert res.json()["shard"] == "1/3"
    assert set(_manifest(env_out, "manifest.shard-1-of-3.csv").source) == sources[1]
    assert run_cli("align", "--merge-manifests", env_out).returncode == 2  # shards 0 and 2 are missing


def test_given_landmarks_reproduce_golden_crops(shared_dir, tmp_path, golden_crop_tolerance):
    folder = shared_dir / "golden" / "align"
    expected = json.loads((folder / "expected.json").read_text())
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(folder / "t1.jpg", raw / "t1.jpg")
    csv = tmp_path / "lm.csv"
    lines = ["path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5"]
    face = expected["faces"][2]
    lines.append("t1.jpg," + ",".join(repr(v) for point in face["landmarks_float"] for v in point))
    csv.write_text("\n".join(lines) + "\n")
    align_folder(raw, tmp_path / "out", landmarks=csv, fmt="png")
    crop = cv2.imread(str(tmp_path / "out" / "t1.png"))
    image = cv2.imread(str(folder / "t1.jpg"))
    np.testing.assert_array_equal(crop, align(image, np.array(face["landmarks_float"])))  # the library's crop
    golden = cv2.imread(str(folder / face["crops"]["float_112"]["file"]))  # made with OpenCV 5.0.0
    assert np.abs(crop.astype(int) - golden.astype(int)).max() <= golden_crop_tolerance


def test_assume_aligned_keeps_aligned_crops(shared_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    crop = cv2.imread(str(shared_dir / "golden" / "align" / "face0_int_112.png"))
    cv2.imwrite(str(raw / "a.png"), crop)
    cv2.imwrite(str(raw / "big.png"), cv2.resize(crop, (224, 224)))
    align_folder(raw, tmp_path / "out", assume_aligned=True, fmt="png")
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out" / "a.png")), crop)
    assert cv2.imread(str(tmp_path / "out" / "big.png")).shape == (112, 112, 3)


def test_library_refuses_bad_folders(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        align_folder(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "raw").mkdir()
    with pytest.raises(UsageError, match="inside the input"):
        align_folder(tmp_path / "raw", tmp_path / "raw" / "aligned")
    with pytest.raises(UsageError, match="--shard"):
        align_folder(tmp_path / "raw", tmp_path / "out", shard="3/3")


def test_cli_exit_codes_and_json(insightface_t1, tmp_path, run_cli):
    missing = run_cli("align", tmp_path / "nope", tmp_path / "out")
    assert missing.returncode == 2 and missing.stderr.startswith("facecli: error: input not found")
    assert "Traceback" not in missing.stderr
    raw = tmp_path / "raw"
    raw.mkdir()
    inside = run_cli("align", raw, raw / "out")
    assert inside.returncode == 2 and "inside the input" in inside.stderr
    assert run_cli("align", raw, tmp_path / "o", "--size", "100").returncode == 2
    assert run_cli("align", raw, tmp_path / "o", "--select", "biggest").returncode == 2

    shutil.copy(insightface_t1, raw / "t1.jpg")
    (raw / "broken.jpg").write_bytes(b"")
    res = run_cli("align", raw, tmp_path / "out", "--json")
    assert res.returncode == 0, res.stderr
    summary = res.json()
    assert summary["counts"] == {"empty": 1, "ok": 1} and summary["warnings"] == 1
    table = run_cli("align", raw, tmp_path / "out")
    assert table.returncode == 0 and "skipped_existing" in table.stdout and "1 of 2 files gave no crop" in table.stderr

    example = run_cli("align", "--example", tmp_path / "example")
    if importlib.util.find_spec("insightface"):
        assert example.returncode == 0, example.stderr
        assert "ok" in example.stdout and len(list((tmp_path / "example").glob("t1_*.jpg"))) == 6
    else:  # the photo ships with the optional extra: a one-line error that names it
        assert example.returncode == 2 and "Traceback" not in example.stderr
        assert example.stderr.strip().endswith("pip install 'facecli[insightface]'")


def test_the_program_ends_cleanly_after_a_pool_run(insightface_t1, tmp_path, run_cli_process):
    """When the ``facecli`` process has ended, its output and multiprocessing's clean-up are complete."""
    import tempfile

    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        shutil.copy(insightface_t1, raw / name)
    with tempfile.TemporaryDirectory(prefix="fc", dir="/tmp" if os.path.isdir("/tmp") else None) as scratch:
        res = run_cli_process("align", raw, tmp_path / "out", "--workers", "2", "--json",
                              env={**os.environ, "TMPDIR": scratch})
        assert res.returncode == 0, res.stderr
        assert res.json()["counts"] == {"ok": 3} and res.json()["workers"] == 2
        # the fork server's socket folder was removed at exit (onnxruntime's own .ses file may stay: not a folder)
        assert [p.name for p in Path(scratch).iterdir() if p.is_dir()] == []

    # A temporary folder too deep for a socket path: the pool starts fresh interpreters instead of a fork server
    deep = tmp_path / ("d" * 100) / ("e" * 100)
    deep.mkdir(parents=True)
    res = run_cli_process("align", raw, tmp_path / "out2", "--workers", "2", "--json",
                          env={**os.environ, "TMPDIR": str(deep)})
    assert res.returncode == 0, res.stderr
    assert res.json()["counts"] == {"ok": 3}
    assert _tree_bytes(tmp_path / "out") == _tree_bytes(tmp_path / "out2")


def test_name_collisions_and_overwrite(shared_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    crop = cv2.imread(str(shared_dir / "golden" / "align" / "face1_int_112.png"))
    cv2.imwrite(str(raw / "a.jpg"), crop)
    cv2.imwrite(str(raw / "a.png"), crop)
    cv2.imwrite(str(raw / "b.png"), crop)
    out = tmp_path / "out"
    first = align_folder(raw, out, assume_aligned=True)
    assert sorted(p.name for p in out.glob("*.jpg")) == ["a.jpg.jpg", "a.png.jpg", "b.jpg"]
    assert first["processed"] == 3
    assert align_folder(raw, out, assume_aligned=True)["processed"] == 0
    again = align_folder(raw, out, assume_aligned=True, overwrite=True)
    assert again["processed"] == 3 and again["counts"] == {"ok": 3}


def test_exif_orientation_is_applied_before_detection(shared_dir, tmp_path):
    from facecli.imageio import load_image

    upright = np.asarray(Image.open(shared_dir / "data" / "lfw-sample" / LFW_PICKS[1]).convert("RGB"))[:, 25:225]
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright)))  # stored turned left ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... and tagged "rotate 90° clockwise to display"
    stored.save(tmp_path / "turned.jpg", quality=98, exif=exif)
    loaded = load_image(tmp_path / "turned.jpg").rgb
    assert loaded.shape == upright.shape
    assert np.abs(loaded.astype(int) - upright.astype(int)).mean() < 3
    raw = tmp_path / "raw"
    raw.mkdir()
    (tmp_path / "turned.jpg").rename(raw / "turned.jpg")
    assert align_folder(raw, tmp_path / "out")["counts"] == {"ok": 1}


def test_detector_errors_in_workers_reach_the_caller(lfw_tree, shared_dir, tmp_path, scrfd_refusal):
    """A detector that cannot be built in the worker processes stops the run with its message (no respawn loop)."""
    wrong_model = shared_dir / "models" / "mobilefacenet_foamliu.onnx"  # a recognition model, not a detector
    with pytest.raises(UsageError, match=scrfd_refusal):
        align_folder(lfw_tree, tmp_path / "out", detector="scrfd", detector_options={"model_path": wrong_model},
                     workers=2)
    with pytest.raises(UsageError, match="unknown detector"):
        align_folder(lfw_tree, tmp_path / "out2", detector="yolo")
    assert not (tmp_path / "out2").exists()


def test_an_unexpected_failure_on_one_file_is_recorded(lfw_tree, tmp_path, monkeypatch):
    from facecli.align import pipeline
    from facecli.align.detectors import build_detector

    real = build_detector("mtcnn")

    class FailsOnSmallImages:
        def detect(self, image):
            if image.shape[0] == 250:  # the LFW photos
                raise RuntimeError("simulated detector crash")
            return real.detect(image)

    monkeypatch.setattr(pipeline, "build_detector", lambda name, **options: FailsOnSmallImages())
    summary = align_folder(lfw_tree, tmp_path / "out", workers=1)
    assert summary["counts"] == {"error": 5, "ok": 2}
    rows = _manifest(tmp_path / "out")
    assert rows[rows.status == "error"].reason.str.contains("RuntimeError: simulated detector crash").all()
