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
    """The six-face sample photo that ships inside the insightface package."""
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    if not path.is_file():
        pytest.skip("insightface sample images are not installed")
    return path


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
