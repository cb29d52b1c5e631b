"""The README's first command, examples/quickstart.sh, runs the whole chain on the bundled photos (short schedule)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facecli.gallery.store import Gallery

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_quickstart_runs_the_whole_chain(tmp_path):
    out = tmp_path / "qs"
    env = {**os.environ, "FACECLI": f"{sys.executable} -m facecli", "QUICKSTART_STEPS": "4", "QUICKSTART_BATCH": "16"}
    proc = subprocess.run(["bash", str(REPO / "examples" / "quickstart.sh"), str(out)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for n in range(1, 9):
        assert f"==== [{n}/8]" in proc.stdout
    assert "$ facecli gallery calibrate --gallery" in proc.stdout  # the commands are shown for copying

    rows = list(csv.DictReader((out / "aligned" / "manifest.csv").open()))
    assert len(rows) == 237 and all(r["status"] == "ok" for r in rows)
    assert json.loads((out / "pack" / "pack.json").read_text())["num_classes"] == 16
    assert (out / "model.onnx").stat().st_size > 1_000_000
    assert json.loads((out / "eval" / "report.json").read_text())["results"][0]["benchmark"] == "heldout"

    gallery = Gallery.load(out / "gallery.npz")
    assert gallery.size == 8 and len(gallery.paths) == 24  # 8 held-out people, 3 photos each
    assert gallery.threshold["metric"] == "fpir" and gallery.threshold["fpir"] <= 0.1
    results = list(csv.DictReader((out / "search.csv").open()))
    probes = sorted(p for p in (out / "split" / "probes").rglob("*") if p.is_file())
    assert len(results) == len(probes) and all(r["status"] == "ok" for r in results)
    assert all((r["decision"] == "unknown") == (float(r["score"]) < gallery.threshold["threshold"]) for r in results)
    report = json.loads((out / "gallery-eval" / "report.json").read_text())
    assert report["n_mated"] + report["n_nonmated"] == len(probes)

    summary = proc.stdout[proc.stdout.index("facecli quick start") :]
    for step in ("align", "pack", "train", "export", "eval", "gallery calibrate", "gallery search", "gallery evaluate"):
        assert step in summary
    assert "ok 237" in summary and "8 people enrolled" in summary
