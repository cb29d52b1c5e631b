"""The README's first command, examples/quickstart.sh, runs the whole chain on the bundled photos (short schedule),
with the bundled pretrained MobileFaceNet giving real numbers."""

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
    env = {**os.environ, "FACECLI": f"{sys.executable} -m facecli", "QUICKSTART_STEPS": "4", "QUICKSTART_BATCH": "16",
           "QUICKSTART_FINETUNE_STEPS": "6"}
    proc = subprocess.run(["bash", str(REPO / "examples" / "quickstart.sh"), str(out)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for n in range(1, 10):
        assert f"==== [{n}/9]" in proc.stdout
    assert "$ facecli gallery calibrate --gallery" in proc.stdout  # the commands are shown for copying

    rows = list(csv.DictReader((out / "aligned" / "manifest.csv").open()))
    assert len(rows) == 237 and all(r["status"] == "ok" for r in rows)
    assert json.loads((out / "pack" / "pack.json").read_text())["num_classes"] == 16
    assert (out / "model.onnx").stat().st_size > 1_000_000 and (out / "finetuned.onnx").stat().st_size > 1_000_000
    scored = json.loads((out / "eval" / "report.json").read_text())["results"]
    assert [r["benchmark"] for r in scored] == ["heldout", "heldout"]  # from scratch and fine-tuned
    pretrained = json.loads((out / "eval-pretrained" / "report.json").read_text())["results"][0]
    assert pretrained["accuracy"] >= 0.9  # a real face recognizer on people it never saw
    tuned = list(csv.DictReader((out / "finetune" / "metrics.csv").open()))
    assert tuned[0]["step"] == "0" and float(tuned[0]["val_heldout"]) == pytest.approx(pretrained["accuracy"], abs=0.02)
    assert tuned[-1]["step"] == "6" and float(tuned[-1]["val_heldout"]) >= 0.85

    gallery = Gallery.load(out / "gallery.npz")
    assert gallery.size == 8 and len(gallery.paths) == 24  # 8 held-out people, 3 photos each
    assert gallery.threshold["metric"] == "fpir" and gallery.threshold["fpir"] <= 0.1
    results = list(csv.DictReader((out / "search.csv").open()))
    probes = sorted(p for p in (out / "split" / "probes").rglob("*") if p.is_file())
    assert len(results) == len(probes) and all(r["status"] == "ok" for r in results)
    assert all((r["decision"] == "unknown") == (float(r["score"]) < gallery.threshold["threshold"]) for r in results)
    enrolled = set(gallery.identities.tolist())
    mated = [r for r in results if Path(r["probe"]).parent.name in enrolled]
    assert mated and sum(r["decision"] == Path(r["probe"]).parent.name for r in mated) >= 0.9 * len(mated)
    report = json.loads((out / "gallery-eval" / "report.json").read_text())
    assert report["n_mated"] + report["n_nonmated"] == len(probes)

    summary = proc.stdout[proc.stdout.index("facecli quick start") :]
    for step in ("align", "pack", "train (from scratch)", "train (fine-tune)", "export", "eval (pretrained)",
                 "eval (fine-tuned)", "gallery calibrate", "gallery search", "gallery evaluate"):
        assert step in summary
    assert "ok 237" in summary and "8 people enrolled" in summary
