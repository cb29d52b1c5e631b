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
