"""Safe reading of verification ``.bin`` pickles (facecli.data.benchmarks)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from facecli.data.benchmarks import load_bin, save_bin
from facecli.errors import CorruptFileError, UsageError


@pytest.fixture(scope="module")
def verification(shared_dir):
    return shared_dir / "golden" / "verification"


def test_python2_and_python3_bins_read_the_same(verification):
    bins2, same2 = load_bin(verification / "tiny.bin")
    bins3, same3 = load_bin(verification / "tiny_py3.bin")
    assert len(bins2) == 80 and same2.shape == (40,) and same2.dtype == np.bool_
    assert bins2 == bins3 and np.array_equal(same2, same3)
    assert all(isinstance(b, bytes) and b[:2] == b"\xff\xd8" for b in bins2)  # JPEG bytes, not str
    assert 0 < same2.sum() < 40


def test_evil_pickle_is_refused_and_runs_nothing(verification, tmp_path):
    """Load in a fresh interpreter whose cwd is empty: the payload would create ``facecli_pwned`` there."""
    code = (
        "import sys\n"
        "from facecli.data.benchmarks import load_bin\n"
        "from facecli.errors import CorruptFileError\n"
        "try:\n"
        f"    load_bin({str(verification / 'evil.bin')!r})\n"
        "except CorruptFileError as exc:\n"
        "    print('refused:', exc)\n"
        "    sys.exit(0)\n"
        "sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "os.system" in proc.stdout
    assert not (tmp_path / "facecli_pwned").exists()
    assert os.listdir(tmp_path) == []


def test_numpy_bool_issame_and_bytearray_images_are_allowed(tmp_path):
    for protocol in (2, 4):
        path = tmp_path / f"np{protocol}.bin"
        path.write_bytes(pickle.dumps(([bytearray(b"a"), b"b", b"c", b"d"], np.array([True, False])), protocol))
        bins, same = load_bin(path)
        assert bins == [b"a", b"b", b"c", b"d"] and same.tolist() == [True, False]


@pytest.mark.parametrize(
    "content,message",
    [
        (([b"a", b"b", b"c"], [True, False]), "3 images but 2 pairs"),
        (([b"a", b"b"], np.array([1.5])), "dtype"),
        (([b"a", "text"], [True]), "image 1 is a str"),
        ({"images": []}, "expected a pair"),
        (([b"a", b"b"], [2]), "only booleans"),
    ],
)
def test_malformed_bins_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(CorruptFileError, match=message):
        load_bin(path)


def test_truncated_and_missing_files(tmp_path, verification):
    cut = tmp_path / "cut.bin"
    cut.write_bytes((verification / "tiny.bin").read_bytes()[:5000])
    with pytest.raises(CorruptFileError, match="cut.bin"):
        load_bin(cut)
    with pytest.raises(UsageError, match="not found"):
        load_bin(tmp_path / "nope.bin")


def test_save_bin_round_trips(tmp_path, verification):
    bins, same = load_bin(verification / "tiny.bin")
    save_bin(tmp_path / "copy.bin", bins, same)
    bins2, same2 = load_bin(tmp_path / "copy.bin")
    assert bins2 == bins and np.array_equal(same2, same)
    # insightface's own reader: pickle.load(f, encoding='bytes') of (list of bytes, list of bool)
    with open(tmp_path / "copy.bin", "rb") as fh:
        plain = pickle.load(fh, encoding="bytes")  # our own file, trusted
    assert isinstance(plain, tuple) and plain[1] == same.tolist()
