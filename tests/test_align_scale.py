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
    """What the README's Slurm/Kubernetes recipe does: N processes, one shard each (from RANK/WORLD_SIZE as an
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
