"""Hostile and broken input for pack, unpack, inspect, train, eval and gallery: every case is made here, small.

Each case asserts the exit code, a one-line message naming the file and the cause, and (where something is written)
that nothing outside OUT changed. Memory bounds are asserted in a subprocess under ``RLIMIT_AS``, hangs with a
timeout. Part of issue 14; the align/image cases live with the align tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import resource
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecli.errors import CorruptFileError, UsageError

MEMORY_LIMIT = 1536 << 20  # facecli inspect needs < 1 GB of address space; every bomb below asks for more


def one_line_error(res, *fragments: str) -> str:
    """The one ``facecli: error:`` line (a progress bar may stand above it), holding every fragment."""
    errors = [line for line in res.stderr.strip().splitlines() if line.startswith("facecli: error: ")]
    assert len(errors) == 1 and res.stderr.strip().endswith(errors[0]), res.stderr
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def tree(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (except under ``skip``)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and (skip is None or skip not in path.parents):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def faces(root: Path, people: int = 3, per: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for p in range(people):
        (root / f"person{p}").mkdir(parents=True, exist_ok=True)
        for i in range(per):
            pixels = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"person{p}" / f"{i}.jpg", quality=90)
    return root


# ------------------------------------------------------------------------------------------------ .bin bombs


def _binbytes8(n: int) -> bytes:
    return b"\x80\x04\x8e" + struct.pack("<Q", n) + b"abc."


def _frame(n: int) -> bytes:
    return b"\x80\x04\x95" + struct.pack("<Q", n) + b"N."


def _bytearray_of_size(n: int) -> bytes:  # bytearray(n) called through the allow-listed global (97 bytes in the issue)
    return b"\x80\x02c__builtin__\nbytearray\nJ" + struct.pack("<i", n) + b"\x85R]\x86."


def _repeated_reference(copies: int) -> bytes:
    """One 64 KiB bytearray referenced ``copies`` times through the memo: a copy per reference would be GBs."""
    body = b"c__builtin__\nbytearray\nB" + struct.pack("<I", 1 << 16) + b"x" * (1 << 16) + b"\x85R"
    return b"\x80\x02](" + body + b"q\x01" + b"h\x01" * copies + b"e]\x85\x86."


def _bytearray_of_list() -> bytes:  # ([bytearray([1, 2]), b"cd"], [True]): only bytes or latin-1 text are copied
    return b"\x80\x02](c__builtin__\nbytearray\n](K\x01K\x02e\x85RC\x02cde]\x88a\x86."


def _memo_index(index: int) -> bytes:  # LONG_BINPUT 2**30: the C unpickler would grow its memo table to match
    return b"\x80\x02Nr" + struct.pack("<I", index) + b"."


BOMBS = {
    "memo-index": (_memo_index(2**30), "memo index 1073741824"),
    "bytearray-size": (_bytearray_of_size(2**31 - 1), "bytearray(int) is not allowed"),
    "bytes8-length": (_binbytes8(10**11), "expected 100000000000 bytes"),
    "frame-length": (_frame(10**11), "claims 100000000000 bytes"),
    "memo-repeat": (_repeated_reference(40_000), None),  # a valid file: read, every reference kept once
}


def _inspect_limited(path: Path) -> tuple[subprocess.CompletedProcess, int]:
    """``facecli inspect PATH`` under an address-space limit; returns the process and its peak RSS in MiB."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    code = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True, "
            "timeout=60); sys.stdout.write(p.stderr); "
            "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "facecli", "inspect", str(path)],
                          capture_output=True, text=True, preexec_fn=limit, timeout=120)
    rc, rss = (int(v) for v in proc.stderr.split()[-2:])
    return subprocess.CompletedProcess(proc.args, rc, "", proc.stdout), rss


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_bin_bombs_are_refused_in_bounded_memory(tmp_path, case):
    data, message = BOMBS[case]
    path = tmp_path / f"{case}.bin"
    path.write_bytes(data)
    res, rss_mib = _inspect_limited(path)
    if message is None:
        assert res.returncode in (0, 1) and "internal error" not in res.stderr and "MemoryError" not in res.stderr
    else:
        assert res.returncode == 1
        one_line_error(res, str(path), message)
    assert rss_mib < 700, rss_mib


def test_bin_refusals_in_the_library(tmp_path):
    from facecli.data.benchmarks import load_bin

    os.mkfifo(tmp_path / "fifo.bin")
    (tmp_path / "zero.bin").symlink_to("/dev/zero")
    for special in ("fifo.bin", "zero.bin"):
        with pytest.raises(UsageError, match="not a regular file"):
            load_bin(tmp_path / special)

    path = tmp_path / "list.bin"
    path.write_bytes(_bytearray_of_list())
    with pytest.raises(CorruptFileError, match="bytearray\\(list\\) is not allowed"):
        load_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b"], [0.5]), protocol=2))  # float issame: says which pair and what
    with pytest.raises(CorruptFileError, match="pair 0 holds float 0.5"):
        load_bin(path)
    path.write_bytes(pickle.dumps(([b"a" * 10, b"b" * 10], [True]), protocol=2))
    images, issame = load_bin(path)  # a normal file still loads
    assert images == [b"a" * 10, b"b" * 10] and issame.tolist() == [True]


# ------------------------------------------------------------------------------------------------ archives


def test_weights_galleries_and_arrays_that_declare_more_than_they_hold(tmp_path):
    import torch

    from facecli.archives import check_npy
    from facecli.gallery.store import Gallery
    from facecli.nn.inference import read_weights

    bomb = tmp_path / "bomb.pt"  # a checkpoint whose member is deflated: 64 MiB of zeros in ~64 KiB
    torch.save({"w": torch.zeros(4)}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info) if not info.filename.endswith("/0") else bytes(64 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CorruptFileError, match="compressed"):
        read_weights(bomb)
    assert read_weights(tmp_path / "plain.pt")["w"].shape == (4,)

    npz = tmp_path / "gallery.npz"
    np.savez_compressed(npz, format=np.asarray("x"), meta=np.zeros(1 << 22))
    with pytest.raises(CorruptFileError, match="compressed"):
        Gallery.load(npz)

    npy = tmp_path / "issame.npy"  # a header claiming 10 GB of bools, then 4 bytes
    with open(npy, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|b1", "fortran_order": False, "shape": (10**10,)})
        fh.write(b"\x01\x00\x01\x00")
    with pytest.raises(CorruptFileError, match="declares 10000000000 bytes"):
        check_npy(npy, "issame")


# ------------------------------------------------------------------------------------------------ gallery


def _gallery(path: Path, threshold: float | None = 0.4) -> Path:
    from facecli.gallery.store import Gallery

    rng = np.random.default_rng(0)
    names = ["a", "a", "b", "b"]
    g = Gallery.from_images(names, rng.standard_normal((4, 8)).astype(np.float32), [f"{n}{i}.jpg" for i, n in
                            enumerate(names)], {"fingerprint": "f" * 16})
    if threshold is not None:
        g = g.with_threshold({"threshold": threshold, "target": "fpir"})
    g.save(path)
    return path


def _tamper(path: Path, **changes) -> None:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    meta = json.loads(str(arrays["meta"]))
    for key, value in changes.items():
        if key == "threshold_value":
            meta["threshold"]["threshold"] = value
        else:
            meta[key] = value
    arrays["meta"] = np.asarray(json.dumps(meta))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


@pytest.mark.parametrize("change, message", [
    ({"threshold_value": float("nan")}, "threshold nan is not a cosine score"),
    ({"threshold_value": 7.5}, "threshold 7.5 is not a cosine score"),
    ({"threshold_value": "0.4"}, "threshold is a str"),
    ({"threshold": [0.4]}, "not a record"),
    ({"weighting": "magic"}, "unknown template weighting"),
    ({"model": "x"}, "'model' is not a mapping"),
])
def test_tampered_gallery_metadata_is_refused_on_load(tmp_path, change, message):
    from facecli.gallery.store import Gallery

    path = _gallery(tmp_path / "g.npz")
    assert Gallery.load(path).threshold["threshold"] == 0.4
    _tamper(path, **change)
    with pytest.raises(CorruptFileError, match=message):
        Gallery.load(path)


def test_tampered_gallery_norms_are_refused(tmp_path):
    from facecli.gallery.store import Gallery

    path = _gallery(tmp_path / "g.npz")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["norms"][1] = np.nan
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(CorruptFileError, match="norms are not finite"):
        Gallery.load(path)


def test_tampered_gallery_on_the_command_line(tmp_path, run_cli):
    path = _gallery(tmp_path / "g.npz")
    _tamper(path, threshold_value=float("nan"))
    before = tree(tmp_path)
    res = run_cli("gallery", "remove", "a", "--gallery", path)
    assert res.returncode == 1
    one_line_error(res, str(path), "threshold nan")
    assert tree(tmp_path) == before


def test_a_nan_threshold_option_is_refused():
    from facecli.gallery.store import Gallery
    from facecli.gallery.workflow import threshold_of

    g = Gallery.from_images(["a", "b"], np.eye(2, 4, dtype=np.float32), ["a.jpg", "b.jpg"], {"fingerprint": "f"})
    for bad in (float("nan"), float("inf"), 2.0):
        with pytest.raises(UsageError, match="--threshold"):
            threshold_of(g, bad)
    assert threshold_of(g, 0.3) == 0.3
    above_every_score = float(np.nextafter(np.float32(1.0000001), np.float32(2)))  # what calibration can store
    assert threshold_of(g, above_every_score) == above_every_score


# ------------------------------------------------------------------------------------------------ pack


def test_a_second_pack_never_touches_the_first_packs_files(tmp_path, run_cli):
    src = faces(tmp_path / "src")
    out = tmp_path / "out"
    assert run_cli("pack", src, out, "--json").returncode == 0
    first = tree(out)
    assert {"train.rec", "train.idx", "property", "labels.csv", "records.csv", "pack.json"} <= set(first)
    (src / "person9").mkdir()
    Image.new("RGB", (112, 112), (9, 9, 9)).save(src / "person9" / "x.jpg")
    res = run_cli("pack", src, out, "--name", "val", "--json")
    assert res.returncode == 0, res.stderr
    after = tree(out)
    assert {k: after[k] for k in first} == first  # train's property, labels.csv, records.csv, pack.json untouched
    assert {"val.rec", "val.idx", "val.property", "val.labels.csv", "val.records.csv", "val.pack.json"} <= set(after)
    assert (out / "val.property").read_text() == "4,112,112\n" and (out / "property").read_text() == "3,112,112\n"
    from facecli.data.datasets import open_dataset
    from facecli.data.unpack import unpack_records

    assert open_dataset(out / "val.rec").num_classes == 4
    unpacked = unpack_records(out / "val.rec", tmp_path / "unpacked")
    assert sorted(p.name for p in (tmp_path / "unpacked").iterdir()) == ["person0", "person1", "person2", "person9"]
    assert unpacked.images == 7 and not unpacked.bad


def test_temporaries_of_a_killed_pack_are_removed_by_the_next_run(tmp_path, run_cli):
    src = faces(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".train.rec.k1ll3d.tmp", out / ".train.idx.k1ll3d.tmp", out / ".records.csv.k1ll3d.tmp"]
    other = out / ".val.rec.running.tmp"  # another pack's: not ours to remove
    for path in [*stale, other]:
        path.write_bytes(b"x" * 1000)
    assert run_cli("pack", src, out).returncode == 0
    assert not any(p.exists() for p in stale) and other.exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") and p != other]


def test_a_pack_failing_on_a_full_disk_leaves_no_temporary(tmp_path, monkeypatch):
    import errno

    from facecli.data import pack as packing
    from facecli.data.layouts import FolderLayout, Selection
    from facecli.data.recordio import RecordWriter

    src = faces(tmp_path / "src")
    out = tmp_path / "out"

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / ".train.rec.x.tmp"))

    real_abort = RecordWriter.abort

    def abort_then_fail(self):  # on a full disk the final flush in abort fails too
        real_abort(self)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RecordWriter, "write_images", full_disk)
    monkeypatch.setattr(RecordWriter, "abort", abort_then_fail)
    plan = packing.lazy_plan(FolderLayout(src), Selection())
    with pytest.raises(OSError, match="No space left"):
        packing.write_pack(plan, out, packing.PackOptions(), source=str(src))
    assert sorted(p.name for p in out.iterdir()) == []


def test_pack_into_a_file_and_from_malformed_csvs(tmp_path, run_cli):
    src = faces(tmp_path / "src", people=2, per=1)
    target = tmp_path / "taken"
    target.write_text("I am a file")
    res = run_cli("pack", src, target)
    assert res.returncode == 1
    one_line_error(res, str(target))
    assert target.read_text() == "I am a file"

    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nperson0/0.jpg,alice\nperson1/0.jpg,\n", encoding="utf-8")
    res = run_cli("pack", src, tmp_path / "out", "--layout", "csv", "--labels", labels)
    assert res.returncode == 2
    one_line_error(res, str(labels), "row 2 has an empty label")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sidecar, text, message", [
    ("labels.csv", "label,identity,images\nzero,alice,1\n", "line 2"),
    ("records.csv", "key;label\n1;0\n", "expected columns key, identity, path"),
    ("labels.csv", b"label,identity\n0,caf\xe9\n", "not UTF-8"),
])
def test_unpack_with_a_malformed_sidecar_is_one_line(tmp_path, run_cli, sidecar, text, message):
    src = faces(tmp_path / "src", people=2, per=1)
    out = tmp_path / "packed"
    assert run_cli("pack", src, out).returncode == 0
    (out / sidecar).write_bytes(text if isinstance(text, bytes) else text.encode())
    res = run_cli("unpack", out, tmp_path / "unpacked")
    assert res.returncode == 1
    one_line_error(res, str(out / sidecar), message)


# ------------------------------------------------------------------------------------------------ train


def test_training_on_one_identity_is_refused(tmp_path):
    from train_support import tiny_config

    from facecli.train.trainer import Trainer

    src = faces(tmp_path / "src", people=1, per=4)
    with pytest.raises(UsageError, match="holds 1 identity to train on; .*at least 2"):
        Trainer(tiny_config(src, tmp_path / "run", steps=1)).fit()
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ eval


@pytest.fixture
def embeddings(tmp_path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    emb, issame = tmp_path / "emb.npy", tmp_path / "issame.npy"
    np.save(emb, rng.standard_normal((40, 8)).astype(np.float32))
    np.save(issame, np.arange(20) % 2 == 0)
    return emb, issame


@pytest.mark.parametrize("args, message", [
    (["--std", "-1"], "std must be positive"),
    (["--std", "inf"], "std must be finite"),
    (["--mean", "nan"], "mean must be finite"),
    (["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"], "0-1 pixels"),
    (["--mean", "0.5", "--std", "0.5"], "std 127.5"),
    (["--nfolds", "0"], "got 0"),
])
def test_eval_options_that_cannot_be_right(embeddings, run_cli, args, message):
    emb, issame = embeddings
    res = run_cli("eval", "--embeddings", emb, "--issame", issame, *args)
    assert res.returncode == 2
    one_line_error(res, message)


@pytest.mark.parametrize("mean, std, message", [
    ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "0-1 pixels"),
    ([127.5] * 3, [-1.0] * 3, "std must be positive"),
    ([float("nan")] * 3, [127.5] * 3, "mean must be finite"),
])
def test_train_normalisation_follows_eval_rules_from_any_config_layer(tmp_path, mean, std, message):
    from facecli.train.config import build_config

    keys = {"data.path": str(tmp_path), "model.init": "m.onnx", "model.init_mean": mean, "model.init_std": std}
    with pytest.raises(UsageError, match=message):
        build_config(keys, {})


def test_eval_issame_must_be_booleans_or_exact_zero_one(embeddings):
    from facecli.eval.runner import evaluate_embeddings

    emb, issame = embeddings
    flags = (np.arange(20) % 2 == 0).astype(np.float64)
    np.save(issame, flags)  # 0.0/1.0 floats: the same pairs
    assert evaluate_embeddings(emb, issame)[0].n_pairs == 20
    flags[3] = 0.5
    np.save(issame, flags)
    with pytest.raises(UsageError, match="pair 3 is 0.5"):
        evaluate_embeddings(emb, issame)


def test_a_model_without_an_embedding_output_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from facecli.eval.models import load_model

    pool = helper.make_node("AveragePool", ["input"], ["features"], kernel_shape=[56, 56], strides=[56, 56])
    graph = helper.make_graph([pool], "feature_map", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                              ["N", 3, 112, 112])], [helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                                                                   ["N", 3, 2, 2])])
    path = tmp_path / "map.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(UsageError, match="one embedding per image"):
        load_model(path)


def test_merge_with_a_damaged_shard_description_is_one_line(tmp_path, run_cli):
    src = faces(tmp_path / "src", people=2, per=1)
    out = tmp_path / "out"
    assert run_cli("pack", src, out, "--shard", "0/1").returncode == 0
    part = out / "train.part-000-of-001.json"
    part.write_text('{"source": "x"', encoding="utf-8")
    res = run_cli("pack", "--merge", out)
    assert res.returncode == 1
    one_line_error(res, str(part), "not a shard description")
    assert not (out / "train.rec").exists()


def test_pack_skips_fifos_and_devices_without_hanging(tmp_path, run_cli):
    src = faces(tmp_path / "src", people=2, per=2)
    os.mkfifo(src / "person0" / "p.jpg")  # open() would wait for a writer forever
    (src / "person1" / "zero.jpg").symlink_to("/dev/zero")  # read() would never end
    res = run_cli("pack", src, tmp_path / "out", "--json", timeout=60)
    assert res.returncode == 0, res.stderr
    result = res.json()
    assert result["num_images"] == 4
    assert sorted((s["path"], s["status"]) for s in result["skipped"]) == [
        ("person0/p.jpg", "not_a_file"), ("person1/zero.jpg", "not_a_file")]


def test_a_weights_file_with_a_tensor_larger_than_itself_is_refused(tmp_path):
    import torch

    from facecli.nn.inference import read_weights

    path = tmp_path / "view.pt"
    torch.save({"w": torch.zeros(1).expand(10**9)}, path)  # a stride-0 view: 4 GB described by 4 bytes
    assert path.stat().st_size < 10_000
    with pytest.raises(CorruptFileError, match="claims more bytes than the file"):
        read_weights(path)
