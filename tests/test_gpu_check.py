"""The device script's --dry-run (CPU, tiny sizes, the same code paths), so it cannot rot between GPU sessions."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dry_run_reports_every_section(gpu_check, tmp_path):
    report = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_check.json").read_text())["training"] == report["training"]
    fp16, bf16 = report["training"]
    assert fp16["skipped"] == "fp16 training needs CUDA"  # CPU: fp16 is refused, not faked
    assert bf16["facecli"] > 0 and bf16["bare"] > 0
    assert bf16["ratio"] == pytest.approx(bf16["facecli"] / bf16["bare"])
    sampled, full = report["partial_fc"]
    assert (sampled["sample_rate"], full["sample_rate"]) == (0.1, 1.0)
    assert sampled["centres_gib"] == pytest.approx(2000 * 512 * 4 / 2**30)
    assert sampled["samples_per_s"] > 0 and math.isnan(sampled["peak_memory_gib"])  # no GPU memory on CPU
    assert report["embedding"][0]["faces_per_s"] > 0 and report["decode_per_core"] > 0
    align = report["align"]  # 8 photos and 2 mosaics of 4 of them; the PyTorch import of MTCNN on the CPU
    assert align["runtime"] == "torch on cpu" and align["images"] == 10 and align["faces"] >= 16
    assert align["same_faces"] and align["within_1e-3_px"] and align["max_landmark_px"] <= 1e-3
    assert align["cpu_images_per_s"] > 0 and align["device_images_per_s"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| mbf | bf16 |" in table and "| rate 0.1 | 2,000 |" in table and "facecli / bare" in table
    assert "| torch on cpu | 10 |" in table


def test_a_failing_case_is_marked_and_the_run_goes_on(gpu_check, tmp_path, monkeypatch):
    """One device session may be all there is: an error in one case must not cost the other cases' figures."""
    def out_of_memory(*args):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(gpu_check, "partial_fc", out_of_memory)
    report = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    assert [row["skipped"] for row in report["partial_fc"]] == [
        "failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"] * 2
    assert report["training"][1]["facecli"] > 0 and report["embedding"][0]["faces_per_s"] > 0  # the rest ran
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["partial_fc"] == report["partial_fc"] and "elapsed_s" in saved
    assert "| rate 0.1 | skipped: failed: RuntimeError" in (tmp_path / "gpu_check.md").read_text()


def test_without_a_gpu_only_the_dry_run_runs(gpu_check, tmp_path):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu_check.main(["--out", str(tmp_path)])
