"""Align at dataset scale: a job array of N concurrent shard processes merged equals one run; object storage."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from facecli.align.pipeline import align_folder
from facecli.errors import UsageError

# Wall time of a run, the only column that differs between two runs of the same files.
TIMING = ["seconds"]


def _manifest(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"source": str, "output": str, "status": str, "reason": str, "settings": str})


def _crops(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(out.rglob("*")) if p.is_file() and not p.name.startswith(".") and p.suffix != ".csv"}


@pytest.fixture(scope="module")
def photos(shared_dir, tmp_path_factory) -> Path:
    """Twenty LFW photos in per-person folders and two real photos (one of them with several faces)."""
    raw = tmp_path_factory.mktemp("scale") / "raw"
    lfw = shared_dir / "data" / "lfw-sample"
    for path in sorted(lfw.rglob("*.jpg"))[:20]:
        target = raw / path.relative_to(lfw)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    for name in ("img62.jpg", "img46.jpg"):
        shutil.copy(shared_dir / "data" / "photos" / name, raw / name)
    return raw


@pytest.fixture(scope="module")
def single(photos) -> Path:
    out = photos.parent / "single"
    align_folder(photos, out, select="all", workers=1)
    return out


def test_job_array_of_concurrent_shards_merges_into_the_single_run(photos, single):
    """What docs/align.md's Slurm/Kubernetes recipe does: N processes, one shard each (from RANK/WORLD_SIZE as an
    indexed Job sets them, or --shard), all writing into one OUT at the same time; then --merge-manifests."""
    out = photos.parent / "array"
    count = 3
    procs = []
    for index in range(count):
        shard_args = ["--shard", f"{index}/{count}"] if index else []  # shard 0 finds its place from the environment
        env = {**os.environ, "RANK": str(index), "WORLD_SIZE": str(count)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "facecli", "align", str(photos), str(out), "--select", "all", "--workers", "1",
             "--quiet", *shard_args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
    merge = subprocess.run([sys.executable, "-m", "facecli", "align", "--merge-manifests", str(out), "--quiet"],
                           capture_output=True, text=True)
    assert merge.returncode == 0, merge.stderr

    shards = [_manifest(out / f"manifest.shard-{i}-of-{count}.csv") for i in range(count)]
    assert all(len(s) for s in shards)
    expected, merged = _manifest(single / "manifest.csv"), _manifest(out / "manifest.csv")
    assert len(expected) > 22  # img46 has several faces
    pd.testing.assert_frame_equal(merged.drop(columns=TIMING), expected.drop(columns=TIMING))
    assert _crops(out) == _crops(single)


# ---------------------------------------------------------------------------------------------- object storage


@pytest.fixture
def memory_fs(tmp_path, monkeypatch):
    """fsspec's in-memory filesystem (``memory://``), emptied after the test; stage folders under tmp_path."""
    import tempfile

    fsspec = pytest.importorskip("fsspec")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    fs = fsspec.filesystem("memory")
    yield fs
    for path in ("/raw", "/out", "/sharded"):
        if fs.exists(path):
            fs.rm(path, recursive=True)


def _upload(fs, photos: Path, root: str) -> None:
    for path in sorted(photos.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{root}/{path.relative_to(photos).as_posix()}", path.read_bytes())


def _remote_crops(fs, root: str) -> dict[str, bytes]:
    return {path[len(root) + 1:]: fs.cat_file(path) for path in sorted(fs.find(root))
            if not path.endswith(".csv")}


def test_memory_urls_give_the_local_run_and_resume(photos, single, memory_fs):
    _upload(memory_fs, photos, "/raw")
    memory_fs.pipe_file("/raw/notes.txt", b"not an image")
    memory_fs.pipe_file("/raw/.hidden/x.jpg", b"hidden entries are skipped, as locally")
    summary = align_folder("memory://raw", "memory://out", select="all", workers=2)
    assert summary["workers"] == 1  # memory:// lives in this process only
    assert summary["manifest"] == "memory://out/manifest.csv" and summary["other_files_ignored"] == 1
    with memory_fs.open("/out/manifest.csv") as f:
        remote = pd.read_csv(f, dtype={"source": str, "output": str, "status": str, "reason": str, "settings": str})
    expected = _manifest(single / "manifest.csv")
    pd.testing.assert_frame_equal(remote.drop(columns=TIMING), expected.drop(columns=TIMING))
    assert _remote_crops(memory_fs, "/out") == _crops(single)

    again = align_folder("memory://raw", "memory://out", select="all")
    assert again["processed"] == 0 and again["skipped_existing"] == summary["files"]
    broken = expected.output.iloc[0]
    memory_fs.pipe_file(f"/out/{broken}", b"\xff\xd8 not a whole JPEG")  # an invalid crop is redone
    memory_fs.rm_file(f"/out/{expected.output.iloc[-1]}")  # and so is a missing one
    third = align_folder("memory://raw", "memory://out", select="all")
    assert third["processed"] == 2
    assert _remote_crops(memory_fs, "/out") == _crops(single)

    redo = align_folder("memory://raw", "memory://out", select="largest")  # other settings: old crops removed
    assert redo["stale_redone"] == summary["files"]
    with memory_fs.open("/out/manifest.csv") as f:
        outputs = set(pd.read_csv(f, dtype={"output": str}).output)
    assert set(_remote_crops(memory_fs, "/out")) == outputs  # one crop per file, none of the earlier stem_0, ...
    assert len(outputs) == summary["files"] < len(expected)


def test_file_urls_in_worker_processes_and_shards_merged_by_url(photos, single, tmp_path, run_cli, monkeypatch):
    """``file://`` goes through fsspec like s3:// would: pool processes read the inputs through it, each shard
    uploads its manifest, and --merge-manifests works on the URL."""
    import tempfile

    pytest.importorskip("fsspec")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # stage folders, here and in the CLI's process
    out = tmp_path / "bucket" / "aligned"
    res = run_cli("align", f"file://{photos}", f"file://{out}", "--select", "all", "--shard", "0/2", "--workers", "2",
                  "--json", env={**os.environ, "TMPDIR": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert res.json()["workers"] == 2 and res.json()["manifest"] == f"file://{out}/manifest.shard-0-of-2.csv"
    assert align_folder(f"file://{photos}", f"file://{out}", select="all", shard="1/2", workers=2)["workers"] == 2
    res = run_cli("align", "--merge-manifests", f"file://{out}", "--json")
    assert res.returncode == 0, res.stderr
    assert res.json()["manifest"] == f"file://{out}/manifest.csv"
    pd.testing.assert_frame_equal(_manifest(out / "manifest.csv").drop(columns=TIMING),
                                  _manifest(single / "manifest.csv").drop(columns=TIMING))
    assert _crops(out) == _crops(single)
    assert not [p for p in (tmp_path / "facecli-align-stage").rglob("*") if p.is_file()]  # nothing left staged
    with pytest.raises(UsageError, match="inside the input folder"):
        align_folder(f"file://{photos}", f"file://{photos}/inside")


def test_urls_without_fsspec_or_with_an_unknown_protocol_fail_in_one_line(tmp_path, monkeypatch, run_cli):
    res = run_cli("align", "nosuch://bucket/raw", tmp_path / "out")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "nosuch" in res.stderr
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if the [cloud] extra were not installed
    with pytest.raises(UsageError, match=r"s3://bucket/raw: .*fsspec.*facecli\[cloud\]"):
        align_folder("s3://bucket/raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_run_killed_before_its_manifest_resumes_from_the_local_journal(photos, memory_fs, monkeypatch, tmp_path):
    """Object stores cannot append: the journal stays in the local stage folder, and a run resumed on the same
    machine takes every finished file's rows from it (as after kill -9 locally)."""
    from facecli.align import pipeline

    _upload(memory_fs, photos, "/raw")
    complete = align_folder("memory://raw", "memory://out", select="all")
    memory_fs.rm("/out", recursive=True)
    with monkeypatch.context() as patch:  # the process dies after the last crop, before the manifest
        patch.setattr(pipeline, "_save_manifest", lambda out, path, rows, journal, failing: journal.close())
        killed = align_folder("memory://raw", "memory://out", select="all")
    assert killed["processed"] == complete["files"] and not memory_fs.exists("/out/manifest.csv")
    assert list(tmp_path.glob("facecli-align-stage/*/.manifest.csv.journal"))
    resumed = align_folder("memory://raw", "memory://out", select="all")
    assert resumed["processed"] == 0 and resumed["skipped_existing"] == complete["files"]
    with memory_fs.open("/out/manifest.csv") as f:
        rows = pd.read_csv(f)
    assert len(rows) == complete["crops_written"] and set(rows.status) == {"skipped_existing"}
    assert rows.lm0_x.notna().all()  # the journal kept each crop's landmarks
    assert not list(tmp_path.glob("facecli-align-stage/*/.manifest.csv.journal"))
