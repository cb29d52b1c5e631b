"""Shared pytest fixtures: where ../shared is (tests that need it skip cleanly without it) and two CLI runners:
in this process (fast, the default) and in a subprocess (where the process boundary is what is tested)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, TextIO

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
    """What a CLI call left behind: its exit status and the text it wrote to stdout and stderr."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


# The interpreter's warning filters as a fresh ``python -m facecli`` has them, before pytest installs its own per test.
_PROCESS_WARNING_FILTERS = list(warnings.filters)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """Print a warning on the (redirected) stderr, as a separate process would, instead of pytest's recorder."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _exit_status(code: object) -> int:
    """``SystemExit.code`` as the process exit status the interpreter would give it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _cli_in_process(args: tuple[object, ...], cwd: Path | None, env: dict[str, str] | None) -> CliResult:
    """``facecli.cli.app.main(args)`` in this process with stdout/stderr captured; the working directory, the
    environment, torch's thread count and the warning filters are restored afterwards."""
    import torch

    from facecli.cli.app import main

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_cwd, saved_env, saved_threads = os.getcwd(), dict(os.environ), torch.get_num_threads()
    try:
        if cwd is not None:
            os.chdir(cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        with redirect_stdout(stdout), redirect_stderr(stderr), warnings.catch_warnings():
            warnings.filters[:] = _PROCESS_WARNING_FILTERS
            warnings.showwarning = _show_warning
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as exc:
                code = _exit_status(exc.code)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(saved_threads)
    return CliResult(code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., CliResult]:
    """Run the ``facecli`` CLI with ARGS in this process (``facecli.cli.app.main``), stdout/stderr captured.

    ``cwd=`` and ``env=`` apply for the call only (``env`` replaces the environment, as for a subprocess);
    ``timeout`` is accepted for the signature's sake and not enforced. Where the process boundary is what a test
    is about (exit status of ``python -m facecli``, signals, environment read at start-up such as ``TMPDIR``, the
    bytes a pipe receives), use :func:`run_cli_process`.
    """

    def run(*args: object, cwd: Path | None = None, timeout: float = 600,
            env: dict[str, str] | None = None) -> CliResult:
        return _cli_in_process(args, cwd, env)

    return run


@pytest.fixture(scope="session")
def run_cli_process() -> Callable[..., CliResult]:
    """Run ``python -m facecli ARGS`` in a subprocess (real exit codes, real stdout/stderr, a fresh interpreter)."""

    def run(*args: object, cwd: Path | None = None, timeout: float = 600,
            env: dict[str, str] | None = None) -> CliResult:
        proc = subprocess.run(
            [sys.executable, "-m", "facecli", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=timeout,
            env=env,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run
