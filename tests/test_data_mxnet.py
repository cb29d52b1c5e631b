"""Optional cross-check with the real MXNet 1.9.1 in its own virtual environment (skipped when it is absent).

MXNet does not install beside current numpy, so it lives in a separate venv: set ``FACECLI_MXNET_PYTHON`` to its
python, or create ``../mxnet-venv`` beside the repository (see DEVELOPERS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from facecli.data.recordio import MAGIC_BYTES, IRHeader, RecordReader, RecordWriter, pack, unpack

REPO = Path(__file__).resolve().parents[1]


def mxnet_python() -> Path | None:
    candidate = os.environ.get("FACECLI_MXNET_PYTHON")
    path = Path(candidate) if candidate else REPO.parent / "mxnet-venv" / "bin" / "python"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def mx_python() -> Path:
    python = mxnet_python()
    if python is None:
        pytest.skip("no MXNet venv (set FACECLI_MXNET_PYTHON)")
    probe = subprocess.run([str(python), "-c", "import mxnet"], capture_output=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip("the MXNet venv cannot import mxnet")
    return python


_MX_READ = """
import sys, json, hashlib, mxnet as mx
r = mx.recordio.MXIndexedRecordIO(sys.argv[2], sys.argv[1], 'r')
out = {}
for k in r.keys:
    h, s = mx.recordio.unpack(r.read_idx(k))
    lab = h.label.tolist() if hasattr(h.label, 'tolist') else [float(h.label)]
    out[str(k)] = [int(h.flag), [float(x) for x in (lab if isinstance(lab, list) else [lab])], int(h.id), int(h.id2),
                   hashlib.sha256(s).hexdigest()]
print(json.dumps(out))
"""

_MX_WRITE = """
import sys, mxnet as mx, numpy as np
magic = bytes.fromhex('0a23d7ce')
rng = np.random.RandomState(11)
w = mx.recordio.MXIndexedRecordIO(sys.argv[2], sys.argv[1], 'w')
for key in range(40):
    payload = bytearray(rng.randint(0, 256, size=int(rng.randint(0, 300)), dtype=np.uint8).tobytes())
    for _ in range(int(rng.randint(0, 4))):
        if len(payload) >= 4:
            at = int(rng.randint(0, len(payload) - 3))
            payload[at:at + 4] = magic
    label = float(key % 7) if key % 3 else [float(key), 0.5, -2.25]
    w.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, label, key, key * 3), bytes(payload)))
w.close()
"""


def _records(seed: int = 11) -> list[tuple[int, bytes]]:
    """The same records as _MX_WRITE, built with facecli (magic inserted at random, also unaligned, offsets)."""
    rng = np.random.RandomState(seed)
    out = []
    for key in range(40):
        payload = bytearray(rng.randint(0, 256, size=int(rng.randint(0, 300)), dtype=np.uint8).tobytes())
        for _ in range(int(rng.randint(0, 4))):
            if len(payload) >= 4:
                at = int(rng.randint(0, len(payload) - 3))
                payload[at : at + 4] = MAGIC_BYTES
        label = float(key % 7) if key % 3 else [float(key), 0.5, -2.25]
        out.append((key, pack(IRHeader(0, label, key, key * 3), bytes(payload))))
    return out


def test_mxnet_reads_what_facecli_packs(mx_python, shared_dir, tmp_path, run_cli):
    src = shared_dir / "golden" / "recordio" / "src"
    out = tmp_path / "ds"
    assert run_cli("pack", src, out, "-q").returncode == 0
    proc = subprocess.run([str(mx_python), "-c", _MX_READ, str(out / "train.rec"), str(out / "train.idx")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    reader = RecordReader(out / "train.rec")
    assert sorted(map(int, seen)) == sorted(reader.keys)
    import hashlib

    for key in reader.keys:
        header, payload = unpack(reader.read(key))
        labels = header.label.tolist() if header.flag else [float(header.label)]
        assert seen[str(key)] == [header.flag, labels, header.id, header.id2, hashlib.sha256(payload).hexdigest()]


def test_facecli_writes_what_mxnet_writes_with_random_magics(mx_python, tmp_path):
    mx_rec, mx_idx = tmp_path / "mx.rec", tmp_path / "mx.idx"
    proc = subprocess.run([str(mx_python), "-c", _MX_WRITE, str(mx_rec), str(mx_idx)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = _records()
    with RecordWriter(tmp_path / "fc.rec") as writer:
        for key, record in records:
            writer.write(key, record)
    assert (tmp_path / "fc.rec").read_bytes() == mx_rec.read_bytes()
    assert (tmp_path / "fc.idx").read_bytes() == mx_idx.read_bytes()
    reader = RecordReader(mx_rec, mx_idx)
    assert [reader.read(k) for k, _ in records] == [r for _, r in records]
    split = [k for k, r in records if any(r[i : i + 4] == MAGIC_BYTES for i in range(0, len(r) - 3, 4))]
    assert len(split) >= 5  # the case under test: multipart records did occur
