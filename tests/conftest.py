"""Shared pytest fixtures: where ../shared is (tests that need it skip cleanly without it) and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Test workers share the cores: spinning OpenMP threads starve each other (torch steps ~10x slower under load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository; skips the test when it is absent (a user's clone)."""
    if not (SHARED / "README.md").is_file():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(scope="session")
def insightface_t1() -> Path:
    """insightface's six-face sample photo: the copy in ../shared/golden/align, else the one inside the insightface
    package (the optional ``[insightface]`` extra); skips when neither is there."""
    import importlib.util

    spec = importlib.util.find_spec("insightface")
    package = [Path(f) / "data" / "images" / "t1.jpg" for f in (spec.submodule_search_locations or [])] if spec else []
    for path in [SHARED / "golden" / "align" / "t1.jpg", *package]:
        if path.is_file():
            return path
    pytest.skip("t1.jpg needs ../shared or the insightface package")


@pytest.fixture(scope="session")
def golden_crop_tolerance(shared_dir: Path) -> int:
    """Grey levels a crop may differ from ../shared/golden/align's PNGs, made with OpenCV 5.0.0.

    With the same major version, the golden README's 1 grey level (OpenCV 5.1 moves 8 of 37,632 values by 1).
    OpenCV 4.x's warpAffine rounds its bilinear weights differently: insightface's own norm_crop on 4.14 lands 2
    grey levels off in 66 of 1.6 million values. Exactness is tested separately: bit-identity with norm_crop's
    recipe run on the installed OpenCV.
    """
    import cv2

    made_with = json.loads((shared_dir / "golden" / "align" / "expected.json").read_text())["versions"]["opencv"]
    return 1 if made_with.split(".")[0] == cv2.__version__.split(".")[0] else 2


@pytest.fixture(scope="session")
def scrfd_refusal() -> str:
    """How ``--detector scrfd`` refuses a model that is no detector: insightface's router says so, or, without the
    optional ``[insightface]`` extra, the one-line error that names the extra comes first."""
    import importlib.util

    if importlib.util.find_spec("insightface"):
        return "not an insightface SCRFD/RetinaFace detection model|cannot load"
    return r"runs through insightface, which is not installed: pip install 'facecli\[insightface\]'"


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one intra-op thread is far faster than two on a busy CI machine (use with usefixtures)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def run_cli():
    """Run ``python -m facecli ARGS`` in a subprocess (real exit codes, real stdout/stderr)."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> CliResult:
        proc = subprocess.run(
            [sys.executable, "-m", "facecli", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=timeout,
            env=env,
        )
        return CliResult(proc)

    return run
