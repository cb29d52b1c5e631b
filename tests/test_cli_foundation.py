"""The foundation's promises: version, help listing the verbs, one-line errors with the right exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from facecli import __version__
from facecli.errors import UsageError
from facecli.fileio import atomic_path, atomic_write_text
from facecli.registry import Registry


def test_version(run_cli):
    res = run_cli("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"facecli {__version__}"


def test_help_lists_verbs(run_cli):
    res = run_cli("--help")
    assert res.returncode == 0
    for verb in ("align", "pack", "inspect", "unpack", "train", "export", "eval", "gallery"):
        assert verb in res.stdout


def test_unknown_option_is_one_line_exit_2(run_cli_process):
    res = run_cli_process("--no-such-option")  # the exit status of `python -m facecli` itself
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("facecli: error:")
    assert "Traceback" not in res.stderr


def test_json_is_all_a_pipe_receives(tmp_path, run_cli_process):
    """Across a real pipe (a separate process: C libraries write to file descriptor 1, not to ``sys.stdout``),
    ``--json`` output is one JSON document and nothing else."""
    import numpy as np

    from facecli.imageio import encode_image

    for i, name in enumerate(("ann/a.png", "ann/b.png", "bob/c.png")):
        (tmp_path / "faces" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "faces" / name).write_bytes(encode_image(np.full((112, 112, 3), 40 * i, np.uint8), "png"))
    res = run_cli_process("inspect", tmp_path / "faces", "--check", "--json")
    assert res.returncode == 0, res.stderr
    info = res.json()
    assert (info["kind"], info["identities"], info["images"], info["check"]["images_checked"]) == ("folder", 2, 3, 3)


@pytest.mark.parametrize(
    ("command", "registry"),
    [(("align",), "facecli.align.detectors:DETECTORS"), (("train",), "facecli.nn.backbones:BACKBONES"),
     (("train",), "facecli.nn.heads:HEADS"), (("train",), "facecli.train.optimizers:OPTIMIZERS"),
     (("train",), "facecli.train.schedule:SCHEDULES")],
)
def test_help_lists_every_registered_choice(run_cli, command, registry):
    """Choice lists in --help come from the registries: a new detector, backbone, head, optimiser or schedule is
    listed without touching the CLI."""
    import importlib
    import re

    module, name = registry.split(":")
    names = getattr(importlib.import_module(module), name).names()
    res = run_cli(*command, "--help")
    assert res.returncode == 0
    text = re.sub(r"[\s│]+", " ", res.stdout)  # rich wraps the help inside a box
    listed = set(re.findall(r"[\w+-]+", text))
    assert names and set(names) <= listed, sorted(set(names) - listed)


def test_a_plain_start_imports_no_registry_runtime():
    """The registries behind those help texts import torch and onnxruntime; `facecli --version` and the other
    commands' start must not wait for them."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "facecli", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("facecli ")
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "facecli.cli.app" in imported
    assert not imported & {"torch", "onnxruntime", "facecli.align.detectors", "facecli.nn.heads", "facecli.train"}


def test_registry_builds_and_lists_choices():
    reg: Registry[int] = Registry("widget")
    reg.register("two-plus")(lambda x: x + 2)
    assert reg.build("two_plus", x=1) == 3
    assert "two-plus" in reg and reg.names() == ["two-plus"]
    with pytest.raises(UsageError, match="unknown widget 'nope'; choose one of: two-plus"):
        reg.get("nope")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("name", ["train.rec", "p" * 250 + ".rec"])
def test_the_cleanup_pattern_finds_a_writers_temporaries_even_for_long_names(tmp_path, name):
    import glob as globbing

    from facecli.fileio import temp_pattern

    with atomic_path(tmp_path / name) as tmp:
        tmp.write_text("partial")
        assert [Path(p) for p in globbing.glob(str(tmp_path / temp_pattern(name)))] == [tmp]
        assert not globbing.glob(str(tmp_path / temp_pattern("other.rec")))


def test_align_request_is_the_command(tmp_path, run_cli):
    """``facecli.align.run(AlignRequest(...))`` writes the crops ``facecli align`` writes and returns its summary."""
    import numpy as np

    from facecli.align import AlignRequest, run
    from facecli.imageio import encode_image

    rng = np.random.default_rng(0)
    for name in ("ann/a.png", "bob/b.png", "bob/c.png"):
        (tmp_path / "raw" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "raw" / name).write_bytes(encode_image(rng.integers(0, 256, (120, 100, 3), np.uint8), "png"))
    res = run_cli("align", tmp_path / "raw", tmp_path / "cli", "--assume-aligned", "--size", "128", "--json")
    assert res.returncode == 0, res.stderr
    summary = run(AlignRequest(raw=str(tmp_path / "raw"), out=str(tmp_path / "lib"), assume_aligned=True, size=128))
    assert summary["counts"] == res.json()["counts"] == {"ok": 3}
    crops = sorted(p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli").rglob("*.jpg"))
    assert len(crops) == 3
    assert [(tmp_path / "lib" / c).read_bytes() for c in crops] == [(tmp_path / "cli" / c).read_bytes() for c in crops]
    with pytest.raises(UsageError, match="--merge-manifests takes exactly one folder"):
        run(AlignRequest(raw="a", out="b", merge_manifests=True))
    with pytest.raises(UsageError, match="align needs RAW and OUT"):
        run(AlignRequest(raw="a"))
